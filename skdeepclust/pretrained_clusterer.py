"""The glue: images -> :class:`ImageEmbedder` -> :class:`FeatureClusterer` -> clusters."""

from __future__ import annotations

from sklearn.base import (
    BaseEstimator,
    ClassNamePrefixFeaturesOutMixin,
    ClusterMixin,
    TransformerMixin,
)
from sklearn.utils.metaestimators import available_if
from sklearn.utils.validation import _num_samples, check_is_fitted

from .clustering.feature_clusterer import (
    FeatureClusterer,
    _clusterer_has,
    NamedClustererParamsMixin,
    check_score_weights,
    checked_sample_weight,
)
from .embedding.embedder import ImageEmbedder
from .embedding.images import as_images
from .metrics import check_true_labels

_EMBEDDER_PARAMS = (
    "backbone",
    "pretrained",
    "image_size",
    "mean",
    "std",
    "interpolation",
    "crop_pct",
    "batch_size",
    "num_workers",
    "device",
    "precision",
    "compile",
    "random_state",
    "verbose",
)
# How the embedder runs, not what it learned: read at each transform, as ImageEmbedder
# reads its own, so that set_params after fit takes effect (a model fitted on a GPU is
# moved to a CPU with set_params(device="cpu")).
_RUNTIME_PARAMS = ("batch_size", "num_workers", "device", "precision", "compile", "verbose")


class PretrainedFeatureClusterer(
    NamedClustererParamsMixin,
    ClassNamePrefixFeaturesOutMixin,
    TransformerMixin,
    ClusterMixin,
    BaseEstimator,
):
    """Cluster images on the features of a frozen pretrained backbone.

    Images are embedded by :class:`~skdeepclust.ImageEmbedder` (any timm model,
    L2-normalised features) and the features clustered by
    :class:`~skdeepclust.FeatureClusterer` (k-means by default, any scikit-learn
    clusterer, cuML, or a clustering head). New images are assigned to the learned
    clusters by :meth:`predict`.

    Parameters
    ----------
    backbone : str or torch.nn.Module, default="vit_small_patch16_224.dino"
        A timm model name (with an optional pretrained tag) or a module; see
        :class:`~skdeepclust.ImageEmbedder`.
    pretrained : bool or str or path-like, default=True
        ``True`` for timm's hub weights, a local checkpoint path, or ``False`` for
        random weights.
    image_size : int or (int, int), default=None
        Backbone input size; ``None`` uses the model's own.
    clusterer : str or estimator, default="kmeans"
        A clusterer name (see :func:`~skdeepclust.clustering.available_clusterer_names`)
        or an unfitted scikit-learn style clusterer, which is cloned.
    n_clusters : int or None, default=None
        Number of clusters; ``None`` keeps the clusterer's own (8 for k-means). As
        in :class:`~skdeepclust.FeatureClusterer`, a clusterer instance's count
        must be its class default or this one.
    mean, std : tuple of 3 floats, default=None
        Normalisation, overriding the model's own.
    interpolation : {"bilinear", "bicubic", "nearest"}, default=None
        Resampling, overriding the model's own.
    crop_pct : float in [0.25, 1] or "model", default=1.0
        Share of the resized image kept by the centre crop; ``"model"`` takes
        the model's own, as timm's evaluation does (see
        :class:`~skdeepclust.ImageEmbedder`).
    batch_size : int or "auto", default="auto"
        Images per forward pass of the backbone; ``"auto"`` suits the backbone and
        device (see :class:`~skdeepclust.ImageEmbedder`).
    num_workers : int or None, default=None
        Processes that decode image files ahead of the backbone; ``None`` uses one
        per core but one on a GPU (at most 16), and none on the CPU.
    device : str or torch.device, default="auto"
        Where the backbone (and torch clusterers) run; ``"auto"`` picks CUDA when present.
        The backbone's is read at each ``predict`` and ``transform`` (the torch
        clusterers predict on the CPU), as are ``batch_size``, ``num_workers``,
        ``precision``, ``compile`` and ``verbose``, so that ``set_params(device="cpu")``
        runs a model fitted on a GPU on a CPU.
    precision : {"auto", "float32", "bfloat16", "float16"}, default="auto"
        Backbone compute precision; ``"auto"`` is bfloat16 on CUDA, float32 elsewhere.
    compile : bool or dict, default=False
        Compile the backbone with :func:`torch.compile` (a dict gives its keyword
        arguments); worth it for large inputs.
    random_state : int, RandomState instance or None, default=None
        Seeds the clusterer and, with ``pretrained=False``, the backbone's weights.
    verbose : int, default=0
        Show progress bars (embedding, and training of the clustering heads) when
        positive; ``"torch_kmeans"`` prints the inertia of each initialisation.

    Attributes
    ----------
    embedder_ : ImageEmbedder
        The fitted embedding stage.
    feature_clusterer_ : FeatureClusterer
        The fitted clustering stage.
    clusterer_ : estimator
        The fitted clusterer itself (for example a ``KMeans``).
    labels_ : ndarray of shape (n_samples,)
        Cluster of each training image.
    cluster_centers_ : ndarray of shape (n_found_clusters, embedding_dim_)
        Mean embedding of each cluster found.
    embedding_dim_ : int
        Length of the feature vectors.

    See Also
    --------
    ImageEmbedder : the embedding stage alone, e.g. for a ``Pipeline`` with caching.
    FeatureClusterer : the clustering stage alone, on any feature matrix.

    Notes
    -----
    ``score(X, y)`` is the clustering accuracy (Hungarian matching) when ``y`` is
    given and the cosine silhouette of the predicted clusters on the embeddings
    otherwise; larger is better in both cases, so ``GridSearchCV`` can tune
    ``n_clusters``, the clusterer or the backbone with or without labels.
    Give the search shuffled folds, ``cv=KFold(5, shuffle=True, random_state=0)``,
    when the rows are sorted by class (as :func:`~skdeepclust.datasets.load_image_folder`
    returns them): scikit-learn's default folds are not shuffled, so each would
    hold out whole classes.

    Every ``fit`` embeds all images again. To search only clustering parameters,
    embed once with :class:`~skdeepclust.ImageEmbedder` and search a
    :class:`~skdeepclust.FeatureClusterer` on the features. ``fit_transform``
    returns the embeddings that ``fit`` computed, without a second pass.

    Examples
    --------
    >>> import numpy as np
    >>> from skdeepclust import PretrainedFeatureClusterer
    >>> rng = np.random.default_rng(0)
    >>> dark = rng.integers(0, 60, (10, 32, 32, 3), dtype=np.uint8)
    >>> bright = rng.integers(190, 256, (10, 32, 32, 3), dtype=np.uint8)
    >>> images = np.concatenate([dark, bright])
    >>> est = PretrainedFeatureClusterer(
    ...     backbone="test_vit", pretrained=False, n_clusters=2, random_state=0
    ... )
    >>> labels = est.fit_predict(images)
    >>> est.score(images, [0] * 10 + [1] * 10)
    1.0
    >>> est.predict(images[:3]).shape
    (3,)
    """

    def __init__(
        self,
        backbone="vit_small_patch16_224.dino",
        pretrained=True,
        image_size=None,
        clusterer="kmeans",
        n_clusters=None,
        mean=None,
        std=None,
        interpolation=None,
        crop_pct=1.0,
        batch_size="auto",
        num_workers=None,
        device="auto",
        precision="auto",
        compile=False,
        random_state=None,
        verbose=0,
    ):
        self.backbone = backbone
        self.pretrained = pretrained
        self.image_size = image_size
        self.clusterer = clusterer
        self.n_clusters = n_clusters
        self.mean = mean
        self.std = std
        self.interpolation = interpolation
        self.crop_pct = crop_pct
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.device = device
        self.precision = precision
        self.compile = compile
        self.random_state = random_state
        self.verbose = verbose

    def _make_feature_clusterer(self):
        return FeatureClusterer(
            clusterer=self.clusterer,
            n_clusters=self.n_clusters,
            device=self.device,
            random_state=self.random_state,
            verbose=self.verbose,
        )

    def fit(self, X, y=None, sample_weight=None):
        """Embed the images and cluster them.

        Parameters
        ----------
        X : array-like of images, list of images or paths, or folder path
            A 4-D array or torch tensor (NHWC or NCHW; uint8, uint16 or float in [0, 1]),
            a list of PIL images, arrays or file paths, or the path of a folder of
            images.
        y : None
            Ignored; labels are never used for fitting.
        sample_weight : array-like of shape (n_images,), default=None
            Non-negative weight of each image, for clusterers that take one
            (see :meth:`FeatureClusterer.fit`); checked before the embedding starts.

        Returns
        -------
        self : PretrainedFeatureClusterer
            The fitted estimator.
        """
        self._fit(X, sample_weight)
        return self

    def fit_transform(self, X, y=None, sample_weight=None):
        """Embed and cluster the images, and return their embeddings.

        Parameters
        ----------
        X : array-like of images, list of images or paths, or folder path
            Images in any form that ``fit`` accepts.
        y : None
            Ignored.
        sample_weight : array-like of shape (n_images,), default=None
            As in :meth:`fit`.

        Returns
        -------
        features : ndarray of shape (n_images, embedding_dim_)
            The L2-normalised float32 embeddings computed by the fit.
        """
        return self._fit(X, sample_weight)

    def _fit(self, X, sample_weight):
        """Fit, and return the training images' features."""
        feature_clusterer = self._make_feature_clusterer()
        # The clusterer is checked now, not after minutes of embedding.
        clusterer = feature_clusterer._validate_params()
        images = as_images(X)
        feature_clusterer._check_sample_count(clusterer, len(images))
        if sample_weight is not None:
            sample_weight = checked_sample_weight(clusterer, sample_weight, images)
        embedder = ImageEmbedder(**{name: getattr(self, name) for name in _EMBEDDER_PARAMS})
        # The hand-off to the clusterer stays an array whatever set_output says; only
        # this estimator's own transform follows it.
        embedder.set_output(transform="default")
        features = embedder.fit(images).transform(images)
        feature_clusterer.fit(features, sample_weight=sample_weight)
        # Set only now: a refit that fails (or is interrupted) leaves the earlier fit
        # whole, not a new backbone feeding the old clusters.
        self.embedder_ = embedder
        self.feature_clusterer_ = feature_clusterer
        self.clusterer_ = self.feature_clusterer_.clusterer_
        self.labels_ = self.feature_clusterer_.labels_
        self.cluster_centers_ = self.feature_clusterer_.cluster_centers_
        self.embedding_dim_ = embedder.embedding_dim_
        self._n_features_out = self.embedding_dim_  # named by get_feature_names_out
        return features

    def transform(self, X):
        """The embeddings of images: ``(n_images, embedding_dim_)`` float32, unit norm."""
        return self._embed(X)

    def _embed(self, X):
        check_is_fitted(self)
        self.embedder_.set_params(**{name: getattr(self, name) for name in _RUNTIME_PARAMS})
        return self.embedder_.transform(X)

    def predict(self, X):
        """Assign images to the learned clusters.

        Parameters
        ----------
        X : array-like of images, list of images or paths, or folder path
            Images in any form that ``fit`` accepts; sizes may differ from training.

        Returns
        -------
        labels : ndarray of shape (n_images,)
            Cluster of each image. For clusterers without ``predict`` (agglomerative,
            spectral, DBSCAN, HDBSCAN) this is the nearest cluster centre in
            embedding space.
        """
        features = self._embed(X)
        return self.feature_clusterer_.predict(features)

    @available_if(_clusterer_has("predict_proba"))
    def predict_proba(self, X):
        """Soft cluster assignments of images, for clusterers that give them.

        Parameters
        ----------
        X : array-like of images, list of images or paths, or folder path
            Images in any form that ``fit`` accepts.

        Returns
        -------
        proba : ndarray of shape (n_images, n_columns)
            Column ``j`` is the probability of cluster ``j`` (see
            ``FeatureClusterer.predict_proba`` for the number of columns).
        """
        features = self._embed(X)
        return self.feature_clusterer_.predict_proba(features)

    def score(self, X, y=None, sample_weight=None):
        """Clustering quality of images; larger is better.

        Parameters
        ----------
        X : array-like of images, list of images or paths, or folder path
            Images in any form that ``fit`` accepts.
        y : array-like of shape (n_images,), default=None
            True classes, if known.
        sample_weight : array-like of shape (n_images,), default=None
            Weights of the images in the accuracy; needs ``y``.

        Returns
        -------
        score : float
            With ``y``, the clustering accuracy under the best matching of clusters
            to classes (:func:`~skdeepclust.metrics.cluster_accuracy`). Without
            ``y``, the cosine silhouette of the predicted clusters on the embeddings,
            in [-1, 1] (0.0 for a single cluster); see
            :meth:`FeatureClusterer.score`.
        """
        # Mistakes surface before the embedding, which is slow.
        check_is_fitted(self)
        check_score_weights(y, sample_weight)
        images = as_images(X)
        for name, values in (("y", y), ("sample_weight", sample_weight)):
            if values is not None and _num_samples(values) != len(images):
                raise ValueError(
                    f"{name} has {_num_samples(values)} entries for {len(images)} images; "
                    "give one per image, in the order of X."
                )
        if y is not None:
            check_true_labels(y, sample_weight)
        features = self._embed(images)
        return self.feature_clusterer_.score(features, y, sample_weight)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.three_d_array = True
        tags.transformer_tags.preserves_dtype = []  # embeddings are float32 whatever the input
        return tags
