"""Shared machinery of the torch clustering heads: multi-head
modules, the mini-batch loop, progress bars, CPU export of fitted weights, and the
estimator base class with prediction.

The heads (:mod:`.scan`, :mod:`.temi`, :mod:`.debiased`) all train several small
classifiers at once on frozen, L2-normalised features and keep one of them (SCAN
by its loss, TEMI and the debiased head by the neighbour information of its
labels); each module writes its own loss, and the debiased head its own pooling
and merge.
"""

from __future__ import annotations

import functools
import math
import warnings

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClusterMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.validation import check_is_fitted, validate_data
from torch import nn

from .._device import host_array, resolve_device, torch_seed_from
from .._progress import progress_bar
from .._validation import check_choice, check_float, check_int, check_verbose
from .._warnings import stacklevel_of_user_code


# --------------------------------------------------------------------------- checks


def check_enough_samples(n_samples, n_clusters):
    """Heads need at least one sample per cluster and one neighbour per sample."""
    if n_samples < max(n_clusters, 2):
        raise ValueError(
            f"n_samples={n_samples} is too few for n_clusters={n_clusters}: a clustering "
            "head needs at least 2 samples and at least one sample per cluster."
        )


# --------------------------------------------------------------------------- data


def normalize_rows(X):
    """Rows of ``X`` scaled to unit L2 norm, as float32 (a new array; ``X`` is untouched).

    Rows of zeros stay zero. Each row is first divided by its largest magnitude,
    so that its norm neither overflows nor underflows in float32: the result does
    not depend on the scale of the row, as a cosine should not. Computed by blocks
    of rows, so that the temporaries stay small beside the result.
    """
    X = np.asarray(X)
    unit = np.empty(X.shape, dtype=np.float32)
    for rows in row_blocks(X.shape[0], X.shape[1]):
        block = X[rows].astype(np.result_type(X.dtype, np.float32), copy=False)
        peaks = np.abs(block).max(axis=1, keepdims=True)
        scaled = (block / np.where(peaks > 0, peaks, 1)).astype(np.float32, copy=False)
        norms = np.linalg.norm(scaled, axis=1, keepdims=True)  # at least 1, or 0 for a row of zeros
        np.divide(scaled, np.where(norms > 0, norms, 1), out=unit[rows])
    return unit


# Values computed at once when labelling or normalising rows (activations of every
# head, probabilities, scaled rows): 64 MiB of float32, whatever the number of rows,
# heads, clusters and features.
LABELLING_BLOCK_ELEMENTS = 2 ** 24


def row_blocks(n_rows, width, budget=None):
    """Slices of consecutive rows covering ``n_rows``, each of at most ``budget // width``
    rows (at least one); ``budget`` is ``LABELLING_BLOCK_ELEMENTS`` unless given."""
    budget = LABELLING_BLOCK_ELEMENTS if budget is None else budget
    step = max(1, budget // max(1, width))
    return [slice(start, min(start + step, n_rows)) for start in range(0, n_rows, step)]


def make_generator(seed, device):
    """A torch.Generator on ``device`` seeded with ``seed`` (an int)."""
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator


FLOAT32_MAX = float(np.finfo(np.float32).max)
# Weights of an entropy term in the loss: an entropy is at most log(n_clusters).
ENTROPY_WEIGHTS = ("entropy_weight", "final_entropy_weight")
# Softmax temperatures, which divide the logits.
TEMPERATURES = ("student_temperature", "teacher_temperature")
# An epoch of fewer batches leaves small data sets too few optimisation steps: on
# 1,000 CIFAR-10 features TEMI reached 0.30 accuracy with one batch of 1,000 per epoch
# and 0.51-0.54 with eight batches of 125 (two seeds).
MIN_BATCHES_PER_EPOCH = 8
MIN_BATCH_SIZE = 64


def effective_batch_size(batch_size, n_samples):
    """The batch size training uses: ``batch_size``, shrunk on small data sets so that
    an epoch has at least ``MIN_BATCHES_PER_EPOCH`` batches, but not below
    ``MIN_BATCH_SIZE`` samples, and never above ``n_samples``."""
    return min(batch_size, n_samples, max(MIN_BATCH_SIZE, n_samples // MIN_BATCHES_PER_EPOCH))


def minibatches(n_samples, batch_size, generator):
    """Random index batches covering all samples once (an epoch).

    The permutation is split into ``n_samples // batch_size`` near-equal parts
    rather than cut into full batches plus a remainder: a tiny last batch would
    make the batch statistics (entropy of the mean assignment, pooled moments)
    noisy.
    """
    order = torch.randperm(n_samples, generator=generator, device=generator.device)
    n_batches = max(1, n_samples // batch_size)
    return list(torch.tensor_split(order, n_batches))


def sample_neighbors(neighbor_indices, anchors, generator):
    """One random neighbour (from the mined k-NN lists) for each anchor index."""
    n_neighbors = neighbor_indices.shape[1]
    pick = torch.randint(
        n_neighbors, (anchors.shape[0],), generator=generator, device=generator.device
    )
    return neighbor_indices[anchors, pick]


# --------------------------------------------------------------------------- modules


class MultiHead(nn.Module):
    """``n_heads`` independent linear or one-hidden-layer MLP classifiers run as one.

    The weights of all heads are stacked, so one batched matrix product evaluates
    them all: training ten heads costs little more than training one.
    Output: logits of shape (n_heads, batch, n_clusters).
    """

    def __init__(self, n_heads, in_features, n_clusters, hidden_size=None, *, generator):
        super().__init__()
        self.hidden_size = hidden_size
        sizes = [in_features, n_clusters] if hidden_size is None else [
            in_features, hidden_size, n_clusters
        ]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
            bound = 1.0 / math.sqrt(fan_in)
            # float32 whatever torch's default dtype is: the features always are. A
            # generator of the caller's, not torch's global stream, which every
            # thread of the process shares and may draw from meanwhile.
            self.weights.append(nn.Parameter(torch.empty(
                n_heads, fan_in, fan_out, dtype=torch.float32).uniform_(-bound, bound, generator=generator)))
            self.biases.append(nn.Parameter(torch.empty(
                n_heads, 1, fan_out, dtype=torch.float32).uniform_(-bound, bound, generator=generator)))

    def forward(self, x):
        # x: (batch, in) shared by all heads, or (n_heads, batch, in) per head.
        hidden = x
        last = len(self.weights) - 1
        for layer, (weight, bias) in enumerate(zip(self.weights, self.biases)):
            if hidden.dim() == 2:
                # One wide matrix product instead of a broadcast batched one, which is
                # several times slower on CPUs.
                n_heads, fan_in, fan_out = weight.shape
                wide = weight.permute(1, 0, 2).reshape(fan_in, n_heads * fan_out)
                hidden = (hidden @ wide).reshape(-1, n_heads, fan_out).transpose(0, 1) + bias
            else:
                hidden = torch.matmul(hidden, weight) + bias
            if layer < last:
                hidden = torch.relu(hidden)
        return hidden

    def export(self, head):
        """The weights of one head as a list of (weight, bias) CPU numpy arrays."""
        return [
            (w[head].detach().cpu().numpy().copy(), b[head, 0].detach().cpu().numpy().copy())
            for w, b in zip(self.weights, self.biases)
        ]


def exported_logits(layers, X):
    """Logits of an exported head (see :meth:`MultiHead.export`) for rows ``X``, in numpy."""
    hidden = X
    for position, (weight, bias) in enumerate(layers):
        hidden = hidden @ weight + bias
        if position < len(layers) - 1:
            hidden = np.maximum(hidden, 0.0)
    return hidden


def softmax(logits, axis=1):
    shifted = logits - logits.max(axis=axis, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=axis, keepdims=True)


def occupied_clusters(labels, n_clusters):
    """The clusters among ``0 .. n_clusters - 1`` that hold at least one of ``labels``, in order.

    Heads are pruned to these clusters after training: a cluster no training
    sample chooses carries no information, and dropping it keeps labels
    consecutive (0 .. n_clusters_ - 1), which also makes over-clustering a way
    to let the head choose the number of clusters.
    """
    return np.flatnonzero(np.bincount(labels, minlength=n_clusters))


def blockwise_argmax(scores_of, rows, width):
    """``scores_of(rows).argmax(axis=1)``, computed by blocks of rows so that the
    scores (``width`` columns) of all rows never exist at once."""
    labels = np.empty(rows.shape[0], dtype=np.int64)
    for block in row_blocks(rows.shape[0], width):
        labels[block] = scores_of(rows[block]).argmax(axis=1)
    return labels


def layer_widths(layers):
    """Widths of the outputs of exported ``layers`` (see :meth:`MultiHead.export`)."""
    return [weight.shape[1] for weight, _ in layers]


# --------------------------------------------------------------------------- loop


def with_gradients(fit):
    """Decorate a head's ``fit`` so that it trains inside a caller's ``torch.no_grad()``
    or ``torch.inference_mode()`` block too, where backward would fail."""

    @functools.wraps(fit)
    def fit_with_gradients(*args, **kwargs):
        with torch.inference_mode(False), torch.enable_grad():
            return fit(*args, **kwargs)

    return fit_with_gradients


class Progress:
    """A tqdm progress bar over the epochs, with the lowest head loss, when ``verbose`` > 0."""

    def __init__(self, name, n_epochs, verbose):
        self.bar = progress_bar(enabled=bool(verbose), total=n_epochs, desc=name, unit="epoch")

    def epoch_done(self, loss):
        self.bar.set_postfix_str(f"loss {loss:.4f}", refresh=False)
        self.bar.update(1)


def train_epochs(step, *, n_samples, batch_size, n_epochs, generator, progress):
    """Call ``step(batch_indices, epoch) -> per-head losses`` over ``n_epochs`` epochs.

    Returns the per-head mean loss of the last epoch (a CPU tensor): SCAN keeps the
    lowest, and the other heads skip those that diverged.
    """
    batch_size = effective_batch_size(batch_size, n_samples)
    last_losses = None
    # A training that raises (a diverged step, an interrupt) must not leave its bar
    # open, where a notebook would show it stuck part-way.
    with progress.bar:
        for epoch in range(n_epochs):
            mean, count = None, 0
            for batch in minibatches(n_samples, batch_size, generator):
                losses = step(batch, epoch).detach()
                count += 1
                # A running mean: the sum over the batches can overflow float32 where
                # no batch's loss does (entropy_weight=1e38), and read as divergence.
                mean = losses if mean is None else mean + (losses - mean) / count
            last_losses = mean.cpu()
            progress.epoch_done(float(last_losses.min()))
    return last_losses


def optimizer_step(optimizer, fix):
    """``optimizer.step()``; where a step's size overflows float32 (a learning_rate
    near 1e38), the ValueError of a diverged training, ending in ``fix``, instead of
    torch's RuntimeError."""
    try:
        optimizer.step()
    except RuntimeError as exc:
        if "overflow" not in str(exc):
            raise
        raise ValueError(f"Training diverged: an optimiser step overflowed float32 ({exc}). {fix}") from exc


def best_head(head_losses, fix):
    """The head with the lowest finite loss; a ValueError, ending in ``fix``, when every head diverged."""
    finite = torch.isfinite(head_losses)
    if not bool(finite.any()):
        raise ValueError(f"Training diverged: the loss of every head became NaN or infinite. {fix}")
    return int(torch.where(finite, head_losses, torch.inf).argmin())


def neighbor_label_information(head_logits, features, neighbors, hidden_size=None):
    """Mutual information, in nats, between the cluster of a sample and that of each
    of its mined neighbours, under each head's hard labels: shape (n_heads,), CPU.

    ``head_logits`` maps rows of ``features`` to logits of shape (n_heads, n_rows,
    n_clusters), as a :class:`MultiHead` does; ``hidden_size`` is the width of its
    hidden layer, if any, which bounds the rows labelled at once as the logits do.

    It is what the heads are trained to raise (neighbours agreeing on informative
    clusters) without the soft probabilities a loss can be gamed through, and it is
    at most the log of the number of clusters a head actually uses, so a head that
    merged two clusters scores below one that kept them apart.
    """
    with torch.no_grad():
        n_heads, _, n_clusters = head_logits(features[:1]).shape
        widest = max(n_clusters, hidden_size or 0, features.shape[1])
        block = max(1, LABELLING_BLOCK_ELEMENTS // (n_heads * widest))
        labels = torch.cat([head_logits(features[start:start + block]).argmax(dim=-1)
                            for start in range(0, features.shape[0], block)], dim=1)
        n_neighbors = neighbors.shape[1]
        information = []
        for head_labels in labels:
            pair_codes = (head_labels.repeat_interleave(n_neighbors) * n_clusters
                          + head_labels[neighbors.reshape(-1)])
            if n_clusters * n_clusters <= pair_codes.numel():
                # Every pair of clusters, in a table no larger than the pairs themselves.
                counts = torch.bincount(pair_codes, minlength=n_clusters * n_clusters)
                codes = torch.arange(counts.numel(), device=counts.device)
            else:
                # Only the pairs seen: a table of all pairs of thousands of clusters would
                # be mostly zeros, and gigabytes. (Sorting the pairs to find them is slower
                # than the table for a few clusters: 12.6 s against 5.7 s for 10 heads,
                # 500,000 samples, 20 neighbours and 10 clusters.)
                codes, counts = torch.unique(pair_codes, return_counts=True)
            joint = counts.double() / pair_codes.numel()
            first, second = codes // n_clusters, codes % n_clusters
            first_marginal = torch.zeros(n_clusters, dtype=joint.dtype, device=joint.device)
            second_marginal = torch.zeros_like(first_marginal)
            first_marginal.index_add_(0, first, joint)
            second_marginal.index_add_(0, second, joint)
            independent = first_marginal[first] * second_marginal[second]
            # xlogy makes the pairs never seen count 0 without a mask, which on a GPU would
            # wait for the device once per head; where joint > 0, independent > 0 too.
            ratio = joint / independent.clamp_min(torch.finfo(joint.dtype).tiny)
            information.append(torch.special.xlogy(joint, ratio).sum())
        # One copy to the host for all heads, not one wait per head.
        return torch.stack(information).cpu()


def most_informative_head(head_logits, setup, head_losses, fix, hidden_size=None):
    """The head whose hard labels carry the most neighbour information (see
    :func:`neighbor_label_information`), among those whose loss stayed finite."""
    best_head(head_losses, fix)  # raises when every head diverged
    information = neighbor_label_information(head_logits, setup.features, setup.neighbors,
                                             hidden_size)
    return int(torch.where(torch.isfinite(head_losses), information, -torch.inf).argmax())


class HeadTraining:
    """What every head needs before its loop: the data and its k-NN on the device,
    a seed for weight initialisation and a generator for batches and neighbours."""

    def __init__(self, unit_features, n_neighbors, random_state, device):
        # Imported here: neighbors itself uses this module's helpers.
        from .neighbors import topk_cosine_neighbors

        self.seed = torch_seed_from(random_state)  # first: a bad random_state fails at once
        self.device = resolve_device(device)
        self.features = torch.from_numpy(unit_features).to(self.device)
        self.n_samples = unit_features.shape[0]
        self.n_neighbors = min(n_neighbors, self.n_samples - 1)
        self.neighbors, _ = topk_cosine_neighbors(self.features, self.n_neighbors)
        # Weights are initialised on the CPU from this seed, then moved: the same
        # random_state gives the same initial heads on every device.
        self.generator = make_generator(self.seed + 1, self.device)

    def new_module(self, module_factory):
        """``module_factory(generator)``, its random weights drawn on the CPU from
        ``self.seed``, moved to the device."""
        # A stream of their own for the weights (the batches draw from self.seed + 1).
        return module_factory(torch.Generator().manual_seed(torch_seed_from(self.seed))).to(self.device)


def single_head(multi_head, head):
    """A one-head :class:`MultiHead` holding a copy of head ``head`` of ``multi_head``."""
    weights = [w.detach()[head:head + 1] for w in multi_head.weights]
    biases = [b.detach()[head:head + 1] for b in multi_head.biases]
    # Its random initial weights are overwritten below.
    copy = MultiHead(1, weights[0].shape[1], weights[-1].shape[2],
                     None if len(weights) == 1 else weights[0].shape[2], generator=torch.Generator())
    with torch.no_grad():
        for target, source in zip(list(copy.weights) + list(copy.biases), weights + biases):
            target.copy_(source)
    return copy.to(weights[0].device)


def prune_exported(layers, unit):
    """Drop the output columns of an exported head that no row of ``unit`` (the
    L2-normalised training rows) chooses.

    Returns the pruned layers and the indices of the kept columns.
    """
    width = max(unit.shape[1], *layer_widths(layers))
    labels = blockwise_argmax(lambda rows: softmax(exported_logits(layers, rows)), unit, width)
    kept = occupied_clusters(labels, layers[-1][0].shape[1])
    *hidden, (weight, bias) = layers
    return hidden + [(weight[:, kept].copy(), bias[kept].copy())], kept


def warn_if_clusters_pruned(estimator, n_kept):
    """Warn when training left some of the ``n_clusters`` asked for empty.

    Pruning them is by design (over-clustering relies on it), but a user who asked
    for ten groups and got eight should hear of it, as from scikit-learn's KMeans.
    """
    if n_kept < estimator.n_clusters:
        warnings.warn(
            f"{type(estimator).__name__} kept {n_kept} of n_clusters={estimator.n_clusters} "
            f"clusters: no training sample fell in the other {estimator.n_clusters - n_kept}, "
            "which were pruned (n_clusters_ holds the number kept). If you need exactly "
            "n_clusters groups, ask for fewer clusters or use TorchKMeans.",
            ConvergenceWarning,
            stacklevel=stacklevel_of_user_code(),
        )


# --------------------------------------------------------------------------- estimators


class HeadClusterer(ClusterMixin, BaseEstimator):
    """What the heads share once trained: the kept head as CPU numpy arrays, and prediction.

    Subclasses define ``_check_params`` (calling :meth:`_check_head_params`), open
    ``fit`` with :meth:`_start_training` and end it with :meth:`_keep_head` (or set the
    same attributes themselves and override :meth:`_proba`). ``fit_predict`` comes
    from ``ClusterMixin``.
    """

    def _check_head_params(self):
        """Check the parameters every head has; each head checks its own beside these."""
        for name in ("n_clusters", "n_neighbors", "n_heads", "hidden_size", "n_epochs"):
            check_int(name, getattr(self, name))
        check_choice("head", self.head, {"linear", "mlp"})
        check_int("batch_size", self.batch_size, minimum=2)
        check_float("learning_rate", self.learning_rate, low_inclusive=False)
        check_float("weight_decay", self.weight_decay)
        check_verbose(self.verbose)

    def _divergence_fix(self):
        """What to change when training diverged: lower learning_rate, after a
        parameter set far beyond any working value: raise a temperature so small that
        logits divided by it overflow float32; lower a weight_decay of 1 or more
        (AdamW scales the weights by 1 - learning_rate * weight_decay each step), or
        an entropy weight that takes the loss past float32's range."""
        def named(names):
            return " or ".join(f"{name} (it is {getattr(self, name)})" for name in names)

        raised = [name for name in TEMPERATURES if getattr(self, name, 1.0) * FLOAT32_MAX < 1.0]
        culprits = ["weight_decay"] if self.weight_decay >= 1 else []
        largest_entropy = math.log(max(2, self.n_clusters))
        culprits += [name for name in ENTROPY_WEIGHTS
                     if getattr(self, name, 0.0) * largest_entropy > FLOAT32_MAX]
        lowered = named([*culprits, "learning_rate"])
        return f"Raise {named(raised)}, or lower {lowered}." if raised else f"Lower {lowered}."

    def _start_training(self, X):
        """Check parameters and ``X``, L2-normalise it and mine its neighbours.

        Returns the unit rows, the :class:`HeadTraining` set-up, and the hidden size
        of the heads (None for linear heads).
        """
        self._check_params()
        X = validate_data(self, host_array(X, "X"), dtype=[np.float64, np.float32])
        check_enough_samples(X.shape[0], self.n_clusters)
        unit = normalize_rows(X)
        setup = HeadTraining(unit, self.n_neighbors, self.random_state, self.device)
        return unit, setup, None if self.head == "linear" else self.hidden_size

    def _keep_head(self, layers, unit, best_head, head_losses):
        """Store head ``best_head`` (exported ``layers``) with its empty clusters pruned."""
        if not all(np.isfinite(array).all() for layer in layers for array in layer):
            raise ValueError(
                f"Training diverged: the kept head's weights became NaN or infinite. {self._divergence_fix()}"
            )
        self.head_weights_, _ = prune_exported(layers, unit)
        self.n_clusters_ = self.head_weights_[-1][1].shape[0]
        warn_if_clusters_pruned(self, self.n_clusters_)
        self.best_head_ = best_head
        self.head_losses_ = head_losses.numpy().astype(np.float64)
        self.labels_ = blockwise_argmax(self._proba, unit, self._widest(unit.shape[1]))

    def _proba(self, unit):
        """Cluster probabilities of L2-normalised rows."""
        return softmax(exported_logits(self.head_weights_, unit))

    def _widest(self, n_features):
        """The most columns of any array that :meth:`_proba` makes."""
        return max(n_features, *layer_widths(self.head_weights_))

    def predict_proba(self, X):
        """Probability of each kept cluster for each row of ``X``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Feature matrix with the features seen in ``fit``.

        Returns
        -------
        proba : ndarray of shape (n_samples, n_clusters_)
            Rows sum to 1; in the dtype of ``X`` (float32 or float64).
        """
        X = self._validated(X)
        proba = np.empty((X.shape[0], self.n_clusters_), dtype=X.dtype)
        for rows in row_blocks(X.shape[0], self._widest(X.shape[1])):
            proba[rows] = self._proba(normalize_rows(X[rows]))
        return proba

    def _validated(self, X):
        check_is_fitted(self)
        return validate_data(self, host_array(X, "X"), dtype=[np.float64, np.float32], reset=False)

    def predict(self, X):
        """Most probable cluster of each row of ``X``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Feature matrix with the features seen in ``fit``.

        Returns
        -------
        labels : ndarray of shape (n_samples,)
            Cluster of each row, in ``0 .. n_clusters_ - 1``.
        """
        X = self._validated(X)
        return blockwise_argmax(lambda rows: self._proba(normalize_rows(rows)), X,
                                self._widest(X.shape[1]))
