"""Warnings that name the user's line, not a frame inside this package or scikit-learn."""

from __future__ import annotations

import os
import sys

import sklearn.base

# Warnings point at the first line outside these: the user's call, whether it went
# through transform, fit_transform, a Pipeline or PretrainedFeatureClusterer.
_LIBRARY_DIRECTORIES = (
    os.path.dirname(os.path.abspath(__file__)) + os.sep,  # skdeepclust/
    os.path.dirname(os.path.abspath(sklearn.base.__file__)) + os.sep,  # sklearn/
)


def stacklevel_of_user_code():
    """The ``stacklevel`` that makes a warning raised by the caller name the user's line."""
    frame = sys._getframe(1)
    level = 1
    while frame.f_back is not None and frame.f_code.co_filename.startswith(_LIBRARY_DIRECTORIES):
        frame = frame.f_back
        level += 1
    return level
