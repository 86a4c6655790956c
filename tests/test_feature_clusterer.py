import importlib.util
import os
import warnings

import numpy as np
import pytest
from sklearn.base import BaseEstimator, ClusterMixin, clone
from sklearn.cluster import (
    DBSCAN,
    HDBSCAN,
    AgglomerativeClustering,
    Birch,
    FeatureAgglomeration,
    KMeans,
    SpectralClustering,
)
from sklearn.datasets import make_blobs
from sklearn.exceptions import ConvergenceWarning, EfficiencyWarning
from sklearn.decomposition import PCA
from sklearn.metrics import silhouette_score
from sklearn.mixture import GaussianMixture
from sklearn.model_selection import GridSearchCV
from sklearn.utils.estimator_checks import parametrize_with_checks

from conftest import peak_numpy_bytes
from skdeepclust import FeatureClusterer, PretrainedFeatureClusterer
from skdeepclust.clustering import kmeans as kmeans_module
from skdeepclust.clustering import feature_clusterer as feature_clusterer_module
from skdeepclust.clustering import TorchKMeans, available_clusterer_names, label_free_score
from skdeepclust.metrics import cluster_accuracy


# The checks that fit with sample_weight, which AgglomerativeClustering and
# GaussianMixture do not take: FeatureClusterer refuses it for them, by design.
_SAMPLE_WEIGHT_CHECKS = (
    "check_sample_weights_pandas_series",
    "check_sample_weights_not_an_array",
    "check_sample_weights_list",
    "check_sample_weights_shape",
    "check_sample_weights_not_overwritten",
    "check_all_zero_sample_weights_error",
    "check_sample_weight_equivalence_on_dense_data",
)


def _expected_failed_checks(estimator):
    if estimator.clusterer == "kmeans":  # as scikit-learn's own KMeans
        return {"check_sample_weight_equivalence_on_dense_data": (
            "the k-means++ draws differ between weighted rows and repeated rows, so the "
            "labels may too; test_sample_weight_reaches_the_clusterer checks the weights")}
    reason = ("the clusterer takes no sample_weight, and FeatureClusterer refuses it; "
              "test_sample_weight_refused_where_the_clusterer_takes_none checks that")
    return dict.fromkeys(_SAMPLE_WEIGHT_CHECKS, reason)


@parametrize_with_checks(
    [
        FeatureClusterer(random_state=0),
        FeatureClusterer("agglomerative"),
        FeatureClusterer("gmm", random_state=0),
    ],
    expected_failed_checks=_expected_failed_checks,
)
def test_sklearn_compatible(estimator, check):
    check(estimator)


@pytest.fixture
def blobs():
    return make_blobs(n_samples=90, centers=3, cluster_std=0.4, random_state=0)


def test_default_is_kmeans_with_n_clusters(blobs):
    X, y = blobs
    est = FeatureClusterer(n_clusters=3, random_state=0).fit(X)
    assert isinstance(est.clusterer_, KMeans) and est.clusterer_.n_clusters == 3
    assert est.score(X, y) == 1.0
    assert est.cluster_centers_.shape == (3, 2)


def test_instance_is_cloned_not_modified(blobs):
    X, _ = blobs
    given = KMeans(n_init=1)
    est = FeatureClusterer(given, n_clusters=3, random_state=7).fit(X)
    assert est.clusterer_ is not given
    assert est.clusterer_.n_clusters == 3 and est.clusterer_.random_state == 7
    assert given.n_clusters == 8 and given.random_state is None
    assert not hasattr(given, "labels_")


def test_a_count_set_twice_must_agree(blobs):
    X, y = blobs
    with pytest.raises(ValueError, match=r"n_clusters=3 and KMeans\(n_clusters=5\) disagree"):
        FeatureClusterer(KMeans(n_clusters=5), n_clusters=3).fit(X)
    assert FeatureClusterer(KMeans(n_clusters=3), n_clusters=3).fit(X).score(X, y) == 1.0
    search = GridSearchCV(FeatureClusterer(KMeans(), random_state=0),
                          {"clusterer__n_clusters": [2, 3, 4]}, cv=3).fit(X, y)
    assert search.best_params_ == {"clusterer__n_clusters": 3}


@pytest.mark.parametrize("estimator", [
    FeatureClusterer(KMeans(), n_clusters=3, random_state=0),
    PretrainedFeatureClusterer("test_vit", pretrained=False, clusterer=KMeans(), n_clusters=3),
])
def test_a_search_over_the_clusterers_count_refuses_n_clusters_set_too(blobs, estimator):
    # The candidate 8, KMeans' default, would give way to n_clusters=3 at fit, score
    # as 3 clusters, and could be reported best.
    X, y = blobs
    with pytest.raises(ValueError, match=r"clusterer__n_clusters=8 and n_clusters=3 disagree; .* "
                                         r"set n_clusters=None to search over clusterer__n_clusters"):
        GridSearchCV(estimator, {"clusterer__n_clusters": [8, 3]}, cv=3).fit(X, y)
    assert estimator.set_params(clusterer__n_clusters=3).clusterer.n_clusters == 3
    with pytest.raises(ValueError, match=r"clusterer__n_clusters=5 and n_clusters=4 disagree"):
        clone(estimator).set_params(n_clusters=4, clusterer__n_clusters=5)


def test_set_params_with_a_class_as_clusterer_leaves_the_error_to_fit(blobs):
    estimator = FeatureClusterer(KMeans, n_clusters=3).set_params(random_state=1)
    with pytest.raises(TypeError, match="not the class KMeans; pass KMeans"):
        estimator.fit(blobs[0])


def test_a_parameter_that_only_looks_like_a_count_may_be_searched(blobs):
    # SpectralClustering's count is n_clusters; its n_components counts eigenvectors.
    X, y = blobs
    estimator = FeatureClusterer(SpectralClustering(random_state=0), n_clusters=3)
    search = GridSearchCV(estimator, {"clusterer__n_components": [2, 5]}, cv=3).fit(X, y)
    assert search.best_estimator_.clusterer_.n_clusters == 3


def test_clusters_left_empty_are_reported():
    # MiniBatchKMeans leaves some of 20 clusters empty on 30 rows, and says nothing.
    X, _ = make_blobs(30, n_features=4, centers=3, random_state=4)
    with pytest.warns(ConvergenceWarning, match=r"MiniBatchKMeans kept \d+ of n_clusters=20 "
                                                 r"clusters: no sample fell in the other") as record:
        est = FeatureClusterer("minibatch_kmeans", n_clusters=20, random_state=0).fit(X)
    kept = est.cluster_ids_.size
    assert kept < 20 and f"kept {kept} of n_clusters=20" in str(record[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        FeatureClusterer("minibatch_kmeans", n_clusters=3, random_state=0).fit(X)
        FeatureClusterer("agglomerative", n_clusters=20).fit(X)
    # Birch says it itself, and numbers the clusters it found without gaps.
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        FeatureClusterer(Birch(threshold=5.0), n_clusters=20).fit(X)
    assert [str(w.message).startswith("Number of subclusters found") for w in record] == [True]


def test_gmm_gets_its_component_count_and_gives_probabilities(blobs):
    X, y = blobs
    est = FeatureClusterer("gmm", n_clusters=3, random_state=0).fit(X)
    assert isinstance(est.clusterer_, GaussianMixture) and est.clusterer_.n_components == 3
    proba = est.predict_proba(X)
    assert proba.shape == (90, 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)


def test_predict_proba_only_where_the_clusterer_has_it(blobs):
    X, _ = blobs
    assert not hasattr(FeatureClusterer("kmeans"), "predict_proba")
    assert hasattr(FeatureClusterer("gmm"), "predict_proba")
    assert not hasattr(FeatureClusterer("kmeans", n_clusters=3).fit(X), "predict_proba")


@pytest.mark.parametrize(
    "clusterer, n_clusters",
    [
        (AgglomerativeClustering(), 3),
        # The blobs lie far apart, so their k-NN graph is rightly not connected.
        pytest.param("spectral", 3, marks=pytest.mark.filterwarnings("ignore:Graph is not fully connected")),
        (DBSCAN(eps=1.0), None),
        (HDBSCAN(copy=True), None),
    ],
)
def test_clusterers_without_predict_use_the_nearest_centre(blobs, clusterer, n_clusters):
    X, y = blobs
    est = FeatureClusterer(clusterer, n_clusters=n_clusters, random_state=0).fit(X)
    assert not hasattr(est.clusterer_, "predict")
    new = X + np.random.default_rng(0).normal(scale=0.05, size=X.shape)
    predicted = est.predict(new)
    assert set(predicted) <= set(est.cluster_ids_)
    kept = est.labels_ >= 0
    assert np.mean(predicted[kept] == est.labels_[kept]) > 0.95
    assert est.score(new, y) > 0.9


@pytest.mark.filterwarnings("ignore:invalid value encountered in reduce")  # scikit-learn's NaN check
@pytest.mark.parametrize("row_scale, weight", [(1e37, None), (1.0, 1e307)])
def test_cluster_centres_of_huge_rows_and_weights_are_finite(blobs, row_scale, weight):
    # float32 sums of rows near 1e37, and sums weighted by 1e307, overflowed into
    # infinite or NaN centres, and predict sent every row to one cluster.
    X, _ = blobs
    X = X.astype(np.float32) * np.float32(row_scale)
    weights = None if weight is None else np.full(len(X), weight)
    est = FeatureClusterer(DBSCAN(eps=row_scale)).fit(X, sample_weight=weights)
    assert len(est.cluster_ids_) == 3 and np.isfinite(est.cluster_centers_).all()
    np.testing.assert_array_equal(est.predict(X), est.labels_)


def test_nearest_centre_predictions_hold_a_block_of_distances_at_a_time(monkeypatch):
    # All rows' distances to all centres: 763 MiB more for 100,000 rows and 1,000
    # clusters (benchmarks/bench_memory.py).
    X, _ = make_blobs(n_samples=4000, centers=50, n_features=4, random_state=0)
    est = FeatureClusterer(AgglomerativeClustering(), n_clusters=50).fit(X)
    all_distances = X.shape[0] * 50 * 8
    expected = est.cluster_ids_[
        ((X[:, None, :] - est.cluster_centers_[None]) ** 2).sum(axis=2).argmin(axis=1)]
    monkeypatch.setattr(kmeans_module, "DISTANCES_PER_BLOCK", 2 ** 12)
    peak, predicted = peak_numpy_bytes(est.predict, X)
    assert peak < all_distances / 4
    np.testing.assert_array_equal(predicted, expected)


def test_label_free_score_copies_only_the_rows_it_samples(monkeypatch):
    # It copied all rows not labelled noise before drawing its sample of 5,000: 293
    # MiB for 100,000 rows of 768 features.
    X, y = make_blobs(n_samples=20000, centers=3, n_features=64, random_state=0)
    y[:10] = -1
    monkeypatch.setattr(feature_clusterer_module, "SILHOUETTE_MAX_SAMPLES", 100)
    peak, score = peak_numpy_bytes(label_free_score, X, y, random_state=0)
    assert peak < X.nbytes / 4
    assert score > 0.5


def test_density_clusterer_that_finds_only_noise_predicts_noise(blobs):
    X, _ = blobs
    # and says so, with what to change: a result of all -1 is easily taken for a clustering
    with pytest.warns(ConvergenceWarning, match=rf"DBSCAN found no cluster: it marked all {len(X)} samples as "
                      r"noise \(-1\), so predict gives -1 to every sample. Loosen its density settings \(DBSCAN: "
                      "a larger eps"):
        est = FeatureClusterer(DBSCAN(eps=1e-6, min_samples=5)).fit(X)
    assert est.cluster_centers_.shape == (0, 2)
    np.testing.assert_array_equal(est.predict(X[:4]), -1)
    assert est.score(X[:10]) == 0.0


def test_a_named_density_clusterer_that_finds_only_noise_says_so():
    uniform = np.random.default_rng(0).normal(size=(30, 8))
    with pytest.warns(ConvergenceWarning, match="HDBSCAN found no cluster: .* The samples may hold no group dense "
                      "enough for it; or use 'kmeans' with n_clusters"):
        FeatureClusterer("hdbscan").fit(uniform)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        FeatureClusterer(DBSCAN(eps=0.3)).fit(uniform / np.linalg.norm(uniform, axis=1, keepdims=True) * 0.01)


def test_a_pipelines_last_step_takes_the_number_of_clusters_the_seed_and_the_device(blobs):
    from sklearn.pipeline import make_pipeline

    X, _ = blobs
    pipeline = make_pipeline(PCA(2), KMeans(n_init=1))
    fitted = FeatureClusterer(pipeline, n_clusters=3, random_state=0).fit(X)
    assert fitted.clusterer_.get_params()["kmeans__n_clusters"] == 3 and fitted.cluster_ids_.size == 3
    assert fitted.clusterer_.get_params()["kmeans__random_state"] == 0
    assert pipeline.get_params()["kmeans__n_clusters"] == 8  # a clone was set, not the user's
    nested = make_pipeline(PCA(2), make_pipeline(TorchKMeans(n_init=1)))
    fitted = FeatureClusterer(nested, n_clusters=3, device="cpu", random_state=0).fit(X)
    assert fitted.clusterer_.get_params()["pipeline__torchkmeans__device"] == "cpu"
    with pytest.raises(ValueError, match=r"^n_clusters=3 and KMeans\(n_clusters=4\) disagree"):
        FeatureClusterer(make_pipeline(PCA(2), KMeans(4)), n_clusters=3).fit(X)
    with pytest.raises(ValueError, match="DBSCAN takes no number of clusters, but n_clusters=3 was given"):
        FeatureClusterer(make_pipeline(PCA(2), DBSCAN()), n_clusters=3).fit(X)


@pytest.mark.parametrize("n_features, memory, algorithm", [
    (64, 2 ** 40, "brute"),  # its trees are slow in many dimensions
    (8, 2 ** 40, "auto"),  # and fast in few
    (64, 2 * 16 * 300 ** 2 - 1, "auto"),  # two n x n float64 matrices must fit in half the memory
    (64, None, "auto"),  # memory unknown
])
def test_named_hdbscan_computes_every_distance_where_that_pays_and_fits(monkeypatch, n_features, memory,
                                                                       algorithm):
    import skdeepclust._device as device_module

    monkeypatch.setattr(device_module, "available_memory", lambda: memory)
    X, _ = make_blobs(n_samples=300, n_features=n_features, centers=3, random_state=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fitted = FeatureClusterer("hdbscan").fit(X)
    assert fitted.clusterer_.algorithm == algorithm
    # Where memory alone keeps brute force out, the labels may depend on it: the user is told.
    memory_decided = n_features > 32 and memory is not None and algorithm == "auto"
    assert [str(w.message) for w in caught if issubclass(w.category, EfficiencyWarning)] == (
        ["HDBSCAN runs on its search trees: computing every distance (algorithm='brute'), faster in many "
         "dimensions, would take more than half the memory available. The trees are slower there, and where "
         "distances tie they may find other clusters than brute force finds on a machine with more memory. "
         "In Python, a clusterer HDBSCAN(algorithm=...) of one's own gives the same labels everywhere."]
        if memory_decided else [])
    np.testing.assert_array_equal(fitted.labels_, HDBSCAN(copy=True).fit_predict(X))
    # An instance keeps its own algorithm.
    assert FeatureClusterer(HDBSCAN(copy=True)).fit(X).clusterer_.algorithm == "auto"


def test_label_free_score_prefers_the_true_number_of_clusters(blobs):
    X, _ = blobs
    search = GridSearchCV(
        FeatureClusterer(random_state=0), {"n_clusters": [2, 3, 4, 6, 8]}, cv=3
    ).fit(X)
    assert search.best_params_ == {"n_clusters": 3}


def test_label_free_score_is_scale_free_and_zero_for_one_cluster(blobs):
    X, y = blobs
    assert label_free_score(X, y) == pytest.approx(label_free_score(10 * X, y))
    assert label_free_score(X, np.zeros(len(X), dtype=int)) == 0.0
    assert label_free_score(X, -np.ones(len(X), dtype=int)) == 0.0


def test_label_free_score_leaves_noise_out_of_object_labels_too(blobs):
    # An object column of ints (a pandas Series of dtype object) kept its -1 rows as a cluster.
    X, y = blobs
    labels = y.copy()
    labels[::7] = -1
    as_objects = np.array(list(labels), dtype=object)
    assert label_free_score(X, as_objects) == label_free_score(X, labels)


def test_label_free_score_of_many_rows_keeps_every_cluster_in_its_sample():
    # 6,000 rows and one stray: a plain 5,000-row sample misses the stray's
    # cluster about once in six and then holds a single cluster.
    X = np.vstack([np.random.default_rng(0).standard_normal((5999, 4)), [[50.0, 50, 50, 50]]])
    labels = np.r_[np.zeros(5999, dtype=int), 1]
    scores = [label_free_score(X, labels, random_state=seed) for seed in range(12)]
    assert np.isfinite(scores).all() and np.ptp(scores) < 0.05  # estimates of one number


def test_label_free_score_checks_its_input(blobs):
    X, y = blobs
    assert label_free_score(X.tolist(), y.tolist()) == pytest.approx(label_free_score(X, y))
    assert label_free_score(X, np.array(["abc"[label] for label in y])) == pytest.approx(
        label_free_score(X, y))
    with pytest.raises(ValueError, match="inconsistent numbers of samples"):
        label_free_score(X, y[:-1])
    with pytest.raises(ValueError, match="labels contains NaN, infinity, None or NA; leave those rows out"):
        label_free_score(X, np.r_[np.nan, y[1:]])  # was left out as noise is, unsaid


@pytest.mark.parametrize("clusterer", ["kmeans", "minibatch_kmeans", "gmm", "torch_kmeans"])
def test_predicts_on_another_float_dtype_than_it_was_fitted_on(blobs, clusterer):
    X, y = blobs
    est = FeatureClusterer(clusterer, n_clusters=3, random_state=0, device="cpu")
    est.fit(X.astype(np.float32))  # as ImageEmbedder gives
    np.testing.assert_array_equal(est.predict(X.tolist()), est.labels_)  # a list gives float64
    assert est.score(X, y) == 1.0


def test_device_reaches_a_torch_clusterer_given_as_an_instance(blobs):
    X, _ = blobs
    est = FeatureClusterer(TorchKMeans(), n_clusters=3, device="cpu", random_state=0).fit(X)
    assert est.clusterer_.device == "cpu"
    pinned = FeatureClusterer(TorchKMeans(device="cpu"), n_clusters=3, device="cuda")
    assert pinned._validate_params().device == "cpu"  # the instance's own choice stands


def test_spectral_by_name_on_fewer_samples_than_its_neighbours(blobs):
    X, y = blobs
    few = np.concatenate([X[y == 0][:4], X[y == 1][:4]])
    labels = FeatureClusterer("spectral", n_clusters=2, random_state=0).fit(few).labels_
    assert len(set(labels[:4])) == 1 and len(set(labels[4:])) == 1 and labels[0] != labels[4]


@pytest.mark.filterwarnings("ignore:k >= N:RuntimeWarning")  # scikit-learn's, for the dense case
def test_spectral_on_a_graph_with_as_many_clusters_as_samples_is_refused_clearly(blobs):
    X, _ = blobs
    # The advice to set n_components only where it is set: the command line has no such option.
    with pytest.raises(ValueError, match=r"nearest-neighbour graph needs more samples than eigen.*"
                                         r"Pass more samples or ask for fewer clusters\.$"):
        FeatureClusterer("spectral", n_clusters=5, random_state=0).fit(X[:5])
    chosen = SpectralClustering(affinity="nearest_neighbors", n_neighbors=4, n_components=5)
    with pytest.raises(ValueError, match=r"Pass more samples or set n_components below n_samples\.$"):
        FeatureClusterer(chosen, n_clusters=2, random_state=0).fit(X[:5])
    # Those that scikit-learn fits are left alone: a dense affinity, fewer eigenvectors.
    dense = FeatureClusterer(SpectralClustering(random_state=0), n_clusters=5).fit(X[:5])
    assert sorted(dense.labels_) == [0, 1, 2, 3, 4]
    fewer = SpectralClustering(affinity="nearest_neighbors", n_neighbors=4, n_components=2,
                               random_state=0)
    assert FeatureClusterer(fewer, n_clusters=5).fit(X[:5]).labels_.shape == (5,)


@pytest.mark.parametrize("estimator", [FeatureClusterer, PretrainedFeatureClusterer])
def test_nested_parameters_need_a_clusterer_instance(estimator):
    with pytest.raises(ValueError, match="clusterer__n_init sets a parameter of a clusterer "
                                         "instance, but clusterer='kmeans' is a name"):
        estimator().set_params(clusterer__n_init=5)
    model = estimator().set_params(clusterer=KMeans(), clusterer__n_init=5)
    assert model.get_params()["clusterer__n_init"] == 5


def test_n_clusters_larger_than_n_samples(blobs):
    X, _ = blobs
    with pytest.raises(ValueError, match="n_samples=5 is fewer than n_clusters=10"):
        FeatureClusterer(n_clusters=10).fit(X[:5])


@pytest.mark.parametrize(
    "params, error, match",
    [
        ({"clusterer": "kmeens"}, ValueError, "Unknown clusterer 'kmeens'"),
        ({"clusterer": "KMeans"}, ValueError, "Unknown clusterer 'KMeans'. Did you mean 'kmeans'"),
        ({"clusterer": "AgglomerativeClustering"}, ValueError, "Did you mean 'agglomerative'"),
        ({"clusterer": KMeans}, TypeError, "not the class KMeans"),
        ({"clusterer": object()}, TypeError, "clusterer, with fit_predict"),
        ({"clusterer": PCA(2)}, TypeError, "clusterer, with fit_predict"),
        ({"clusterer": FeatureAgglomeration(2)}, TypeError, "clusterer, with fit_predict"),
        ({"clusterer": DBSCAN(), "n_clusters": 3}, ValueError, "takes no number of clusters"),
        ({"clusterer": "hdbscan", "n_clusters": 3}, ValueError, "takes no n_clusters"),
        ({"n_clusters": 0}, ValueError, "positive integer"),
        ({"n_clusters": 2.5}, ValueError, "positive integer"),
        # Checked also where the clusterer does not use them.
        ({"clusterer": "agglomerative", "device": "cdua"}, ValueError, "device='cdua' is not a device name"),
        ({"clusterer": "agglomerative", "random_state": "seed"}, ValueError, "^random_state must be"),
    ],
)
def test_bad_parameters(blobs, params, error, match):
    X, _ = blobs
    with pytest.raises(error, match=match):
        FeatureClusterer(**params).fit(X)


@pytest.mark.skipif(importlib.util.find_spec("cuml") is not None, reason="cuML is installed")
@pytest.mark.parametrize("name", ["cuml_kmeans", "cuml_hdbscan"])
def test_cuml_names_without_cuml_say_how_to_install(blobs, name):
    X, _ = blobs
    alike = name.removeprefix("cuml_")  # hdbscan finds the number of clusters too
    with pytest.raises(ImportError, match=f"needs RAPIDS cuML.*pip install.*or use clusterer='{alike}'\\.$"):
        FeatureClusterer(name).fit(X)


def test_names_are_listed():
    names = available_clusterer_names()
    assert {"kmeans", "agglomerative", "gmm", "hdbscan", "cuml_kmeans"} <= set(names)


def test_images_get_the_way_to_their_features(blobs, tmp_path):
    X, _ = blobs
    images = np.zeros((4, 8, 8, 3), np.uint8)
    for bad in (images, images[..., 0], str(tmp_path), tmp_path):
        with pytest.raises(ValueError, match="looks like images.*ImageEmbedder.*PretrainedFeature"):
            FeatureClusterer(n_clusters=2).fit(bad)
    fitted = FeatureClusterer(n_clusters=2).fit(X)
    with pytest.raises(ValueError, match="looks like images"):
        fitted.predict(images)


def test_sample_weight_reaches_the_clusterer(blobs):
    X, _ = blobs
    weights = np.random.default_rng(0).integers(1, 5, size=len(X)).astype(float)
    given = weights.copy()
    est = FeatureClusterer(n_clusters=3, random_state=0).fit(X, sample_weight=weights)
    alone = KMeans(n_clusters=3, n_init=10, random_state=0).fit(X, sample_weight=weights)
    np.testing.assert_allclose(est.clusterer_.cluster_centers_, alone.cluster_centers_)
    for cluster, centre in zip(est.cluster_ids_, est.cluster_centers_):
        members = est.labels_ == cluster
        np.testing.assert_allclose(centre, np.average(X[members], axis=0,
                                                      weights=weights[members]))
    np.testing.assert_array_equal(weights, given)
    labels = FeatureClusterer(n_clusters=3, random_state=0).fit_predict(X, sample_weight=weights)
    np.testing.assert_array_equal(labels, est.labels_)


def test_sample_weight_makes_a_heavy_row_a_cluster_of_its_own():
    X = np.array([[0.0], [0.1], [0.2], [5.0]])
    dbscan = DBSCAN(eps=0.5, min_samples=3)
    unweighted = FeatureClusterer(dbscan).fit(X)
    assert unweighted.labels_[3] == -1  # alone, so noise
    weighted = FeatureClusterer(dbscan).fit(X, sample_weight=[1, 1, 1, 3])
    assert weighted.labels_[3] >= 0 and weighted.labels_[3] != weighted.labels_[0]
    assert weighted.predict([[4.8]])[0] == weighted.labels_[3]


class _WeighsInFitOnly(ClusterMixin, BaseEstimator):
    """A clusterer whose fit takes sample_weight but whose own fit_predict does not."""

    def __init__(self, n_clusters=2):
        self.n_clusters = n_clusters

    def fit(self, X, y=None, sample_weight=None):
        self.labels_ = KMeans(self.n_clusters, n_init=1, random_state=0).fit_predict(
            X, sample_weight=sample_weight)
        return self

    def fit_predict(self, X, y=None):
        return self.fit(X).labels_


class _CountInKeywords(ClusterMixin, BaseEstimator):
    """A clusterer that takes its parameters as keywords, its count among them."""

    def __init__(self, **params):
        self.params = {"n_clusters": 2, **params}

    def get_params(self, deep=True):
        return dict(self.params)

    def set_params(self, **params):
        self.params.update(params)
        return self

    def fit(self, X, y=None):
        self.labels_ = KMeans(self.params["n_clusters"], n_init=1, random_state=0).fit_predict(X)
        return self


def test_unusual_clusterer_signatures(blobs):
    X, y = blobs
    weights = np.ones(len(X))
    weights[:30] = 0.0
    weighted = FeatureClusterer(_WeighsInFitOnly(3)).fit(X, sample_weight=weights)
    alone = KMeans(3, n_init=1, random_state=0).fit(X, sample_weight=weights)
    np.testing.assert_array_equal(weighted.labels_, alone.labels_)
    counted = FeatureClusterer(_CountInKeywords(n_clusters=3), n_clusters=3).fit(X)
    assert counted.score(X, y) == 1.0
    with pytest.raises(ValueError, match="disagree"):  # no class default to tell a choice by
        FeatureClusterer(_CountInKeywords(), n_clusters=3).fit(X)


@pytest.mark.parametrize("clusterer", ["agglomerative", "gmm", GaussianMixture()])
def test_sample_weight_refused_where_the_clusterer_takes_none(blobs, clusterer):
    X, _ = blobs
    with pytest.raises(ValueError, match="takes no sample_weight.*'kmeans'"):
        FeatureClusterer(clusterer, n_clusters=3).fit(X, sample_weight=np.ones(len(X)))


@pytest.mark.parametrize(
    "weights, match",
    [(np.ones(5), r"shape"), (-np.ones(90), "Negative"), (np.zeros(90), "non-zero|zero for every")],
)
def test_bad_sample_weight(blobs, weights, match):
    X, _ = blobs
    with pytest.raises(ValueError, match=match):
        FeatureClusterer(n_clusters=3).fit(X, sample_weight=weights)


def test_score_of_a_dataframe_does_not_warn_about_its_columns(blobs):
    pd = pytest.importorskip("pandas")
    X, y = blobs
    frame = pd.DataFrame(X, columns=["a", "b"])
    est = FeatureClusterer(n_clusters=3, random_state=0).fit(frame)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert est.score(frame, y) == 1.0
        assert est.score(frame) > 0.5


def test_verbose_is_checked(blobs):
    X, _ = blobs
    with pytest.raises(ValueError, match="verbose"):
        FeatureClusterer(n_clusters=3, verbose=-1).fit(X)


def test_label_free_score_is_the_cosine_silhouette_of_the_rows_not_marked_noise():
    # Two directions at lengths from 0.1 to 10: the cosine silhouette sees two tight
    # groups (about 1), the Euclidean one overlapping clouds (about 0.55).
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 50)
    X = np.eye(2)[labels] * rng.uniform(0.1, 10, (100, 1)) + 0.05 * rng.standard_normal((100, 2))
    assert label_free_score(X, labels) == pytest.approx(silhouette_score(X, labels, metric="cosine"))
    assert label_free_score(X, labels) > 0.9
    with_noise = labels.copy()
    with_noise[::5] = -1
    kept = with_noise >= 0
    assert label_free_score(X, with_noise) == pytest.approx(
        silhouette_score(X[kept], with_noise[kept], metric="cosine"))


def test_score_with_labels_weighs_the_accuracy_by_sample_weight():
    X, y = make_blobs(300, centers=3, cluster_std=3.0, random_state=0)
    model = FeatureClusterer(n_clusters=3, random_state=0).fit(X)
    labels = model.predict(X)
    weights = np.where(labels == 0, 10.0, 1.0)
    # Overlapping blobs: some rows are misclustered, so the weights matter.
    assert cluster_accuracy(y, labels, sample_weight=weights) != pytest.approx(cluster_accuracy(y, labels))
    assert model.score(X, y, sample_weight=weights) == cluster_accuracy(y, labels, sample_weight=weights)


def test_nearest_centre_predictions_give_the_clusterers_own_labels():
    class OneBasedClusterer(ClusterMixin, BaseEstimator):  # labels 1 .. k, as scipy's fcluster gives
        def __init__(self, n_clusters=2):
            self.n_clusters = n_clusters

        def fit(self, X, y=None):
            self.labels_ = AgglomerativeClustering(self.n_clusters).fit_predict(X) + 1
            return self

    X, _ = make_blobs(90, centers=3, cluster_std=0.5, random_state=0)
    model = FeatureClusterer(OneBasedClusterer(), n_clusters=3).fit(X)
    assert model.cluster_ids_.tolist() == [1, 2, 3]
    # Ward's tree and the nearest centre differ on a row or so; row positions would agree on a third
    assert np.mean(model.predict(X) == model.labels_) > 0.95


def test_an_instances_own_random_state_is_kept():
    X, _ = make_blobs(n_samples=200, centers=6, cluster_std=2.0, random_state=1)
    model = FeatureClusterer(KMeans(n_clusters=4, n_init=1, random_state=5), random_state=0).fit(X)
    assert model.clusterer_.random_state == 5
    alone = KMeans(n_clusters=4, n_init=1, random_state=5).fit(X)
    np.testing.assert_array_equal(model.labels_, alone.labels_)


class _LeavesLastClusterEmpty(ClusterMixin, BaseEstimator):
    def __init__(self, n_clusters=3):
        self.n_clusters = n_clusters

    def fit(self, X, y=None):
        self.labels_ = np.arange(len(X)) % (self.n_clusters - 1)
        return self


def test_a_single_empty_cluster_is_warned_of():
    X = np.random.default_rng(0).normal(size=(12, 4))
    with pytest.warns(ConvergenceWarning, match="kept 2 of n_clusters=3"):
        FeatureClusterer(_LeavesLastClusterEmpty(), n_clusters=3).fit(X)


@pytest.mark.parametrize("clusterer", ["torch_kmeans", "minibatch_kmeans", "gmm", "kmeans"])
def test_clusters_left_empty_in_fit_are_never_predicted(clusterer):
    # Six copies of one photo and another: three clusters asked for, two kept. The
    # clusterers' own predict gave the empty cluster to new rows, and TorchKMeans gave
    # the copies a twin of their centre, clusters that labels_ (clusters.csv) lack.
    rng = np.random.default_rng(0)
    photos = rng.normal(size=(2, 8))
    X = photos[[0, 0, 0, 0, 0, 0, 1]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = FeatureClusterer(clusterer, n_clusters=3, random_state=0, device="cpu").fit(X)
    assert model.cluster_ids_.size == 2
    np.testing.assert_array_equal(model.predict(X), model.labels_)
    new = np.vstack([rng.normal(size=(200, 8)), photos + 0.01])
    predicted = model.predict(new)
    assert set(predicted) <= set(model.cluster_ids_)
    np.testing.assert_array_equal(predicted[-2:], model.labels_[[0, 6]])


def test_predict_uses_the_clusterers_own_predict():
    rng = np.random.default_rng(0)
    # A tight and a broad component: the nearest mean is not the likeliest component.
    X = np.vstack([rng.normal(0, 0.3, (100, 2)), rng.normal([4, 0], 3.0, (100, 2))])
    model = FeatureClusterer(GaussianMixture(2, random_state=0)).fit(X)
    Z = np.array([[1.5, 0.0], [2.0, 0.0], [-1.5, 0.0]])
    np.testing.assert_array_equal(model.predict(Z), model.clusterer_.predict(Z))
    np.testing.assert_array_equal(model.predict(X), model.clusterer_.predict(X))


def test_label_free_score_of_many_rows_is_seeded_by_random_state():
    X = np.random.default_rng(0).normal(size=(5200, 8)).astype(np.float32)  # > 5,000: subsampled
    model = FeatureClusterer("kmeans", n_clusters=3, random_state=0).fit(X)
    scores = {model.score(X) for _ in range(3)}
    assert scores == {label_free_score(X, model.predict(X), random_state=0)}


def test_only_linkages_that_hold_every_pairwise_distance_are_checked_against_memory(monkeypatch):
    from sklearn.cluster import AgglomerativeClustering
    from sklearn.neighbors import kneighbors_graph

    from skdeepclust.clustering import feature_clusterer

    X = np.random.default_rng(0).standard_normal((40, 3))
    monkeypatch.setattr(feature_clusterer, "available_memory", lambda: 40 * 39 * 8 - 1)
    for linkage in ("ward", "average", "complete"):
        with pytest.raises(ValueError, match=f"linkage='{linkage}'\\) on n_samples=40 needs"):
            FeatureClusterer(AgglomerativeClustering(linkage=linkage)).fit(X)
    FeatureClusterer(AgglomerativeClustering(linkage="single")).fit(X)
    FeatureClusterer(AgglomerativeClustering(connectivity=kneighbors_graph(X, 5))).fit(X)
    monkeypatch.setattr(feature_clusterer, "available_memory", lambda: 40 * 39 * 8)
    FeatureClusterer("agglomerative", n_clusters=2).fit(X)
    monkeypatch.setattr(feature_clusterer, "available_memory", lambda: None)  # not known: not checked
    FeatureClusterer("agglomerative", n_clusters=2).fit(X)


def test_a_containers_memory_limit_counts_files_read_and_not_used_since_as_free(tmp_path):
    # Reading every image fills the page cache, which a cgroup counts as used.
    from skdeepclust._device import _cgroup_memory_left

    (tmp_path / "memory.max").write_text("8000000000\n")
    (tmp_path / "memory.current").write_text("6000000000\n")
    (tmp_path / "memory.stat").write_text("anon 100\nfile 2000000000\ninactive_file 1500000000\nactive_file 5\n")
    assert _cgroup_memory_left(str(tmp_path)) == 3_500_000_000
    (tmp_path / "memory.max").write_text("max\n")
    assert _cgroup_memory_left(str(tmp_path)) is None
    assert _cgroup_memory_left(str(tmp_path / "no cgroup here")) is None
    # cgroup v1, as older container runtimes mount it
    v1 = tmp_path / "v1" / "memory"
    v1.mkdir(parents=True)
    (v1 / "memory.limit_in_bytes").write_text("4000000000\n")
    (v1 / "memory.usage_in_bytes").write_text("3000000000\n")
    (v1 / "memory.stat").write_text("inactive_file 4096\ntotal_inactive_file 500000000\n")
    assert _cgroup_memory_left(str(tmp_path / "v1")) == 1_500_000_000
    (v1 / "memory.limit_in_bytes").write_text("9223372036854771712\n")  # no limit
    assert _cgroup_memory_left(str(tmp_path / "v1")) is None


def test_memory_is_known_on_a_kernel_without_memavailable(tmp_path, monkeypatch):
    # Kernels before 3.14 write no MemAvailable line; a container's limit still holds.
    from skdeepclust import _device

    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       16000000 kB\nMemFree:         8000000 kB\n")
    monkeypatch.setattr(_device, "_cgroup_memory_left", lambda: 2_000_000)
    assert _device.available_memory(str(meminfo)) == 2_000_000
    monkeypatch.setattr(_device, "_cgroup_memory_left", lambda: None)
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert _device.available_memory(str(meminfo)) == physical
    meminfo.write_text("MemTotal:       16000000 kB\nMemAvailable:    1000 kB\n")
    assert _device.available_memory(str(meminfo)) == 1000 * 1024
