"""scikit-learn's estimator contract for the estimators that take images.

``parametrize_with_checks`` runs no check on an estimator whose tags say it does
not take 2-D arrays, and its API checks fit on 2-D data. So the checks that do
not depend on the input run here as they are, and the fit-based ones of its API
checks have image-input versions below.
"""

import pickle
import warnings

import joblib
import numpy as np
import pytest
from conftest import TINY, two_tone_images
from sklearn.base import clone
from sklearn.exceptions import NotFittedError, SkipTestWarning
from sklearn.utils import estimator_checks
from sklearn.utils._tags import get_tags

from skdeepclust import ImageEmbedder, PretrainedFeatureClusterer

IMAGE_ESTIMATORS = [
    ImageEmbedder(**TINY),
    PretrainedFeatureClusterer(**TINY, n_clusters=2),
]
IDS = [type(est).__name__ for est in IMAGE_ESTIMATORS]

INPUT_INDEPENDENT_CHECKS = [
    "check_estimator_cloneable",
    "check_estimator_tags_renamed",
    "check_valid_tag_types",
    "check_estimator_repr",
    "check_no_attributes_set_in_init",
    "check_do_not_raise_errors_in_init_or_set_params",
    "check_mixin_order",
    "check_get_params_invariance",
    "check_set_params",
    "check_parameters_default_constructible",
]


def _output(estimator, X):
    return estimator.transform(X) if isinstance(estimator, ImageEmbedder) else estimator.predict(X)


@pytest.mark.parametrize("estimator", IMAGE_ESTIMATORS, ids=IDS)
@pytest.mark.parametrize("check_name", INPUT_INDEPENDENT_CHECKS)
def test_input_independent_sklearn_checks(estimator, check_name):
    getattr(estimator_checks, check_name)(type(estimator).__name__, clone(estimator))


@pytest.mark.parametrize("estimator", IMAGE_ESTIMATORS, ids=IDS)
def test_image_input_is_declared_so_sklearn_checks_say_they_skip(estimator):
    tags = get_tags(estimator)
    assert not tags.input_tags.two_d_array and tags.input_tags.three_d_array
    with pytest.warns(SkipTestWarning, match="Can't test estimator"):
        list(estimator_checks._yield_all_checks(estimator, legacy=True))


@pytest.mark.parametrize("estimator", IMAGE_ESTIMATORS, ids=IDS)
def test_fit_returns_self_and_leaves_parameters_alone(estimator, images):
    estimator = clone(estimator)
    params = {k: (v if not hasattr(v, "get_params") else repr(v)) for k, v in estimator.get_params().items()}
    assert estimator.fit(images) is estimator
    after = {k: (v if not hasattr(v, "get_params") else repr(v)) for k, v in estimator.get_params().items()}
    assert after == params
    public = {k for k in vars(estimator) if not k.startswith("_") and not k.endswith("_")}
    assert public == set(params), "fit must add only trailing-underscore attributes"


@pytest.mark.parametrize("estimator", IMAGE_ESTIMATORS, ids=IDS)
def test_unfitted_use_raises_not_fitted(estimator, images):
    with pytest.raises(NotFittedError):
        _output(clone(estimator), images)


@pytest.mark.parametrize("estimator", IMAGE_ESTIMATORS, ids=IDS)
def test_readonly_input_and_input_left_unmodified(estimator, images):
    readonly = images.copy()
    readonly.setflags(write=False)
    estimator = clone(estimator).fit(readonly)
    _output(estimator, readonly)
    np.testing.assert_array_equal(readonly, images)


@pytest.mark.parametrize("estimator", IMAGE_ESTIMATORS, ids=IDS)
def test_fit_is_idempotent_and_repeatable(estimator, images):
    first = clone(estimator).fit(images)
    expected = _output(first, images)
    np.testing.assert_array_equal(_output(first.fit(images), images), expected)
    np.testing.assert_array_equal(_output(clone(estimator).fit(images), images), expected)


@pytest.mark.parametrize("estimator", IMAGE_ESTIMATORS, ids=IDS)
def test_pickle_and_joblib(estimator, images, tmp_path):
    estimator = clone(estimator).fit(images)
    expected = _output(estimator, images)
    np.testing.assert_array_equal(_output(pickle.loads(pickle.dumps(estimator)), images), expected)
    joblib.dump(estimator, tmp_path / "model.joblib")
    np.testing.assert_array_equal(_output(joblib.load(tmp_path / "model.joblib"), images), expected)


@pytest.mark.parametrize("estimator", IMAGE_ESTIMATORS, ids=IDS)
def test_fit_ignores_y_and_score_takes_it(estimator):
    X, y = two_tone_images(n_per_group=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fitted = clone(estimator).fit(X, y)
    np.testing.assert_array_equal(_output(fitted, X), _output(clone(estimator).fit(X), X))
    if hasattr(fitted, "score"):
        assert 0.0 <= fitted.score(X, y) <= 1.0


@pytest.mark.parametrize("estimator", IMAGE_ESTIMATORS, ids=IDS)
def test_no_n_features_in_from_image_axes(estimator, images):
    assert not hasattr(clone(estimator).fit(images), "n_features_in_")


@pytest.mark.parametrize("estimator", IMAGE_ESTIMATORS, ids=IDS)
def test_embedding_parameters_changed_after_fit_are_checked_when_used(estimator, images):
    estimator = clone(estimator).fit(images)
    # PretrainedFeatureClusterer hands its own to its fitted embedder_ at each call.
    estimator.set_params(batch_size=-1)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        _output(estimator, images)
