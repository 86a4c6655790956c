"""The command's words: its errors, warnings and lists, shared by its modules."""

from __future__ import annotations

import sys


class UserError(Exception):
    """A mistake in what the user asked for; printed as one line."""


def warn(message):
    """Print ``message`` as one warning line of the command's."""
    print(f"skdeepclust: warning: {message}", file=sys.stderr)


def listed(items):
    """``items`` as one English list: "a", "a and b", "a, b and c"."""
    items = [str(item) for item in items]
    return items[-1] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def counted(number, noun):
    """``number`` and ``noun``, plural but for one: "1 image", "2 images"."""
    return f"{number:,} {noun}" if number == 1 else f"{number:,} {noun}s"
