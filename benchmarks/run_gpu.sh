#!/usr/bin/env bash
# Every GPU row of benchmarks/README.md, and the CUDA-only tests, in one run.
#
#   bash benchmarks/run_gpu.sh [CIFAR-10 JPEG ARCHIVE]
#
# Runs from the repository root on a machine with CUDA, timm and scikit-learn;
# the package is used from the checkout, not installed.
set -uo pipefail
archive=${1:-../shared/data/cifar10/cifar10-jpg.tar.gz}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
python=${PYTHON:-python3}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
"$python" -m pytest -q -rs -m gpu -p no:cacheprovider tests
"$python" benchmarks/bench_embed.py --device cuda --n-images 8192
"$python" benchmarks/bench_embed.py --device cuda --n-images 8192 --compile \
    --models vit_small_patch16_224 vit_base_patch16_224
"$python" benchmarks/bench_cluster.py --device cuda --n-samples 1000000 --n-clusters 1000
"$python" benchmarks/bench_e2e.py --device cuda --archive "$archive" --cache-dir /tmp/skdeepclust-bench
"$python" benchmarks/bench_e2e.py --device cuda --archive "$archive" --cache-dir /tmp/skdeepclust-bench --compile
