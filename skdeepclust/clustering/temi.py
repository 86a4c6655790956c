"""TEMI clustering heads (Adaloglou et al., 2023, "Exploring the Limits of Deep Image
Clustering using Pretrained Models"): student/teacher heads trained to maximise a
pointwise mutual information between each sample and its nearest neighbours."""

from __future__ import annotations

import copy

import torch

from . import _training as tr
from ._losses import beta_pmi

__all__ = ["TEMIClusterer"]


class TEMIClusterer(tr.HeadClusterer):
    """Cluster frozen features with TEMI's teacher-student PMI heads.

    For random pairs ``(x, x')`` of a sample and one of its ``n_neighbors``
    nearest neighbours (cosine), each student head ``q_s`` is trained to maximise,
    symmetrised over the two roles,

        w(x, x') * log sum_c (q_s(c|x) q_t(c|x'))**beta / pi(c)

    where ``q_t`` is the teacher head (an exponential moving average of the
    student's weights, never trained directly), ``pi`` is the teacher's running
    estimate of the cluster marginal, and ``w(x, x') = sum_c q_t(c|x) q_t(c|x')``
    (averaged over heads) down-weights neighbour pairs the teachers think are in
    different clusters. Dividing by ``pi`` replaces SCAN's entropy term: no
    cluster can take over, since agreeing on a big cluster earns little.
    ``n_heads`` heads train at once; the kept head, whose teacher makes the
    predictions, is the one whose hard labels share the most mutual information
    with those of the samples' neighbours (not the lowest loss, as in the paper:
    see Notes).

    Parameters
    ----------
    n_clusters : int, default=8
        Number of clusters the heads output; clusters no training sample falls
        in are pruned after training (see ``n_clusters_``).
    n_neighbors : int, default=10
        Neighbours mined per sample (capped at ``n_samples - 1``).
    n_heads : int, default=10
        Heads trained at once.
    head : {"linear", "mlp"}, default="linear"
        A linear map, or an MLP with one hidden ReLU layer of ``hidden_size``.
    hidden_size : int, default=512
        Hidden width of the MLP head; unused for ``head="linear"``.
    beta : float, default=0.6
        Exponent of the joint probability in the PMI, in (0, 1].
    student_temperature : float, default=0.1
        Softmax temperature of the student heads.
    teacher_temperature : float, default=0.1
        Softmax temperature of the teacher heads. Below the student's, it sharpens
        the targets; the reference code uses 0.1 for both.
    teacher_momentum : float, default=0.95
        EMA factor of the teacher weights per step.
    prior_momentum : float, default=0.9
        EMA factor of the cluster-marginal estimate ``pi`` per step.
    n_epochs : int, default=100
        Passes over the data.
    batch_size : int, default=1024
        Anchors per step.
        On small data sets the batch shrinks so that an epoch has at least 8
        batches (but not below 64 samples), which keeps enough optimisation steps.
    learning_rate : float, default=1e-3
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
    head_weights_ : list of (ndarray, ndarray)
        (weight, bias) of each layer of the kept teacher head, CPU numpy arrays.
    best_head_ : int
        Index of the head that was kept.
    head_losses_ : ndarray of shape (n_heads,)
        Mean loss of each head over the last epoch.
    n_features_in_ : int
        Number of features seen during fit.

    Notes
    -----
    Rows are L2-normalised before entering the head, in ``fit`` and ``predict``
    alike. Probabilities from ``predict_proba`` use the student temperature.

    The paper keeps the head with the lowest loss. With ``beta < 1``, though, the
    term ``(q_s q_t)**beta / pi`` of a cluster the teacher is abandoning grows as
    ``pi`` shrinks, so heads that are merging two clusters reach the lowest
    losses. On the Example's data with the default 100 epochs and batch size, the
    lowest-loss head found the three groups for 2 of 8 seeds and used only two
    clusters for 4; the head with the most neighbour information found them for 6
    and used all three clusters for all 8. The mutual information of hard labels
    cannot be raised by merging: it is at most the log of the number of clusters
    a head uses.

    The reference code (HHU-MMBS/TEMI-official-BMVC2023) has the same loss, pair
    weights, temperatures, ``beta`` and prior update, but other settings, meant for
    50,000 or more images. Its teacher momentum is 0.996: on CIFAR-10's 10,000
    test images (SimCLR features of ``benchmarks/heads.py``, about 10 steps an
    epoch) that teacher lags the student by some 25 epochs, and seeds 0-2 gave
    accuracies of 0.379, 0.385 and 0.372, against 0.589 +- 0.023 over six seeds
    at 0.95. It mines 50 neighbours: over six seeds they gave 60.0 +- 2.4,
    44.9 +- 1.1 and 32.3 +- 0.6 on the balanced, ratio-10 and ratio-100 sets of
    that benchmark, against 58.9 +- 2.3, 44.4 +- 1.6 and 33.6 +- 1.0 with 10, so
    10 stays. Its head is DINO's projection head (an MLP to an L2-normalised
    256-d bottleneck, then a weight-normalised layer without bias), trained with
    AdamW at a learning rate of 1e-4 per 256 samples of batch after a 20-epoch
    warm-up, 16 heads at once.

    Examples
    --------
    >>> import numpy as np
    >>> from skdeepclust.clustering import TEMIClusterer
    >>> rng = np.random.default_rng(0)
    >>> X = np.repeat(np.eye(8)[:3], 40, axis=0) + 0.1 * rng.standard_normal((120, 8))
    >>> temi = TEMIClusterer(n_clusters=3, n_epochs=30, batch_size=32, random_state=0).fit(X)
    >>> [len(set(temi.labels_[i:i + 40])) for i in (0, 40, 80)], temi.n_clusters_
    ([1, 1, 1], 3)
    """

    def __init__(self, n_clusters=8, n_neighbors=10, n_heads=10, head="linear",
                 hidden_size=512, beta=0.6, student_temperature=0.1, teacher_temperature=0.1,
                 teacher_momentum=0.95, prior_momentum=0.9, n_epochs=100, batch_size=1024,
                 learning_rate=1e-3, weight_decay=1e-4, device="auto", random_state=None,
                 verbose=0):
        self.n_clusters = n_clusters
        self.n_neighbors = n_neighbors
        self.n_heads = n_heads
        self.head = head
        self.hidden_size = hidden_size
        self.beta = beta
        self.student_temperature = student_temperature
        self.teacher_temperature = teacher_temperature
        self.teacher_momentum = teacher_momentum
        self.prior_momentum = prior_momentum
        self.n_epochs = n_epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    def _check_params(self):
        self._check_head_params()
        tr.check_float("beta", self.beta, 0.0, 1.0, low_inclusive=False)
        tr.check_float("student_temperature", self.student_temperature, low_inclusive=False)
        tr.check_float("teacher_temperature", self.teacher_temperature, low_inclusive=False)
        tr.check_float("teacher_momentum", self.teacher_momentum, 0.0, 1.0, high_inclusive=False)
        tr.check_float("prior_momentum", self.prior_momentum, 0.0, 1.0, high_inclusive=False)

    @tr.with_gradients
    def fit(self, X, y=None):
        """Mine neighbours, train the student and teacher heads, keep the best teacher.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Feature matrix.
        y : None
            Ignored.

        Returns
        -------
        self : TEMIClusterer
            The fitted estimator.
        """
        unit, setup, hidden = self._start_training(X)
        student = setup.new_module(
            lambda generator: tr.MultiHead(self.n_heads, unit.shape[1], self.n_clusters, hidden,
                                           generator=generator))
        teacher = copy.deepcopy(student).requires_grad_(False)
        optimizer = torch.optim.AdamW(student.parameters(), lr=self.learning_rate,
                                      weight_decay=self.weight_decay)
        fix = self._divergence_fix()
        prior = setup.features.new_full((self.n_heads, self.n_clusters), 1.0 / self.n_clusters)

        def step(anchors, epoch):
            neighbors = tr.sample_neighbors(setup.neighbors, anchors, setup.generator)
            anchor_x, neighbor_x = setup.features[anchors], setup.features[neighbors]
            student_anchor = torch.softmax(student(anchor_x) / self.student_temperature, -1)
            student_neighbor = torch.softmax(student(neighbor_x) / self.student_temperature, -1)
            with torch.no_grad():
                teacher_anchor = torch.softmax(teacher(anchor_x) / self.teacher_temperature, -1)
                teacher_neighbor = torch.softmax(
                    teacher(neighbor_x) / self.teacher_temperature, -1)
                pair_weight = (teacher_anchor * teacher_neighbor).sum(-1).mean(0)
            pmi = 0.5 * (beta_pmi(student_anchor, teacher_neighbor, prior, self.beta)
                         + beta_pmi(student_neighbor, teacher_anchor, prior, self.beta))
            losses = -(pair_weight * pmi).mean(-1)
            optimizer.zero_grad()
            losses.sum().backward()
            tr.optimizer_step(optimizer, fix)
            with torch.no_grad():
                for teacher_param, student_param in zip(teacher.parameters(),
                                                        student.parameters()):
                    teacher_param.lerp_(student_param, 1.0 - self.teacher_momentum)
                batch_marginal = torch.cat([teacher_anchor, teacher_neighbor], 1).mean(1)
                prior.lerp_(batch_marginal, 1.0 - self.prior_momentum)
            return losses

        head_losses = tr.train_epochs(
            step, n_samples=setup.n_samples, batch_size=self.batch_size,
            n_epochs=self.n_epochs, generator=setup.generator,
            progress=tr.Progress("TEMI", self.n_epochs, self.verbose))
        # Not the lowest loss: with beta < 1 a cluster the teacher is abandoning
        # inflates its PMI term ((q_s q_t)**beta / pi grows as pi shrinks), so the
        # lowest-loss head is often one that merged two clusters.
        best_head = tr.most_informative_head(teacher, setup, head_losses, fix,
                                             hidden)
        layers = teacher.export(best_head)
        # Folding the temperature into the last layer makes predict a plain softmax.
        *hidden_layers, (weight, bias) = layers
        layers = hidden_layers + [(weight / self.student_temperature,
                                   bias / self.student_temperature)]
        self._keep_head(layers, unit, best_head, head_losses)
        return self
