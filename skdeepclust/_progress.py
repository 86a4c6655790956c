"""Progress bars that leave no trace when they are off."""

from __future__ import annotations


class _NoProgress:
    """What a progress bar that is off does: nothing.

    Even a disabled tqdm bar fixes multiprocessing's start method for the whole
    process (it makes a process lock) and starts tqdm's monitor thread, so a user
    who later calls ``multiprocessing.set_start_method`` would get an error.
    """

    def update(self, n=1):
        pass

    def set_postfix_str(self, text="", refresh=True):
        pass

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        return False


def progress_bar(iterable=None, *, enabled, **options):
    """A tqdm bar (on stderr) with ``options`` if ``enabled``; else one that does nothing.

    Given ``iterable``, it is returned as it is when the bar is off.
    """
    if not enabled:
        return _NoProgress() if iterable is None else iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, **options)
