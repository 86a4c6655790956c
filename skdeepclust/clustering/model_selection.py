"""Choosing the number of clusters without labels."""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Iterable

import numpy as np
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.pipeline import Pipeline
from sklearn.utils.validation import check_array

from .._device import host_array
from ._registry import FINDS_ITS_CLUSTER_COUNT
from .feature_clusterer import (
    _COUNT_PARAMETERS,
    FeatureClusterer,
    _build_clusterer,
    final_clusterer,
    label_free_score,
    refuse_images,
)

__all__ = ["select_n_clusters"]


def select_n_clusters(features, candidates, *, clusterer="kmeans", random_state=None,
                      device="auto"):
    """Pick the number of clusters with the best cosine silhouette.

    Each candidate ``k`` is fitted with ``FeatureClusterer(clusterer, n_clusters=k)``
    and its training labels are scored with
    :func:`~skdeepclust.clustering.label_free_score` (cosine silhouette). The
    silhouette is scale-free and does not grow with ``k`` by itself, unlike the
    inertia, so its maximum is a usable choice when no labels exist.

    Parameters
    ----------
    features : array-like of shape (n_samples, n_features)
        Feature matrix (not modified).
    candidates : iterable of int
        Numbers of clusters to try, each >= 2 and < n_samples.
    clusterer : str or estimator, default="kmeans"
        As in :class:`~skdeepclust.FeatureClusterer`; a head such as
        ``"scan"`` works too, at the cost of one training per candidate. An
        instance's own number of clusters (``n_clusters`` or ``n_components``, or
        that of a :class:`~sklearn.pipeline.Pipeline`'s last step) is set to each
        candidate, on a clone; a clusterer that finds the number itself (HDBSCAN,
        DBSCAN) is refused.
    random_state : int, RandomState instance or None, default=None
        Passed to the clusterer and to the silhouette's subsampling.
    device : str or torch.device, default="auto"
        Passed to torch-based clusterers.

    Returns
    -------
    best_n_clusters : int
        The candidate with the largest silhouette (the smallest such on ties):
        the ``n_clusters`` to pass. A head, or MiniBatchKMeans on few rows, can
        leave clusters empty, so that it gives fewer clusters than asked; a
        warning then says how many each candidate gave.
    scores : dict of int to float
        Silhouette of the clustering each candidate gave.

    Notes
    -----
    The silhouette finds the number of groups that stand apart, which need not be
    the number of classes. On the 10,000 CIFAR-10 test photos (10 classes)
    embedded by the SimCLR ResNet-18 of the project's shared models, k-means'
    silhouette rose slowly from 0.082 at k=2 to 0.108 at k=18, the pick, with
    0.1015 at k=10, so the candidates differed by less than the noise of the
    estimate; k-means accuracy was 0.354 at k=18 against 0.533 at k=10.
    HDBSCAN with its defaults, the other way to go without ``n_clusters``, left
    81% of the photos noise in 47 clusters (``python benchmarks/n_clusters.py``).
    Where ``scores`` is as flat as that, the number of classes is better taken
    from what the clusters are for.

    Examples
    --------
    >>> from sklearn.datasets import make_blobs
    >>> from skdeepclust.clustering import select_n_clusters
    >>> X, _ = make_blobs(n_samples=300, centers=4, n_features=8, random_state=0)
    >>> best, scores = select_n_clusters(X, [2, 3, 4, 5, 6], random_state=0)
    >>> best
    4
    """
    refuse_images(features, taker="select_n_clusters scores clusterings of")
    features = check_array(host_array(features, "features"), dtype=[np.float64, np.float32])
    if not isinstance(candidates, Iterable) or isinstance(candidates, str):
        raise ValueError(f"candidates must be numbers of clusters to try, e.g. range(2, 21); got {candidates!r}.")
    candidates = list(candidates)
    if not candidates:
        raise ValueError("candidates is empty; pass numbers of clusters to try, e.g. range(2, 21).")
    for k in candidates:
        if not isinstance(k, numbers.Integral) or isinstance(k, bool) or not (
            2 <= k < features.shape[0]
        ):
            raise ValueError(
                f"Every one of candidates must be an integer in [2, n_samples - 1 = "
                f"{features.shape[0] - 1}]; got {k!r}."
            )
    count_parameter = _cluster_count_parameter(clusterer)
    scores, found = {}, {}
    for k in sorted(set(int(k) for k in candidates)):
        with warnings.catch_warnings():
            # One warning below, over all candidates, replaces one per fit that left
            # clusters empty.
            warnings.filterwarnings("ignore", message=r".* kept \d+ of n_clusters=",
                                    category=ConvergenceWarning)
            # An instance's own count is set to each candidate in turn, on a clone.
            model = (FeatureClusterer(clusterer, n_clusters=k, device=device, random_state=random_state)
                     if count_parameter is None else
                     FeatureClusterer(clone(clusterer).set_params(**{count_parameter: k}), device=device,
                                      random_state=random_state)).fit(features)
        scores[k] = label_free_score(features, model.labels_, random_state=random_state)
        found[k] = model.cluster_ids_.size
    best = max(scores, key=lambda k: (scores[k], -k))
    # A clusterer may leave clusters empty: then the k to pass and the number of
    # clusters it gives differ, and the user must know which one was scored.
    differing = {k: n for k, n in found.items() if n != k}
    if differing:
        warnings.warn(
            "The clusterer gave a different number of clusters than asked for "
            + ", ".join(f"n_clusters={k} (gave {n})" for k, n in differing.items())
            + f". The best, n_clusters={best}, gave {found[best]} clusters; each score is "
            "that of the clustering the candidate gave.",
            UserWarning,
            stacklevel=2,
        )
    return best, scores


def _cluster_count_parameter(clusterer):
    """The parameter of a clusterer instance that holds its number of clusters (None
    for a name); a ValueError for a clusterer that finds the number itself."""
    if isinstance(clusterer, str):
        count_parameter, takes_none = None, clusterer in FINDS_ITS_CLUSTER_COUNT
    else:
        # Refuses, in FeatureClusterer's words, what it refuses: a class, say, for an instance.
        count_parameter = _count_parameter_of(_build_clusterer(clusterer, None, None, "cpu"))
        takes_none = count_parameter is None
    if takes_none:
        which = ("its last step has" if isinstance(clusterer, Pipeline) else
                 "it finds its own, or has")
        raise ValueError(
            f"select_n_clusters tries numbers of clusters, but clusterer={clusterer!r} takes none: "
            f"{which} no parameter {' or '.join(_COUNT_PARAMETERS)}; choose one that takes a number "
            "of clusters, such as 'kmeans'."
        )
    return count_parameter


def _count_parameter_of(estimator):
    """The parameter, as ``set_params`` takes it, that holds the number of clusters of
    ``estimator`` or of a pipeline's last step (``kmeans__n_clusters``), or None."""
    final, prefix = final_clusterer(estimator)
    own_params = final.get_params(deep=False)
    name = next((name for name in _COUNT_PARAMETERS if name in own_params), None)
    return None if name is None else prefix + name