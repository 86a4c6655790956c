"""scikit-learn's estimator checks for the torch clusterers."""

import pytest
from sklearn.utils.estimator_checks import parametrize_with_checks

from skdeepclust.clustering import (
    DebiasedClusterer,
    SCANClusterer,
    TEMIClusterer,
    TorchKMeans,
)

# Fewer heads and epochs than the defaults keep each check at a fraction of a second.
SMALL = dict(n_heads=3, n_epochs=40, device="cpu")

# The checks' data has 3 groups and the heads' default n_clusters is 8: the pruning
# warning is right there, and says nothing about the checks.
pytestmark = pytest.mark.filterwarnings(
    r"ignore:.* kept \d+ of n_clusters=:sklearn.exceptions.ConvergenceWarning")




def _expected_failed_checks(estimator):
    if isinstance(estimator, TorchKMeans):  # as scikit-learn's own KMeans
        reason = ("the k-means++ draws differ between weighted rows and repeated rows, so "
                  "the local optimum may too; tests/test_heads.py checks the weights")
        return {"check_sample_weight_equivalence_on_dense_data": reason}
    return {}


@parametrize_with_checks([
    TorchKMeans(device="cpu"),
    SCANClusterer(**SMALL),
    TEMIClusterer(**SMALL),
    DebiasedClusterer(**SMALL),
], expected_failed_checks=_expected_failed_checks)
def test_sklearn_compatible(estimator, check):
    check(estimator)
