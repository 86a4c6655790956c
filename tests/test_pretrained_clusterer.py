import warnings

import numpy as np
import pytest
from conftest import TINY, two_tone_images
from sklearn.cluster import AgglomerativeClustering, KMeans
from sklearn.model_selection import GridSearchCV, KFold
from sklearn.pipeline import Pipeline

from skdeepclust import FeatureClusterer, ImageEmbedder, PretrainedFeatureClusterer
from skdeepclust.clustering import SCANClusterer, TorchKMeans
from skdeepclust.metrics import CLUSTERING_SCORERS, cluster_accuracy


def test_fit_predict_separates_two_obvious_groups(labelled_images):
    X, y = labelled_images
    est = PretrainedFeatureClusterer(**TINY, n_clusters=2)
    labels = est.fit_predict(X)
    np.testing.assert_array_equal(labels, est.labels_)
    assert est.score(X, y) == 1.0
    assert isinstance(est.clusterer_, KMeans)
    assert est.embedding_dim_ == 64 and est.cluster_centers_.shape == (2, 64)
    assert est.transform(X).shape == (16, 64)


def test_predict_assigns_new_images_to_the_learned_clusters(labelled_images):
    X, y = labelled_images
    est = PretrainedFeatureClusterer(**TINY, n_clusters=2).fit(X)
    new_X, new_y = two_tone_images(n_per_group=3, size=40, seed=1)  # other images, other size
    predicted = est.predict(new_X)
    dark_cluster = est.labels_[y == 0][0]
    np.testing.assert_array_equal(predicted == dark_cluster, new_y == 0)


def test_a_fit_that_fails_in_the_clustering_leaves_the_earlier_fit_whole(labelled_images):
    from sklearn.exceptions import NotFittedError

    # It kept the new backbone beside the old clusters, and predicted with both.
    X, _ = labelled_images
    refused_in_fit = AgglomerativeClustering(n_clusters=2, linkage="ward", metric="cosine")
    est = PretrainedFeatureClusterer(**TINY, clusterer=refused_in_fit)
    with pytest.raises(ValueError, match="Ward"):
        est.fit(X)
    with pytest.raises(NotFittedError):
        est.predict(X)
    est = PretrainedFeatureClusterer(**TINY, n_clusters=2).fit(X)
    embedder, before = est.embedder_, est.predict(X)
    est.set_params(backbone="test_vit2", clusterer=refused_in_fit, n_clusters=None)
    with pytest.raises(ValueError, match="Ward"):
        est.fit(X)
    assert est.embedder_ is embedder
    np.testing.assert_array_equal(est.predict(X), before)


def test_clusterer_without_predict_still_predicts(labelled_images):
    X, y = labelled_images
    given = AgglomerativeClustering()
    est = PretrainedFeatureClusterer(**TINY, clusterer=given, n_clusters=2).fit(X)
    assert given.n_clusters == 2 and not hasattr(given, "labels_")  # cloned, not changed
    np.testing.assert_array_equal(est.predict(X), est.labels_)


def test_predict_proba_with_a_soft_clusterer(labelled_images):
    X, _ = labelled_images
    assert not hasattr(PretrainedFeatureClusterer(**TINY), "predict_proba")
    est = PretrainedFeatureClusterer(**TINY, clusterer="gmm", n_clusters=2).fit(X)
    proba = est.predict_proba(X[:5])
    assert proba.shape == (5, 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)


def test_folder_input(image_folder):
    from skdeepclust.datasets import load_image_folder

    est = PretrainedFeatureClusterer(**TINY, n_clusters=2).fit(str(image_folder))
    data = load_image_folder(image_folder)
    assert est.labels_.shape == (8,)
    assert est.score(data.filenames, data.target) == 1.0


def test_too_many_clusters_is_caught_before_embedding(images, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("the backbone should not run")

    monkeypatch.setattr(ImageEmbedder, "fit", fail)
    with pytest.raises(ValueError, match="n_samples=16 is fewer than n_clusters=20"):
        PretrainedFeatureClusterer(**TINY, n_clusters=20).fit(images)


def test_score_refuses_labels_of_another_length_before_embedding(labelled_images, monkeypatch):
    X, y = labelled_images
    est = PretrainedFeatureClusterer(**TINY, n_clusters=2).fit(X)

    def fail(*args, **kwargs):
        raise AssertionError("the backbone should not run")

    monkeypatch.setattr(ImageEmbedder, "transform", fail)
    with pytest.raises(ValueError, match=r"^y has 10 entries for 16 images; give one per image"):
        est.score(X, y[:10])
    with pytest.raises(ValueError, match=r"^sample_weight has 3 entries for 16 images"):
        est.score(X, y, sample_weight=[1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match=r"^y_true contains NaN"):
        est.score(X, np.where(y == 0, np.nan, y))
    with pytest.raises(ValueError, match=r"^Negative values in data passed to `sample_weight`"):
        est.score(X, y, sample_weight=-np.ones(16))


def test_label_free_score_is_a_silhouette(labelled_images):
    X, _ = labelled_images
    est = PretrainedFeatureClusterer(**TINY, n_clusters=2).fit(X)
    assert 0.0 < est.score(X) <= 1.0
    single = PretrainedFeatureClusterer(**TINY, n_clusters=1).fit(X)
    assert single.score(X) == 0.0


def test_score_weighs_the_accuracy_and_refuses_weights_without_labels(labelled_images, monkeypatch):
    X, y = labelled_images
    est = PretrainedFeatureClusterer(**TINY, n_clusters=2).fit(X)
    weights = np.arange(len(y)) % 3
    assert est.score(X, y, sample_weight=weights) == cluster_accuracy(y, est.labels_, sample_weight=weights)
    monkeypatch.setattr(ImageEmbedder, "transform", lambda *args: pytest.fail("the backbone should not run"))
    with pytest.raises(ValueError, match="score weighs samples only in the accuracy against y"):
        est.score(X, sample_weight=weights)


def test_grid_search_over_n_clusters_with_and_without_labels():
    X, y = two_tone_images(n_per_group=9)
    params = {"n_clusters": [2, 3, 4]}
    base = PretrainedFeatureClusterer(**TINY)
    with_labels = GridSearchCV(base, params, scoring=CLUSTERING_SCORERS, refit="accuracy", cv=3).fit(X, y)
    assert with_labels.best_params_ == {"n_clusters": 2}
    assert with_labels.best_score_ == 1.0
    # Shuffled folds: a test fold holding one group only has no structure to score.
    without_labels = GridSearchCV(base, params, cv=KFold(3, shuffle=True, random_state=0)).fit(X)
    assert without_labels.best_params_ == {"n_clusters": 2}
    assert without_labels.predict(X[:2]).shape == (2,)


def test_pipeline_of_the_two_stages_matches_the_composite(labelled_images):
    X, _ = labelled_images
    pipeline = Pipeline(
        [("embed", ImageEmbedder(**TINY)), ("cluster", FeatureClusterer(n_clusters=2, random_state=0))]
    )
    composite = PretrainedFeatureClusterer(**TINY, n_clusters=2)
    np.testing.assert_array_equal(pipeline.fit(X).predict(X), composite.fit(X).predict(X))


def test_bad_n_clusters_is_named_before_embedding(images):
    with pytest.raises(ValueError, match="n_clusters must be a positive integer"):
        PretrainedFeatureClusterer(**TINY, n_clusters=-1).fit(images)


def test_list_of_paths_with_a_missing_file(image_folder):
    from skdeepclust.datasets import load_image_folder

    files = load_image_folder(image_folder).filenames + ["/no/such/image.png"]
    with pytest.raises(ValueError, match="not found: '/no/such/image.png'"):
        PretrainedFeatureClusterer(**TINY, n_clusters=2).fit(files)


def test_every_embedder_parameter_is_a_parameter_of_the_composite(images):
    embedder_params = set(ImageEmbedder().get_params()) - {"normalize"}  # always on: the clusterers expect unit vectors
    assert embedder_params <= set(PretrainedFeatureClusterer().get_params())
    est = PretrainedFeatureClusterer(**TINY, n_clusters=2, batch_size=5, num_workers=0, compile=False).fit(images)
    assert est.embedder_.get_params()["batch_size"] == 5


def test_settings_of_how_to_run_set_after_fit_take_effect(labelled_images):
    """A model fitted with device="cuda" and unpickled on a machine without one is
    moved with set_params(device="cpu"), as the error about the device advises; the
    setting stayed in the fitted embedder_ instead."""
    import pickle

    X, _ = labelled_images
    est = PretrainedFeatureClusterer(**TINY, n_clusters=2, device="cpu").fit(X)
    expected = est.predict(X)
    est.set_params(device="cuda:7")  # a CUDA device that no machine here has
    est.embedder_.set_params(device="cuda:7")  # as in a model fitted there
    est = pickle.loads(pickle.dumps(est))
    with pytest.raises(ValueError, match="cuda:7"):
        est.predict(X)
    est.set_params(device="cpu", batch_size=3)
    np.testing.assert_array_equal(est.predict(X), expected)
    assert est.embedder_.get_params()["batch_size"] == 3
    est.set_params(batch_size=0)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        est.transform(X)


@pytest.mark.parametrize(
    "params, match",
    [
        (dict(clusterer="kmeanz"), "Unknown clusterer"),
        (dict(clusterer="hdbscan", n_clusters=3), "takes no n_clusters"),
        (dict(clusterer=SCANClusterer(n_epochs=0)), "n_epochs"),
        (dict(clusterer=TorchKMeans(tol=-1.0)), "tol"),
        (dict(clusterer=KMeans(n_init=-1)), "n_init"),
        (dict(n_clusters=None), "fewer than n_clusters=8"),  # KMeans's own default, with 4 images
    ],
)
def test_clusterer_mistakes_are_found_before_embedding(images, monkeypatch, params, match):
    def embed(*args, **kwargs):
        raise AssertionError("the images were embedded before the clusterer was checked")

    monkeypatch.setattr(ImageEmbedder, "fit", embed)
    with pytest.raises(ValueError, match=match):
        PretrainedFeatureClusterer(**TINY, **params).fit(images[:4])


def test_a_linkage_that_would_run_out_of_memory_is_refused_before_embedding(images, monkeypatch):
    # 60,000 images asked scipy for 13.4 GiB at once, an hour of embedding later.
    from skdeepclust.clustering import feature_clusterer

    def embed(*args, **kwargs):
        raise AssertionError("the images were embedded before the memory was checked")

    monkeypatch.setattr(ImageEmbedder, "fit", embed)
    monkeypatch.setattr(feature_clusterer, "available_memory", lambda: 3 * 2 ** 20)
    with pytest.raises(ValueError, match=r"AgglomerativeClustering\(linkage='ward'\) on n_samples=1000 needs "
                       r"about 0.0 GiB .* more than the 0.0 GiB of memory available\. Pass fewer samples, a "
                       r"connectivity graph"):
        PretrainedFeatureClusterer(**TINY, clusterer="agglomerative", n_clusters=2).fit([images[0]] * 1000)


def test_sample_weight_reaches_the_clusterer(labelled_images):
    X, y = labelled_images
    weights = np.arange(1.0, len(X) + 1)
    est = PretrainedFeatureClusterer(**TINY, n_clusters=2)
    est.fit(X, sample_weight=weights)
    features = est.transform(X)
    alone = FeatureClusterer(n_clusters=2, random_state=TINY["random_state"]).fit(
        features, sample_weight=weights)
    np.testing.assert_array_equal(est.labels_, alone.labels_)
    np.testing.assert_allclose(est.cluster_centers_, alone.cluster_centers_, rtol=1e-5)
    assert est.score(X, y) == 1.0


@pytest.mark.parametrize(
    "params, weights, match",
    [
        (dict(clusterer="agglomerative"), np.ones(16), "takes no sample_weight"),
        ({}, np.ones(3), "shape"),
        ({}, -np.ones(16), "Negative"),
    ],
)
def test_sample_weight_mistakes_are_found_before_embedding(images, monkeypatch, params,
                                                           weights, match):
    def embed(*args, **kwargs):
        raise AssertionError("the images were embedded before sample_weight was checked")

    monkeypatch.setattr(ImageEmbedder, "fit", embed)
    with pytest.raises(ValueError, match=match):
        PretrainedFeatureClusterer(**TINY, n_clusters=2, **params).fit(
            images, sample_weight=weights)


def test_fit_transform_returns_the_fit_embeddings_in_one_pass(labelled_images, monkeypatch):
    X, _ = labelled_images
    passes = []
    transform = ImageEmbedder.transform
    monkeypatch.setattr(ImageEmbedder, "transform",
                        lambda self, images: passes.append(1) or transform(self, images))
    est = PretrainedFeatureClusterer(**TINY, n_clusters=2)
    features = est.fit_transform(X)
    assert len(passes) == 1
    np.testing.assert_allclose(features, est.transform(X), atol=1e-6)
    np.testing.assert_array_equal(est.labels_, est.predict(X))


def test_set_output_names_the_embedding_columns_and_never_reaches_the_clusterer(
        labelled_images):
    pd = pytest.importorskip("pandas")
    from sklearn import config_context

    X, y = labelled_images
    est = PretrainedFeatureClusterer(**TINY, n_clusters=2).set_output(transform="pandas")
    features = est.fit_transform(X)
    assert isinstance(features, pd.DataFrame) and features.shape == (16, 64)
    assert list(features.columns[:2]) == ["pretrainedfeatureclusterer0",
                                          "pretrainedfeatureclusterer1"]
    assert isinstance(est.transform(X[:3]), pd.DataFrame)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "X has feature names" from the inner stages
        with config_context(transform_output="pandas"):
            fitted_under_pandas = PretrainedFeatureClusterer(**TINY, n_clusters=2).fit(X)
            assert est.score(X, y) == 1.0
        np.testing.assert_array_equal(fitted_under_pandas.predict(X), est.labels_)
        assert fitted_under_pandas.score(X, y) == 1.0


def test_score_weighs_the_accuracy_where_the_weights_change_it():
    # An imperfect clustering: a perfect one scores 1.0 whatever the weights.
    X, y = two_tone_images()
    est = PretrainedFeatureClusterer(**TINY, n_clusters=2).fit(X)
    noisy = y.copy()
    noisy[:3] = 1  # three dark images labelled bright
    weights = np.ones(len(y))
    weights[:3] = 5.0
    expected = cluster_accuracy(noisy, est.labels_, sample_weight=weights)
    assert expected != cluster_accuracy(noisy, est.labels_)
    assert est.score(X, noisy, sample_weight=weights) == pytest.approx(expected)
