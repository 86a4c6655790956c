import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.datasets import make_blobs
from sklearn.pipeline import make_pipeline
from sklearn.utils.estimator_checks import parametrize_with_checks

from skdeepclust import FeatureClusterer
from skdeepclust.clustering import NeighborSmoother


@parametrize_with_checks([NeighborSmoother(n_neighbors=3, device="cpu")])
def test_sklearn_compatible(estimator, check):
    check(estimator)


def _unit(X):
    return X / np.linalg.norm(X, axis=1, keepdims=True)


def test_each_step_is_the_mean_of_a_row_and_its_nearest_others():
    X = np.random.default_rng(0).normal(size=(40, 5))
    unit = _unit(X)
    similarities = unit @ unit.T
    np.fill_diagonal(similarities, -np.inf)
    others = np.argsort(-similarities, axis=1)[:, :4]
    expected = unit
    for _ in range(2):
        expected = _unit(expected + expected[others].sum(axis=1))
    smoothed = NeighborSmoother(n_neighbors=4, n_steps=2, device="cpu").fit_transform(X)
    np.testing.assert_allclose(smoothed, expected, atol=1e-6)
    np.testing.assert_allclose(NeighborSmoother(n_steps=0, device="cpu").fit_transform(X), unit, atol=1e-6)


def test_a_new_row_is_smoothed_as_a_fitted_row_in_its_place_would_be():
    X = np.random.default_rng(1).normal(size=(50, 6)).astype(np.float32)
    original = X.copy()
    smoother = NeighborSmoother(n_neighbors=5, device="cpu")
    fitted = smoother.fit_transform(X)
    np.testing.assert_array_equal(X, original)  # the input is not modified
    np.testing.assert_array_equal(smoother.transform(X), fitted)
    # A copy of a fitted row, scaled (the cosine ignores the scale), comes out as that row did.
    np.testing.assert_allclose(smoother.transform(3 * X[[7, 20]]), fitted[[7, 20]], atol=1e-6)
    new = smoother.transform(np.random.default_rng(2).normal(size=(4, 6)))
    assert new.dtype == np.float32 and new.shape == (4, 6)
    np.testing.assert_allclose(np.linalg.norm(new, axis=1), 1, atol=1e-6)


def test_rows_of_zeros_stay_zero():
    X = np.random.default_rng(3).normal(size=(20, 4))
    X[5] = 0
    smoother = NeighborSmoother(n_neighbors=1, n_steps=1, device="cpu")
    smoothed = smoother.fit_transform(X)
    assert np.isfinite(smoothed).all() and not smoothed[5].any()
    np.testing.assert_allclose(np.linalg.norm(np.delete(smoothed, 5, axis=0), axis=1), 1, atol=1e-6)
    assert not smoother.transform(np.zeros((1, 4))).any()


def test_too_many_neighbours_for_the_samples_names_the_fix():
    with pytest.raises(ValueError, match=r"n_neighbors=10 needs at least 11 samples to fit; got n_samples=8\. "
                                         "Ask for fewer neighbours or fit on more samples"):
        NeighborSmoother(device="cpu").fit(np.ones((8, 3)))
    with pytest.raises(ValueError, match=r"^n_neighbors must be an integer >= 1; got 0\.$"):
        NeighborSmoother(n_neighbors=0).fit(np.eye(4))
    with pytest.raises(ValueError, match=r"^n_steps must be an integer >= 0; got 1\.5\.$"):
        NeighborSmoother(n_neighbors=2, n_steps=1.5).fit(np.eye(4))
    with pytest.raises(ValueError, match="device='nope' is not a device name"):
        NeighborSmoother(n_neighbors=2, device="nope").fit(np.eye(4))


def test_in_a_pipeline_new_rows_are_smoothed_before_the_clusters_take_them():
    # Its effect on real features is checked in test_real_data.py.
    X, _ = make_blobs(n_samples=300, centers=3, n_features=16, random_state=0)
    model = make_pipeline(NeighborSmoother(device="cpu"), FeatureClusterer(n_clusters=3, random_state=0))
    labels = model.fit_predict(X)
    np.testing.assert_array_equal(model.predict(X), labels)
    np.testing.assert_array_equal(clone(model).fit(X).predict(X[:50]), labels[:50])
    near_copies = X[:50] + np.random.default_rng(0).normal(scale=1e-3, size=(50, 16))
    np.testing.assert_array_equal(model.predict(near_copies), labels[:50])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_neighbours_found_on_a_gpu_smooth_as_on_the_cpu():
    X, _ = make_blobs(n_samples=400, centers=5, n_features=32, random_state=0)
    on_gpu = NeighborSmoother(device="cuda").fit(X)
    np.testing.assert_array_equal(on_gpu.fit_neighbors_, NeighborSmoother(device="cpu").fit(X).fit_neighbors_)
    np.testing.assert_allclose(on_gpu.transform(X[:50] + 0.1), NeighborSmoother(device="cpu").fit(X).transform(
        X[:50] + 0.1), atol=1e-5)
