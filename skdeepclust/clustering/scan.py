"""SCAN-style clustering head on frozen features (Van Gansbeke et al., 2020).

Neighbours in a good self-supervised feature space mostly share a class, so a
classifier that gives each sample and its neighbours the same confident cluster,
while using all clusters, recovers the classes. Zhou & Zhang (2022) showed that
this works on frozen DINO features, with the backbone never fine-tuned.
"""

from __future__ import annotations

import torch

from . import _training as tr
from ._losses import marginal_entropy, neighbor_consistency

__all__ = ["SCANClusterer"]


class SCANClusterer(tr.HeadClusterer):
    """Cluster frozen features with SCAN's neighbour-consistency heads.

    Training: mine the ``n_neighbors`` nearest neighbours of every sample (cosine),
    then train ``n_heads`` linear (or MLP) heads at once, each minimising

        -mean log <p(x), p(x')>  -  entropy_weight * H(mean p over the batch)

    over random anchor/neighbour pairs ``(x, x')``. The head with the lowest loss
    is kept. An optional self-labelling stage then trains that head further with
    class-balanced cross-entropy on its own confident predictions (probability >
    ``confidence_threshold``). On features there is no image augmentation, so
    self-labelling mainly sharpens the clusters around their confident cores.

    The entropy term pushes cluster sizes towards equal; on strongly imbalanced
    data prefer :class:`~skdeepclust.clustering.DebiasedClusterer`.

    Parameters
    ----------
    n_clusters : int, default=8
        Number of clusters the heads output. Clusters no training sample falls
        in are pruned after training, so ``n_clusters_`` may be smaller; the
        entropy term spreads the samples over all of them, though, so asking
        for more clusters does not estimate their number (see
        :func:`~skdeepclust.clustering.select_n_clusters`).
    n_neighbors : int, default=10
        Neighbours mined per sample (capped at ``n_samples - 1``).
    n_heads : int, default=10
        Heads trained at once; the lowest-loss one is kept.
    head : {"linear", "mlp"}, default="linear"
        A linear map, or an MLP with one hidden ReLU layer of ``hidden_size``.
    hidden_size : int, default=512
        Hidden width of the MLP head; unused for ``head="linear"``.
    entropy_weight : float, default=5.0
        Weight of the batch-marginal entropy; larger means more even clusters.
    n_epochs : int, default=100
        Passes over the data in the clustering stage.
    self_label_epochs : int, default=0
        Passes of the self-labelling stage; 0 (the default) skips it. On frozen
        CIFAR-10 features it did not raise accuracy, hence off by default.
    confidence_threshold : float, default=0.99
        Probability above which a prediction counts as confident when self-labelling.
    batch_size : int, default=1024
        Anchors per step.
        On small data sets the batch shrinks so that an epoch has at least 8
        batches (but not below 64 samples), which keeps enough optimisation steps.
    learning_rate : float, default=1e-2
        Adam learning rate.
    weight_decay : float, default=1e-4
        L2 penalty of the Adam optimiser (decoupled, AdamW).
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
    head_weights_ : list of (ndarray, ndarray)
        (weight, bias) of each layer of the kept head, CPU numpy arrays; the
        output layer holds only the kept clusters.
    best_head_ : int
        Index of the head that was kept.
    head_losses_ : ndarray of shape (n_heads,)
        Mean loss of each head over the last clustering epoch.
    n_features_in_ : int
        Number of features seen during fit.

    Notes
    -----
    Rows are L2-normalised before entering the head, in ``fit`` and ``predict``
    alike, so the head works in the cosine geometry the neighbours were mined in.

    The reference code (wvangansbeke/Unsupervised-Classification) trains the head
    together with the backbone on augmented images (Adam at 1e-4, batch 128, 20
    neighbours counting the sample itself, one head); its ImageNet configurations
    freeze the backbone and train ten heads on the unnormalised features of
    augmented images, with SGD at learning rate 5.0, batch 512 and 50 neighbours.
    It keeps the head whose consistency minus marginal entropy (weight 1, not
    ``entropy_weight``) is lowest on the whole data set; here it is the head with
    the lowest training loss of the last epoch. On the same six fits per set, the
    reference's choice changed mean accuracy by +0.0, +0.6 and -0.0 points on the
    balanced, ratio-10 and ratio-100 sets of ``benchmarks/heads.py`` (SimCLR
    features) and by -1.1, +0.7 and +0.6 on EfficientNet-Lite0 features: no clear
    gain. The loss itself is the reference's.

    Examples
    --------
    >>> import numpy as np
    >>> from skdeepclust.clustering import SCANClusterer
    >>> rng = np.random.default_rng(0)
    >>> centres = np.eye(8)[:3]
    >>> X = np.repeat(centres, 40, axis=0) + 0.1 * rng.standard_normal((120, 8))
    >>> scan = SCANClusterer(n_clusters=3, n_epochs=20, random_state=0).fit(X)
    >>> [len(set(scan.labels_[i:i + 40])) for i in (0, 40, 80)]
    [1, 1, 1]
    >>> scan.predict_proba(X[:2]).shape
    (2, 3)
    """

    def __init__(self, n_clusters=8, n_neighbors=10, n_heads=10, head="linear",
                 hidden_size=512, entropy_weight=5.0, n_epochs=100, self_label_epochs=0,
                 confidence_threshold=0.99, batch_size=1024, learning_rate=1e-2,
                 weight_decay=1e-4, device="auto", random_state=None, verbose=0):
        self.n_clusters = n_clusters
        self.n_neighbors = n_neighbors
        self.n_heads = n_heads
        self.head = head
        self.hidden_size = hidden_size
        self.entropy_weight = entropy_weight
        self.n_epochs = n_epochs
        self.self_label_epochs = self_label_epochs
        self.confidence_threshold = confidence_threshold
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    def _check_params(self):
        self._check_head_params()
        tr.check_float("entropy_weight", self.entropy_weight)
        tr.check_int("self_label_epochs", self.self_label_epochs, minimum=0)
        tr.check_float("confidence_threshold", self.confidence_threshold, 0.0, 1.0,
                       low_inclusive=False, high_inclusive=False)

    @tr.with_gradients
    def fit(self, X, y=None):
        """Mine neighbours, train the heads and keep the best one.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Feature matrix (for example from :class:`~skdeepclust.ImageEmbedder`).
        y : None
            Ignored.

        Returns
        -------
        self : SCANClusterer
            The fitted estimator.
        """
        unit, setup, hidden = self._start_training(X)
        heads = setup.new_module(
            lambda generator: tr.MultiHead(self.n_heads, unit.shape[1], self.n_clusters, hidden,
                                           generator=generator))
        optimizer = torch.optim.AdamW(heads.parameters(), lr=self.learning_rate,
                                      weight_decay=self.weight_decay)
        fix = self._divergence_fix()

        def clustering_step(anchors, epoch):
            neighbors = tr.sample_neighbors(setup.neighbors, anchors, setup.generator)
            anchor_proba = torch.softmax(heads(setup.features[anchors]), dim=-1)
            neighbor_proba = torch.softmax(heads(setup.features[neighbors]), dim=-1)
            losses = (neighbor_consistency(anchor_proba, neighbor_proba)
                      - self.entropy_weight * marginal_entropy(anchor_proba))
            optimizer.zero_grad()
            losses.sum().backward()
            tr.optimizer_step(optimizer, fix)
            return losses

        head_losses = tr.train_epochs(
            clustering_step, n_samples=setup.n_samples, batch_size=self.batch_size,
            n_epochs=self.n_epochs, generator=setup.generator,
            progress=tr.Progress("SCAN", self.n_epochs, self.verbose))
        best_head = tr.best_head(head_losses, fix)
        head = tr.single_head(heads, best_head)
        if self.self_label_epochs:
            self_label(head, setup, self.self_label_epochs, self.confidence_threshold,
                       self.batch_size, self.learning_rate, self.weight_decay, self.verbose)

        self._keep_head(head.export(0), unit, best_head, head_losses)
        return self


def self_label(head, setup, n_epochs, threshold, batch_size, learning_rate, weight_decay,
               verbose):
    """SCAN's self-labelling on features: cross-entropy towards the head's own confident
    predictions, each cluster weighted by the inverse of its confident count in the
    batch so that large clusters do not swallow the small ones."""
    optimizer = torch.optim.AdamW(head.parameters(), lr=learning_rate, weight_decay=weight_decay)

    def step(anchors, epoch):
        logits = head(setup.features[anchors])[0]
        with torch.no_grad():
            confidence, targets = torch.softmax(logits, dim=-1).max(dim=-1)
            confident = confidence > threshold
        if not bool(confident.any()):
            return logits.new_zeros(1)
        counts = torch.bincount(targets[confident], minlength=logits.shape[1]).float()
        class_weights = torch.where(counts > 0, counts.sum() / counts.clamp_min(1.0),
                                    torch.zeros_like(counts))
        loss = torch.nn.functional.cross_entropy(
            logits[confident], targets[confident], weight=class_weights)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss.detach().reshape(1)

    tr.train_epochs(step, n_samples=setup.n_samples, batch_size=batch_size, n_epochs=n_epochs,
                    generator=setup.generator,
                    progress=tr.Progress("SCAN self-label", n_epochs, verbose))
