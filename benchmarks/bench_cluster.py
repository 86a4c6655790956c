"""k-means: skdeepclust's TorchKMeans against scikit-learn's KMeans, in one run.

Random but clustered float32 features (``n_clusters`` Gaussian blobs around random
centres), the same data for both, the same n_init and max_iter. Prints wall time,
speed-up, and the inertia ratio (TorchKMeans / scikit-learn: at most 1.01 means
"within 1%").

    python benchmarks/bench_cluster.py --device cpu  --n-samples 100000  --n-clusters 100
    python benchmarks/bench_cluster.py --device cuda --n-samples 1000000 --n-clusters 1000 \
        --reference-timeout 480

scikit-learn's k-means++ seeding alone took 208 s for 100,000 x 768 with k=1000 on
2 cores, so at the GPU size it may outlast a time limit: ``--reference-timeout``
stops waiting for it after that many seconds and prints the speed-up as a lower
bound. TorchKMeans runs first, and its row is printed before scikit-learn starts.
"""

from __future__ import annotations

import argparse
import os
import threading
import time

import numpy as np
import torch
from sklearn.cluster import KMeans

from _timing import timed
from skdeepclust._device import resolve_device
from skdeepclust.clustering import TorchKMeans


def clustered_features(n_samples, n_features, n_clusters, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, n_features), dtype=np.float32)
    members = rng.integers(0, n_clusters, n_samples)
    noise = rng.standard_normal((n_samples, n_features), dtype=np.float32)
    return centres[members] + 0.5 * noise


def fit_within(estimator, X, seconds):
    """Seconds that ``estimator.fit(X)`` takes, or None once it has run ``seconds`` (None: no limit).

    The fit runs in a daemon thread, so that a script can report and exit while
    it is still running.
    """
    failure = []

    def fit():
        try:
            estimator.fit(X)
        except BaseException as exc:  # handed to the main thread
            failure.append(exc)

    start = time.perf_counter()
    worker = threading.Thread(target=fit, daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        return None
    if failure:
        raise failure[0]
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--n-samples", type=int, default=100_000)
    parser.add_argument("--n-features", type=int, default=768)
    parser.add_argument("--n-clusters", type=int, default=100)
    parser.add_argument("--n-init", type=int, default=1)
    parser.add_argument("--max-iter", type=int, default=50)
    parser.add_argument("--reference-timeout", type=float, default=None,
                        help="seconds to wait for scikit-learn's fit (default: no limit)")
    args = parser.parse_args()
    device = resolve_device(args.device)
    X = clustered_features(args.n_samples, args.n_features, args.n_clusters)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {where}; X {X.shape} float32, k={args.n_clusters}, n_init={args.n_init}, "
          f"max_iter={args.max_iter}")

    # A first small fit pays one-off costs (CUDA context, kernels) outside the timing.
    TorchKMeans(n_clusters=2, n_init=1, max_iter=2, device=device, random_state=0).fit(X[:1000])
    ours = TorchKMeans(n_clusters=args.n_clusters, n_init=args.n_init, max_iter=args.max_iter,
                       device=device, random_state=0)
    ours_seconds, _ = timed(lambda: ours.fit(X), device)
    print(f"{'':14} {'seconds':>9} {'iterations':>11} {'inertia':>14}")
    print(f"{'TorchKMeans':14} {ours_seconds:9.2f} {ours.n_iter_:11d} {ours.inertia_:14.5g}", flush=True)

    reference = KMeans(n_clusters=args.n_clusters, n_init=args.n_init, max_iter=args.max_iter, random_state=0)
    reference_seconds = fit_within(reference, X, args.reference_timeout)
    if reference_seconds is None:
        print(f"{'sklearn KMeans':14} {'> ' + format(args.reference_timeout, '.0f'):>9}   (stopped waiting)")
        print(f"speed-up > {args.reference_timeout / ours_seconds:.2f}x; inertia not compared", flush=True)
        os._exit(0)  # the fit still runs in its thread; do not wait for it at exit
    print(f"{'sklearn KMeans':14} {reference_seconds:9.2f} {reference.n_iter_:11d} {reference.inertia_:14.5g}")
    print(f"speed-up {reference_seconds / ours_seconds:.2f}x; inertia ratio {ours.inertia_ / reference.inertia_:.4f}")

if __name__ == "__main__":
    main()
