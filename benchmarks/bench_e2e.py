"""End to end: CIFAR-10 JPEG files through PretrainedFeatureClusterer, time split by stage.

The archive is unpacked once (not timed). Then, on the same files:

* decode:  reading the JPEGs alone, with the embedder's decode workers; the rate
           at which files could be fed to any model;
* embed from array: ``ImageEmbedder.transform`` of those decoded images held as one
           uint8 array (where they share a size and fit in 2 GiB); beside the embed
           stage it tells what the hand-over from the decode workers costs;
* embed:   ``ImageEmbedder.transform(files)``: decoding and the backbone,
           overlapped (the workers decode ahead while the device computes);
* cluster: ``FeatureClusterer.fit(features)``: k-means on the embeddings;
* total:   ``PretrainedFeatureClusterer.fit(files)``, which runs the two stages
           above; the number a user waits for.

One small fit beforehand pays the one-off costs (CUDA context, kernel choice,
compilation when ``--compile``), which are printed as "warm-up". Weights are
random unless ``--pretrained`` names a checkpoint: speed does not depend on them.

    python benchmarks/bench_e2e.py --device cuda                     # all 60,000 images, ViT-B/16
    python benchmarks/bench_e2e.py --device cpu --n-images 512       # a sample, on a CPU
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import timm
import torch

from _timing import timed
from skdeepclust import FeatureClusterer, ImageEmbedder, PretrainedFeatureClusterer
from skdeepclust._device import resolve_device
from skdeepclust.datasets import extract_image_archive
from skdeepclust.embedding.image_files import find_image_files
from skdeepclust.embedding.images import as_images

ARCHIVE = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10" / "cifar10-jpg.tar.gz"
# Decoded images kept for the embed-from-array row: all of CIFAR-10 takes 184 MB.
DECODED_BYTES_KEPT = 2 * 2 ** 30


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archive", default=str(ARCHIVE), help="CIFAR-10 JPEG archive (default: %(default)s)")
    parser.add_argument("--cache-dir", default=None, help="where to unpack it (default: skdeepclust's cache)")
    parser.add_argument("--n-images", type=int, default=None, help="a random sample of this many (default: all)")
    parser.add_argument("--backbone", default="vit_base_patch16_224")
    parser.add_argument("--pretrained", default=None, help="checkpoint file (default: random weights)")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--clusterer", default=None,
                        help="default: torch_kmeans on a GPU, scikit-learn's kmeans on the CPU")
    parser.add_argument("--n-clusters", type=int, default=10)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", default="auto")
    parser.add_argument("--num-workers", type=int, default=None, help="decode workers (default: the embedder's)")
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()
    device = resolve_device(args.device)

    unpack_seconds, folder = timed(lambda: extract_image_archive(args.archive, args.cache_dir), device)
    files = find_image_files(folder)
    if args.n_images is not None:
        chosen = np.random.default_rng(0).choice(len(files), size=min(args.n_images, len(files)), replace=False)
        files = [files[i] for i in np.sort(chosen)]
    params = dict(
        backbone=args.backbone,
        pretrained=args.pretrained or False,
        image_size=args.image_size,
        batch_size=args.batch_size if args.batch_size == "auto" else int(args.batch_size),
        num_workers=args.num_workers,
        device=device,
        compile=args.compile,
        random_state=0,
    )
    clusterer = args.clusterer or ("torch_kmeans" if device.type == "cuda" else "kmeans")
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    embedder = ImageEmbedder(**params)
    workers = embedder._decode_workers(device)
    print(f"device: {where}, {torch.get_num_threads()} torch threads, {os.cpu_count()} cores; "
          f"{len(files)} JPEG files ({unpack_seconds:.1f} s to find or unpack); {args.backbone} at "
          f"{args.image_size} px, {'compiled' if args.compile else 'eager'}, batch {args.batch_size}, "
          f"{workers} decode workers; {clusterer} k={args.n_clusters}; "
          f"torch {torch.__version__}, timm {timm.__version__}")

    warm_up = min(len(files), 256)
    warm_seconds, _ = timed(lambda: embedder.fit(files[:warm_up]).transform(files[:warm_up]), device)
    batch_size = embedder._runtime_on(device).batch_size

    def decode_all():
        # Kept as NHWC arrays while they share one size and fit in DECODED_BYTES_KEPT;
        # copied, since a worker's batch holds a file descriptor of shared memory.
        kept, kept_bytes = [], 0
        for batch in as_images(files).batches(batch_size, num_workers=workers):
            if kept is not None and not isinstance(batch, list) and kept_bytes + batch.numel() <= DECODED_BYTES_KEPT:
                kept.append(batch.movedim(1, -1).numpy().copy())
                kept_bytes += batch.numel()
            else:
                kept = None
        same_size = kept and len({array.shape[1:] for array in kept}) == 1
        return np.concatenate(kept) if same_size else None

    decode_seconds, decoded = timed(decode_all, device)
    embed_seconds, features = timed(lambda: embedder.transform(files), device)
    array_seconds = None
    if decoded is not None and len(decoded) == len(files):
        array_seconds, _ = timed(lambda: embedder.transform(decoded), device)
    stage = FeatureClusterer(clusterer, n_clusters=args.n_clusters, device=device, random_state=0)
    cluster_seconds, _ = timed(lambda: stage.fit(features), device)
    # A new composite estimator, as a user would make it; the process-wide warm-up
    # above (CUDA context, compiled kernels in the cache) still applies.
    composite = PretrainedFeatureClusterer(**params, clusterer=clusterer, n_clusters=args.n_clusters)
    total_seconds, _ = timed(lambda: composite.fit(files), device)

    n = len(files)
    print(f"warm-up on {warm_up} images (not counted below): {warm_seconds:.1f} s; batch size {batch_size}")
    print(f"{'stage':38} {'seconds':>8} {'images/s':>10}")
    for name, seconds in (
        ("decode only (not part of total)", decode_seconds),
        ("embed from array (not part of total)", array_seconds),
        ("embed (decode + backbone)", embed_seconds),
        ("cluster", cluster_seconds),
        ("total: PretrainedFeatureClusterer.fit", total_seconds),
    ):
        if seconds is not None:
            print(f"{name:38} {seconds:8.2f} {n / seconds:10.1f}")


if __name__ == "__main__":
    main()
