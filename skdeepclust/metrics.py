"""Clustering quality against known labels, and scorers for ``GridSearchCV``.

Cluster ids are arbitrary, so accuracy first matches clusters to classes one to
one (the Hungarian algorithm on the contingency table) and then counts the
samples whose matched class is right. NMI and ARI need no matching.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import (
    adjusted_rand_score,
    make_scorer,
    normalized_mutual_info_score,
)
from sklearn.utils import column_or_1d
from sklearn.utils.validation import _check_sample_weight, check_consistent_length

from ._device import host_array
from ._validation import check_no_missing_labels, labels_from_list, unique_labels

__all__ = [
    "cluster_accuracy",
    "cluster_accuracy_scorer",
    "nmi_scorer",
    "ari_scorer",
    "CLUSTERING_SCORERS",
]


def cluster_accuracy(y_true, y_pred, *, sample_weight=None):
    """Accuracy of a clustering under the best one-to-one match of clusters to classes.

    The match maximises the number (or, with ``sample_weight``, the weight) of
    correctly grouped samples (Hungarian algorithm). When there are more clusters
    than classes, the clusters left unmatched count as wrong; when there are fewer,
    the classes left unmatched do.

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        True class labels, of one type that sorts (integers or strings).
    y_pred : array-like of shape (n_samples,)
        Cluster labels, of one type that sorts; noise labels such as -1 are an
        ordinary cluster here.
    sample_weight : array-like of shape (n_samples,), default=None
        Non-negative weights; a weight of 2 counts a sample twice.

    Returns
    -------
    accuracy : float
        In [0, 1]; 1.0 means the clusters are the classes, up to renaming.

    Examples
    --------
    >>> from skdeepclust.metrics import cluster_accuracy
    >>> cluster_accuracy([0, 0, 1, 1, 2, 2], [5, 5, 3, 3, 3, 7])
    0.8333333333333334
    """
    y_true = _checked_labels(y_true, "y_true")
    y_pred = _checked_labels(y_pred, "y_pred")
    check_consistent_length(y_true, y_pred)
    sample_weight = _relative_weights(sample_weight, y_true)
    classes, class_index = unique_labels(y_true, "y_true", return_inverse=True)
    clusters, cluster_index = unique_labels(y_pred, "y_pred", return_inverse=True)
    # The contingency table, of counts or (with weights) of summed weights.
    counts = np.bincount(class_index * clusters.size + cluster_index, weights=sample_weight,
                         minlength=classes.size * clusters.size).reshape(classes.size, clusters.size)
    rows, cols = linear_sum_assignment(counts, maximize=True)
    # Both sums exactly rounded from the same cells: summed in different orders, a
    # perfect weighted clustering scored 1.0000000000000002 or 0.9999999999999999.
    return math.fsum(counts[rows, cols]) / math.fsum(counts.ravel())


def _checked_labels(labels, name):
    labels = column_or_1d(host_array(labels_from_list(labels), name), warn=True)
    if labels.shape[0] == 0:
        raise ValueError("cluster_accuracy needs at least one sample; got empty labels.")
    check_no_missing_labels(
        labels, name, "if those mark unlabelled samples, leave the samples out of the score")
    return labels


def _relative_weights(sample_weight, y_true):
    if sample_weight is None:
        return None
    sample_weight = _check_sample_weight(
        host_array(sample_weight, "sample_weight"), y_true, ensure_non_negative=True
    )
    heaviest = sample_weight.max()
    if not heaviest > 0:  # scikit-learn refuses it itself only from 1.7 on
        raise ValueError("sample_weight is zero for every sample; give some samples a "
                         "positive weight.")
    # Only the weights' ratios count; sums of weights near 1e308 would overflow.
    return sample_weight / heaviest


def check_true_labels(y_true, sample_weight=None):
    """Raise the error :func:`cluster_accuracy` would raise for ``y_true`` or
    ``sample_weight``, before anything slow computes the clusters to score."""
    y_true = _checked_labels(y_true, "y_true")
    unique_labels(y_true, "y_true")  # labels of types that do not sort
    _relative_weights(sample_weight, y_true)


cluster_accuracy_scorer = make_scorer(cluster_accuracy)
nmi_scorer = make_scorer(normalized_mutual_info_score)
ari_scorer = make_scorer(adjusted_rand_score)

#: Scorers by name, for ``GridSearchCV(scoring=CLUSTERING_SCORERS, refit="accuracy")``.
CLUSTERING_SCORERS = {
    "accuracy": cluster_accuracy_scorer,
    "nmi": nmi_scorer,
    "ari": ari_scorer,
}
