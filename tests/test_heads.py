"""Clustering heads (SCAN, TEMI, debiased), torch k-means, k-NN mining and the choice
of n_clusters, on small synthetic data whose right answer is known."""

import math
import pickle
import re
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from sklearn.base import BaseEstimator, ClusterMixin
from sklearn.cluster import AgglomerativeClustering, KMeans
from sklearn.datasets import make_blobs
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import adjusted_rand_score

from skdeepclust.clustering import (
    DebiasedClusterer,
    FeatureClusterer,
    SCANClusterer,
    TEMIClusterer,
    TorchKMeans,
    label_free_score,
    mine_nearest_neighbors,
    select_n_clusters,
)
from conftest import peak_numpy_bytes
from skdeepclust._device import seeded_torch
from skdeepclust.clustering import _training
from skdeepclust.clustering import kmeans as kmeans_module

FAST = dict(n_epochs=30, batch_size=32, n_heads=4)
HEADS = {
    "scan": lambda **kw: SCANClusterer(**{**FAST, **kw}),
    "temi": lambda **kw: TEMIClusterer(**{**FAST, **kw}),
    "debiased": lambda **kw: DebiasedClusterer(**{**FAST, **kw}),
}


def sphere_blobs(sizes, n_features=16, noise=0.08, seed=0):
    """Well-separated clusters on the unit sphere: random unit centres plus noise."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((len(sizes), n_features))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = np.repeat(np.arange(len(sizes)), sizes)
    X = centres[labels] + noise * rng.standard_normal((labels.size, n_features))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    return X.astype(np.float32), labels


@pytest.fixture(scope="module")
def blobs():
    return sphere_blobs([60, 60, 60, 60])


@pytest.mark.parametrize("name", sorted(HEADS))
def test_head_recovers_blobs(name, blobs):
    X, y = blobs
    model = HEADS[name](n_clusters=4, random_state=0, device="cpu").fit(X)
    assert adjusted_rand_score(y, model.labels_) > 0.95
    assert model.n_clusters_ == 4
    proba = model.predict_proba(X)
    assert proba.shape == (X.shape[0], 4)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(model.predict(X), model.labels_)
    assert proba.dtype == np.float32 and model.predict_proba(X.astype(np.float64)).dtype == np.float64


@pytest.mark.parametrize("name", sorted(HEADS))
def test_head_is_repeatable_and_leaves_input_alone(name, blobs):
    X, _ = blobs
    X_before = X.copy()
    first = HEADS[name](n_clusters=4, random_state=3, device="cpu").fit(X)
    second = HEADS[name](n_clusters=4, random_state=3, device="cpu").fit(X)
    np.testing.assert_array_equal(first.labels_, second.labels_)
    np.testing.assert_array_equal(first.predict_proba(X), second.predict_proba(X))
    np.testing.assert_array_equal(X, X_before)


@pytest.mark.parametrize("name", sorted(HEADS))
def test_head_leaves_the_global_torch_stream_alone(name, blobs):
    X, _ = blobs
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    HEADS[name](n_clusters=4, random_state=0, device="cpu").fit(X)
    torch.testing.assert_close(torch.rand(3), expected)


def test_seeded_blocks_in_threads_draw_their_own_numbers():
    # The heads draw their initial weights inside seeded_torch, from torch's global
    # RNG, which all threads share (GridSearchCV under joblib's threading backend).
    def draw(seed):
        with seeded_torch(seed):
            return torch.cat([torch.rand(20_000) for _ in range(5)])

    expected = {seed: draw(seed) for seed in range(8)}
    with ThreadPoolExecutor(8) as pool:
        drawn = list(pool.map(draw, list(range(8)) * 4))
    for seed, numbers in zip(list(range(8)) * 4, drawn):
        torch.testing.assert_close(numbers, expected[seed], rtol=0, atol=0)


@pytest.mark.parametrize("name", sorted(HEADS))
def test_heads_draw_their_weights_from_a_stream_of_their_own(name, blobs, monkeypatch):
    # Not from torch's global stream, which another thread may draw from meanwhile.
    X, _ = blobs
    expected = HEADS[name](n_clusters=4, random_state=0, device="cpu").fit(X).predict_proba(X)

    def global_stream_used(*args, **kwargs):
        raise AssertionError("torch's global stream was seeded or forked")

    monkeypatch.setattr(torch, "manual_seed", global_stream_used)
    monkeypatch.setattr(torch.random, "fork_rng", global_stream_used)
    np.testing.assert_array_equal(
        HEADS[name](n_clusters=4, random_state=0, device="cpu").fit(X).predict_proba(X), expected)


@pytest.mark.parametrize("name", sorted(HEADS))
def test_head_fits_in_threads_are_repeatable(name, blobs):
    X, _ = blobs
    expected = HEADS[name](n_clusters=4, random_state=0, device="cpu").fit(X).predict_proba(X)
    with ThreadPoolExecutor(4) as pool:
        fits = list(pool.map(
            lambda _: HEADS[name](n_clusters=4, random_state=0, device="cpu").fit(X), range(4)))
    for model in fits:
        np.testing.assert_array_equal(model.predict_proba(X), expected)


@pytest.mark.parametrize("name", sorted(HEADS))
@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode])
def test_head_trains_inside_a_block_without_gradients(name, context, blobs):
    X, _ = blobs
    expected = HEADS[name](n_clusters=4, random_state=0, device="cpu").fit(X).labels_
    with context():
        labels = HEADS[name](n_clusters=4, random_state=0, device="cpu").fit(X).labels_
    np.testing.assert_array_equal(labels, expected)


@pytest.mark.parametrize("name", sorted(HEADS))
def test_head_trains_whatever_torch_default_dtype_is(name, blobs):
    X, y = blobs
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        model = HEADS[name](n_clusters=4, random_state=0, device="cpu").fit(X)
    finally:
        torch.set_default_dtype(default)
    assert adjusted_rand_score(y, model.labels_) > 0.95


@pytest.mark.parametrize("name", sorted(HEADS))
def test_head_pickles(name, blobs):
    X, _ = blobs
    model = HEADS[name](n_clusters=4, random_state=0, device="cpu").fit(X)
    restored = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(restored.predict_proba(X), model.predict_proba(X))


@pytest.mark.parametrize("name", sorted(HEADS))
def test_head_by_name_through_feature_clusterer(name, blobs):
    X, y = blobs
    model = FeatureClusterer(name, n_clusters=4, device="cpu", random_state=0)
    model.clusterer = HEADS[name]()  # fewer epochs than the named default, same class
    model.fit(X)
    assert adjusted_rand_score(y, model.labels_) > 0.95
    assert model.predict_proba(X[:5]).shape == (5, 4)
    named = FeatureClusterer(name, n_clusters=4, device="cpu", random_state=0)
    assert type(named.fit(X[:40]).clusterer_) is type(HEADS[name]())


def test_heads_overclustering_prunes_empty_clusters(blobs):
    X, y = blobs
    with pytest.warns(ConvergenceWarning, match=r"SCANClusterer kept \d+ of n_clusters=12") as record:
        model = SCANClusterer(n_clusters=12, entropy_weight=0.5, random_state=0, device="cpu",
                              **FAST).fit(X)
    assert record[0].filename == __file__  # the user's line, not one inside the library
    with pytest.warns(ConvergenceWarning, match="kept") as record:  # through two wrappers
        FeatureClusterer(SCANClusterer(entropy_weight=0.5, device="cpu", **FAST), n_clusters=12,
                         random_state=0).fit_predict(X)
    assert record[0].filename == __file__
    assert model.n_clusters_ < 12
    np.testing.assert_array_equal(np.unique(model.labels_), np.arange(model.n_clusters_))
    assert model.predict_proba(X).shape[1] == model.n_clusters_


def test_temi_keeps_the_head_that_keeps_the_groups_apart():
    # Here the lowest-loss head merges two of the three groups for most seeds (see the
    # Notes of TEMIClusterer); the head with the most neighbour information does not.
    rng = np.random.default_rng(0)
    X = np.repeat(np.eye(8)[:3], 40, axis=0) + 0.1 * rng.standard_normal((120, 8))
    y = np.repeat(np.arange(3), 40)
    for seed in range(4):
        model = TEMIClusterer(n_clusters=3, batch_size=32, random_state=seed,
                              device="cpu").fit(X)
        assert adjusted_rand_score(y, model.labels_) == pytest.approx(1.0)


@pytest.mark.parametrize("name", ["temi", "debiased"])
def test_the_kept_head_has_the_most_neighbour_information(name, blobs, monkeypatch):
    judged = {}

    def recording(head_logits, features, neighbors, hidden_size):
        judged["labels"] = head_logits(features).argmax(dim=-1).numpy()
        judged["information"] = neighbor_information(head_logits, features, neighbors,
                                                     hidden_size)
        return judged["information"]

    neighbor_information = _training.neighbor_label_information
    monkeypatch.setattr(_training, "neighbor_label_information", recording)
    X, _ = blobs
    model = HEADS[name](n_clusters=4, random_state=0, device="cpu").fit(X)
    assert model.best_head_ == int(torch.as_tensor(judged["information"]).argmax())
    # The labels judged are the kept head's as fitted; the debiased head's are its fine
    # clusters under the stored batch summary, each of which lies in one final cluster.
    judged_labels = judged["labels"][model.best_head_]
    for fine in np.unique(judged_labels):
        assert np.unique(model.labels_[judged_labels == fine]).size == 1


def test_neighbor_information_ranks_a_merged_head_below_a_separating_one():
    from skdeepclust.clustering._training import MultiHead, neighbor_label_information

    features = torch.tensor(np.repeat(np.eye(3), 20, axis=0), dtype=torch.float32)
    neighbors = torch.tensor([[(i + 1) % 20 + 20 * (i // 20)] for i in range(60)])
    heads = MultiHead(2, 3, 3, generator=torch.Generator())
    with torch.no_grad():
        heads.biases[0].zero_()
        heads.weights[0][0] = torch.eye(3)  # three groups
        heads.weights[0][1] = torch.tensor([[1.0, 0, 0], [1.0, 0, 0], [0, 0, 1.0]])  # two
    # blocks of one row at a time give the same result as one block for all
    for block in (1, 2 ** 24):
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr("skdeepclust.clustering._training.LABELLING_BLOCK_ELEMENTS", block)
            information = neighbor_label_information(heads, features, neighbors)
        np.testing.assert_allclose(information, [np.log(3), -(2 / 3) * np.log(2 / 3)
                                                 - (1 / 3) * np.log(1 / 3)])


@pytest.mark.parametrize("n_clusters", [3, 50])  # a table of all pairs, or the pairs seen
def test_neighbor_information_is_the_mutual_information_of_the_pairs(n_clusters):
    from sklearn.metrics import mutual_info_score

    from skdeepclust.clustering._training import neighbor_label_information

    rng = np.random.default_rng(0)
    labels = torch.from_numpy(rng.integers(0, n_clusters, (2, 200)))
    neighbors = torch.from_numpy(rng.integers(0, 200, (200, 2)))
    features = torch.arange(200.0)[:, None]

    def head_logits(rows):
        return torch.nn.functional.one_hot(labels[:, rows[:, 0].long()], n_clusters).float()

    information = neighbor_label_information(head_logits, features, neighbors)
    for head in range(2):
        pairs = labels[head].repeat_interleave(2), labels[head][neighbors.reshape(-1)]
        assert float(information[head]) == pytest.approx(mutual_info_score(*pairs), rel=1e-9)


def test_labelling_blocks_shrink_with_the_hidden_layer(monkeypatch):
    rows_per_call = []

    def head_logits(rows):
        rows_per_call.append(rows.shape[0])
        return torch.zeros(2, rows.shape[0], 3)

    monkeypatch.setattr(_training, "LABELLING_BLOCK_ELEMENTS", 4000)
    features, neighbors = torch.zeros(60, 3), torch.zeros(60, 1, dtype=torch.long)
    _training.neighbor_label_information(head_logits, features, neighbors, hidden_size=1000)
    assert max(rows_per_call) == 2  # 4000 // (2 heads * 1000 hidden units)


def test_debiased_keeps_small_cluster_that_scan_splits_big_ones_for():
    # One big class and two small ones: SCAN's equal-size prior hands part of the
    # big class to the small clusters; the debiased head keeps the sizes.
    X, y = sphere_blobs([400, 40, 20], noise=0.12, seed=1)
    settings = dict(n_clusters=3, n_epochs=30, batch_size=128, n_heads=4, random_state=0,
                    device="cpu")
    scan = SCANClusterer(**settings).fit(X)
    debiased = DebiasedClusterer(**settings).fit(X)
    scan_ari = adjusted_rand_score(y, scan.labels_)
    debiased_ari = adjusted_rand_score(y, debiased.labels_)
    assert debiased_ari > 0.95
    assert debiased_ari > scan_ari + 0.1
    assert sorted(np.bincount(debiased.labels_))[0] >= 15


def test_debiased_predictions_do_not_depend_on_the_other_rows(blobs):
    X, _ = blobs
    model = DebiasedClusterer(n_clusters=4, random_state=0, device="cpu", **FAST).fit(X)
    whole = model.predict_proba(X)
    np.testing.assert_allclose(model.predict_proba(X[:3]), whole[:3], rtol=1e-5)
    assert model.pooled_statistics_.shape == (2 * X.shape[1] + 1,)


@pytest.mark.parametrize(
    "params, match",
    [
        (dict(n_clusters=0), "n_clusters"),
        (dict(n_neighbors=0), "n_neighbors"),
        (dict(head="conv"), "head"),
        (dict(batch_size=1), "batch_size"),
        (dict(learning_rate=-1.0), "learning_rate"),
        (dict(n_heads=2.5), "n_heads"),
        (dict(random_state=-1), "^random_state must be"),
        # Infinity would run, and end in one cluster or a divergence blamed on learning_rate.
        (dict(weight_decay=float("inf")), r"^weight_decay must be a finite number in \[0.0, inf\); got inf"),
    ],
)
@pytest.mark.parametrize("name", sorted(HEADS))
def test_head_rejects_bad_parameters(name, params, match, blobs):
    X, _ = blobs
    with pytest.raises(ValueError, match=match):
        HEADS[name](**params).fit(X)


@pytest.mark.parametrize("name", sorted(HEADS))
def test_head_rejects_too_few_samples(name):
    with pytest.raises(ValueError, match="n_samples=3"):
        HEADS[name](n_clusters=4).fit(np.ones((3, 5)))


def test_verbose_reports_progress(capsys, blobs):
    X, _ = blobs
    SCANClusterer(n_clusters=4, verbose=1, random_state=0, device="cpu", **FAST).fit(X)
    err = capsys.readouterr().err
    assert "SCAN" in err and "30/30" in err and "loss" in err
    SCANClusterer(n_clusters=4, random_state=0, device="cpu", **FAST).fit(X)
    assert capsys.readouterr().err == ""


def test_scan_self_labelling_and_mlp_head_run(blobs):
    X, y = blobs
    model = SCANClusterer(n_clusters=4, head="mlp", hidden_size=32, self_label_epochs=5,
                          random_state=0, device="cpu", **FAST).fit(X)
    assert adjusted_rand_score(y, model.labels_) > 0.95
    assert len(model.head_weights_) == 2


# --------------------------------------------------------------------------- k-means


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_torch_kmeans_matches_sklearn_inertia(dtype):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((600, 12)) + 4 * rng.standard_normal((8, 12))[
        rng.integers(0, 8, 600)]
    X = X.astype(dtype)
    ours = TorchKMeans(n_clusters=8, n_init=3, random_state=0, device="cpu").fit(X)
    reference = KMeans(n_clusters=8, n_init=3, random_state=0).fit(X)
    assert ours.inertia_ == pytest.approx(reference.inertia_, rel=0.01)
    assert ours.cluster_centers_.shape == (8, 12)
    np.testing.assert_array_equal(ours.predict(X), ours.labels_)
    assert ours.transform(X).shape == (600, 8)
    assert ours.n_iter_ >= 1


def test_torch_kmeans_names_its_distance_columns(blobs):
    X, _ = blobs
    model = TorchKMeans(4, device="cpu", random_state=0).fit(X)
    assert model.get_feature_names_out().tolist() == ["torchkmeans0", "torchkmeans1", "torchkmeans2", "torchkmeans3"]
    pytest.importorskip("pandas")
    assert model.set_output(transform="pandas").transform(X).shape == (len(X), 4)


def test_torch_kmeans_recovers_blobs_and_is_repeatable(blobs):
    X, y = blobs
    first = TorchKMeans(n_clusters=4, random_state=1, device="cpu").fit(X)
    second = TorchKMeans(n_clusters=4, random_state=1, device="cpu").fit(X)
    assert adjusted_rand_score(y, first.labels_) == pytest.approx(1.0)
    np.testing.assert_array_equal(first.cluster_centers_, second.cluster_centers_)
    restored = pickle.loads(pickle.dumps(first))
    np.testing.assert_array_equal(restored.predict(X), first.labels_)


def test_torch_kmeans_gives_the_same_result_in_any_blocking(blobs, monkeypatch):
    X, _ = blobs
    whole = TorchKMeans(n_clusters=4, random_state=3, device="cpu").fit(X)
    monkeypatch.setattr(kmeans_module, "DISTANCES_PER_BLOCK", 7)  # 1 row per block at k=4
    blocked = TorchKMeans(n_clusters=4, random_state=3, device="cpu").fit(X)
    np.testing.assert_array_equal(blocked.labels_, whole.labels_)
    np.testing.assert_allclose(blocked.cluster_centers_, whole.cluster_centers_, rtol=1e-6)
    assert blocked.inertia_ == pytest.approx(whole.inertia_, rel=1e-6)


@pytest.mark.parametrize("name", sorted(HEADS))
def test_head_predictions_hold_a_block_of_probabilities_at_a_time(name, monkeypatch):
    # All rows' probabilities at once, and several temporaries of their size: 1,280
    # MiB more for 100,000 rows and 1,000 clusters (benchmarks/bench_memory.py).
    X, _ = sphere_blobs([2000] * 4, n_features=8)
    model = HEADS[name](n_clusters=64, n_epochs=2, random_state=0, device="cpu").fit(X)
    # float32 probabilities of every row, over the widest layer (the debiased
    # head's fine clusters, before they are summed into n_clusters_)
    all_rows = X.shape[0] * model._widest(X.shape[1]) * 4
    monkeypatch.setattr(_training, "LABELLING_BLOCK_ELEMENTS", 2 ** 12)
    peak, labels = peak_numpy_bytes(model.predict, X)
    assert peak < all_rows / 4
    np.testing.assert_array_equal(labels, model.labels_)
    peak, proba = peak_numpy_bytes(model.predict_proba, X)
    assert peak < proba.nbytes + all_rows / 4  # the result itself, and a block
    np.testing.assert_array_equal(proba.argmax(axis=1), model.labels_)


def test_torch_kmeans_predicts_a_block_of_distances_at_a_time(blobs, monkeypatch):
    X = np.tile(blobs[0], (10, 1))
    model = TorchKMeans(n_clusters=100, n_init=1, random_state=0, device="cpu").fit(X)
    full_distances = X.shape[0] * 100 * 8  # float64, in which they are computed
    expected_labels = model.transform(X).argmin(axis=1)
    monkeypatch.setattr(kmeans_module, "DISTANCES_PER_BLOCK", 2 ** 12)
    peak, labels = peak_numpy_bytes(model.predict, X)
    assert peak < full_distances / 4
    np.testing.assert_array_equal(labels, expected_labels)
    peak, score = peak_numpy_bytes(model.score, X)
    assert peak < full_distances / 4
    assert score == pytest.approx(-model.inertia_, rel=1e-4)


def test_torch_kmeans_seeds_more_rows_than_torch_multinomial_draws_from():
    # torch.multinomial takes at most 2**24 categories: k-means++ over more rows raised
    # "number of categories cannot exceed 2^24" from inside torch.
    X = np.zeros((2 ** 24 + 1, 1), dtype=np.float32)
    X[-1] = 1.0  # the one row that lies apart; k-means++ must be able to draw it
    model = TorchKMeans(n_clusters=2, n_init=1, max_iter=2, random_state=0, device="cpu").fit(X)
    assert sorted(model.cluster_centers_.ravel().tolist()) == [0.0, 1.0]
    assert model.labels_[-1] != model.labels_[0]


@pytest.mark.parametrize("dtype, scales", [(np.float32, [1e-25, 1e19, 1e37]), (np.float64, [1e-170, 1e-156, 1e150])])
def test_torch_kmeans_does_not_depend_on_the_scale_of_the_data(blobs, dtype, scales, capsys):
    # Squared distances overflowed (float32 values near 1e19 raised inside
    # torch.multinomial, or gave wrong labels and an infinite inertia) or vanished;
    # float32 column sums overflowed (240 rows near 1e37) into NaN centres.
    X, _ = blobs
    reference = TorchKMeans(n_clusters=4, random_state=0, device="cpu").fit(X.astype(dtype))
    for scale in scales:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            # scikit-learn's check for NaN first sums the data, which overflows near 1e37.
            warnings.filterwarnings("ignore", "invalid value encountered in reduce", RuntimeWarning)
            scaled = TorchKMeans(n_clusters=4, random_state=0, device="cpu", verbose=1).fit(
                X.astype(dtype) * dtype(scale))
            scaled_labels = scaled.predict(X.astype(dtype) * dtype(scale))
        np.testing.assert_array_equal(scaled.labels_, reference.labels_)
        np.testing.assert_allclose(scaled.cluster_centers_, reference.cluster_centers_ * scale, rtol=1e-5)
        if np.isfinite(reference.inertia_ * scale ** 2) and reference.inertia_ * scale ** 2 > 0:
            assert scaled.inertia_ == pytest.approx(reference.inertia_ * scale ** 2, rel=1e-5)
        np.testing.assert_array_equal(scaled_labels, reference.labels_)


def test_torch_kmeans_does_not_depend_on_the_scale_of_the_weights(blobs):
    # float32 weights near 1e38 overflowed the weighted sums into NaN centres.
    X, _ = blobs
    X = X.astype(np.float32)
    plain = TorchKMeans(n_clusters=4, random_state=0, device="cpu").fit(X, sample_weight=np.ones(len(X)))
    # Weights past float32's range (1e39) were refused as infinite, and those below it
    # (1e-50) as all zero: they were cast to X's dtype before they were scaled; and
    # scaled by a power of two short of theirs (1e300, 1e-200) they gave NaN centres.
    for weight in (3e38, 1e39, 1e-50, 1e300, 1e-200):
        heavy = TorchKMeans(n_clusters=4, random_state=0, device="cpu").fit(X, sample_weight=np.full(len(X), weight))
        np.testing.assert_array_equal(heavy.labels_, plain.labels_)
        np.testing.assert_allclose(heavy.cluster_centers_, plain.cluster_centers_, rtol=1e-5)
        assert heavy.inertia_ == pytest.approx(plain.inertia_ * weight, rel=1e-5)


def test_torch_kmeans_random_init_draws_rows_in_proportion_to_their_weight():
    # It drew uniformly, so rows of weight 0 became the initial centres, which
    # scikit-learn's never do: after one iteration, 1 of 20 seeds had found the two
    # weighted groups (scikit-learn: 12).
    rng = np.random.default_rng(0)
    weighted = np.r_[rng.normal(0, 0.1, (50, 2)), rng.normal(0, 0.1, (50, 2)) + [10, 0]]
    X = np.r_[weighted, rng.normal(0, 0.1, (900, 2)) + [5, 50]]
    weights = np.r_[np.ones(100), np.zeros(900)]
    found = [
        TorchKMeans(n_clusters=2, init="random", n_init=1, max_iter=1, random_state=seed,
                    device="cpu").fit(X, sample_weight=weights).inertia_ < 10
        for seed in range(20)
    ]
    assert sum(found) >= 8  # both seeds in one group, half the time, is the method's own weakness


@pytest.mark.parametrize("dtype, offset", [(np.float32, 1e4), (np.float64, 1e8)])
def test_predictions_keep_their_precision_far_from_the_origin(dtype, offset):
    # |x|^2 - 2 x.c + |c|^2 on the raw rows put 43% of float32 rows offset by 1e4 in
    # the wrong cluster, and TorchKMeans's score(X_train) was 10.7 times -inertia_.
    rng = np.random.default_rng(0)
    X = (np.r_[rng.normal(0, 0.3, (100, 8)), rng.normal(0, 0.3, (100, 8)) + 2.0] + offset).astype(dtype)
    kmeans = TorchKMeans(n_clusters=2, random_state=0, device="cpu").fit(X)
    np.testing.assert_array_equal(kmeans.predict(X), kmeans.labels_)
    np.testing.assert_array_equal(kmeans.transform(X).argmin(axis=1), kmeans.labels_)
    assert -kmeans.score(X) == pytest.approx(kmeans.inertia_, rel=1e-3)
    stage = FeatureClusterer(AgglomerativeClustering(n_clusters=2)).fit(X)
    exact = ((X.astype(np.longdouble)[:, None] - stage.cluster_centers_.astype(np.longdouble)) ** 2).sum(axis=2)
    np.testing.assert_array_equal(stage.predict(X), stage.cluster_ids_[exact.argmin(axis=1)])


def test_debiased_merge_matches_merging_from_scratch_each_step():
    from skdeepclust.clustering.debiased import merge_on_neighbor_graph

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 30, 600)
    neighbors = rng.integers(0, 600, (600, 5))
    neighbors[:300] = np.flatnonzero(labels < 10)[rng.integers(0, (labels < 10).sum(), (300, 5))]
    # The same greedy merge, with every affinity recomputed at each step.
    links = np.zeros((30, 30))
    np.add.at(links, (np.repeat(labels, 5), labels[neighbors].ravel()), 1.0)
    links = links + links.T
    sizes, groups = np.bincount(labels).astype(float), [[c] for c in range(30)]
    while len(groups) > 4:
        affinity = np.array([[-1.0 if a is b else links[np.ix_(a, b)].sum() / (sizes[a].sum() + sizes[b].sum())
                              for b in groups] for a in groups])
        first, second = np.unravel_index(affinity.argmax(), affinity.shape)
        groups[first] += groups.pop(second)
    expected = np.empty(30, dtype=int)
    for merged, members in enumerate(sorted(groups, key=min)):
        expected[members] = merged
    np.testing.assert_array_equal(merge_on_neighbor_graph(labels, neighbors, 4), expected)


def test_torch_kmeans_restarts_empty_clusters():
    X = np.random.default_rng(0).standard_normal((300, 4))
    X[:200] = 0.0  # random seeding picks this row many times over: all but one copy start empty
    model = TorchKMeans(n_clusters=20, init="random", random_state=0, device="cpu").fit(X)
    assert len(np.unique(model.labels_)) == 20
    assert np.isfinite(model.cluster_centers_).all()


def test_torch_kmeans_handles_duplicates_and_bad_input():
    X = np.repeat(np.eye(3), 5, axis=0)
    model = TorchKMeans(n_clusters=3, random_state=0, device="cpu").fit(X)
    assert model.inertia_ == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="n_samples=2"):
        TorchKMeans(n_clusters=3, device="cpu").fit(X[:2])
    with pytest.raises(ValueError, match="init"):
        TorchKMeans(init="forgy", device="cpu").fit(X)
    with pytest.raises(ValueError, match="^random_state must be"):
        TorchKMeans(random_state=np.random.default_rng(0), device="cpu").fit(X)
    with pytest.raises(ValueError, match="^tol must be a finite number"):  # inf: one iteration only
        TorchKMeans(tol=np.inf, device="cpu").fit(X)
    with pytest.raises(ValueError, match="Negative values"):  # would turn the score's sign
        model.score(X, sample_weight=-np.ones(len(X)))


def test_torch_kmeans_stays_precise_far_from_the_origin():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((600, 8)) + 5 * rng.standard_normal((4, 8))[rng.integers(0, 4, 600)]
    X = (X + 1e4).astype(np.float32)  # |x|^2 ~ 1e9: float32 keeps no digit of the spread
    ours = TorchKMeans(n_clusters=4, random_state=0, device="cpu").fit(X)
    reference = KMeans(n_clusters=4, n_init=3, random_state=0).fit(X)
    assert ours.inertia_ == pytest.approx(reference.inertia_, rel=1e-3)
    exact = np.linalg.norm(X[:, None, :].astype(np.float64) - ours.cluster_centers_, axis=2)
    np.testing.assert_allclose(ours.transform(X), exact, atol=1e-3)
    assert ours.inertia_ == pytest.approx((exact.min(axis=1) ** 2).sum(), rel=1e-5)
    np.testing.assert_array_equal(ours.predict(X), ours.labels_)


def test_torch_kmeans_weights_rows_as_repeats(blobs):
    X, _ = blobs
    weights = np.random.default_rng(0).integers(1, 4, len(X))
    weighted = TorchKMeans(n_clusters=4, random_state=0, device="cpu").fit(X, sample_weight=weights)
    repeated = TorchKMeans(n_clusters=4, random_state=0, device="cpu").fit(np.repeat(X, weights, axis=0))
    order = np.lexsort(weighted.cluster_centers_.T)
    same_order = np.lexsort(repeated.cluster_centers_.T)
    np.testing.assert_allclose(weighted.cluster_centers_[order],
                               repeated.cluster_centers_[same_order], rtol=1e-5, atol=1e-6)
    assert weighted.inertia_ == pytest.approx(repeated.inertia_, rel=1e-5)
    assert weighted.score(X, sample_weight=weights) == pytest.approx(-weighted.inertia_, rel=1e-5)
    assert repeated.score(X) < repeated.score(X[:10])  # minus the inertia: fewer rows, less of it
    with pytest.raises(ValueError, match="Negative"):
        TorchKMeans(n_clusters=4, device="cpu").fit(X, sample_weight=-weights)
    with pytest.raises(ValueError, match="non-zero|zero for every"):
        TorchKMeans(n_clusters=4, device="cpu").fit(X, sample_weight=np.zeros(len(X)))


@pytest.mark.parametrize("seed", range(4))
def test_torch_kmeans_weights_of_all_ones_change_nothing(seed):
    # Overlapping groups, where different seeding ends in different local optima.
    X, _ = make_blobs(100, centers=5, n_features=6, cluster_std=4.0, random_state=1)
    unweighted = TorchKMeans(n_clusters=5, random_state=seed, device="cpu").fit(X)
    ones = TorchKMeans(n_clusters=5, random_state=seed, device="cpu").fit(X, sample_weight=np.ones(len(X)))
    np.testing.assert_array_equal(ones.labels_, unweighted.labels_)
    assert ones.inertia_ == pytest.approx(unweighted.inertia_, rel=1e-6)


def test_torch_kmeans_starts_from_given_centres_as_scikit_learn_does(blobs):
    X, _ = blobs
    start = X[[0, 70, 130, 200]].astype(np.float64)
    given = start.copy()
    ours = TorchKMeans(n_clusters=4, init=start, device="cpu").fit(X)
    reference = KMeans(n_clusters=4, init=start, n_init=1).fit(X)
    np.testing.assert_array_equal(ours.labels_, reference.labels_)
    np.testing.assert_allclose(ours.cluster_centers_, reference.cluster_centers_, atol=1e-5)
    np.testing.assert_array_equal(start, given)
    one_step = TorchKMeans(n_clusters=4, init=start.tolist(), max_iter=1, device="cpu").fit(X)
    assert one_step.n_iter_ == 1
    with pytest.raises(ValueError, match=r"init holds centres of shape \(4, 16\), but n_clusters=3"):
        TorchKMeans(n_clusters=3, init=start, device="cpu").fit(X)
    with pytest.raises(ValueError, match="or an array of centres"):
        TorchKMeans(init=None, device="cpu").fit(X)


def test_torch_kmeans_predicts_labels_when_output_is_set_to_pandas(blobs):
    pytest.importorskip("pandas")
    X, _ = blobs
    model = TorchKMeans(n_clusters=4, random_state=0, device="cpu").fit(X)
    expected = model.predict(X)
    model.set_output(transform="pandas")
    np.testing.assert_array_equal(model.predict(X), expected)
    assert list(model.transform(X[:2]).columns) == [f"torchkmeans{i}" for i in range(4)]


def test_torch_kmeans_hands_torch_only_writable_arrays(blobs, monkeypatch):
    # torch warns, once per process, on a read-only array: the weights of float64 rows
    # reach it without a copy.
    X = blobs[0].astype(np.float64)
    X.flags.writeable = False
    weights = np.ones(X.shape[0])
    weights.flags.writeable = False
    from_numpy = torch.from_numpy

    def writable_only(array):
        assert array.flags.writeable
        return from_numpy(array)

    monkeypatch.setattr(torch, "from_numpy", writable_only)
    TorchKMeans(n_clusters=4, random_state=0, device="cpu").fit(X, sample_weight=weights)


def test_torch_kmeans_can_be_searched_by_its_score(blobs):
    from sklearn.model_selection import GridSearchCV

    X, _ = blobs
    search = GridSearchCV(TorchKMeans(device="cpu", random_state=0), {"n_clusters": [2, 4]}, cv=2)
    assert search.fit(X).best_params_ == {"n_clusters": 4}


def test_torch_kmeans_warns_when_rows_run_out():
    X = np.repeat([[0.0, 0.0], [5.0, 5.0]], 10, axis=0)
    with pytest.warns(ConvergenceWarning, match="Only 2 distinct clusters.*n_clusters=4"):
        TorchKMeans(n_clusters=4, random_state=0, device="cpu").fit(X)
    with pytest.warns(ConvergenceWarning, match="Only 2 distinct clusters.*n_clusters=4") as record:
        FeatureClusterer(TorchKMeans(device="cpu"), n_clusters=4, random_state=0).fit_predict(X)
    assert record[0].filename == __file__  # the user's line, not one inside the library


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_torch_kmeans_stops_when_fewer_distinct_rows_than_clusters(dtype):
    # The empty clusters moved, each iteration, onto rows that rounding noise picked among
    # rows already on their centres, and Lloyd ran to max_iter: 15 of these 40 fits.
    for n_features in (2, 4, 16, 64):
        for seed in range(5):
            distinct = np.random.default_rng(seed).standard_normal((5, n_features)).astype(dtype)
            X = np.repeat(distinct, 200, axis=0)
            with pytest.warns(ConvergenceWarning, match="Only 5 distinct clusters"):
                model = TorchKMeans(8, n_init=1, random_state=seed, device="cpu").fit(X)
            assert model.n_iter_ <= 10, (n_features, seed)  # not max_iter=300
            assert model.inertia_ < 1e-6 * np.sum(X.astype(np.float64) ** 2)
            assert np.unique(model.labels_).size == 5
            # Coinciding centres: the labels are those predict gives, the first of equal centres.
            np.testing.assert_array_equal(model.labels_, model.predict(X))


def test_torch_kmeans_gives_copies_of_a_row_one_label_where_centres_coincide():
    # Rounding split the 18 copies of one row between two coinciding centres: every
    # label was used, no warning came, and predict gave other labels.
    rng = np.random.default_rng(0)
    X = (rng.normal(size=(4, 38)) * 5 + 3000).astype(np.float32)[rng.integers(0, 4, size=64)]
    with pytest.warns(ConvergenceWarning, match="Only 4 distinct clusters"):
        model = TorchKMeans(n_clusters=5, random_state=0, device="cpu").fit(X)
    np.testing.assert_array_equal(model.labels_, model.predict(X))
    assert np.unique(model.labels_[np.all(X == X[0], axis=1)]).size == 1


def test_torch_kmeans_moves_an_empty_cluster_onto_rows_that_lie_apart_in_float32():
    # Two groups 1000 apart, each of two subgroups 1 apart: small against the data's
    # size, yet apart. Two centres start far off and empty, and must each take one.
    rng = np.random.default_rng(0)
    X = np.concatenate([[group + half, 0.0] + 0.01 * rng.standard_normal((50, 2))
                        for group in (-500.0, 500.0) for half in (-0.5, 0.5)]).astype(np.float32)
    init = np.array([[-500, 0], [500, 0], [0, 1e4], [0, -1e4]], dtype=np.float32)
    model = TorchKMeans(n_clusters=4, init=init, device="cpu").fit(X)
    assert np.unique(model.labels_).size == 4 and model.inertia_ < 0.1  # 50.2 with two clusters


def test_torch_kmeans_warns_when_rows_of_positive_weight_run_out():
    X = np.arange(10.0)[:, None]
    weights = np.r_[1.0, 1.0, np.zeros(8)]
    with pytest.warns(ConvergenceWarning, match="Only 2 distinct clusters.*n_clusters=3"):
        TorchKMeans(n_clusters=3, random_state=0, device="cpu").fit(X, sample_weight=weights)


@pytest.mark.parametrize("make", [
    lambda: TorchKMeans(n_clusters=2, device="cpu", verbose=True),
    *(lambda make=make: make(n_clusters=2, device="cpu", verbose=True) for make in HEADS.values()),
])
def test_verbose_may_be_a_bool_as_in_scikit_learn(make, capsys):
    X = np.repeat(np.eye(2), 20, axis=0) + 0.01
    make().fit(X)
    assert capsys.readouterr().err  # a progress bar or the restarts' inertia


@pytest.mark.parametrize("name", HEADS)
def test_a_head_whose_training_diverges_is_an_error_not_a_nan_model(name):
    X, _ = sphere_blobs([30, 30, 30])
    # A raised entropy weight far from overflowing the loss is not named: with AdamW,
    # the steps do not grow with it.
    with pytest.raises(ValueError, match=r"^Training diverged.*\. Lower learning_rate \(it is 1000000000000.0\)\.$"):
        HEADS[name](n_clusters=3, learning_rate=1e12, random_state=0, device="cpu",
                    **({"entropy_weight": 6.0} if name != "temi" else {})).fit(X)


@pytest.mark.parametrize("name", HEADS)
def test_the_divergence_error_names_the_raised_parameter_and_a_step_too_large_for_float32(name):
    # It always blamed learning_rate, and a learning_rate near 1e38 failed inside torch's
    # AdamW ("value cannot be converted to type float without overflow").
    X, _ = sphere_blobs([30, 30, 30])
    settings = dict(n_clusters=3, n_epochs=3, random_state=0, device="cpu")
    with pytest.raises(ValueError, match=r"^Training diverged.*Lower weight_decay \(it is 1e\+300\) or "
                                         r"learning_rate \(it is [0-9.e-]+\)\.$"):
        HEADS[name](**settings, weight_decay=1e300).fit(X)
    with pytest.raises(ValueError, match=r"^Training diverged: an optimiser step overflowed float32 .*"
                                         r"Lower learning_rate \(it is 1e\+38\)\.$"):
        HEADS[name](**settings, learning_rate=1e38).fit(X)
    if "entropy_weight" in HEADS[name]().get_params():
        with pytest.raises(ValueError, match=r"Lower entropy_weight \(it is 1e\+300\) or learning_rate"):
            HEADS[name](**settings, entropy_weight=1e300).fit(X)
    if "entropy_weight" in HEADS[name]().get_params():
        # Each batch's loss fits in float32 but their sum over an epoch does not: no divergence.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            HEADS[name](**settings, entropy_weight=1e38, batch_size=10).fit(X)
    for temperature in ("student_temperature", "teacher_temperature"):
        if temperature in HEADS[name]().get_params():  # logits divided by 1e-40 overflow float32
            with pytest.raises(ValueError, match=rf"\. Raise {temperature} \(it is 1e-40\), or lower "
                                                 r"learning_rate \(it is 0.001\)\.$"):
                HEADS[name](**settings, **{temperature: 1e-40}).fit(X)


# --------------------------------------------------------------------------- neighbours


def test_mined_neighbors_match_brute_force_in_any_chunking(blobs):
    X, _ = blobs
    similarities = X @ X.T
    np.fill_diagonal(similarities, -np.inf)
    expected = np.sort(similarities, axis=1)[:, ::-1][:, :5]
    for chunk_size in (7, 1000, None):
        indices, values = mine_nearest_neighbors(X, 5, device="cpu", chunk_size=chunk_size)
        np.testing.assert_allclose(values, expected, rtol=1e-5)
        assert not (indices == np.arange(X.shape[0])[:, None]).any()


@pytest.mark.parametrize("scale", [1e20, 1e-14])
def test_cosine_results_do_not_depend_on_the_scale_of_the_rows(blobs, scale):
    X, _ = blobs
    X = X.astype(np.float64)
    indices, values = mine_nearest_neighbors(X, 5, device="cpu")
    scaled_indices, scaled_values = mine_nearest_neighbors(X * scale, 5, device="cpu")
    np.testing.assert_array_equal(scaled_indices, indices)
    np.testing.assert_allclose(scaled_values, values, rtol=1e-5)
    model = SCANClusterer(n_clusters=4, random_state=0, device="cpu", **FAST).fit(X)
    np.testing.assert_array_equal(model.predict(X * scale), model.labels_)


def test_mined_neighbors_exclude_self_among_duplicates():
    X = np.ones((4, 3))
    indices, _ = mine_nearest_neighbors(X, 3, device="cpu")
    for row, neighbours in enumerate(indices):
        assert sorted(neighbours) == [i for i in range(4) if i != row]
    with pytest.raises(ValueError, match="n_neighbors=4"):
        mine_nearest_neighbors(X, 4, device="cpu")


def test_mined_neighbors_refuse_bad_features():
    X = np.random.default_rng(0).standard_normal((6, 3))
    X[2, 1] = np.nan
    with pytest.raises(ValueError, match="features contains NaN"):
        mine_nearest_neighbors(X, 1, device="cpu")
    with pytest.raises(ValueError, match="Expected 2D array"):
        mine_nearest_neighbors(np.ones(6), 1, device="cpu")


@pytest.mark.parametrize("make", [
    lambda: TorchKMeans(n_clusters=4, random_state=0, device="cpu"),
    lambda: HEADS["temi"](n_clusters=4, random_state=0, device="cpu"),
    lambda: FeatureClusterer(n_clusters=4, random_state=0),
], ids=["torch_kmeans", "temi", "feature_clusterer"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_torch_tensors_cluster_as_the_same_numpy_array_does(make, dtype, blobs):
    # As a user's own torch code leaves its features: in bfloat16, attached to a graph.
    X = torch.from_numpy(blobs[0]).to(dtype).requires_grad_()
    as_numpy = X.detach().float().numpy() if dtype == torch.bfloat16 else X.detach().numpy()
    weights = torch.linspace(1.0, 2.0, X.shape[0], dtype=dtype)
    fit_weighted = not isinstance(make(), TEMIClusterer)
    from_tensor = make().fit(X, **({"sample_weight": weights} if fit_weighted else {}))
    from_numpy = make().fit(
        as_numpy, **({"sample_weight": weights.float().numpy()} if fit_weighted else {}))
    np.testing.assert_array_equal(from_tensor.labels_, from_numpy.labels_)
    np.testing.assert_array_equal(from_tensor.predict(X), from_numpy.labels_)
    state = "cluster_centers_" if hasattr(from_numpy, "cluster_centers_") else "head_weights_"
    np.testing.assert_equal(getattr(from_tensor, state), getattr(from_numpy, state))
    assert X.requires_grad and X.dtype == dtype


def test_neighbour_mining_and_scores_take_torch_tensors(blobs):
    X, y = blobs
    tensor = torch.from_numpy(X).requires_grad_()
    np.testing.assert_array_equal(mine_nearest_neighbors(tensor, 3, device="cpu")[0],
                                  mine_nearest_neighbors(X, 3, device="cpu")[0])
    assert label_free_score(tensor, torch.from_numpy(y)) == label_free_score(X, y)
    assert select_n_clusters(tensor, [3, 4], random_state=0)[0] == 4
    model = FeatureClusterer(n_clusters=4, random_state=0).fit(X)
    assert model.score(tensor, torch.from_numpy(y).bfloat16()) == model.score(X, y)
    starts = tensor[::60].bfloat16()  # one row of each blob
    from_tensor = TorchKMeans(n_clusters=4, init=starts, device="cpu").fit(X)
    from_numpy = TorchKMeans(n_clusters=4, init=starts.detach().float().numpy(), device="cpu").fit(X)
    np.testing.assert_array_equal(from_tensor.cluster_centers_, from_numpy.cluster_centers_)


@pytest.mark.parametrize("fit", [
    lambda X: TorchKMeans(n_clusters=4, random_state=0, device="cpu").fit(X),
    lambda X: HEADS["scan"](n_clusters=4, random_state=0, device="cpu").fit(X),
    lambda X: FeatureClusterer(n_clusters=4, random_state=0).fit(X),
    lambda X: FeatureClusterer(clusterer="agglomerative", n_clusters=4).fit(X),
    lambda X: mine_nearest_neighbors(X, 3, device="cpu"),
    lambda X: select_n_clusters(X, [3, 4], random_state=0),
], ids=["torch_kmeans", "scan", "kmeans", "agglomerative", "neighbours", "select"])
def test_masked_values_and_tensors_without_values_are_refused(fit, blobs):
    # numpy and torch read a masked array's data and ignore its mask.
    masked = np.ma.masked_array(blobs[0])
    masked[0, 0] = np.ma.masked
    with pytest.raises(ValueError, match=r"(X|features) is a masked array with 1 masked values; fill them"):
        fit(masked)
    for tensor, problem in [(torch.empty(240, 16, device="meta"), "on the meta device"),
                            (torch.from_numpy(blobs[0]).to_sparse(), "sparse_coo tensor; pass a dense one")]:
        with pytest.raises(ValueError, match=f"(X|features) is a .*{problem}"):
            fit(tensor)


def test_masked_arrays_without_masked_values_cluster_as_their_data(blobs):
    X = blobs[0]
    expected = FeatureClusterer(n_clusters=4, random_state=0).fit(X).labels_
    np.testing.assert_array_equal(
        FeatureClusterer(n_clusters=4, random_state=0).fit(np.ma.masked_array(X)).labels_, expected)


# --------------------------------------------------------------------------- n_clusters


def test_select_n_clusters_recovers_true_k():
    X, _ = sphere_blobs([50, 50, 50, 50, 50], noise=0.1, seed=2)
    best, scores = select_n_clusters(X, range(2, 9), random_state=0)
    assert best == 5
    assert set(scores) == set(range(2, 9))
    with pytest.raises(ValueError, match="candidates"):
        select_n_clusters(X, [1, 5])
    with pytest.raises(ValueError, match=r"^candidates must be numbers of clusters to try, e.g. range\(2, 21\); got 5"):
        select_n_clusters(X, 5)
    with pytest.raises(ValueError, match="^select_n_clusters scores clusterings of a 2-D feature matrix .* Embed them"):
        select_n_clusters(np.zeros((6, 8, 8, 3), np.uint8), [2, 3])


def test_select_n_clusters_sets_an_instances_own_count_and_refuses_one_that_finds_it():
    from sklearn.cluster import DBSCAN
    from sklearn.decomposition import PCA
    from sklearn.pipeline import make_pipeline

    # Their errors said to "leave n_clusters=None", a parameter select_n_clusters has not.
    X, _ = make_blobs(n_samples=200, centers=4, n_features=5, random_state=0)
    best, scores = select_n_clusters(X, [3, 4, 5], clusterer=KMeans(n_clusters=5, n_init=3, random_state=0))
    assert best == 4 and sorted(scores) == [3, 4, 5]
    for finds_its_own in ("hdbscan", DBSCAN()):
        with pytest.raises(ValueError, match=r"^select_n_clusters tries numbers of clusters, but clusterer=.* "
                                             r"takes none: it finds its own, or has no parameter n_clusters or "
                                             r"n_components; choose one that takes a number of clusters"):
            select_n_clusters(X, [3, 4], clusterer=finds_its_own)
    # A pipeline's count is its last step's.
    pipeline = make_pipeline(PCA(4), KMeans(n_clusters=5, n_init=3, random_state=0))
    assert select_n_clusters(X, [3, 4, 5], clusterer=pipeline)[0] == 4
    assert pipeline.get_params()["kmeans__n_clusters"] == 5  # searched on clones
    # Its last step is seeded as an instance of its own would be: the same scores twice.
    unseeded, noise = make_pipeline(PCA(4), KMeans(n_init=1)), np.random.default_rng(0).normal(size=(200, 5))
    assert (select_n_clusters(noise, [3, 4, 5], clusterer=unseeded, random_state=0)[1]
            == select_n_clusters(noise, [3, 4, 5], clusterer=unseeded, random_state=0)[1])
    with pytest.raises(ValueError, match=r"takes none: its last step has no parameter n_clusters or n_components"):
        select_n_clusters(X, [3, 4], clusterer=make_pipeline(PCA(4), DBSCAN()))
    # The class for an instance failed deep in scikit-learn, "get_params() missing ... 'self'".
    with pytest.raises(TypeError, match=r"not the class KMeans; pass KMeans\(\) instead"):
        select_n_clusters(X, [3, 4], clusterer=KMeans)


def test_select_n_clusters_says_when_a_head_gives_fewer_clusters_than_asked():
    X, _ = sphere_blobs([60, 60, 60], noise=0.1, seed=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        select_n_clusters(X, [3, 6], clusterer=SCANClusterer(entropy_weight=0.5, **FAST),
                          random_state=0, device="cpu")
    # One summary, not also one ConvergenceWarning per pruning fit.
    assert len(caught) == 1
    assert caught[0].category is UserWarning
    assert re.search(r"n_clusters=6 \(gave [1-5]\)", str(caught[0].message))


# --------------------------------------------------------------------------- GPU


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", sorted(HEADS))
def test_head_trains_on_gpu_and_predicts_after_pickle(name, blobs):
    X, y = blobs
    model = HEADS[name](n_clusters=4, random_state=0, device="cuda").fit(X)
    assert adjusted_rand_score(y, model.labels_) > 0.95
    restored = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(restored.predict(X), model.labels_)
    kmeans = TorchKMeans(n_clusters=4, random_state=0, device="cuda").fit(X)
    assert adjusted_rand_score(y, kmeans.labels_) == pytest.approx(1.0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_neighbours_and_kmeans_match_the_cpu(blobs):
    X, y = blobs
    on_cpu, _ = mine_nearest_neighbors(X, n_neighbors=5, device="cpu", chunk_size=7)
    on_gpu, _ = mine_nearest_neighbors(X, n_neighbors=5, device="cuda", chunk_size=7)
    assert np.mean(on_cpu == on_gpu) > 0.99  # ties may break differently
    kmeans = TorchKMeans(n_clusters=4, random_state=0, device="cuda").fit(X)
    assert adjusted_rand_score(y, kmeans.labels_) > 0.95
    restored = pickle.loads(pickle.dumps(kmeans))
    np.testing.assert_array_equal(restored.set_params(device="cpu").predict(X), kmeans.labels_)


@pytest.mark.parametrize("name", HEADS)
def test_a_training_that_raises_closes_its_progress_bar(name, capsys):
    from tqdm.std import tqdm

    X, _ = sphere_blobs([30, 30, 30])
    with pytest.raises(ValueError, match="Training diverged") as raised:
        HEADS[name](n_clusters=3, n_epochs=3, learning_rate=1e38, verbose=1, random_state=0,
                    device="cpu").fit(X)
    assert raised.value is not None  # keeps the failed training's frames, and its bar, alive
    assert not [bar for bar in tqdm._instances if not bar.disable]
    assert capsys.readouterr().err.endswith("\n")  # a closed bar ends its line


def test_torch_kmeans_keeps_the_restart_of_lowest_inertia(capsys):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((600, 12)) + 4 * rng.standard_normal((8, 12))[rng.integers(0, 8, 600)]
    model = TorchKMeans(8, n_init=10, init="random", random_state=0, device="cpu", verbose=1).fit(X)
    restarts = [float(value) for value in re.findall(r"inertia ([0-9.e+]+)", capsys.readouterr().err)]
    assert len(restarts) == 10 and max(restarts) > 1.01 * min(restarts)  # they do differ
    assert model.inertia_ == pytest.approx(min(restarts), rel=1e-5)
    assert model.inertia_ == pytest.approx(KMeans(8, n_init=10, random_state=0).fit(X).inertia_, rel=0.01)


def test_torch_kmeans_plusplus_is_greedy_as_scikit_learns():
    # Plain k-means++ (one candidate per centre) gave a 70% worse median restart here.
    X, _ = make_blobs(3000, centers=30, n_features=8, cluster_std=1.0, random_state=1)
    best = KMeans(30, n_init=10, random_state=0).fit(X).inertia_
    restarts = [TorchKMeans(30, n_init=1, random_state=seed, device="cpu").fit(X).inertia_
                for seed in range(10)]
    assert np.median(restarts) < 1.2 * best


def test_torch_kmeans_plusplus_never_seeds_on_rows_of_zero_weight():
    rng = np.random.default_rng(0)
    centres = rng.uniform(-10, 10, (8, 2))
    X = np.concatenate([rng.normal(centre, 0.5, (40, 2)) for centre in centres]
                       + [rng.uniform(-100, 100, (300, 2))])  # far-flung rows of weight 0
    weights = np.r_[np.ones(320), np.zeros(300)]
    reference = TorchKMeans(8, n_init=1, init=centres, device="cpu").fit(X[:320]).inertia_
    for seed in range(5):
        # One Lloyd step after seeding: only seeds near the weighted groups get close.
        model = TorchKMeans(8, n_init=1, max_iter=1, random_state=seed, device="cpu")
        assert model.fit(X, sample_weight=weights).inertia_ < 3 * reference, seed


def test_torch_kmeans_restarts_an_empty_cluster_on_a_row_that_carries_weight():
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(centre, 0.3, (50, 2)) for centre in ([0, 0], [5, 0], [0, 5])]
                       + [rng.normal([40, 40], 0.1, (5, 2)), rng.normal([-40, -40], 0.1, (5, 2))])
    weights = np.r_[np.ones(150), np.zeros(10)]
    init = np.array([[0.0, 0.0], [5.0, 0.0], [100.0, -100.0]])  # the third starts empty
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "only 2 distinct clusters"
        model = TorchKMeans(3, init=init, device="cpu").fit(X, sample_weight=weights)
    # The farthest rows have weight 0; scikit-learn restarts there, inertia 645.
    np.testing.assert_allclose(np.sort(model.cluster_centers_[:, 1]), [0, 0, 5], atol=0.2)
    assert model.inertia_ < 50


def test_torch_kmeans_tolerance_is_relative_to_the_variance():
    # One far row: an absolute tolerance stopped Lloyd after 2 steps.
    X = np.random.default_rng(0).standard_normal((4000, 16))
    X[0] = 300.0
    model = TorchKMeans(10, n_init=3, random_state=0, device="cpu").fit(X)
    assert model.n_iter_ > 5
    assert model.inertia_ == pytest.approx(KMeans(10, n_init=3, random_state=0).fit(X).inertia_, rel=0.01)


def test_scan_keeps_the_head_of_lowest_loss():
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((10, 16))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    y = np.repeat(np.arange(10), 60)
    X = (centres[y] + 0.35 * rng.standard_normal((y.size, 16))).astype(np.float32)
    model = SCANClusterer(n_clusters=10, n_epochs=5, random_state=0, device="cpu").fit(X)
    assert np.ptp(model.head_losses_) > 0
    assert model.best_head_ == int(np.argmin(model.head_losses_))


@pytest.mark.parametrize("hidden_size", [None, 7])
def test_single_head_is_the_head_asked_for(hidden_size):
    heads = _training.MultiHead(4, 5, 3, hidden_size, generator=torch.Generator().manual_seed(0))
    rows = torch.randn(6, 5, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for head in range(4):
            torch.testing.assert_close(_training.single_head(heads, head)(rows)[0], heads(rows)[head])


def test_scan_self_labels_only_confident_rows_weighted_by_inverse_class_counts(monkeypatch):
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], [150, 30])
    X = (np.eye(8)[y] + 0.3 * rng.standard_normal((y.size, 8))).astype(np.float32)
    calls, cross_entropy = [], torch.nn.functional.cross_entropy

    def recording_cross_entropy(logits, targets, weight=None, **kwargs):
        confidence = torch.softmax(logits.detach(), -1).max(-1).values
        counts = torch.bincount(targets, minlength=logits.shape[1]).float()
        calls.append((float(confidence.min()), weight.detach().clone(), counts))
        return cross_entropy(logits, targets, weight=weight, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "cross_entropy", recording_cross_entropy)
    SCANClusterer(n_clusters=2, n_epochs=30, self_label_epochs=3, confidence_threshold=0.6,
                  random_state=0, device="cpu").fit(X)
    assert calls
    for lowest_confidence, weight, counts in calls:
        assert lowest_confidence > 0.6
        present = counts > 0
        torch.testing.assert_close(weight[present] * counts[present],
                                   counts.sum().expand(int(present.sum())))


def test_temi_teacher_moves_slowly_at_a_high_momentum():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 40)
    X = (np.eye(8)[y] + 0.1 * rng.standard_normal((120, 8))).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # 2 epochs prune clusters
        fits = [TEMIClusterer(n_clusters=3, n_heads=1, head="mlp", hidden_size=16, n_epochs=2,
                              teacher_momentum=0.999, learning_rate=learning_rate, random_state=0,
                              device="cpu").fit(X)
                for learning_rate in (1e-3, 1e-1)]
    # Two epochs of 0.1% steps leave the teacher (whose weights are kept) near its
    # initial ones, however far the student went. The hidden layer is never pruned.
    slow, fast = (fit.head_weights_[0][0] for fit in fits)
    np.testing.assert_allclose(slow, fast, atol=0.05 * np.abs(slow).max())


class _AtMostTwoClusters(ClusterMixin, BaseEstimator):
    """Gives the same two clusters whatever it is asked for, as a head that prunes may."""

    def __init__(self, n_clusters=8):
        self.n_clusters = n_clusters

    def fit(self, X, y=None):
        self.labels_ = (X[:, 0] > 0).astype(int)
        return self


def test_select_n_clusters_takes_the_smallest_of_tied_candidates():
    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal([3, 0], 0.3, (20, 2)), rng.normal([-3, 0], 0.3, (20, 2))])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "gave a different number of clusters"
        best, scores = select_n_clusters(X, [4, 2, 3], clusterer=_AtMostTwoClusters())
    assert len(set(scores.values())) == 1
    assert best == 2


def test_select_n_clusters_is_repeatable_under_a_seed():
    # Unstructured rows, so that k-means' own result depends on its seed, and more
    # than 5,000 of them, so that the silhouette is estimated on a seeded sample.
    X = np.random.default_rng(0).normal(size=(5200, 8)).astype(np.float32)
    first = select_n_clusters(X, [2, 3], random_state=0)
    second = select_n_clusters(X, [2, 3], random_state=0)
    assert first == second


def _three_groups(n=10, spread=0.3, features=6, seed=0):
    rng = np.random.default_rng(seed)
    return np.repeat(np.eye(features)[:3], n, axis=0) + spread * rng.standard_normal((3 * n, features))


def test_n_neighbors_beyond_the_samples_is_capped_and_never_holds_the_sample():
    X = _three_groups(n=6)  # 18 samples
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        capped = SCANClusterer(n_clusters=3, n_neighbors=17, n_epochs=5, random_state=0).fit(X)
        more = SCANClusterer(n_clusters=3, n_neighbors=50, n_epochs=5, random_state=0).fit(X)
    np.testing.assert_array_equal(capped.head_losses_, more.head_losses_)
    np.testing.assert_array_equal(capped.labels_, more.labels_)


@pytest.mark.parametrize("name", ["SCANClusterer", "TEMIClusterer"])
def test_different_seeds_give_different_heads(name):
    from skdeepclust import clustering

    X = _three_groups()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        first, second = (getattr(clustering, name)(n_clusters=3, n_epochs=3, random_state=seed).fit(X)
                         for seed in (0, 1))
    assert not np.array_equal(first.head_losses_, second.head_losses_)


def test_predict_proba_normalises_rows_as_predict_does():
    rng = np.random.default_rng(0)
    X = _three_groups(spread=0.5) * rng.uniform(0.1, 20, (30, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = SCANClusterer(n_clusters=3, n_epochs=20, random_state=0).fit(X)
    np.testing.assert_allclose(model.predict_proba(X), model.predict_proba(10 * X), atol=1e-6)
    np.testing.assert_array_equal(model.predict_proba(X).argmax(axis=1), model.predict(X))


def test_a_head_that_prunes_a_single_cluster_warns():
    rng = np.random.default_rng(0)
    X = np.repeat(np.eye(8)[:3], 20, axis=0) + 0.05 * rng.standard_normal((60, 8))
    with pytest.warns(ConvergenceWarning, match="kept 3 of n_clusters=4"):
        model = TEMIClusterer(n_clusters=4, n_epochs=20, random_state=0).fit(X)
    assert model.n_clusters_ == 3


def _reference_merge(labels, neighbors, n_clusters):
    """merge_on_neighbor_graph recomputed from scratch at every step."""
    owner = np.arange(labels.max() + 1)
    while np.unique(owner).size > n_clusters:
        groups, merged = np.unique(owner), owner[labels]
        best, pair = -1.0, None
        for i, a in enumerate(groups):
            for b in groups[i + 1:]:
                into_a, into_b = merged == a, merged == b
                crossing = ((into_a[:, None] & into_b[neighbors]).sum()
                            + (into_b[:, None] & into_a[neighbors]).sum())
                affinity = crossing / (into_a.sum() + into_b.sum())
                if affinity > best:
                    best, pair = affinity, (a, b)
        owner[owner == pair[1]] = pair[0]
    return np.searchsorted(np.unique(owner), owner)


def test_merge_on_neighbor_graph_matches_a_recomputing_reference():
    from skdeepclust.clustering.debiased import merge_on_neighbor_graph

    rng = np.random.default_rng(0)
    for _ in range(40):
        labels = np.concatenate([np.arange(6), rng.integers(0, 6, 24)])
        neighbors = rng.integers(0, 30, (30, 3))
        for n_clusters in (2, 3):
            np.testing.assert_array_equal(merge_on_neighbor_graph(labels, neighbors, n_clusters),
                                          _reference_merge(labels, neighbors, n_clusters))


def _fitted_debiased(n_epochs=30):
    rng = np.random.default_rng(0)
    X = np.repeat(np.eye(8)[:3], [80, 30, 10], axis=0) + 0.1 * rng.standard_normal((120, 8))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return DebiasedClusterer(n_clusters=3, n_epochs=n_epochs, batch_size=32, random_state=0).fit(X), X


def test_debiased_pools_the_cardinality_it_was_trained_at():
    model, _ = _fitted_debiased()
    # 120 rows in batches of 32: 3 batches of 40 rows (tensor_split into near-equal parts).
    assert model.pooled_statistics_[-1] == pytest.approx(math.log(40), rel=1e-6)


def test_merged_probabilities_sum_to_one_when_a_merged_cluster_was_dropped():
    from skdeepclust.clustering._training import normalize_rows
    from skdeepclust.clustering.debiased import merged_probabilities

    model, X = _fitted_debiased(n_epochs=10)
    dropped = model.fine_to_cluster_[:, :-1]  # as fit's `occupied` leaves an unpicked merged cluster out
    proba = merged_probabilities(model.head_weights_, model.pooled_statistics_, dropped, normalize_rows(X))
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)


def test_auto_device_is_cuda_where_cuda_is_available(monkeypatch):
    from skdeepclust._device import parsed_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert parsed_device("auto") == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert parsed_device("auto") == torch.device("cpu")
