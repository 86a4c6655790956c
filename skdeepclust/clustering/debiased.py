"""A debiased clustering head for imbalanced data: each sample is seen together with
a pooled summary of its batch (statistics pooling), and the balance prior acts on
over-clustered fine clusters that are merged along the k-NN graph afterwards, so
the final cluster sizes are not forced to be equal."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from . import _training as tr
from ._losses import marginal_entropy, neighbor_consistency

__all__ = ["DebiasedClusterer"]

# Keeps the standardisation finite on features that are constant in the batch.
VARIANCE_EPSILON = 1e-6


def pool_statistics(features):
    """The batch summary a debiased head sees: per-feature mean and variance, and the
    log of the batch size (cardinality), as one vector of length 2 * n_features + 1."""
    mean = features.mean(dim=0)
    variance = features.var(dim=0, unbiased=False)
    # A fill on the device: a tensor made from a Python list would be copied from
    # the host, and on CUDA that copy waits for all queued work, every training step.
    cardinality = features.new_full((1,), math.log(features.shape[0]))
    return torch.cat([mean, variance, cardinality])


class StatisticsPoolingHeads(nn.Module):
    """``n_heads`` heads whose logits for a sample depend on the sample and its batch.

    The sample is standardised with the batch mean and variance, so directions
    shared by the whole batch (which a dominant class shapes) stop dominating the
    logits; the pooled statistics also pass through a small encoder into a
    per-cluster logit offset, which lets a head shift its cluster priors with the
    composition of the batch instead of baking one composition into its biases.
    """

    def __init__(self, n_heads, n_features, n_clusters, hidden_size, context_size, *, generator):
        super().__init__()
        self.n_features = n_features
        self.sample_heads = tr.MultiHead(n_heads, n_features, n_clusters, hidden_size, generator=generator)
        self.context_encoder = tr.MultiHead(n_heads, 2 * n_features + 1, context_size, generator=generator)
        self.context_to_logits = tr.MultiHead(n_heads, context_size, n_clusters, generator=generator)

    def forward(self, features, pooled):
        standardised = standardise(features, pooled, self.n_features)
        context = torch.relu(self.context_encoder(pooled.unsqueeze(0)))
        return self.sample_heads(standardised) + self.context_to_logits(context)

    def export(self, head):
        return {
            "sample": self.sample_heads.export(head),
            "context_encoder": self.context_encoder.export(head),
            "context_to_logits": self.context_to_logits.export(head),
        }


def standardise(features, pooled, n_features):
    """Centre and scale by the pooled moments; the 1/sqrt(n_features) factor keeps the
    standardised rows at about unit norm, the scale of the L2-normalised input."""
    mean, variance = pooled[:n_features], pooled[n_features:2 * n_features]
    return (features - mean) / ((variance + VARIANCE_EPSILON) ** 0.5 * n_features ** 0.5)


def exported_debiased_logits(weights, pooled, unit):
    """Numpy logits of an exported :class:`StatisticsPoolingHeads` head."""
    n_features = unit.shape[1]
    standardised = standardise(unit, pooled, n_features)
    context = np.maximum(tr.exported_logits(weights["context_encoder"], pooled[None]), 0.0)
    offset = tr.exported_logits(weights["context_to_logits"], context)
    return tr.exported_logits(weights["sample"], standardised) + offset


def merge_on_neighbor_graph(labels, neighbors, n_clusters):
    """Greedily merge clusters that the k-NN graph links most, down to ``n_clusters``.

    The affinity of clusters ``a`` and ``b`` is the number of k-NN edges between
    them divided by ``size_a + size_b``: the share of the pair's edges that cross.
    Sub-clusters of one big class share many edges and merge early; a small class
    whose neighbours mostly stay inside it has few crossing edges relative to the
    pair's size, so it is not absorbed by a big neighbour.

    Returns, for each input cluster, the id (0 .. n_clusters - 1) of its merged cluster.
    """
    n_input = int(labels.max()) + 1
    if n_input <= n_clusters:
        return np.arange(n_input)
    n_neighbors = neighbors.shape[1]
    pair_codes = np.repeat(labels, n_neighbors) * n_input + labels[neighbors].ravel()
    links = np.bincount(pair_codes, minlength=n_input * n_input).astype(float)
    links = links.reshape(n_input, n_input)
    links = links + links.T
    np.fill_diagonal(links, 0.0)
    sizes = np.bincount(labels, minlength=n_input).astype(float)
    owner = np.arange(n_input)
    is_active = np.ones(n_input, dtype=bool)
    # The affinity of every pair, kept up to date as clusters merge (only the rows
    # and columns of a merged pair change), with -1 on the diagonal and for merged-away
    # clusters; the first maximum in row order is the pair that merges next.
    affinity = links / (sizes[:, None] + sizes[None, :])
    np.fill_diagonal(affinity, -1.0)
    for _ in range(n_input - n_clusters):
        keep, absorbed = np.unravel_index(np.argmax(affinity), affinity.shape)
        links[keep] += links[absorbed]
        links[:, keep] += links[:, absorbed]
        links[keep, keep] = 0.0
        sizes[keep] += sizes[absorbed]
        owner[owner == absorbed] = keep
        is_active[absorbed] = False
        affinity[absorbed, :] = affinity[:, absorbed] = -1.0
        updated = np.where(is_active, links[keep] / (sizes[keep] + sizes), -1.0)
        updated[keep] = -1.0
        affinity[keep, :] = affinity[:, keep] = updated
    return np.searchsorted(np.flatnonzero(is_active), owner)


def merged_probabilities(weights, pooled, fine_to_cluster, unit):
    """Probabilities of the merged clusters for L2-normalised rows ``unit``: the sums
    of their fine clusters' (``fine_to_cluster``, 0/1, fine x merged), renormalised."""
    fine = tr.softmax(exported_debiased_logits(weights, pooled, unit))
    # Fine columns added into their merged ones, rather than fine @ fine_to_cluster,
    # whose n * n_fine * n_merged products took 6.1 s for 100,000 rows, 2,000 fine
    # and 1,000 merged clusters (0.4 s so). A fine cluster whose merged one was
    # dropped counts nowhere.
    fine_ids, merged_ids = np.nonzero(fine_to_cluster)
    if fine_ids.size < fine.shape[1]:
        fine = fine[:, fine_ids]
    fine = torch.from_numpy(fine)
    merged = fine.new_zeros((fine.shape[0], fine_to_cluster.shape[1]))
    merged = merged.index_add_(1, torch.from_numpy(merged_ids), fine).numpy()
    return merged / merged.sum(axis=1, keepdims=True)


def widest_layer(weights):
    """The widest layer output of an exported :class:`StatisticsPoolingHeads` head."""
    return max(width for layers in weights.values() for width in tr.layer_widths(layers))


def annealed_weight(start, end, epoch, n_epochs):
    """Cosine schedule from ``start`` (first epoch) to ``end`` (last epoch)."""
    progress = epoch / max(n_epochs - 1, 1)
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * progress))


class DebiasedClusterer(tr.HeadClusterer):
    """Neighbour-consistency heads with statistics pooling, for imbalanced clusters.

    Like :class:`~skdeepclust.clustering.SCANClusterer`, heads are trained so that
    each sample and its nearest neighbours (cosine) share a confident cluster.
    Two things differ, both aimed at data whose classes have very different sizes:

    - **Statistics pooling.** Each head sees, besides a sample, a pooled summary
      of the batch it came in: the per-feature mean and variance, and the log of
      the batch size (cardinality). The sample is standardised with these moments
      and the summary is encoded into a per-cluster logit offset (see
      ``StatisticsPoolingHeads``), so a big class that dominates the batch
      mean does not pull the samples of a small class into itself.
    - **A balance prior that lets sizes differ.** SCAN's entropy term, weighted
      5, pushes every cluster towards ``1 / n_clusters`` of the data, which on a
      long-tailed data set splits big classes and merges small ones. Here the
      entropy prior acts only on ``overclustering * n_clusters`` *fine*
      clusters, and its weight decays along a cosine from ``entropy_weight`` to
      ``final_entropy_weight``. Near-equal fine clusters are harmless: a big
      class is covered by several of them, a small class by one. The fine
      clusters are then merged, greedily, along the k-NN graph down to
      ``n_clusters`` (``merge_on_neighbor_graph``): pairs with the largest
      share of crossing neighbour edges merge first, so the siblings of a big
      class reunite while a small class whose neighbours stay inside it keeps
      its own cluster. The final sizes are whatever the graph supports.

    The head whose fine clusters agree most informatively with the neighbours is
    kept (see Notes); fine clusters no training row picks are pruned before
    merging. ``predict_proba`` sums the fine probabilities of each merged cluster.

    Parameters
    ----------
    n_clusters : int, default=8
        Number of clusters after the heads' fine clusters are merged (see
        ``overclustering``); merged clusters no training row picks are pruned.
    n_neighbors : int, default=10
        Neighbours mined per sample (capped at ``n_samples - 1``).
    n_heads : int, default=10
        Heads trained at once.
    head : {"linear", "mlp"}, default="linear"
        The per-sample part of each head: a linear map or a one-hidden-layer MLP.
    hidden_size : int, default=512
        Hidden width of the MLP; unused for ``head="linear"``.
    context_size : int, default=32
        Width of the encoding of the pooled batch statistics.
    entropy_weight : float, default=5.0
        Weight of the batch-marginal entropy at the first epoch.
    final_entropy_weight : float, default=1.0
        Weight of the batch-marginal entropy at the last epoch.
    overclustering : int, default=2
        The heads output ``overclustering * n_clusters`` fine clusters, which
        are then merged down to ``n_clusters`` along the k-NN graph (see Notes).
    n_epochs : int, default=100
        Passes over the data.
    batch_size : int, default=1024
        Samples per batch, which is also the set the statistics are pooled over.
        On small data sets the batch shrinks so that an epoch has at least 8
        batches (but not below 64 samples), which keeps enough optimisation steps.
    learning_rate : float, default=1e-2
        AdamW learning rate.
    weight_decay : float, default=1e-4
        Decoupled weight decay.
    device : str or torch.device, default="auto"
        Where to train; ``"auto"`` uses CUDA when present. Prediction runs on
        the CPU with numpy.
    random_state : int, RandomState instance or None, default=None
        Seeds weights, batches and neighbour draws; an int makes CPU runs repeatable.
    verbose : int, default=0
        Show a progress bar (tqdm, on stderr) over the training epochs, with
        the lowest loss among the heads, when positive.

    Attributes
    ----------
    labels_ : ndarray of shape (n_samples,)
        Cluster of each training row, in ``0 .. n_clusters_ - 1``.
    n_clusters_ : int
        Clusters kept after pruning the empty ones.
    head_weights_ : dict of lists of (ndarray, ndarray)
        Layers of the kept head (sample part, statistics encoder, logit offset),
        CPU numpy arrays.
    pooled_statistics_ : ndarray of shape (2 * n_features_in_ + 1,)
        The batch summary used at predict time (see Notes).
    fine_to_cluster_ : ndarray of shape (n_fine_clusters, n_clusters_)
        One-hot membership of each kept fine cluster in the merged clusters.
    best_head_ : int
        Index of the head that was kept.
    head_losses_ : ndarray of shape (n_heads,)
        Mean loss of each head over the last epoch.
    n_features_in_ : int
        Number of features seen during fit.

    Notes
    -----
    **Prediction has no training batch to pool over.** ``fit`` therefore stores
    ``pooled_statistics_``: the mean and variance of the whole (L2-normalised)
    training set and the log of the training batch size, the cardinality the
    heads saw while training. ``predict`` and ``predict_proba`` use them for every
    row, so a row's prediction does not depend on the other rows passed with it.

    Rows are L2-normalised before entering the head, in ``fit`` and ``predict``.

    **What carries the gain.** On long-tailed CIFAR-10 features (imbalance ratios
    10 and 100, ``benchmarks/heads.py``), statistics pooling with an annealed
    entropy weight but *without* over-clustering (``overclustering=1``) did not
    beat SCAN clearly; over-clustering plus the graph merge did. Tiny fine
    clusters made of outliers are not merged preferentially (their few edges give
    them a low affinity, like a small genuine class), so with many outliers some
    may keep a cluster of their own.

    **Where it does worse.** The merge ranks a pair by its crossing edges over the
    sum of their sizes, so a cluster that has grown keeps a high affinity and
    keeps absorbing; this is what reunites a big class, and on classes of equal
    size it can make one catch-all cluster instead. On SimCLR features of 8
    CIFAR-10 classes of 500 photos plus 15% photos of the other two classes, its
    largest cluster held 37% to 44% of the rows, mixing up to six classes, and
    accuracy on the 8 classes was 0.41 to 0.49 over three seeds, against 0.50
    for k-means and 0.53 for TEMI; merging by crossing edges over the product of
    the sizes (average linkage) gave 0.54 to 0.57 there, but lost 4 to 7 points
    at imbalance ratio 10 and up to 15 on classes halving in size, the data this
    head is for. Prefer TEMI or SCAN when the classes are about equal.

    **Which head is kept.** As in
    :class:`~skdeepclust.clustering.TEMIClusterer`, the head kept is the one
    whose hard labels (here its fine clusters, before the merge) share the most
    mutual information with their neighbours' labels, not the one with the lowest
    loss. Over six seeds on CIFAR-10 SimCLR features this raised accuracy from
    46.3 ± 5.7 to 48.9 ± 2.3 at imbalance ratio 10 (one lowest-loss head scored
    34.7, below k-means) and from 53.3 to 54.6 on balanced data; on
    EfficientNet-Lite0 features it tied on balanced data and at ratio 10, and
    gained 2.5 points at ratio 100 (``benchmarks/README.md``).

    Examples
    --------
    >>> import numpy as np
    >>> from skdeepclust.clustering import DebiasedClusterer
    >>> rng = np.random.default_rng(0)
    >>> sizes = [80, 30, 10]
    >>> X = np.repeat(np.eye(8)[:3], sizes, axis=0) + 0.1 * rng.standard_normal((120, 8))
    >>> model = DebiasedClusterer(n_clusters=3, n_epochs=30, batch_size=32,
    ...                           random_state=0).fit(X)
    >>> sorted(np.bincount(model.labels_).tolist(), reverse=True)
    [80, 30, 10]
    """

    def __init__(self, n_clusters=8, n_neighbors=10, n_heads=10, head="linear",
                 hidden_size=512, context_size=32, entropy_weight=5.0,
                 final_entropy_weight=1.0, overclustering=2, n_epochs=100, batch_size=1024, learning_rate=1e-2,
                 weight_decay=1e-4, device="auto", random_state=None, verbose=0):
        self.n_clusters = n_clusters
        self.n_neighbors = n_neighbors
        self.n_heads = n_heads
        self.head = head
        self.hidden_size = hidden_size
        self.context_size = context_size
        self.entropy_weight = entropy_weight
        self.final_entropy_weight = final_entropy_weight
        self.overclustering = overclustering
        self.n_epochs = n_epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    def _check_params(self):
        self._check_head_params()
        tr.check_int("context_size", self.context_size)
        tr.check_float("entropy_weight", self.entropy_weight)
        tr.check_float("final_entropy_weight", self.final_entropy_weight)
        tr.check_int("overclustering", self.overclustering)

    @tr.with_gradients
    def fit(self, X, y=None):
        """Mine neighbours, train the statistics-pooling heads and keep the best one.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Feature matrix.
        y : None
            Ignored.

        Returns
        -------
        self : DebiasedClusterer
            The fitted estimator.
        """
        unit, setup, hidden = self._start_training(X)
        heads = setup.new_module(lambda generator: StatisticsPoolingHeads(
            self.n_heads, unit.shape[1], self.n_clusters * self.overclustering, hidden,
            self.context_size, generator=generator))
        optimizer = torch.optim.AdamW(heads.parameters(), lr=self.learning_rate,
                                      weight_decay=self.weight_decay)
        fix = self._divergence_fix()

        def step(anchors, epoch):
            neighbors = tr.sample_neighbors(setup.neighbors, anchors, setup.generator)
            anchor_x = setup.features[anchors]
            # The neighbours are judged in their anchors' batch context, so that a
            # pair is compared under one and the same summary.
            pooled = pool_statistics(anchor_x)
            anchor_proba = torch.softmax(heads(anchor_x, pooled), dim=-1)
            neighbor_proba = torch.softmax(heads(setup.features[neighbors], pooled), dim=-1)
            weight = annealed_weight(self.entropy_weight, self.final_entropy_weight, epoch,
                                     self.n_epochs)
            losses = (neighbor_consistency(anchor_proba, neighbor_proba)
                      - weight * marginal_entropy(anchor_proba))
            optimizer.zero_grad()
            losses.sum().backward()
            tr.optimizer_step(optimizer, fix)
            return losses

        head_losses = tr.train_epochs(
            step, n_samples=setup.n_samples, batch_size=self.batch_size,
            n_epochs=self.n_epochs, generator=setup.generator,
            progress=tr.Progress("Debiased", self.n_epochs, self.verbose))
        # Training-set moments, with the cardinality the heads were trained at.
        trained_batch = tr.effective_batch_size(self.batch_size, setup.n_samples)
        pooled_on_device = pool_statistics(setup.features)
        pooled_on_device[-1] = math.log(
            setup.n_samples // max(1, setup.n_samples // trained_batch))
        # By neighbour information, not loss (see Notes), and of the fine clusters:
        # judging the merged ones instead did worst on long-tailed data.
        best_head = tr.most_informative_head(lambda rows: heads(rows, pooled_on_device), setup,
                                             head_losses, fix, hidden)
        weights = heads.export(best_head)
        pooled = pooled_on_device.cpu().numpy().astype(np.float32)
        width = max(unit.shape[1], widest_layer(weights))
        fine_labels = tr.blockwise_argmax(
            lambda rows: exported_debiased_logits(weights, pooled, rows), unit, width)
        kept = tr.occupied_clusters(fine_labels, weights["sample"][-1][0].shape[1])
        weights["sample"][-1] = tuple(part[..., kept].copy() for part in weights["sample"][-1])
        weights["context_to_logits"][-1] = tuple(
            part[..., kept].copy() for part in weights["context_to_logits"][-1])
        # Every row keeps its fine cluster, renumbered among the kept ones: no second
        # pass of the pruned head over the data, and no kept fine cluster left empty.
        merged = merge_on_neighbor_graph(np.searchsorted(kept, fine_labels),
                                         setup.neighbors.cpu().numpy(), self.n_clusters)
        membership = np.eye(merged.max() + 1, dtype=np.float32)[merged]
        # Summing fine probabilities can, rarely, leave a merged cluster that no
        # training row picks; dropping it keeps the labels consecutive.
        occupied = tr.occupied_clusters(tr.blockwise_argmax(
            lambda rows: merged_probabilities(weights, pooled, membership, rows), unit, width),
            membership.shape[1])

        self.head_weights_ = weights
        self.pooled_statistics_ = pooled
        self.fine_to_cluster_ = membership[:, occupied]
        self.n_clusters_ = int(occupied.size)
        tr.warn_if_clusters_pruned(self, self.n_clusters_)
        self.best_head_ = best_head
        self.head_losses_ = head_losses.numpy().astype(np.float64)
        self.labels_ = tr.blockwise_argmax(self._proba, unit, width)
        return self

    def _proba(self, unit):
        return merged_probabilities(self.head_weights_, self.pooled_statistics_,
                                    self.fine_to_cluster_, unit)

    def _widest(self, n_features):
        return max(n_features, widest_layer(self.head_weights_))
