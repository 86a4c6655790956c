#!/usr/bin/env bash
# Every GPU row of benchmarks/README.md, and the CUDA-only tests.
#
#   bash benchmarks/run_gpu.sh ARCHIVE [STEP ...]
#
# ARCHIVE is the CIFAR-10 JPEG archive (../shared/data/cifar10/cifar10-jpg.tar.gz).
# STEPs, all by default, most needed first: tests embed e2e cluster embed-compiled
# e2e-compiled; name some to split the run across commands that each have a time
# limit. Each step prints its wall time, to plan the next run's split.
# Runs from the repository root on a machine with CUDA, torch, torchvision, timm,
# scikit-learn and tqdm; the package is used from the checkout, not installed.
# REFERENCE_TIMEOUT (default 120): seconds the cluster step waits for scikit-learn
# at 1,000,000 x 768, k=1000; past it the speed-up is a lower bound.
set -uo pipefail
archive=${1:?give the CIFAR-10 JPEG archive}
shift
steps=${*:-tests embed e2e cluster embed-compiled e2e-compiled}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
python=${PYTHON:-python3}
e2e=(benchmarks/bench_e2e.py --device cuda --archive "$archive" --cache-dir /tmp/skdeepclust-bench)
cluster=(benchmarks/bench_cluster.py --device cuda)

# Triton, behind torch.compile on CUDA, builds a small C helper at its first use.
has_c_compiler() { [ -n "${CC:-}" ] || command -v cc || command -v gcc || command -v clang; } >/dev/null

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
for step in $steps; do
    echo "=== $step"
    if [[ $step == *-compiled ]] && ! has_c_compiler; then
        echo "=== $step skipped: torch.compile needs a C compiler (cc, gcc or clang, or CC set) and there is none"
        continue
    fi
    SECONDS=0
    case $step in
        tests) "$python" -m pytest -q -rs -m gpu -p no:cacheprovider tests ;;
        # The naive baseline gets 8 DataLoader workers, as a user who knows DataLoader would give it.
        embed) "$python" benchmarks/bench_embed.py --device cuda --n-images 8192 --baseline-workers 8 ;;
        embed-compiled) "$python" benchmarks/bench_embed.py --device cuda --n-images 8192 --baseline-workers 8 \
            --compile --models vit_small_patch16_224 vit_base_patch16_224 ;;
        # At the target size scikit-learn may take far longer than a command may run (see
        # benchmarks/README.md), so the CPU size, where it finishes, compares the inertia first.
        cluster) "$python" "${cluster[@]}" --n-samples 100000 --n-clusters 100 &&
            "$python" "${cluster[@]}" --n-samples 1000000 --n-clusters 1000 \
                --reference-timeout "${REFERENCE_TIMEOUT:-120}" ;;
        e2e) "$python" "${e2e[@]}" ;;
        e2e-compiled) "$python" "${e2e[@]}" --compile ;;
        *) echo "unknown step $step" >&2; exit 2 ;;
    esac
    echo "=== $step took ${SECONDS} s"
done
