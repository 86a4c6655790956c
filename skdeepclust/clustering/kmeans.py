"""k-means in torch, for a GPU without cuML: k-means++ seeding, several restarts,
squared distances as matrix products over blocks of rows."""

from __future__ import annotations

import math
import sys
import warnings

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, ClusterMixin, TransformerMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import euclidean_distances
from sklearn.utils.validation import (
    _check_sample_weight,
    check_array,
    check_is_fitted,
    validate_data,
)

from .._device import host_array, resolve_device, torch_seed_from
from .._warnings import stacklevel_of_user_code
from .._validation import check_float, check_int, check_verbose
from ._training import make_generator, row_blocks

__all__ = ["TorchKMeans"]

# Distances computed at once: about 64 MB in float32, so the rows per block
# shrink as the number of centres grows.
DISTANCES_PER_BLOCK = 1 << 24
# Centres closer than this, squared and per feature, in the fit's frame (rows within
# +-1), coincide but for rounding (float32 means err by about 1e-7 there): as where
# there are fewer distinct rows than clusters.
COINCIDING_SQUARED_GAP = 1e-10
# Lloyd stops after this many moves of empty clusters in a row that found no lower inertia.
MOVES_IN_VAIN_ALLOWED = 5


def _center_terms(X, centers):
    """|c|^2 - 2 x.c for every row and centre: the squared distance less |x|^2.

    One fused matrix product; the row norms, which never change, are added only
    where a distance itself is needed.
    """
    return torch.addmm((centers * centers).sum(dim=1), X, centers.T, alpha=-2.0)


def _assign(X, row_sq_norms, centers):
    """Nearest centre of each row and its squared distance, block by block."""
    labels, distances = [], []
    for rows in row_blocks(X.shape[0], centers.shape[0], DISTANCES_PER_BLOCK):
        nearest, label = _center_terms(X[rows], centers).min(dim=1)
        labels.append(label)
        distances.append(nearest.add_(row_sq_norms[rows]).clamp_min_(0.0))
    return torch.cat(labels), torch.cat(distances)


def _squared_distances(X, row_sq_norms, points):
    """Squared distance of every row of X to every one of a few ``points``."""
    return torch.cat([
        _center_terms(X[rows], points).add_(row_sq_norms[rows, None]).clamp_min_(0.0)
        for rows in row_blocks(X.shape[0], points.shape[0], DISTANCES_PER_BLOCK)
    ])


def _column_means(data):
    """The mean row of ``data``, in its dtype but summed in float64: float32 sums of
    values near 1e35 overflow. By blocks of rows, so that the float64 copy stays small."""
    total = torch.zeros(data.shape[1], dtype=torch.float64, device=data.device)
    for rows in row_blocks(data.shape[0], data.shape[1], DISTANCES_PER_BLOCK):
        total += data[rows].sum(dim=0, dtype=torch.float64)
    return (total / data.shape[0]).to(data.dtype)


def unit_scale(peak, dtype):
    """A power of two ``s`` with ``peak * s`` in [0.5, 1), as far as ``s**2`` stays
    within ``dtype``'s range; 1 for 0.

    Multiplying by a power of two is exact, so distances computed on rows scaled by
    ``s`` are those of the rows times ``s``, but their squares neither overflow (values
    near 1e19 in float32) nor vanish (near 1e-25).
    """
    if not 0 < peak < math.inf:
        return 1.0
    limit = np.finfo(dtype).maxexp // 2 - 1  # so that squared distances can be scaled back
    return math.ldexp(1.0, min(max(-math.frexp(peak)[1], -limit), limit))


def centred_frame(centres):
    """The shift and scale (see :func:`unit_scale`) that put ``centres`` about the
    origin, within ±1, and the centres in that frame; rows go there as
    ``(X - shift) * scale``.

    Distances to the centres keep their precision in that frame: the expansion
    |x|^2 - 2 x.c + |c|^2 loses it for rows far from the origin compared with
    their distances (features offset by 1e4 in float32).
    """
    shift = centres.mean(axis=0)
    scale = unit_scale(float(np.abs(centres - shift).max(initial=0.0)), centres.dtype)
    return shift, scale, (centres - shift) * scale


def nearest_centres(X, centres, distances=True):
    """Nearest of ``centres`` to each row of ``X`` (numpy arrays of one dtype), and the
    squared distance to it in float64 (None with ``distances=False``).

    By blocks of rows, so that the distances of all rows to all centres never
    exist at once (a million rows and a thousand centres would take gigabytes).
    """
    shift, scale, local_centres = centred_frame(centres)
    centre_norms = (local_centres * local_centres).sum(axis=1)
    labels = np.empty(X.shape[0], dtype=np.int64)
    squared = np.empty(X.shape[0], dtype=np.float64) if distances else None
    for rows in row_blocks(X.shape[0], centres.shape[0] + X.shape[1], DISTANCES_PER_BLOCK):
        local = (X[rows] - shift) * scale
        # |x|^2 does not change which centre is nearest.
        labels[rows] = (centre_norms - 2.0 * (local @ local_centres.T)).argmin(axis=1)
        if distances:
            # The distance itself from the difference, which loses no precision to cancellation.
            local -= local_centres[labels[rows]]
            squared[rows] = np.einsum("ij,ij->i", local, local, dtype=np.float64)
    return labels, squared / (scale * scale) if distances else None


def _drawn(weights, n_draws, generator):
    """Rows drawn with replacement in proportion to ``weights``; rows of weight 0 never.

    Any number of rows: torch.multinomial takes at most 2**24.
    """
    cumulative = weights.cumsum(0, dtype=torch.float64)
    targets = torch.rand(n_draws, generator=generator, dtype=torch.float64, device=weights.device)
    rows = torch.searchsorted(cumulative, targets * cumulative[-1], right=True)
    return rows.clamp_max_(weights.shape[0] - 1)  # against rounding at the top end


def _random_rows(n_samples, n_clusters, weights, generator, device):
    """``n_clusters`` distinct rows, drawn in proportion to ``weights`` (all 1 for None),
    as scikit-learn draws them: each row's key is an exponential draw over its weight,
    and the smallest keys win (rows of weight 0, whose key is infinite, come last)."""
    uniform = torch.rand(n_samples, generator=generator, dtype=torch.float64, device=device)
    keys = -torch.log1p(-uniform)
    if weights is not None:
        keys /= weights
    return keys.topk(n_clusters, largest=False).indices


def _kmeans_plusplus(X, row_sq_norms, n_clusters, weights, generator):
    """Greedy k-means++ (Arthur & Vassilvitskii 2007): several candidates per step,
    keep the one that lowers the potential most, as scikit-learn does. With
    ``weights``, rows are drawn and the potential summed in proportion to them."""
    n_samples = X.shape[0]
    n_candidates = 2 + int(np.log(n_clusters))
    # Drawn the same way without weights, so that weights of all ones pick what none pick.
    first = _drawn(torch.ones(n_samples, dtype=X.dtype, device=X.device)
                   if weights is None else weights, 1, generator)
    chosen = [first]
    closest = _squared_distances(X, row_sq_norms, X[first])[:, 0]
    for _ in range(1, n_clusters):
        potential = closest if weights is None else closest * weights
        # When every row coincides with a centre already, any row is as good as
        # another. Deciding that on the device spares a wait for it each step.
        potential = torch.where(potential.sum() > 0, potential,
                                1.0 if weights is None else weights)
        candidates = _drawn(potential, n_candidates, generator)
        candidate_closest = torch.minimum(closest[:, None],
                                          _squared_distances(X, row_sq_norms, X[candidates]))
        candidate_potential = (candidate_closest if weights is None
                               else candidate_closest * weights[:, None])
        # index_select, because indexing with a tensor scalar reads it back to the host.
        best = candidate_potential.sum(dim=0).argmin().view(1)
        closest = candidate_closest.index_select(1, best).squeeze(1)
        chosen.append(candidates.index_select(0, best))
    return X[torch.cat(chosen)].clone()


def _lloyd(X, row_sq_norms, centers, weights, max_iter, shift_tolerance):
    """Lloyd iterations until the squared centre shift is at most ``shift_tolerance``,
    the labels repeat, or moving empty clusters did not lower the inertia."""
    n_clusters = centers.shape[0]
    weighted_rows = X if weights is None else X * weights[:, None]
    n_iter = 0
    previous_labels, lowest_inertia, moves_in_vain = None, math.inf, 0
    for n_iter in range(1, max_iter + 1):
        labels, distances = _assign(X, row_sq_norms, centers)
        # Labels as before give the same means again: only empty clusters would move.
        # (scikit-learn also stops on repeated labels.)
        labels_changed = (torch.ones((), dtype=torch.bool, device=X.device) if previous_labels is None
                          else (labels != previous_labels).any())
        previous_labels = labels
        sums = torch.zeros_like(centers).index_add_(0, labels, weighted_rows)
        # Not bincount: on CUDA it reads the range of the labels back to the host.
        if weights is None:  # counted in integers: float32 stops counting at 2**24
            counts = torch.zeros(n_clusters, dtype=labels.dtype, device=X.device)
            counts = counts.index_add_(0, labels, torch.ones_like(labels)).to(X.dtype)
        else:
            counts = torch.zeros(n_clusters, dtype=X.dtype, device=X.device)
            counts = counts.index_add_(0, labels, weights)
        empty = counts == 0
        new_centers = sums / torch.where(empty, 1, counts)[:, None]
        # The one read-back of the iteration: whether the labels changed, whether any
        # cluster emptied, and the shift.
        labels_changed, n_empty, shift = torch.stack(
            [labels_changed.to(X.dtype), empty.sum().to(X.dtype), ((new_centers - centers) ** 2).sum()]
        ).tolist()
        if not labels_changed:
            break
        if n_empty:
            # Moving an empty cluster onto a row that lies apart lowers the inertia by at
            # least that row's distance. Where it does not, time after time, no row lies
            # apart: with fewer distinct rows than clusters, rounding noise picks rows on
            # their centres, hands them from one tied centre to another, and the clusters
            # would trade places until max_iter, their shift never below the tolerance.
            # (Measured from the differences: the expansion's distances are noise there.
            # Not at once: where float32 barely resolves the clusters, noise can also
            # hide a move that helps.)
            inertia = float(_inertia(X, centers, labels, weights))
            moves_in_vain = moves_in_vain + 1 if inertia >= lowest_inertia else 0
            lowest_inertia = min(lowest_inertia, inertia)
            if moves_in_vain >= MOVES_IN_VAIN_ALLOWED:
                break
            # An empty cluster restarts on the rows worst served by the others.
            served = distances if weights is None else distances * weights
            farthest = served.topk(int(n_empty)).indices
            new_centers[empty] = X[farthest]
            shift = float(((new_centers - centers) ** 2).sum())
        centers = new_centers
        if shift <= shift_tolerance:
            break
    labels, _ = _assign(X, row_sq_norms, centers)
    return centers, labels, _inertia(X, centers, labels, weights), n_iter


def _has_coinciding_centres(centers):
    """Whether two of ``centers`` (in the fit's frame) coincide but for rounding; on
    the host in float64, whose expansion of the distance adds no noise of that size."""
    local = centers.detach().cpu().double().numpy()
    norms = (local * local).sum(axis=1)
    limit = COINCIDING_SQUARED_GAP * local.shape[1]
    for rows in row_blocks(len(local), len(local) + local.shape[1], DISTANCES_PER_BLOCK):
        squared = norms[rows, None] - 2.0 * (local[rows] @ local.T) + norms
        squared[np.arange(squared.shape[0]), np.arange(rows.start, rows.stop)] = np.inf  # itself
        if (squared <= limit).any():
            return True
    return False


def _inertia(X, centers, labels, weights):
    """Sum of the (weighted) squared distances of the rows to their centres.

    Computed from the differences, not from |x|^2 - 2x.c + |c|^2 as the
    assignment is: that expansion loses float32's precision when the rows are
    far from the origin compared with their distances.
    """
    total = X.new_zeros((), dtype=torch.float64)
    # Blocks of about as many values as distances.
    for rows in row_blocks(X.shape[0], X.shape[1], DISTANCES_PER_BLOCK):
        squared = ((X[rows] - centers[labels[rows]]) ** 2).sum(dim=1)
        total += (squared if weights is None else squared * weights[rows]).sum(dtype=torch.float64)
    return total


class TorchKMeans(ClassNamePrefixFeaturesOutMixin, ClusterMixin, TransformerMixin, BaseEstimator):
    """k-means on the GPU (or CPU) with torch, mirroring scikit-learn's KMeans.

    k-means++ seeding (greedy, like scikit-learn's), ``n_init`` restarts keeping
    the lowest inertia, and Lloyd iterations whose distances are matrix products
    over blocks of rows, so memory stays at about 16 million distances.
    On the same data it reaches the same inertia as
    :class:`sklearn.cluster.KMeans` within a small tolerance (the random draws
    differ, so the labels may differ on ambiguous data).

    Parameters
    ----------
    n_clusters : int, default=8
        Number of clusters.
    n_init : int, default=3
        Number of k-means++ restarts; the one with the lowest inertia is kept.
    max_iter : int, default=300
        Maximum Lloyd iterations per restart.
    tol : float, default=1e-4
        Convergence when the squared shift of all centres is at most ``tol``
        times the mean per-feature variance of the data (scikit-learn's rule).
    init : {"k-means++", "random"} or array-like of shape (n_clusters, n_features), \
            default="k-means++"
        Seeding: k-means++, ``n_clusters`` distinct random rows (drawn in
        proportion to ``sample_weight``), or the given centres, from which one run
        starts (``n_init`` is then not used).
    device : str or torch.device, default="auto"
        Where to compute; ``"auto"`` uses CUDA when present.
    random_state : int, RandomState instance or None, default=None
        Seeds the initialisations; an int makes runs repeatable on the CPU. On
        CUDA the centre sums are accumulated in no fixed order, so rounding may
        differ between runs and break near-ties another way.
    verbose : int or bool, default=0
        Print the inertia of each restart to stderr when > 0.

    Attributes
    ----------
    cluster_centers_ : ndarray of shape (n_clusters, n_features)
        Centres, as numpy on the CPU (a fitted model pickles and loads anywhere).
    labels_ : ndarray of shape (n_samples,)
        Cluster of each training row.
    inertia_ : float
        Sum of squared distances of the training rows to their centres,
        weighted by ``sample_weight`` when given.
    n_iter_ : int
        Lloyd iterations of the kept restart.
    n_features_in_ : int
        Number of features seen during fit.

    Examples
    --------
    >>> import numpy as np
    >>> from skdeepclust.clustering import TorchKMeans
    >>> X = np.array([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0], [5.1, 5.0]])
    >>> km = TorchKMeans(n_clusters=2, random_state=0, device="cpu").fit(X)
    >>> int(km.labels_[0] == km.labels_[1]), int(km.labels_[0] == km.labels_[2])
    (1, 0)
    >>> km.predict([[4.9, 5.1]]).tolist() == [int(km.labels_[2])]
    True
    """

    def __init__(self, n_clusters=8, n_init=3, max_iter=300, tol=1e-4, init="k-means++",
                 device="auto", random_state=None, verbose=0):
        self.n_clusters = n_clusters
        self.n_init = n_init
        self.max_iter = max_iter
        self.tol = tol
        self.init = init
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    def _check_params(self):
        """The checked ``n_clusters``, ``n_init``, ``max_iter`` and ``tol``."""
        checked = (
            check_int("n_clusters", self.n_clusters),
            check_int("n_init", self.n_init),
            check_int("max_iter", self.max_iter),
            check_float("tol", self.tol),
        )
        if isinstance(self.init, str) or not hasattr(self.init, "__len__"):
            if self.init not in ("k-means++", "random"):
                raise ValueError(
                    "init must be 'k-means++', 'random' or an array of centres of shape "
                    f"(n_clusters, n_features); got {self.init!r}."
                )
        check_verbose(self.verbose)
        return checked

    def _given_centers(self, n_clusters, X):
        """The centres given as ``init``, checked against ``X``, in its dtype (a copy)."""
        centers = check_array(host_array(self.init, "init"), dtype=X.dtype, copy=True, input_name="init")
        if centers.shape != (n_clusters, X.shape[1]):
            raise ValueError(
                f"init holds centres of shape {centers.shape}, but n_clusters={n_clusters} "
                f"centres of the {X.shape[1]} features of X, shape ({n_clusters}, "
                f"{X.shape[1]}), are needed."
            )
        return centers

    def fit(self, X, y=None, sample_weight=None):
        """Compute the k-means clustering of ``X``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training rows.
        y : None
            Ignored.
        sample_weight : array-like of shape (n_samples,), default=None
            Non-negative weight of each row in the seeding, the centres and the
            inertia; None weighs every row 1.

        Returns
        -------
        self : TorchKMeans
            The fitted estimator.
        """
        n_clusters, n_init, max_iter, tol = self._check_params()
        X = validate_data(self, host_array(X, "X"), dtype=[np.float64, np.float32])
        if X.shape[0] < n_clusters:
            raise ValueError(
                f"n_samples={X.shape[0]} should be >= n_clusters={n_clusters}; pass more "
                "samples or ask for fewer clusters."
            )
        device = resolve_device(self.device)
        weights, heaviest = None, 1.0
        if sample_weight is not None:
            # In float64, whatever X's dtype: weights past float32's range, or below
            # it, are valid, as only their ratios count.
            sample_weight = _check_sample_weight(
                host_array(sample_weight, "sample_weight"), X, dtype=np.float64, ensure_non_negative=True
            )
            heaviest = float(sample_weight.max())  # not the sum, which may overflow
            if not heaviest > 0:
                raise ValueError("sample_weight is zero for every row; give some rows a "
                                 "positive weight.")
            # Centres do not change with a scale of the weights, and weights of at most 1
            # keep the weighted sums within float32 (weights near 1e38 gave NaN centres).
            weights = torch.from_numpy((sample_weight / heaviest).astype(X.dtype)).to(device)
        # np.require copies read-only input (e.g. a memmap) that torch cannot wrap.
        writable = np.require(X, requirements=["C", "W"])
        source = torch.from_numpy(writable)
        data = source.to(device)
        # k-means does not change with a shift of the data, and centred rows keep
        # the distance expansion's |x|^2 and x.c small, hence precise in float32.
        mean = _column_means(data)
        if data is source and writable is X:
            data = data - mean  # X itself stays untouched
        else:
            data.sub_(mean)  # a copy of this fit's own
        # Nor with a scale; see unit_scale. aminmax, unlike abs, makes no copy of the data.
        lowest, highest = data.aminmax()
        scale = unit_scale(max(-float(lowest), float(highest)), X.dtype)
        if scale != 1.0:
            data.mul_(scale)
        shift_tolerance = tol * float(data.var(dim=0, unbiased=False).mean())
        # By blocks of rows: data * data at once would be a second copy of the data.
        blocks = row_blocks(data.shape[0], data.shape[1], DISTANCES_PER_BLOCK)
        row_sq_norms = torch.cat([(data[rows] * data[rows]).sum(dim=1) for rows in blocks])
        generator = make_generator(torch_seed_from(self.random_state), device)
        given = not isinstance(self.init, str)
        if given:
            n_init = 1  # a second run from the same centres would end where the first did
            given_centers = (torch.from_numpy(self._given_centers(n_clusters, X)).to(device) - mean) * scale

        def in_units_of_X(inertia):
            return float(inertia) / (scale * scale) * heaviest

        best = None
        for restart in range(n_init):
            if given:
                centers = given_centers
            elif self.init == "k-means++":
                centers = _kmeans_plusplus(data, row_sq_norms, n_clusters, weights, generator)
            else:
                centers = data[_random_rows(data.shape[0], n_clusters, weights, generator, device)]
            centers, labels, inertia, n_iter = _lloyd(
                data, row_sq_norms, centers, weights, max_iter, shift_tolerance
            )
            if self.verbose:
                print(f"[TorchKMeans] init {restart + 1}/{n_init}: inertia {in_units_of_X(inertia):.6g}"
                      f" after {n_iter} iterations", file=sys.stderr, flush=True)
            if best is None or inertia < best[2]:
                best = (centers, labels, inertia, n_iter)
        centers, labels, inertia, n_iter = best
        self.cluster_centers_ = (centers / scale + mean).cpu().numpy()
        self._n_features_out = self.cluster_centers_.shape[0]  # transform's columns, one per centre
        self.labels_ = labels.cpu().numpy().astype(np.int64)
        if _has_coinciding_centres(centers):
            # Centres that coincide (fewer distinct rows than clusters) differ by rounding
            # alone, which picked the labels inside the fit, even splitting copies of one
            # row; predict's arithmetic picks the first of them, so the labels are
            # predict's. Rare, so worth the pass on the host.
            self.labels_ = self._nearest(X, distances=False)[0]
        self.inertia_ = in_units_of_X(inertia)
        self.n_iter_ = int(n_iter)
        # Rows of zero weight do not count: a centre that only they are near is
        # not a cluster of the weighted data.
        weighted_labels = self.labels_ if sample_weight is None else self.labels_[sample_weight > 0]
        n_distinct = np.unique(weighted_labels).size
        if n_distinct < n_clusters:
            warnings.warn(
                f"Only {n_distinct} distinct clusters were found, fewer than "
                f"n_clusters={n_clusters}, as happens when X has fewer distinct rows "
                "(of positive sample_weight) than that. Ask for fewer clusters.",
                ConvergenceWarning,
                stacklevel=stacklevel_of_user_code(),
            )
        return self

    def transform(self, X):
        """Euclidean distance of each row of ``X`` to each centre.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Rows with the features seen in ``fit``.

        Returns
        -------
        distances : ndarray of shape (n_samples, n_clusters)
        """
        return self._distances(X)

    def _distances(self, X):
        # Not transform itself: set_output(transform="pandas") wraps that one.
        X = self._validated(X)
        centers = self.cluster_centers_.astype(X.dtype, copy=False)
        shift, scale, local_centers = centred_frame(centers)  # see nearest_centres
        distances = np.empty((X.shape[0], centers.shape[0]), dtype=X.dtype)
        for rows in row_blocks(X.shape[0], centers.shape[0] + X.shape[1], DISTANCES_PER_BLOCK):
            distances[rows] = euclidean_distances((X[rows] - shift) * scale, local_centers)
        return distances / scale

    def _validated(self, X):
        check_is_fitted(self)
        return validate_data(self, host_array(X, "X"), dtype=[np.float64, np.float32], reset=False)

    def _nearest(self, X, distances=True):
        """Nearest centre of each row of checked ``X`` and its squared distance."""
        return nearest_centres(X, self.cluster_centers_.astype(X.dtype, copy=False), distances)

    def predict(self, X):
        """Nearest centre of each row of ``X`` (computed on the CPU with numpy).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Rows with the features seen in ``fit``.

        Returns
        -------
        labels : ndarray of shape (n_samples,)
        """
        return self._nearest(self._validated(X), distances=False)[0]

    def score(self, X, y=None, sample_weight=None):
        """Opposite of the inertia of ``X`` on the fitted centres: higher is better.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Rows with the features seen in ``fit``.
        y : None
            Ignored.
        sample_weight : array-like of shape (n_samples,), default=None
            Weight of each row; None weighs every row 1.

        Returns
        -------
        score : float
            Minus the sum of the (weighted) squared distances of the rows of ``X``
            to their nearest centres.
        """
        X = self._validated(X)
        _, squared = self._nearest(X)
        sample_weight = _check_sample_weight(
            host_array(sample_weight, "sample_weight"), X, dtype=np.float64, ensure_non_negative=True
        )
        return -float(squared @ sample_weight)
