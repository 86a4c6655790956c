import numpy as np
import pandas as pd
import pytest
from sklearn.cluster import KMeans
from sklearn.datasets import make_blobs
from sklearn.model_selection import GridSearchCV

from skdeepclust import FeatureClusterer
from skdeepclust.metrics import CLUSTERING_SCORERS, cluster_accuracy


def test_accuracy_ignores_cluster_names():
    y = np.array([0, 0, 1, 1, 2, 2])
    assert cluster_accuracy(y, np.array([2, 2, 0, 0, 1, 1])) == 1.0
    assert cluster_accuracy(["a", "a", "b"], [7, 7, 7]) == pytest.approx(2 / 3)


def test_accuracy_with_more_or_fewer_clusters_than_classes():
    y = np.array([0, 0, 0, 1, 1, 1])
    # Four clusters: only two can be matched, so the best is 2 + 2 of 6 right.
    assert cluster_accuracy(y, [0, 0, 1, 2, 2, 3]) == pytest.approx(4 / 6)
    assert cluster_accuracy(y, np.zeros(6)) == pytest.approx(3 / 6)


def test_accuracy_matches_a_brute_force_search():
    from itertools import permutations

    rng = np.random.default_rng(0)
    y, pred = rng.integers(0, 4, 200), rng.integers(0, 4, 200)
    best = max(np.mean(np.array(perm)[pred] == y) for perm in permutations(range(4)))
    assert cluster_accuracy(y, pred) == pytest.approx(best)


def test_accuracy_input_errors():
    with pytest.raises(ValueError, match="inconsistent numbers of samples"):
        cluster_accuracy([0, 1], [0])
    with pytest.raises(ValueError, match="at least one sample"):
        cluster_accuracy([], [])
    with pytest.raises(ValueError, match="y_true contains NaN, infinity, None or NA; if those mark unlabelled"):
        cluster_accuracy([0, np.nan, np.nan, 1], [0, 1, 2, 3])  # would be 0.75
    with pytest.raises(ValueError, match="y_pred contains NaN"):
        cluster_accuracy([0, 1], [0.0, np.inf])
    with pytest.raises(ValueError, match="y_true contains NaN"):  # e.g. a pandas column of names
        cluster_accuracy(np.array(["cat", None, "dog"], dtype=object), [0, 1, 2])


@pytest.mark.parametrize("y_true", [
    pd.Series(["cat", "cat", None, "dog"], dtype="string"),  # a nullable column with a gap
    np.array(["cat", "cat", pd.NA, "dog"], dtype=object),
    np.array(["2020-01-01", "2020-01-01", "NaT", "2021-01-01"], dtype="datetime64[D]"),
    np.array([pd.Timestamp(0), pd.Timestamp(0), pd.NaT, pd.Timestamp(1)], dtype=object),
], ids=["string-NA", "object-NA", "NaT", "object-NaT"])
def test_pandas_and_datetime_missing_labels_are_refused(y_true):
    with pytest.raises(ValueError, match="y_true contains NaN, infinity, None or NA"):
        cluster_accuracy(y_true, [0, 0, 1, 1])


def test_nan_in_a_list_of_strings_is_refused_not_read_as_the_class_nan():
    # numpy reads ["cat", nan] as the strings "cat" and "nan", as from df["label"].tolist().
    from skdeepclust.clustering import label_free_score
    from skdeepclust.visualization import cluster_montage

    names = ["cat", "cat", float("nan"), "dog"]
    with pytest.raises(ValueError, match="y_true contains NaN"):
        cluster_accuracy(names, [0, 0, 1, 1])
    with pytest.raises(ValueError, match="y_pred contains NaN"):
        cluster_accuracy([0, 0, 1, 1], tuple(names))
    with pytest.raises(ValueError, match="labels contains NaN"):
        label_free_score(np.eye(4), names)
    with pytest.raises(ValueError, match="labels contains NaN"):
        cluster_montage(np.zeros((4, 8, 8, 3), np.uint8), names)
    assert cluster_accuracy(["cat", "cat", "nan", "dog"], [0, 0, 1, 2]) == 1.0  # a class named "nan"


def test_labels_of_types_that_do_not_sort_are_named():
    with pytest.raises(ValueError, match=r"y_true mixes values of types that do not sort \(int, str\); .*dtype=str"):
        cluster_accuracy(pd.Series([0, 0, "b", "b"], dtype=object), [0, 0, 1, 1])
    assert cluster_accuracy(np.asarray(pd.Series([0, 0, "b", "b"], dtype=object), dtype=str), [0, 0, 1, 1]) == 1.0
    # In a list, numpy made strings of the numbers: 1 and "1" were one class.
    with pytest.raises(ValueError, match=r"y_true mixes values of types that do not sort \(int, str\)"):
        cluster_accuracy(["1", 1, "1"], [0, 1, 0])


def test_weighted_accuracy_of_a_perfect_clustering_is_exactly_one():
    # The matched cells and the total added the same weights in different orders: 284
    # of 1,000 such clusterings scored 0.9999999999999999 (and some had scored above 1).
    assert cluster_accuracy([0] * 10, [0] * 10, sample_weight=[0.1] * 10) == 1.0
    rng = np.random.default_rng(0)
    for _ in range(200):
        y = rng.integers(0, 4, 30)
        assert cluster_accuracy(y, (y + 1) % 4, sample_weight=rng.random(30)) == 1.0


def test_weighted_accuracy_of_huge_weights_does_not_overflow():
    # Sums of weights of 1e308 overflowed to inf, and the accuracy came out 0.0.
    assert cluster_accuracy([0, 1], [0, 0], sample_weight=[1e308, 1e308]) == 0.5


def test_weighted_accuracy_counts_a_weight_of_two_as_two_samples():
    rng = np.random.default_rng(0)
    y, pred = rng.integers(0, 3, 60), rng.integers(0, 4, 60)
    weights = rng.integers(0, 4, 60)
    repeated = cluster_accuracy(np.repeat(y, weights), np.repeat(pred, weights))
    assert cluster_accuracy(y, pred, sample_weight=weights) == pytest.approx(repeated)
    assert cluster_accuracy(y, pred, sample_weight=np.ones(60)) == cluster_accuracy(y, pred)
    with pytest.raises(ValueError, match="Negative values in data passed to .sample_weight"):
        cluster_accuracy(y, pred, sample_weight=-np.ones(60))
    # scikit-learn's words from 1.7 on, before that the package's
    with pytest.raises(ValueError, match="at least one non-zero|zero for every sample"):
        cluster_accuracy(y, pred, sample_weight=np.zeros(60))
    with pytest.raises(ValueError, match=r"sample_weight.shape == \(59,\), expected \(60,\)"):
        cluster_accuracy(y, pred, sample_weight=np.ones(59))


def test_score_works_in_a_pipeline_search_with_metadata_routing_on():
    import sklearn
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = make_blobs(n_samples=120, centers=3, cluster_std=0.5, random_state=1)
    with sklearn.config_context(enable_metadata_routing=True):
        # A Pipeline with routing on passes sample_weight=None to its last step's score.
        search = GridSearchCV(make_pipeline(StandardScaler(), FeatureClusterer(random_state=0)),
                              {"featureclusterer__n_clusters": [2, 3, 5]}, cv=3).fit(X)
        assert search.best_params_ == {"featureclusterer__n_clusters": 3}
        weights = np.where(y == 0, 3.0, 1.0)
        clusterer = FeatureClusterer(n_clusters=2, random_state=0).set_score_request(sample_weight=True)
        pipeline = make_pipeline(StandardScaler(), clusterer).fit(X)
        labels = pipeline.predict(X)
        assert pipeline.score(X, y, sample_weight=weights) == cluster_accuracy(y, labels, sample_weight=weights)
        with pytest.raises(ValueError, match="score weighs samples only in the accuracy against y"):
            pipeline.score(X, sample_weight=weights)


def test_scorers_work_in_grid_search():
    X, y = make_blobs(n_samples=120, centers=4, cluster_std=0.5, random_state=1)
    search = GridSearchCV(
        FeatureClusterer(random_state=0),
        {"n_clusters": [2, 4, 6]},
        scoring=CLUSTERING_SCORERS,
        refit="accuracy",
        cv=3,
    ).fit(X, y)
    assert search.best_params_ == {"n_clusters": 4}
    for name in ("accuracy", "nmi", "ari"):
        assert search.cv_results_[f"mean_test_{name}"][1] > 0.95
    kmeans = KMeans(n_clusters=4, n_init=3, random_state=0).fit(X)
    assert CLUSTERING_SCORERS["accuracy"](kmeans, X, y) == 1.0


def test_clustering_scorers_score_with_the_metric_they_are_named_after():
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    # An imperfect clustering, on which the three metrics differ.
    X, y = make_blobs(n_samples=90, centers=3, cluster_std=3.0, random_state=0)
    model = FeatureClusterer("kmeans", n_clusters=4, random_state=0).fit(X)
    labels = model.predict(X)
    expected = {"accuracy": cluster_accuracy(y, labels),
                "nmi": normalized_mutual_info_score(y, labels),
                "ari": adjusted_rand_score(y, labels)}
    assert len(set(expected.values())) == 3
    assert {name: scorer(model, X, y) for name, scorer in CLUSTERING_SCORERS.items()} == pytest.approx(expected)
