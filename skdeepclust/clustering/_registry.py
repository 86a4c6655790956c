"""Short clusterer names (``clusterer="kmeans"``) and how each is built.

Each name maps to ``(module, class name, extra keyword arguments)``. Modules are
imported only when their name is asked for, so optional dependencies such as
cuML cost nothing until used.
"""

from __future__ import annotations

import importlib
import inspect

CLUSTERER_NAMES = {
    "kmeans": ("sklearn.cluster", "KMeans", {"n_init": 10}),
    "minibatch_kmeans": ("sklearn.cluster", "MiniBatchKMeans", {"n_init": 3}),
    "agglomerative": ("sklearn.cluster", "AgglomerativeClustering", {}),
    "spectral": ("sklearn.cluster", "SpectralClustering", {"affinity": "nearest_neighbors"}),
    "gmm": ("sklearn.mixture", "GaussianMixture", {"covariance_type": "diag"}),
    # HDBSCAN's copy=False (its default until 1.10) may overwrite the caller's features.
    "hdbscan": ("sklearn.cluster", "HDBSCAN", {"copy": True}),
    "cuml_kmeans": ("cuml.cluster", "KMeans", {}),
    "cuml_hdbscan": ("cuml.cluster.hdbscan", "HDBSCAN", {}),
    "torch_kmeans": ("skdeepclust.clustering.kmeans", "TorchKMeans", {}),
    "scan": ("skdeepclust.clustering.scan", "SCANClusterer", {}),
    "temi": ("skdeepclust.clustering.temi", "TEMIClusterer", {}),
    "debiased": ("skdeepclust.clustering.debiased", "DebiasedClusterer", {}),
}

# Names whose class counts its clusters with a parameter other than ``n_clusters``.
_CLUSTER_COUNT_PARAMETER = {"gmm": "n_components"}

# Names whose class finds the number of clusters itself and takes none.
FINDS_ITS_CLUSTER_COUNT = frozenset({"hdbscan", "cuml_hdbscan"})


def available_clusterer_names():
    """The names accepted by ``clusterer=``, sorted."""
    return sorted(CLUSTERER_NAMES)


# HDBSCAN's search trees (its algorithm="auto") lose to brute force in the dimensions
# of embeddings: on SimCLR features of CIFAR-10 photos (one thread), 42.0 s against
# 2.2 s for 5,000 rows of 512 dimensions, and 17.9 s against 10.3 s for 10,000 rows
# reduced to 64; at 32 dimensions they were about even (5.9 s against 7.6 s), at 8 the
# trees won (1.1 s against 7.3 s). Both find a minimum spanning tree of the same
# weight, but where mutual reachability distances tie (they often do: each is the
# larger of two core distances) they may keep other edges, and so other clusters:
# 12 against 11 on 1,000 such features (ARI 0.983).
HDBSCAN_BRUTE_MIN_FEATURES = 33
# Brute force holds two float64 matrices of every pair of rows: 6.6 GB at its peak for
# 20,000 rows. It is taken where they fit in this share of the memory available.
HDBSCAN_BRUTE_MEMORY_SHARE = 0.5


def fit_to_data_shape(name, estimator, n_samples, n_features):
    """Fit the defaults of the clusterer called ``name`` to data of this shape: those
    that may not exceed ``n_samples``, and HDBSCAN's algorithm."""
    import warnings

    from sklearn.exceptions import EfficiencyWarning

    from .._device import available_memory
    from .._warnings import stacklevel_of_user_code

    if name == "spectral":  # its k-NN graph needs fewer neighbours than samples
        estimator.set_params(n_neighbors=max(1, min(estimator.n_neighbors, n_samples - 1)))
    if name == "hdbscan" and n_features >= HDBSCAN_BRUTE_MIN_FEATURES:
        available = available_memory()
        if available is not None and 2 * 8 * n_samples ** 2 <= HDBSCAN_BRUTE_MEMORY_SHARE * available:
            estimator.set_params(algorithm="brute")
        elif available is not None:
            # The labels, not only the time, then depend on the machine's memory. One
            # text, which Python shows once per place however many fits (a search) warn.
            warnings.warn(
                "HDBSCAN runs on its search trees: computing every distance (algorithm='brute'), faster "
                "in many dimensions, would take more than half the memory available. The trees are slower "
                "there, and where distances tie they may find other clusters than brute force finds on a "
                "machine with more memory. In Python, a clusterer HDBSCAN(algorithm=...) of one's own "
                "gives the same labels everywhere.",
                EfficiencyWarning,
                stacklevel=stacklevel_of_user_code(),
            )


def _squashed(text):
    return text.lower().replace("_", "").replace("-", "")


def _close_clusterer_name(name):
    """The clusterer name that ``name`` spells differently ("KMeans", "torch-kmeans",
    "AgglomerativeClustering"), or None."""
    spellings = {}
    for known, (_, class_name, _) in CLUSTERER_NAMES.items():
        spellings.setdefault(_squashed(known), known)
        spellings.setdefault(_squashed(class_name), known)  # the first, scikit-learn's, wins
    return spellings.get(_squashed(name))


def build_named_clusterer(name, *, n_clusters, random_state, device, verbose=0):
    """Build the unfitted clusterer called ``name``.

    ``n_clusters``, ``random_state`` and ``device`` are passed on only to classes
    that take them; ``n_clusters=None`` keeps the class's own default. ``verbose``
    goes to this package's heads only: scikit-learn's ``verbose`` prints a log line
    per iteration, not a progress bar.
    """
    if not isinstance(name, str) or name not in CLUSTERER_NAMES:
        close = _close_clusterer_name(name) if isinstance(name, str) else None
        hint = f" Did you mean {close!r}?" if close else ""
        raise ValueError(
            f"Unknown clusterer {name!r}.{hint} Use one of {available_clusterer_names()} "
            "or pass an unfitted scikit-learn clusterer instance."
        )
    module_name, class_name, defaults = CLUSTERER_NAMES[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        if module_name.startswith("cuml"):
            raise ImportError(
                f"clusterer={name!r} needs RAPIDS cuML, which is not installed. Install it "
                "for your CUDA version (for example `pip install cuml-cu12`), or use "
                f"clusterer={name.removeprefix('cuml_')!r}."
            ) from exc
        raise
    cls = getattr(module, class_name)
    accepted = inspect.signature(cls).parameters
    params = dict(defaults)
    count_parameter = _CLUSTER_COUNT_PARAMETER.get(name, "n_clusters")
    if n_clusters is not None:
        if count_parameter not in accepted:
            raise ValueError(
                f"clusterer={name!r} finds the number of clusters itself and takes no "
                f"n_clusters; leave n_clusters=None (got n_clusters={n_clusters})."
            )
        params[count_parameter] = n_clusters
    if "random_state" in accepted:
        params["random_state"] = random_state
    if "device" in accepted:
        params["device"] = device
    if "verbose" in accepted and module_name.startswith("skdeepclust."):
        params["verbose"] = verbose
    return cls(**params)

