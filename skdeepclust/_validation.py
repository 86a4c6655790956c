"""Checks of parameter values, each raising a ValueError that names the parameter, and
of input containers that numpy or torch would read wrongly or fail on deep inside."""

from __future__ import annotations

import math
import numbers
import sys

import numpy as np
import torch


def check_int(name, value, minimum=1, allow_none=False):
    """Raise a ValueError naming ``name`` unless ``value`` is an integer >= ``minimum``."""
    if value is None and allow_none:
        return None
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}.")
    return int(value)


def check_float(name, value, low=0.0, high=math.inf, low_inclusive=True, high_inclusive=True):
    """Raise a ValueError naming ``name`` unless ``value`` is a finite real number in the range."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise ValueError(f"{name} must be a real number; got {value!r}.")
    value = float(value)
    too_low = value < low if low_inclusive else value <= low
    too_high = value > high if high_inclusive else value >= high
    if too_low or too_high or not math.isfinite(value):
        left = "[" if low_inclusive else "("
        right = "]" if high_inclusive and math.isfinite(high) else ")"
        raise ValueError(f"{name} must be a finite number in {left}{low}, {high}{right}; got {value!r}.")
    return value


def check_verbose(value):
    """Raise a ValueError unless ``value`` is a bool or an integer >= 0, as scikit-learn allows."""
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    return check_int("verbose", value, minimum=0)


def check_choice(name, value, choices):
    """Raise a ValueError naming ``name`` unless ``value`` is one of ``choices``."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {sorted(choices)}; got {value!r}.")
    return value


def unmasked(array, name):
    """The data of a numpy masked array without masked values (other inputs as they are).

    numpy and torch read a masked array's data and ignore its mask, so a masked
    value would count as whatever lies under it.
    """
    if not np.ma.isMaskedArray(array):
        return array
    n_masked = int(np.ma.count_masked(array))
    if n_masked:
        raise ValueError(
            f"{name} is a masked array with {n_masked} masked values; fill them "
            "(.filled(value)), leave out what they belong to, or pass its .data if the "
            "mask does not matter."
        )
    return np.ma.getdata(array)


def check_tensor_has_data(tensor, name):
    """Refuse tensors whose values cannot be read as a dense array: on the meta device,
    nested or sparse (torch's own errors for them come from deep inside, or ask for a
    bug report)."""
    if tensor.device.type == "meta":
        raise ValueError(f"{name} is a tensor on the meta device, which holds no values; pass one that does.")
    if tensor.is_nested:
        raise ValueError(f"{name} is a nested tensor; pass its parts as a list, list(X.unbind()).")
    if tensor.layout != torch.strided:
        raise ValueError(f"{name} is a {tensor.layout} tensor; pass a dense one, X.to_dense().")
    return tensor


def _is_missing(label):
    if label is None:
        return True
    if isinstance(label, (float, np.floating)):
        return not math.isfinite(label)
    if isinstance(label, (np.datetime64, np.timedelta64)):
        return bool(np.isnat(label))
    pandas = sys.modules.get("pandas")  # its missing values exist only once it is imported
    return pandas is not None and (label is pandas.NA or label is pandas.NaT)


def labels_from_list(labels):
    """A list or tuple of labels as a numpy array; anything else as it is.

    A list mixing strings and numbers becomes an object array: numpy would turn
    ``float("nan")`` beside strings into the string ``"nan"``, a class like any
    other, which ``check_no_missing_labels`` could not tell from a real one, and
    ``1`` beside ``"1"`` into the same class.
    """
    if not isinstance(labels, (list, tuple)):
        return labels
    converted = np.asarray(labels)
    if converted.dtype.kind in "US" and any(isinstance(label, (numbers.Number, np.number)) for label in labels):
        return np.asarray(labels, dtype=object)
    return converted


def check_no_missing_labels(labels, name, advice):
    """Refuse a 1-D label array holding NaN, infinity, None, NaT or pandas' NA.

    Each would be one more class or cluster (or, for NaN, one per sample), and
    what is computed from the labels a number that means nothing.
    """
    if labels.dtype.kind == "f":
        missing = not np.isfinite(labels).all()
    elif labels.dtype.kind in "Mm":
        missing = bool(np.isnat(labels).any())
    elif labels.dtype.kind == "O":
        # Label by label only where some label is of a type that can be missing: a
        # column of strings, the usual case, is then cleared at C speed.
        never_missing = (str, bytes, numbers.Integral)
        missing = (any(not issubclass(kind, never_missing) for kind in set(map(type, labels)))
                   and any(map(_is_missing, labels)))
    else:
        missing = False
    if missing:
        raise ValueError(f"{name} contains NaN, infinity, None or NA; {advice}.")


def unique_labels(labels, name, **options):
    """``np.unique(labels, **options)``, with an error naming ``name`` for labels of
    types that do not sort (an object column mixing integers and strings)."""
    try:
        return np.unique(labels, **options)
    except TypeError as exc:
        types = sorted({type(label).__name__ for label in labels})
        raise ValueError(
            f"{name} mixes values of types that do not sort ({', '.join(types)}); convert "
            f"them to one type, e.g. np.asarray({name}, dtype=str)."
        ) from exc
