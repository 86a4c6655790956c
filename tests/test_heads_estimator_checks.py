"""scikit-learn's estimator checks for the torch clusterers."""

from sklearn.utils.estimator_checks import parametrize_with_checks

from skdeepclust.clustering import (
    DebiasedClusterer,
    SCANClusterer,
    TEMIClusterer,
    TorchKMeans,
)

# Fewer heads and epochs than the defaults keep each check at a fraction of a second.
SMALL = dict(n_heads=3, n_epochs=40, device="cpu")


@parametrize_with_checks([
    TorchKMeans(device="cpu"),
    SCANClusterer(**SMALL),
    TEMIClusterer(**SMALL),
    DebiasedClusterer(**SMALL),
])
def test_sklearn_compatible(estimator, check):
    check(estimator)
