"""Stage 2: cluster a feature matrix with any clusterer, and predict for new rows."""

from __future__ import annotations

import inspect
import numbers
import os
import warnings

import numpy as np
from sklearn.base import BaseEstimator, ClusterMixin, clone
from sklearn.cluster import AgglomerativeClustering, Birch, KMeans, SpectralClustering
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import silhouette_score
from sklearn.pipeline import Pipeline
from sklearn.utils.metaestimators import available_if
from sklearn.utils import check_random_state
from sklearn.utils.validation import (
    _check_sample_weight,
    check_array,
    check_consistent_length,
    check_is_fitted,
    column_or_1d,
    has_fit_parameter,
    validate_data,
)

from .._device import available_memory, checked_random_state, host_array, parsed_device
from .._grouping import rows_of_each
from .._validation import check_no_missing_labels, check_verbose, labels_from_list, unique_labels
from .._warnings import stacklevel_of_user_code
from ..metrics import cluster_accuracy
from ._registry import build_named_clusterer, fit_to_data_shape
from ._training import HeadClusterer
from .kmeans import TorchKMeans, nearest_centres

# Cosine silhouette is quadratic in the number of samples; beyond this many it is
# estimated on a random subsample, which keeps `score` at a few seconds.
SILHOUETTE_MAX_SAMPLES = 5000

_COUNT_PARAMETERS = ("n_clusters", "n_components")


def refuse_images(X, taker="FeatureClusterer clusters"):
    """Images handed to a feature clusterer get the way to their features, not
    scikit-learn's bare "Found array with dim 4"."""
    if isinstance(X, (str, os.PathLike)) or getattr(X, "ndim", 2) in (3, 4):
        raise ValueError(
            f"{taker} a 2-D feature matrix (n_samples, n_features); this "
            "input looks like images or a folder of them. Embed them first with "
            "ImageEmbedder, or use PretrainedFeatureClusterer, which does both."
        )


def _build_clusterer(clusterer, n_clusters, random_state, device, verbose=0):
    """An unfitted clusterer from a name or an instance; the instance is cloned, never changed."""
    if isinstance(clusterer, str):
        return build_named_clusterer(
            clusterer, n_clusters=n_clusters, random_state=random_state, device=device,
            verbose=verbose,
        )
    if isinstance(clusterer, type):
        raise TypeError(
            f"clusterer must be a name or an estimator instance, not the class "
            f"{clusterer.__name__}; pass {clusterer.__name__}() instead."
        )
    if not (hasattr(clusterer, "fit_predict") and hasattr(clusterer, "get_params")):
        raise TypeError(
            "clusterer must be a name such as 'kmeans' or a scikit-learn style clusterer, "
            "with fit_predict (as scikit-learn's ClusterMixin gives) and get_params; got "
            f"{clusterer!r}."
        )
    estimator = clone(clusterer)
    # A pipeline's settings are those of its last step, the clusterer.
    final, prefix = final_clusterer(estimator)
    own_params = final.get_params(deep=False)
    if n_clusters is not None:
        count_parameter = next((p for p in _COUNT_PARAMETERS if p in own_params), None)
        if count_parameter is None:
            raise ValueError(
                f"{type(final).__name__} takes no number of clusters, but n_clusters="
                f"{n_clusters} was given; leave n_clusters=None with this clusterer."
            )
        own_count = own_params[count_parameter]
        signature = inspect.signature(type(final)).parameters
        class_default = getattr(signature.get(count_parameter), "default", inspect.Parameter.empty)
        # A count set on the instance too (e.g. by a search over clusterer__n_clusters)
        # would be overridden without a word, and every candidate would be the same model.
        if own_count != n_clusters and own_count != class_default:
            raise ValueError(
                f"n_clusters={n_clusters} and {type(final).__name__}({count_parameter}="
                f"{own_count!r}) disagree; set the number of clusters in one place: leave "
                "n_clusters=None to keep the clusterer's own, or leave the clusterer's "
                "at its default."
            )
        estimator.set_params(**{prefix + count_parameter: n_clusters})
    if random_state is not None and own_params.get("random_state", 0) is None:
        estimator.set_params(**{prefix + "random_state": random_state})
    if own_params.get("device") == "auto" and not _is_auto(device):
        estimator.set_params(**{prefix + "device": device})
    return estimator


def final_clusterer(estimator):
    """``estimator``, or the last step of a :class:`~sklearn.pipeline.Pipeline` (of
    one nested in it too), and the prefix that ``set_params`` takes for its parameters."""
    prefix = ""
    while isinstance(estimator, Pipeline) and estimator.steps and hasattr(estimator.steps[-1][1], "get_params"):
        name, estimator = estimator.steps[-1]
        prefix += f"{name}__"
    return estimator, prefix


class NamedClustererParamsMixin:
    """``set_params`` that explains why ``clusterer__<parameter>`` fails for a
    clusterer given by name ("kmeans"), where scikit-learn's own would say only
    "'str' object has no attribute 'set_params'", and that refuses a clusterer's
    count set against ``n_clusters``.

    Once fitted, an instance's count at its class default gives way to
    ``n_clusters`` (``FeatureClusterer(KMeans(), n_clusters=3)``), so a search over
    ``clusterer__n_clusters`` would fit its candidate 8 with 3 clusters and could
    report it best; set here, the count is known to be the caller's.
    """

    def set_params(self, **params):
        """Set the parameters of this estimator, as in scikit-learn.

        ``clusterer__<parameter>`` reaches a clusterer given as an instance, not
        one given by name.

        Parameters
        ----------
        **params : dict
            Estimator parameters.

        Returns
        -------
        self : estimator
            This estimator.
        """
        nested = sorted(key for key in params if key.startswith("clusterer__"))
        clusterer = params.get("clusterer", getattr(self, "clusterer", None))
        if nested and isinstance(clusterer, str):
            raise ValueError(
                f"{nested[0]} sets a parameter of a clusterer instance, but clusterer="
                f"{clusterer!r} is a name. Pass an instance, for example "
                "clusterer=KMeans(), to set or search its parameters."
            )
        n_clusters = params.get("n_clusters", getattr(self, "n_clusters", None))
        # The count is the first of these the clusterer has: SpectralClustering's
        # n_components is the number of eigenvectors.
        own_params = (clusterer.get_params(deep=False)
                      if hasattr(clusterer, "get_params") and not isinstance(clusterer, type) else {})
        count = next((name for name in _COUNT_PARAMETERS if name in own_params), None)
        key = f"clusterer__{count}"
        if n_clusters is not None and key in params and params[key] != n_clusters:
            raise ValueError(
                f"{key}={params[key]!r} and n_clusters={n_clusters!r} disagree; set the "
                f"number of clusters in one place: search over n_clusters, or set "
                f"n_clusters=None to search over {key}."
            )
        return super().set_params(**params)


def checked_sample_weight(clusterer, sample_weight, samples):
    """``sample_weight`` as float64, one finite non-negative weight per sample of
    ``samples`` (a feature matrix, or images), for a clusterer that takes weights."""
    if not has_fit_parameter(clusterer, "sample_weight"):
        raise ValueError(
            f"{type(clusterer).__name__} takes no sample_weight. Fit without it, or use a "
            "clusterer that weighs rows: 'kmeans', 'minibatch_kmeans', 'torch_kmeans', "
            "'cuml_kmeans' or DBSCAN()."
        )
    weights = _check_sample_weight(
        host_array(sample_weight, "sample_weight"), samples, dtype=np.float64, ensure_non_negative=True
    )
    if not weights.sum() > 0:
        raise ValueError("sample_weight is zero for every sample; give some samples a "
                         "positive weight.")
    return weights


def _forwards(method, fit_params):
    """Whether ``method`` takes ``fit_params``: a clusterer's ``fit`` may take
    sample_weight while its own ``fit_predict`` does not."""
    parameters = inspect.signature(method).parameters.values()
    if any(parameter.kind is inspect.Parameter.VAR_KEYWORD for parameter in parameters):
        return True
    return set(fit_params) <= {parameter.name for parameter in parameters}


def _cluster_means(X, labels, cluster_ids, weights):
    """Mean row of each cluster in ``X``'s dtype, weighted when ``weights`` is given.

    A cluster of rows that all weigh 0 gets their plain mean: k-means labels every
    row, weighed or not, so such a cluster can exist. Sums are taken in float64 and
    weights relative to the cluster's largest, so that neither float32 rows near
    1e35 nor weights near 1e308 overflow them.
    """
    if cluster_ids.size == 0:
        return np.empty((0, X.shape[1]), dtype=X.dtype)
    means = []
    for members in rows_of_each(labels, cluster_ids):
        cluster_weights = None if weights is None else weights[members]
        if cluster_weights is None or not cluster_weights.max() > 0:
            means.append(X[members].mean(axis=0, dtype=np.float64))
        else:
            means.append(np.average(X[members], axis=0,
                                    weights=cluster_weights / cluster_weights.max()))
    return np.stack(means).astype(X.dtype, copy=False)


def _is_auto(device):
    return isinstance(device, str) and device == "auto"


def _check_clusterer_params(estimator):
    """Reject bad parameters of an unfitted clusterer before any data reaches it.

    Its own ``fit`` would reject them too, but only after the images are embedded.
    """
    if isinstance(estimator, (HeadClusterer, TorchKMeans)):
        estimator._check_params()
    elif hasattr(estimator, "_parameter_constraints") and hasattr(estimator, "_validate_params"):
        estimator._validate_params()  # scikit-learn's declared constraints


def _spectral_eigenvectors_exceed_arpack(clusterer, n_samples):
    """Whether a SpectralClustering would fail deep in scipy: ARPACK, its eigensolver
    for a sparse nearest-neighbour graph, finds fewer eigenvectors than samples."""
    if not isinstance(clusterer, SpectralClustering):
        return False
    sparse_graph = clusterer.affinity in ("nearest_neighbors", "precomputed_nearest_neighbors")
    n_vectors = clusterer.n_components or clusterer.n_clusters
    return sparse_graph and clusterer.eigen_solver in (None, "arpack") and n_vectors >= n_samples


def linkage_memory_shortfall(clusterer, n_samples):
    """``(needed, available)`` bytes where ``clusterer`` would run out of memory
    on ``n_samples`` rows, else None.

    Without a connectivity graph, AgglomerativeClustering has scipy's linkage hold
    the float64 distance of every pair of rows and copy it, about
    ``n_samples * (n_samples - 1) * 8`` bytes at once (3.1 GB measured for 20,000
    rows, 13.4 GiB asked for 60,000); single linkage goes through a spanning tree
    instead. Found out only after the embedding, that took minutes or hours.
    """
    if not (isinstance(clusterer, AgglomerativeClustering) and clusterer.connectivity is None
            and clusterer.linkage != "single"):
        return None
    needed = n_samples * (n_samples - 1) * 8
    available = available_memory()
    return (needed, available) if available is not None and needed > available else None


def _requested_cluster_count(estimator):
    params = estimator.get_params(deep=False)
    for name in _COUNT_PARAMETERS:
        if isinstance(params.get(name), numbers.Integral):
            return int(params[name])
    return None


def _warn_of_empty_clusters(clusterer, cluster_ids):
    """Warn when ``clusterer`` left some of the clusters asked for empty, as
    MiniBatchKMeans and GaussianMixture may on few samples; this package's heads,
    TorchKMeans and scikit-learn's KMeans and Birch warn of it themselves."""
    requested = _requested_cluster_count(clusterer)
    if (requested is None or cluster_ids.size >= requested
            or isinstance(clusterer, (HeadClusterer, TorchKMeans, KMeans, Birch))):
        return
    gaps = ("" if np.array_equal(cluster_ids, np.arange(cluster_ids.size))
            else ", and labels_ keep its numbering, with gaps")
    warnings.warn(
        f"{type(clusterer).__name__} kept {cluster_ids.size} of n_clusters={requested} "
        f"clusters: no sample fell in the other {requested - cluster_ids.size}{gaps}. If you "
        "need exactly n_clusters groups, ask for fewer clusters or use 'kmeans'.",
        ConvergenceWarning,
        stacklevel=stacklevel_of_user_code(),
    )


def _warn_of_no_cluster(clusterer, n_samples, given_as_instance):
    """Warn when a density-based clusterer marked every sample as noise: predict then
    gives -1 to every sample, which is easily taken for a clustering."""
    advice = ("Loosen its density settings (DBSCAN: a larger eps, as L2-normalised features lie at most 2 "
              "apart; HDBSCAN, OPTICS: a smaller min_samples or min_cluster_size)" if given_as_instance
              else "The samples may hold no group dense enough for it")
    warnings.warn(
        f"{type(clusterer).__name__} found no cluster: it marked all {n_samples} samples as noise (-1), so "
        f"predict gives -1 to every sample. {advice}; or use 'kmeans' with n_clusters.",
        ConvergenceWarning,
        stacklevel=stacklevel_of_user_code(),
    )


def _clusterer_has(method):
    """For ``available_if``: the fitted clusterer, or before fit the one that would be built."""

    def check(self):
        if hasattr(self, "clusterer_"):
            return hasattr(self.clusterer_, method)
        clusterer = self.clusterer
        if isinstance(clusterer, str):
            clusterer = _build_clusterer(clusterer, None, None, "cpu")
        return hasattr(clusterer, method)

    return check


def _silhouette_rows(labels, random_state):
    """Rows on which the silhouette is computed: all, or beyond SILHOUETTE_MAX_SAMPLES
    a random subset that holds at least one row of every cluster (a subset without
    a small cluster could hold a single cluster, whose silhouette is undefined)."""
    n_samples = labels.shape[0]
    if n_samples <= SILHOUETTE_MAX_SAMPLES:
        return np.arange(n_samples)
    order = check_random_state(random_state).permutation(n_samples)
    _, first_of_each = np.unique(labels[order], return_index=True)
    return np.union1d(order[:SILHOUETTE_MAX_SAMPLES], order[first_of_each])


def check_score_weights(y, sample_weight):
    """Refuse weights where ``score`` has no labels to weigh the accuracy with.

    ``score`` takes ``sample_weight`` at all because a Pipeline with metadata
    routing on passes it (as None) to its last step's score.
    """
    if sample_weight is not None and y is None:
        raise ValueError(
            "score weighs samples only in the accuracy against y; without y it is a "
            "silhouette, which does not weigh them. Pass y, or sample_weight=None."
        )


def label_free_score(features, labels, random_state=None):
    """Cosine silhouette of ``labels`` on ``features``: larger is better, in [-1, 1].

    Parameters
    ----------
    features : array-like of shape (n_samples, n_features)
        The clustered rows.
    labels : array-like of shape (n_samples,)
        Cluster of each row. Negative integers (-1, the noise of density-based
        clusterers) are left out.
    random_state : int, RandomState instance or None, default=None
        Draws the rows on which the silhouette is estimated when there are more
        than 5,000; every cluster keeps at least one row in the draw.

    Returns
    -------
    score : float
        The mean cosine silhouette. With fewer than two clusters, or as many
        clusters as rows, the silhouette is undefined, and 0.0, the value of a
        clustering with no structure, is returned.

    Examples
    --------
    >>> from sklearn.datasets import make_blobs
    >>> from skdeepclust.clustering import label_free_score
    >>> X, y = make_blobs(n_samples=60, centers=[[5, 0], [0, 5]], random_state=0)
    >>> round(label_free_score(X, y), 2) > 0.5
    True
    """
    features = check_array(host_array(features, "features"))
    labels = column_or_1d(host_array(labels_from_list(labels), "labels"))
    check_consistent_length(features, labels)
    check_no_missing_labels(labels, "labels", "leave those rows out, or label them -1, which is left out")
    rows = np.arange(labels.shape[0])
    numbers_only = labels.dtype.kind in "iuf" or (labels.dtype.kind == "O" and all(
        isinstance(label, numbers.Real) and not isinstance(label, bool) for label in labels))
    if numbers_only:  # an object column of ints too (a pandas Series of dtype object)
        rows = np.flatnonzero(labels.astype(np.float64) >= 0)
    # Rows picked first and copied once: a copy of all kept rows could be far
    # larger than the sample the silhouette is estimated on.
    rows = rows[_silhouette_rows(labels[rows], random_state)]
    features, labels = features[rows], labels[rows]
    n_labels = unique_labels(labels, "labels").shape[0]
    if n_labels < 2 or n_labels >= labels.shape[0]:
        return 0.0
    return float(silhouette_score(features, labels, metric="cosine"))


class FeatureClusterer(NamedClustererParamsMixin, ClusterMixin, BaseEstimator):
    """Cluster a feature matrix with a named or given clusterer, and predict for new rows.

    This is the second stage of :class:`~skdeepclust.PretrainedFeatureClusterer`,
    usable on its own for features computed elsewhere, for example by
    :class:`~skdeepclust.ImageEmbedder` inside a :class:`~sklearn.pipeline.Pipeline`.

    Parameters
    ----------
    clusterer : str or estimator, default="kmeans"
        A name from :func:`~skdeepclust.clustering.available_clusterer_names`
        (``"kmeans"``, ``"agglomerative"``, ``"gmm"``, ``"hdbscan"``, ``"cuml_kmeans"``,
        ...) or an unfitted scikit-learn style clusterer. An instance is cloned
        and never modified. ``"hdbscan"`` computes every distance (its
        ``algorithm="brute"``) for features of more than 32 dimensions where that
        fits in half the memory available, as its search trees are slower there
        (42 s against 2 s for 5,000 rows of 512 dimensions); where it does not fit,
        an ``EfficiencyWarning`` says so, since the two may break ties between equal
        distances differently and find other clusters. An ``HDBSCAN()`` instance
        keeps its own algorithm. A :class:`~sklearn.pipeline.Pipeline` ending in a
        clusterer (``make_pipeline(PCA(50), KMeans())``) is one too: ``n_clusters``,
        ``device`` and ``random_state`` below go to its last step.
    n_clusters : int or None, default=None
        Number of clusters. ``None`` keeps the clusterer's own setting (8 for
        ``"kmeans"``, as in scikit-learn). For a clusterer that finds the number
        itself (DBSCAN, HDBSCAN) it must stay ``None``. A clusterer instance whose
        own count is not its class default must have this same count, and
        ``set_params(clusterer__n_clusters=...)`` (a search over it) needs this
        ``None`` or equal.
    device : str or torch.device, default="auto"
        Passed to clusterers that run on torch (to an instance whose own device
        is ``"auto"``); ignored by the others.
    random_state : int, RandomState instance or None, default=None
        Passed to the clusterer when it takes one and has none set.
    verbose : int, default=0
        Passed to this package's clusterers given by name: the clustering heads
        then show a progress bar of their training, and ``"torch_kmeans"`` prints
        the inertia of each initialisation.

    Attributes
    ----------
    clusterer_ : estimator
        The fitted clusterer.
    labels_ : ndarray of shape (n_samples,)
        Cluster of each training row, as the clusterer gave it (-1 marks noise
        for density-based clusterers).
    cluster_centers_ : ndarray of shape (n_found_clusters, n_features)
        Mean training row of each cluster found (weighted by ``sample_weight``
        when given), in the order of ``cluster_ids_``.
    cluster_ids_ : ndarray of shape (n_found_clusters,)
        The label of each row of ``cluster_centers_``.
    n_features_in_ : int
        Number of features seen during fit.

    Notes
    -----
    ``predict`` uses the clusterer's own ``predict`` when it has one. For those
    without (agglomerative, spectral, DBSCAN, HDBSCAN) a new row goes to the
    nearest cluster centre (Euclidean distance to ``cluster_centers_``), so it
    receives the noise label -1 only when no cluster was found at all (``fit``
    warns of that, with the settings to loosen). On the
    training rows it can therefore differ from ``labels_``, the clusterer's own
    grouping: HDBSCAN's noise rows get the nearest cluster (with SimCLR features
    of 500 to 10,000 CIFAR-10 photos HDBSCAN left 43% to 81% as noise; its other
    rows kept their cluster, 98% and more), and agglomerative and spectral
    clusters, which need not be balls around their centres, lost 9% to 25% of
    their rows to another centre (k=10).

    ``score(X, y)`` is the clustering accuracy when ``y`` is given and the cosine
    silhouette otherwise, so that ``GridSearchCV`` can compare settings with or
    without labels (see :meth:`score`).
    Give the search shuffled folds, ``cv=KFold(5, shuffle=True, random_state=0)``,
    when the rows are sorted by class (as :func:`~skdeepclust.datasets.load_image_folder`
    returns them): scikit-learn's default folds are not shuffled, so each would
    hold out whole classes.

    Examples
    --------
    >>> from sklearn.datasets import make_blobs
    >>> from sklearn.cluster import AgglomerativeClustering
    >>> from skdeepclust import FeatureClusterer
    >>> X, y = make_blobs(n_samples=60, centers=3, cluster_std=0.5, random_state=0)
    >>> est = FeatureClusterer(AgglomerativeClustering(), n_clusters=3).fit(X)
    >>> est.predict(X[:2]).shape
    (2,)
    >>> round(est.score(X, y), 2)
    1.0
    """

    def __init__(
        self, clusterer="kmeans", n_clusters=None, device="auto", random_state=None, verbose=0
    ):
        self.clusterer = clusterer
        self.n_clusters = n_clusters
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    def _validate_params(self):
        """Check the parameters, and return the unfitted clusterer they describe, checked too."""
        if self.n_clusters is not None and (
            not isinstance(self.n_clusters, numbers.Integral)
            or isinstance(self.n_clusters, bool)
            or self.n_clusters < 1
        ):
            raise ValueError(
                f"n_clusters must be a positive integer or None; got {self.n_clusters!r}."
            )
        check_verbose(self.verbose)
        # Checked even where the clusterer ignores them, so that a typo does not wait
        # for a clusterer that uses them; whether this machine has the device is left
        # to those (an instance may pin its own).
        checked_random_state(self.random_state)
        parsed_device(self.device)
        clusterer = _build_clusterer(
            self.clusterer, self.n_clusters, self.random_state, self.device, self.verbose
        )
        _check_clusterer_params(clusterer)
        return clusterer

    def _check_sample_count(self, clusterer, n_samples):
        requested = _requested_cluster_count(clusterer)
        if requested is not None and requested > n_samples:
            raise ValueError(
                f"n_samples={n_samples} is fewer than n_clusters={requested}; pass more "
                "samples or ask for fewer clusters."
            )
        if shortfall := linkage_memory_shortfall(clusterer, n_samples):
            raise ValueError(
                f"AgglomerativeClustering(linkage={clusterer.linkage!r}) on n_samples={n_samples} needs about "
                f"{shortfall[0] / 2 ** 30:.1f} GiB (scipy's linkage holds the distance of every pair of samples, "
                f"twice), more than the {shortfall[1] / 2 ** 30:.1f} GiB of memory available. Pass fewer samples, "
                "a connectivity graph (sklearn.neighbors.kneighbors_graph), or linkage='single', or use 'kmeans'."
            )
        if _spectral_eigenvectors_exceed_arpack(clusterer, n_samples):
            eigenvectors, fewer = (("n_components", "set n_components below n_samples") if clusterer.n_components
                                   else ("n_clusters", "ask for fewer clusters"))
            raise ValueError(
                f"SpectralClustering on a nearest-neighbour graph needs more samples than "
                f"eigenvectors ({eigenvectors}); got n_samples={n_samples}. Pass more samples or {fewer}."
            )

    def fit(self, X, y=None, sample_weight=None):
        """Fit the clusterer on the rows of ``X``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Feature matrix; finite values only.
        y : None
            Ignored.
        sample_weight : array-like of shape (n_samples,), default=None
            Non-negative weight of each row, passed to the clusterer's ``fit``;
            only clusterers that take one accept it (``"kmeans"``,
            ``"minibatch_kmeans"``, ``"torch_kmeans"``, ``"cuml_kmeans"``,
            DBSCAN). ``cluster_centers_`` are then weighted means.

        Returns
        -------
        self : FeatureClusterer
            The fitted estimator.
        """
        clusterer = self._validate_params()
        refuse_images(X)
        X = validate_data(self, host_array(X, "X"), dtype=[np.float64, np.float32],
                          ensure_min_samples=1)
        self._check_sample_count(clusterer, X.shape[0])
        fit_params = {}
        if sample_weight is not None:
            fit_params["sample_weight"] = checked_sample_weight(clusterer, sample_weight, X)
        if isinstance(self.clusterer, str):
            fit_to_data_shape(self.clusterer, clusterer, *X.shape)
        if hasattr(clusterer, "fit_predict") and _forwards(clusterer.fit_predict, fit_params):
            labels = clusterer.fit_predict(X, **fit_params)
        else:
            labels = clusterer.fit(X, **fit_params).labels_
        self.clusterer_ = clusterer
        self.labels_ = np.asarray(labels).astype(np.int64, copy=False)
        self.cluster_ids_ = np.unique(self.labels_[self.labels_ >= 0])
        _warn_of_empty_clusters(clusterer, self.cluster_ids_)
        if self.cluster_ids_.size == 0:
            _warn_of_no_cluster(clusterer, X.shape[0], given_as_instance=not isinstance(self.clusterer, str))
        self.cluster_centers_ = _cluster_means(
            X, self.labels_, self.cluster_ids_, fit_params.get("sample_weight")
        )
        return self

    def predict(self, X):
        """Assign each row of ``X`` to a cluster.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Feature matrix with the features seen in ``fit``.

        Returns
        -------
        labels : ndarray of shape (n_samples,)
            Cluster of each row (see the class Notes for clusterers without ``predict``),
            one of ``cluster_ids_``: a row the clusterer would give a cluster it left
            empty in ``fit`` goes to the kept one it ranks first (the nearest centre,
            or the likeliest component).
        """
        return self._predict_validated(self._validated(X))

    def _predict_validated(self, X):
        if not hasattr(self.clusterer_, "predict"):
            if self.cluster_ids_.size == 0:
                return np.full(X.shape[0], -1, dtype=np.int64)
            return self.cluster_ids_[self._nearest_centre(X)]
        labels = np.asarray(self.clusterer_.predict(X)).astype(np.int64, copy=True)
        # A clusterer that left clusters empty in fit (MiniBatchKMeans or GaussianMixture
        # on few rows, k-means on duplicate rows) may predict them: clusters that
        # labels_, cluster_centers_ and the results of a run do not have.
        outside = (labels >= 0) & ~np.isin(labels, self.cluster_ids_)
        if outside.any() and self.cluster_ids_.size:
            labels[outside] = self._nearest_kept_cluster(X[outside])
        return labels

    def _nearest_kept_cluster(self, X):
        """The cluster of ``cluster_ids_`` the clusterer ranks first for each row of ``X``."""
        centres = getattr(self.clusterer_, "cluster_centers_", None)
        if isinstance(centres, np.ndarray) and centres.ndim == 2 and centres.shape[0] > self.cluster_ids_.max():
            kept = centres[self.cluster_ids_].astype(X.dtype, copy=False)
            return self.cluster_ids_[nearest_centres(X, kept, distances=False)[0]]
        if hasattr(self.clusterer_, "predict_proba"):  # a mixture: a column per component
            return self.cluster_ids_[self.clusterer_.predict_proba(X)[:, self.cluster_ids_].argmax(axis=1)]
        return self.cluster_ids_[self._nearest_centre(X)]

    def _validated(self, X):
        """``X`` checked, in the dtype of the rows ``fit`` saw: scikit-learn's KMeans
        predicts only on the dtype it was fitted on."""
        check_is_fitted(self)
        refuse_images(X)
        return validate_data(self, host_array(X, "X"), dtype=self.cluster_centers_.dtype, reset=False)

    def _nearest_centre(self, X):
        return nearest_centres(X, self.cluster_centers_.astype(X.dtype, copy=False), distances=False)[0]

    @available_if(_clusterer_has("predict_proba"))
    def predict_proba(self, X):
        """Soft cluster assignments, for clusterers that give them.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Feature matrix with the features seen in ``fit``.

        Returns
        -------
        proba : ndarray of shape (n_samples, n_columns)
            Column ``j`` is the probability of cluster ``j``; each row sums to 1.
            GaussianMixture gives a column per component; the torch heads one per
            cluster they kept (``clusterer_.n_clusters_``, which may be fewer than
            ``n_clusters``: they prune clusters that no training row picks). Its
            largest column is ``predict``'s cluster but for a row that ``predict``
            moves off a component the fit left empty.
        """
        X = self._validated(X)
        return self.clusterer_.predict_proba(X)

    def score(self, X, y=None, sample_weight=None):
        """How good the clustering of ``X`` is; larger is better.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Feature matrix.
        y : array-like of shape (n_samples,), default=None
            True classes, if known.
        sample_weight : array-like of shape (n_samples,), default=None
            Weights of the samples in the accuracy; needs ``y`` (the silhouette
            does not weigh samples).

        Returns
        -------
        score : float
            With ``y``: :func:`~skdeepclust.metrics.cluster_accuracy` of the
            predicted clusters. Without: the cosine silhouette of the predicted
            clusters on ``X``, in [-1, 1], estimated on 5,000 random rows (seeded
            by ``random_state``, plus one row of any cluster they miss) when
            there are more; it is scale-free and does not grow with
            the number of clusters by itself, so it can choose ``n_clusters``. A
            single predicted cluster scores 0.0.
        """
        check_score_weights(y, sample_weight)
        X = self._validated(X)
        labels = self._predict_validated(X)
        if y is not None:
            return cluster_accuracy(y, labels, sample_weight=sample_weight)
        return label_free_score(X, labels, random_state=self.random_state)
