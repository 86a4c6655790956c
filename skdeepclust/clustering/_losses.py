"""Losses of the clustering heads, for stacked heads: probabilities of shape
(n_heads, batch, n_clusters) in, one loss per head out (shape (n_heads,))."""

from __future__ import annotations

import torch

# Keeps logarithms finite when a probability underflows to zero.
LOG_EPSILON = 1e-8


def neighbor_consistency(anchor_proba, neighbor_proba):
    """SCAN's consistency: -mean log <p_i, p_j> over anchor/neighbour pairs.

    Small when each anchor and its neighbour confidently share a cluster.
    """
    agreement = (anchor_proba * neighbor_proba).sum(dim=-1)
    return -torch.log(agreement.clamp_min(LOG_EPSILON)).mean(dim=-1)


def marginal_entropy(proba):
    """Entropy of the batch's mean assignment; large when clusters are used evenly."""
    marginal = proba.mean(dim=-2)
    return -(marginal * torch.log(marginal.clamp_min(LOG_EPSILON))).sum(dim=-1)


def beta_pmi(student_proba, teacher_proba, cluster_prior, beta):
    """TEMI's pointwise mutual information of a pair, per pair: shape (n_heads, batch).

    ``log sum_c (q_s(c|x) q_t(c|x'))**beta / pi(c)``: dividing by the estimated
    cluster marginal ``pi`` (n_heads, n_clusters) rewards agreement on rare
    clusters more than on common ones, which is what keeps the heads from
    collapsing without an explicit entropy term; ``beta < 1`` damps the
    over-confident pairs.
    """
    joint = (student_proba * teacher_proba).clamp_min(LOG_EPSILON) ** beta
    # A cluster the teacher has abandoned must not turn the ratio into a division by 0.
    prior = cluster_prior.clamp_min(LOG_EPSILON).unsqueeze(1)
    return torch.log((joint / prior).sum(dim=-1))
