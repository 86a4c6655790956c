"""Checks of parameter values, each raising a ValueError that names the parameter."""

from __future__ import annotations

import math
import numbers

import numpy as np


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
