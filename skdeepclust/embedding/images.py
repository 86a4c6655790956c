"""Image inputs of every accepted kind, checked up front and decoded batch by batch.

Accepted: a 4-D numpy array or torch tensor in NHWC or NCHW order (uint8 in
[0, 255], integers in that range, or floats in [0, 1]), a 3-D stack of grayscale
images, a sequence of PIL images, of HWC/CHW/HW arrays or tensors, or of file
paths, and the path of a folder (searched recursively). Grayscale is repeated to
RGB; the transparent pixels of files and PIL images are shown on white, and the
fourth channel of an array is dropped.

Batches are torch tensors of shape (batch, 3, H, W), uint8 or float in [0, 1],
in the memory layout of the input (HWC pixels as a channels-last view, so no
host copy reorders them); images of different sizes come as a list of (3, H, W)
tensors instead. A torch tensor stays on its device. Files are decoded only
when their batch is reached, in worker processes when asked, so memory holds a
few batches, never the whole input. Batches bound for a GPU are copied into
page-locked memory ahead of use, by a background thread.

The search of a folder is :mod:`.image_files`'s; the decoding of one file,
:mod:`.decoding`'s; the axes and value ranges of arrays, :mod:`.pixels`'s.
"""

from __future__ import annotations

import collections
import concurrent.futures
import copy
import math
import multiprocessing
import os
import stat
from collections.abc import Sequence

import numpy as np
import torch

from .._device import fork_safe_lock
from .._validation import check_tensor_has_data, unmasked
from .decoding import ImageFileError, decode_file, pil_image_to_rgb_array, unreadable_file_reason
from .image_files import (
    ARCHIVE_SUFFIXES,
    PLUGIN_IMAGE_EXTENSIONS,
    find_image_files,
    missing_path_hint,
    shown_paths,
)
from .pixels import (
    channel_axis_is_last,
    channel_axis_of_one_image,
    channels_last_to_rgb,
    check_pixel_range,
    layout_is_ambiguous,
    rgb_batch,
    sixteen_bit_peak,
    tensor_as_numpy,
    tensor_of_pixels,
    to_tensor,
    warn_if_fewer_than_sixteen_bits,
    warn_of_ambiguous_layout,
)


def _registered_plugin_openers():
    """(format, (factory, accept), extensions) of each plugin opener registered with
    Pillow for ``PLUGIN_IMAGE_EXTENSIONS``, that a worker process can register again."""
    import pickle

    from PIL import Image

    registered = Image.registered_extensions()
    openers = []
    for image_format in dict.fromkeys(registered.get(extension) for extension in PLUGIN_IMAGE_EXTENSIONS):
        if image_format not in Image.OPEN:
            continue
        extensions = [extension for extension, name in registered.items() if name == image_format]
        opener = (image_format, Image.OPEN[image_format], extensions)
        try:  # a worker receives it pickled, by reference to the plugin's module
            pickle.dumps(opener)
        except Exception:  # e.g. a lambda; such a plugin stays with forked workers
            continue
        openers.append(opener)
    return openers


class ArrayImages:
    """A 4-D (or 3-D grayscale) numpy array or torch tensor of same-sized images.

    A tensor stays on its device: batches of a GPU tensor are views of it, never
    copied through the host.
    """

    def __init__(self, array):
        shape = tuple(array.shape)
        if array.ndim == 3:
            if array.shape[-1] in (3, 4):
                raise ValueError(
                    f"A 3-D input of shape {shape} looks like one color image; pass a "
                    "batch of images with shape (n_images, height, width, channels), e.g. X[None]."
                )
            # A last axis of 1 is far more often one (height, width, 1) image than
            # images one pixel wide.
            if array.shape[0] in (3, 4) or array.shape[-1] == 1:
                one_image = ("(channels, height, width) color" if array.shape[0] in (3, 4)
                             else "(height, width, 1) grayscale")
                raise ValueError(
                    f"A 3-D input of shape {shape} could be one {one_image} image or "
                    f"{shape[0]} grayscale images; pass X[None] for the former, "
                    "X[..., None] for the latter."
                )
            array = array[..., None]
        elif array.ndim != 4:
            hint = (" A 2-D array is one grayscale image (pass X[None, :, :, None]) or a "
                    "feature matrix (cluster features with FeatureClusterer)."
                    if array.ndim == 2 else "")
            raise ValueError(
                f"Image arrays must be 4-D, (n_images, height, width, channels) or "
                f"(n_images, channels, height, width); got {array.ndim}-D with shape {shape}.{hint}"
            )
        channels_last = channel_axis_is_last(array.shape[-1], array.shape[1])
        # A 3-D stack is grayscale, as settled above.
        if len(shape) == 4 and layout_is_ambiguous(shape):
            warn_of_ambiguous_layout("The image array", shape)
        if channels_last is not None:
            self._channels_first = not channels_last
        else:
            raise ValueError(
                f"Cannot find the channel axis of images with shape {shape}: neither the "
                "last nor the second axis has 1 to 4 channels."
            )
        n_images, height, width = (
            (array.shape[0], *array.shape[2:]) if self._channels_first else array.shape[:3]
        )
        if n_images == 0:
            raise ValueError("Found an array with 0 images; at least one is required.")
        if height == 0 or width == 0:
            raise ValueError(f"Images of shape {shape} have no pixels.")
        self._array = check_pixel_range(array, "The image array")
        warn_if_fewer_than_sixteen_bits("The image array is", sixteen_bit_peak(array))

    def __len__(self):
        return self._array.shape[0]

    def subset(self, positions):
        """The images at ``positions``, in that order."""
        subset = copy.copy(self)
        positions = np.asarray(positions, dtype=np.intp)
        if isinstance(self._array, torch.Tensor):
            positions = torch.from_numpy(positions).to(self._array.device)
        subset._array = self._array[positions]
        return subset

    def batches(self, batch_size, num_workers=0, pin_memory=False, min_size=None):
        """Batches in order; slicing an array is cheap, so no worker decodes it.

        With ``pin_memory`` a background thread copies the next batches into
        page-locked memory while the caller works on the current one; a tensor
        already on a GPU is left where it is.
        """
        batches = (self._batch(start, batch_size) for start in range(0, len(self), batch_size))
        on_host = not isinstance(self._array, torch.Tensor) or self._array.device.type == "cpu"
        return pinned_ahead(batches) if pin_memory and on_host else batches

    def _batch(self, start, batch_size):
        chunk = self._array[start:start + batch_size]
        if isinstance(chunk, np.ndarray):
            chunk = tensor_of_pixels(chunk)
        return rgb_batch(chunk, self._channels_first)


class ImageList:
    """A sequence of images given one by one: file paths, PIL images or arrays.

    With ``skip_unreadable=True`` a file that does not decode reaches the caller
    as black pixels instead of an error, and ``unreadable`` maps its position to
    the reason, once its batch has been given out: a caller that drops those rows
    decodes every file once, instead of once to check it and once to use it.
    """

    def __init__(self, items, skip_unreadable=False):
        if len(items) == 0:
            raise ValueError("Found 0 images; at least one is required.")
        from PIL import Image

        # Tensors come to the host now: worker processes can neither share GPU memory
        # nor read bfloat16 through numpy.
        self._items = [
            tensor_as_numpy(check_tensor_has_data(item, f"Image {position}"))
            if isinstance(item, torch.Tensor) else item
            for position, item in enumerate(items)
        ]
        missing, ambiguous, sixteen_bit_peaks = [], [], {}
        for position, item in enumerate(self._items):
            if isinstance(item, (str, os.PathLike)):
                mode = _file_mode(item)  # one stat per path: a list may hold millions
                if stat.S_ISDIR(mode):
                    raise ValueError(
                        f"Image {position}, {str(item)!r}, is a folder; a list may hold image "
                        "files only. Pass the folder itself, not in a list, to read all the "
                        "images under it."
                    )
                # Where unreadable files are skipped, a missing one is one of those: it
                # may have vanished since the folder was listed.
                if not stat.S_ISREG(mode) and not skip_unreadable:
                    missing.append(str(item))
            elif isinstance(item, np.ndarray):  # checked now, not when its batch comes
                item = self._items[position] = unmasked(item, f"Image {position}")
                channel_axis_of_one_image(item.shape, f"Image {position}")
                if item.ndim == 3 and layout_is_ambiguous(item.shape):
                    ambiguous.append(position)
                check_pixel_range(item, f"Image {position}")
                peak = sixteen_bit_peak(item)
                if peak is not None:
                    sixteen_bit_peaks[position] = peak
            elif isinstance(item, Image.Image):
                if 0 in item.size:
                    raise ValueError(f"Image {position} is a PIL image of size {item.size}, with no pixels.")
            else:
                raise TypeError(
                    f"Image {position} is a {type(item).__name__}; a list of images may hold "
                    f"file paths, PIL images, numpy arrays or torch tensors.{_hint_for_item(item)}"
                )
        if sixteen_bit_peaks:  # one dark image among bright ones may well be 16-bit
            warn_if_fewer_than_sixteen_bits(
                f"The {len(sixteen_bit_peaks)} uint16 images are" if len(sixteen_bit_peaks) > 1
                else f"Image {next(iter(sixteen_bit_peaks))} is", max(sixteen_bit_peaks.values()))
        if ambiguous:
            first = ambiguous[0]
            warn_of_ambiguous_layout(f"Image {first}", self._items[first].shape, others=len(ambiguous) - 1)
        if missing:
            urls = " URLs are not downloaded: download the files and pass their paths." if any(
                name.lower().startswith(("http://", "https://", "s3://", "gs://")) for name in missing) else ""
            raise ImageFileError(f"Image files not found: {shown_paths(missing)}.{urls}")
        self.skip_unreadable = skip_unreadable
        self.unreadable = {}

    def __len__(self):
        return len(self._items)

    def subset(self, positions):
        """The images at ``positions``, in that order."""
        subset = copy.copy(self)
        subset._items = [self._items[int(p)] for p in positions]
        subset.unreadable = {}  # numbered by the subset's own positions
        return subset

    def _decode(self, position, min_size=None):
        from PIL import Image

        item = self._items[position]
        if isinstance(item, (str, os.PathLike)):
            return decode_file(os.fspath(item), min_size)
        if isinstance(item, Image.Image):
            return pil_image_to_rgb_array(item, f"Image {position}")
        channel_axis = channel_axis_of_one_image(item.shape, f"Image {position}")
        if channel_axis is None:
            item = item[..., None]
        elif channel_axis == 0:
            item = np.moveaxis(item, 0, -1)
        return channels_last_to_rgb(item)

    def _decode_or_fail(self, position, min_size):
        """The pixels of image ``position``, or (with ``skip_unreadable``, for a file) the reason it failed."""
        if not (self.skip_unreadable and isinstance(self._items[position], (str, os.PathLike))):
            return self._decode(position, min_size)
        try:
            return self._decode(position, min_size)
        except MemoryError:
            raise
        except Exception as exc:  # decode_file wraps PIL's many kinds in ValueError
            return unreadable_file_reason(exc)

    def decode_range(self, start, stop, min_size=None):
        """Images ``start`` to ``stop``, and the ``(position, reason)`` of each that failed to decode.

        The images come as one tensor when they share size and dtype, else as a
        list. Failures are listed only with ``skip_unreadable``, which puts black
        pixels, shaped as a readable image of the range, in their place.
        """
        images = [self._decode_or_fail(position, min_size) for position in range(start, stop)]
        failures = [(start + offset, reason) for offset, reason in enumerate(images) if isinstance(reason, str)]
        if failures:
            decoded = [image for image in images if not isinstance(image, str)]
            black = np.zeros_like(decoded[0]) if decoded else np.zeros((1, 1, 3), np.uint8)
            images = [black if isinstance(image, str) else image for image in images]
        first = images[0]
        if all(image.shape == first.shape and image.dtype == first.dtype for image in images):
            return to_tensor(np.stack(images)), failures
        return [to_tensor(image) for image in images], failures

    def _recorded(self, decoded):
        """The images of a ``decode_range`` result, its failures noted in ``unreadable``."""
        images, failures = decoded  # a DataLoader may have made the pair a list
        for position, reason in failures:
            self.unreadable[int(position)] = reason
        return images

    def batches(self, batch_size, num_workers=0, pin_memory=False, min_size=None):
        """Decoded batches in order.

        With ``num_workers > 0`` that many processes decode the next batches while
        the caller works on the current one; at most two batches per worker wait
        in memory. ``pin_memory`` puts them in page-locked memory, from which a
        copy to a GPU can run asynchronously; without workers, a background
        thread then decodes and pins ahead of the caller. ``min_size`` lets large
        JPEG files decode at a reduced scale that still covers it (see
        ``decode_file``).
        """
        n_batches = math.ceil(len(self) / batch_size)
        num_workers = min(num_workers, n_batches - 1)  # one batch gains nothing from a worker
        if multiprocessing.current_process().daemon:
            num_workers = 0  # e.g. a multiprocessing.Pool's worker, which may not start processes
        if num_workers <= 0:
            batches = (
                self._recorded(self.decode_range(start, min(start + batch_size, len(self)), min_size))
                for start in range(0, len(self), batch_size)
            )
            yield from pinned_ahead(batches) if pin_memory else batches
            return
        loader = torch.utils.data.DataLoader(
            _BatchDecoder(self, batch_size, min_size),
            batch_size=None,  # each item is already a batch
            num_workers=num_workers,
            pin_memory=pin_memory,
            multiprocessing_context=_standard_start_context(),
            worker_init_fn=_forget_executor_threads,
            # Its own: the workers' seeds would otherwise be drawn from torch's global
            # stream, which the caller may rely on.
            generator=torch.Generator(),
        )
        # The workers are forked as the iteration starts; one thread at a time, since on
        # Python 3.12 or newer filelock (4.3.1 seen here; timm's hub client imports it)
        # makes a fork raise RuntimeError while another thread's fork is under way.
        with _WORKER_START_LOCK:
            started = iter(loader)
        try:
            for batch in started:
                if isinstance(batch, Exception):  # raised here so that the user sees the message alone
                    raise batch
                yield self._recorded(batch)
        finally:
            # Dropping the iterator stops the workers. A traceback kept alive after an
            # error (as a notebook keeps the last one) can keep this frame, and with it
            # its named variables, alive (seen on Python 3.13).
            del started


_WORKER_START_LOCK = fork_safe_lock()


def _file_mode(path):
    """``os.stat(path).st_mode``, or 0 where there is nothing to stat, as
    os.path.isfile and os.path.isdir take it."""
    try:
        return os.stat(path).st_mode
    except (OSError, ValueError):
        return 0


def _forget_executor_threads(worker_id):
    """In a worker forked from a ThreadPoolExecutor's thread (a server's request
    handler, asyncio's run_in_executor), forget the parent's executor threads.

    At exit, concurrent.futures joins every executor thread it knows, and in the
    fork that list holds the worker's own thread, which cannot be joined: the worker
    exits with code 1, and the DataLoader raises in the parent's main thread.
    concurrent.futures (Python 3.11) does not clear the list on fork.
    """
    import concurrent.futures.thread

    getattr(concurrent.futures.thread, "_threads_queues", {}).clear()


def _standard_start_context():
    """None (torch's default) unless the default start method is a library's own; then the platform's.

    In a joblib (loky) worker the default is loky's, whose processes the
    DataLoader cannot start.
    """
    if multiprocessing.get_start_method(allow_none=True) in (None, "fork", "spawn", "forkserver"):
        return None
    return multiprocessing.get_context(multiprocessing.get_all_start_methods()[0])  # the first is the default


# Batches that a background thread pins ahead of the caller: enough to cover one
# batch's copy into page-locked memory while the device computes the one before.
PINNED_BATCHES_AHEAD = 2


def produced_ahead(iterator, depth):
    """The items of ``iterator``, in order, each made by one background thread up to ``depth`` ahead.

    Decoding and copying into page-locked memory release the GIL, so the thread's
    work overlaps the caller's. Errors reach the caller at the item that raised;
    when the caller stops early, items not yet started are dropped.
    """
    finished = object()
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as thread:  # one thread: items stay in order

        def produce():
            return next(iterator, finished)

        pending = collections.deque(thread.submit(produce) for _ in range(depth))
        try:
            while (item := pending.popleft().result()) is not finished:
                pending.append(thread.submit(produce))
                yield item
        finally:
            for future in pending:
                future.cancel()


def _pinned(batch):
    if isinstance(batch, list):
        return [image.pin_memory() for image in batch]
    return batch.pin_memory()


def pinned_ahead(batches):
    """``batches`` in page-locked memory, made and pinned in a background thread.

    Pinning keeps the channels-last strides, so it is one plain memory copy.
    """
    return produced_ahead(map(_pinned, batches), PINNED_BATCHES_AHEAD)


class _BatchDecoder(torch.utils.data.Dataset):
    """Batch number ``index`` of an :class:`ImageList`, decoded in a DataLoader worker."""

    def __init__(self, images, batch_size, min_size):
        self.images = images
        self.batch_size = batch_size
        self.min_size = min_size
        self.plugin_openers = _registered_plugin_openers()

    def __setstate__(self, state):
        # A worker started by spawn or forkserver (Python 3.14's default on Linux)
        # imports Pillow afresh, without the openers that plugins registered here.
        self.__dict__.update(state)
        from PIL import Image

        for image_format, (factory, accept), extensions in self.plugin_openers:
            if image_format not in Image.OPEN:
                Image.register_open(image_format, factory, accept)
                Image.register_extensions(image_format, extensions)

    def __len__(self):
        return math.ceil(len(self.images) / self.batch_size)

    def __getitem__(self, index):
        start = index * self.batch_size
        try:
            stop = min(start + self.batch_size, len(self.images))
            return self.images.decode_range(start, stop, self.min_size)
        except (ValueError, TypeError) as exc:
            return exc


def _hint_for_item(item):
    """Advice for an item of a list of images that is none, from what it looks like."""
    if isinstance(item, bytes):
        return (" Decode a path with os.fsdecode(path); open encoded image bytes with "
                "PIL.Image.open(io.BytesIO(data)).")
    if hasattr(item, "read"):  # files, BytesIO, spooled files
        return " Open an image file object with PIL.Image.open(file)."
    if isinstance(item, tuple) and len(item) == 2:
        return (" (image, label) pairs, as a PyTorch dataset gives them, are not taken: "
                "pass [image for image, label in pairs], and the labels as y where wanted.")
    if isinstance(item, dict) and ({"bytes", "path"} & set(item) or "image" in item):
        return (" A Hugging Face dataset's rows are not taken: pass its image column, "
                "dataset['image'], decoded as PIL images (the default).")
    return ""


def as_images(X):
    """Wrap any accepted image input; raises a clear error for anything else."""
    if isinstance(X, (ArrayImages, ImageList)):
        return X
    if isinstance(X, np.ndarray) and X.ndim == 0:  # e.g. one path drawn from an array of them
        X = X.item()
    if isinstance(X, bytes) and not os.path.isdir(X):
        raise TypeError(
            "X is bytes, which are neither a folder path nor a list of images. Decode a "
            "path with os.fsdecode(X); open encoded image bytes with "
            "PIL.Image.open(io.BytesIO(X)) and pass [image]."
        )
    if isinstance(X, (str, bytes, os.PathLike)):
        X = os.fsdecode(os.fspath(X))  # pathlib takes no bytes
        if os.path.isdir(X):
            return ImageList(find_image_files(X))
        if os.path.isfile(X):
            if X.lower().endswith(ARCHIVE_SUFFIXES):
                raise TypeError(
                    f"X is an archive, {X!r}; unpack it and pass the folder: "
                    "skdeepclust.datasets.extract_image_archive(path) unpacks it once and "
                    "returns that folder."
                )
            raise TypeError(
                f"X is the path of one file, {os.fspath(X)!r}; pass a list of paths, "
                "e.g. [path], or the folder that holds the images."
            )
        raise ValueError(f"X={os.fspath(X)!r} is neither an existing folder nor a list of images."
                         + missing_path_hint(X, "X"))
    if isinstance(X, torch.Tensor):
        return ArrayImages(check_tensor_has_data(X, "The image tensor").detach())
    from PIL import Image

    if isinstance(X, Image.Image):  # older Pillow gives it __array__ too
        raise TypeError(f"Cannot read images from a {type(X).__name__}. X is one PIL image; "
                        "pass a list of images, e.g. [image].")
    if hasattr(X, "__array__") and not isinstance(X, np.ndarray):  # e.g. a pandas Series of paths
        X = np.asarray(X)
    if isinstance(X, np.ndarray) and X.dtype.kind in "OUS":  # paths or objects, one per image
        if X.ndim != 1:
            raise ValueError(
                f"X is a table of paths or objects with shape {X.shape}; pass one column of "
                "file paths, e.g. df['path'], or a list of images."
            )
        # os.fsdecode: bytes paths may hold any file system encoding, not only ASCII.
        return ImageList([os.fsdecode(item) for item in X] if X.dtype.kind == "S" else list(X))
    if isinstance(X, np.ndarray):
        return ArrayImages(unmasked(X, "The image array"))
    if isinstance(X, Sequence):
        return ImageList(list(X))
    dataset_hint = (
        " A dataset is not read item by item: pass its images as a list ([image for "
        "image, label in dataset] for a PyTorch one, dataset['image'] for a Hugging Face "
        "one)." if hasattr(X, "__getitem__") and hasattr(X, "__len__") else "")
    raise TypeError(
        f"Cannot read images from a {type(X).__name__}. Pass a 4-D array (NHWC or NCHW), "
        f"a list of PIL images, arrays or file paths, or a folder path.{dataset_hint}"
    )
