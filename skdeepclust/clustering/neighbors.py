"""Nearest neighbours in cosine space with torch, in bounded memory.

The similarity matrix of n samples has n**2 entries (400 MB for 10,000 samples in
float32), so queries are processed in chunks: one chunk of queries times all keys,
then a top-k, so at most ``chunk_size * n_samples`` similarities exist at once.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.utils import check_array

from .._device import host_array, resolve_device
from .._validation import check_int
from ._training import normalize_rows

__all__ = ["mine_nearest_neighbors"]


# Similarities held at once when the chunk size is chosen for the caller: 256 MiB of
# float32 on the CPU, whatever the number of samples. Each chunk reads every key
# again, so smaller chunks run slower: on 60,000 x 384 features (2 cores) chunks
# of 2,048, 1,118 and 279 rows took 42, 42 and 55 s. On a GPU, where 2 GiB is
# little, larger blocks keep a million keys from being read thousands of times.
CPU_SIMILARITY_BLOCK = 2 ** 26
GPU_SIMILARITY_BLOCK = 2 ** 29


def default_chunk_size(n_samples, device):
    """Query rows per chunk such that a chunk's similarities fit the block of ``device``."""
    block = CPU_SIMILARITY_BLOCK if torch.device(device).type == "cpu" else GPU_SIMILARITY_BLOCK
    return max(1, min(n_samples, block // n_samples))


def topk_cosine_neighbors(unit_features, n_neighbors, chunk_size=None, keys=None):
    """k nearest neighbours of each row of an L2-normalised torch matrix, itself excluded;
    or, given ``keys`` (L2-normalised too), its k nearest rows of ``keys``.

    Returns ``(indices, similarities)``, both of shape (n_samples, n_neighbors), on
    the matrix's device, nearest first. ``chunk_size=None`` chooses it by
    :func:`default_chunk_size`.
    """
    n_samples = unit_features.shape[0]
    excludes_itself = keys is None
    keys = unit_features if keys is None else keys
    if chunk_size is None:
        chunk_size = default_chunk_size(keys.shape[0], unit_features.device)
    all_indices, all_similarities = [], []
    for start in range(0, n_samples, chunk_size):
        queries = unit_features[start:start + chunk_size]
        similarities = queries @ keys.T
        if excludes_itself:
            rows = torch.arange(queries.shape[0], device=unit_features.device)
            # Excluding a sample by its index, not by its top rank: with duplicate rows
            # the sample itself need not come first.
            similarities[rows, rows + start] = -torch.inf
        values, indices = similarities.topk(n_neighbors, dim=1)
        # Freed now, not when the next chunk's block replaces it: two blocks would
        # exist at once otherwise.
        del similarities
        all_indices.append(indices)
        all_similarities.append(values)
    return torch.cat(all_indices), torch.cat(all_similarities)


def mine_nearest_neighbors(features, n_neighbors=20, *, device="auto", chunk_size=None):
    """Find the ``n_neighbors`` most cosine-similar other rows of each row of ``features``.

    Parameters
    ----------
    features : array-like of shape (n_samples, n_features)
        Feature matrix; rows are L2-normalised internally (a copy; the input is
        not modified).
    n_neighbors : int, default=20
        Neighbours per sample, at most ``n_samples - 1``.
    device : str or torch.device, default="auto"
        Where the similarities are computed; ``"auto"`` uses CUDA when present.
    chunk_size : int or None, default=None
        Query rows per matrix product; memory peaks at about
        ``chunk_size * n_samples`` floats. None chooses it so that this is at
        most 2**26 floats (256 MiB) on the CPU and 2**29 (2 GiB) on a GPU.

    Returns
    -------
    indices : ndarray of shape (n_samples, n_neighbors)
        Row indices of the neighbours, most similar first; a row is never its
        own neighbour.
    similarities : ndarray of shape (n_samples, n_neighbors)
        Their cosine similarities.

    Examples
    --------
    >>> import numpy as np
    >>> from skdeepclust.clustering import mine_nearest_neighbors
    >>> X = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    >>> indices, _ = mine_nearest_neighbors(X, n_neighbors=1, device="cpu")
    >>> indices.ravel().tolist()
    [1, 0, 3, 2]
    """
    # A NaN row would come out as almost every row's nearest neighbour, silently.
    features = check_array(host_array(features, "features"), dtype=[np.float64, np.float32],
                           input_name="features")
    n_samples = features.shape[0]
    check_int("chunk_size", chunk_size, allow_none=True)
    check_int("n_neighbors", n_neighbors)
    if n_neighbors > n_samples - 1:
        raise ValueError(
            f"n_neighbors={n_neighbors} needs at least {n_neighbors + 1} samples; got "
            f"n_samples={n_samples}. Ask for fewer neighbours."
        )
    unit = torch.from_numpy(normalize_rows(features)).to(resolve_device(device))
    indices, similarities = topk_cosine_neighbors(unit, n_neighbors, chunk_size)
    return indices.cpu().numpy(), similarities.cpu().numpy()
