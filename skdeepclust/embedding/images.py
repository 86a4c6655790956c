"""Image inputs of every accepted kind, checked up front and decoded batch by batch.

Accepted: a 4-D numpy array or torch tensor in NHWC or NCHW order (uint8 in
[0, 255], integers in that range, or floats in [0, 1]), a 3-D stack of grayscale
images, a sequence of PIL images, of HWC/CHW/HW arrays or tensors, or of file
paths, and the path of a folder (searched recursively). Grayscale is repeated to
RGB and an alpha channel is dropped.

Batches are torch tensors of shape (batch, 3, H, W), uint8 or float in [0, 1],
in the memory layout of the input (HWC pixels as a channels-last view, so no
host copy reorders them); images of different sizes come as a list of (3, H, W)
tensors instead. A torch tensor stays on its device. Files are decoded only
when their batch is reached, in worker processes when asked, so memory holds a
few batches, never the whole input. Batches bound for a GPU are copied into
page-locked memory ahead of use, by a background thread.
"""

from __future__ import annotations

import collections
import concurrent.futures
import copy
import math
import multiprocessing
import os
import stat
import struct
import warnings
from collections.abc import Sequence

import numpy as np
import torch

from .._device import fork_safe_lock
from .._validation import check_tensor_has_data, unmasked
from .._warnings import stacklevel_of_user_code
from .image_files import (
    ARCHIVE_SUFFIXES,
    PLUGIN_IMAGE_EXTENSIONS,
    _shown,
    find_image_files,
    readable_image_extensions,
)


# How many times PIL.Image.MAX_IMAGE_PIXELS a JPEG that is not progressive may be in
# full, when what it decodes to is within the limit: a 200-megapixel phone photo is
# 1.1 times, and a file of several scans, which libjpeg buffers in full (2 bytes a
# sample), takes at most some 2 GB.
JPEG_FULL_SIZE_LIMITS = 4
# Raised whenever files decode to other pixels than before, so that the embeddings an
# earlier revision made are not taken for this one's (the command's record of
# embeddings and its saved models keep it). 1: JPEGs decoded at a reduced scale;
# 2: any image of four times the model's input or more reduced by whole blocks first.
DECODING_REVISION = 2
# Gray, RGB, RGB and alpha. Gray and alpha (2) is taken only where no other axis
# has one of these: an NCHW batch of images two pixels wide must stay NCHW.
_CHANNEL_COUNTS = (1, 3, 4)
_GRAY_ALPHA = 2
# 16-bit samples span 0-65535 as 8-bit ones span 0-255: each 8-bit level is 257
# 16-bit ones. A table makes the conversion one lookup, without a float copy.
_EIGHT_BITS_OF_SIXTEEN = np.rint(np.arange(2 ** 16) / 257).astype(np.uint8)


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


def _pil_to_rgb_array(image, name, file_format=None):
    """An (H, W, 3) array of a PIL image: uint8, or for 32-bit modes the values as
    they are, checked as an array's would be."""
    file_format = image.format or file_format
    if image.mode.startswith("I;16") or (image.mode == "I" and file_format in ("PNG", "PPM")):
        # Pillow opens a 16-bit PGM, and on older versions a 16-bit PNG, as "I",
        # stretching a PGM's maximum to 65535; PIL's own convert("RGB") would clip
        # 16-bit samples at 255.
        gray = _EIGHT_BITS_OF_SIXTEEN[np.asarray(image)]
        return _channels_last_to_rgb(gray[..., None])
    if image.mode in ("I", "F"):  # 32-bit integers or floats: no range is implied
        pixels = np.asarray(image)
        _check_pixel_range(pixels, f"{name} (PIL mode {image.mode!r})",
                           fix="convert the image to 8 bits first")
        return _channels_last_to_rgb(pixels[..., None])
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image)


# In a worker process: the file descriptors given an open file description of their own.
_DESCRIPTORS_OF_OWN = set()


def _give_own_file_position_in_worker(image):
    """In a forked worker process, let a PIL image that is not loaded yet read its file
    at a position of the worker's own.

    A forked worker shares the parent's open files, and their positions: reading
    through one would move the position under the parent's buffered reader, so that
    the image could no longer be read in the caller's process (by this package or by
    the user), and two workers given the same image would mix their reads. Opening
    /proc/self/fd/N gives the same file (also one renamed or deleted since) a
    position of its own, which replaces descriptor N in this process only. The image
    object stays the user's, with every change made to it before loading (EXIF, palette).
    """
    fp = getattr(image, "fp", None)
    # A loaded image (no tiles left to decode) reads no file.
    if fp is None or not getattr(image, "tile", None) or torch.utils.data.get_worker_info() is None:
        return
    try:
        descriptor = fp.fileno()
    except Exception:  # an in-memory file, which the fork copied
        return
    if descriptor in _DESCRIPTORS_OF_OWN:
        return
    try:
        position = fp.tell()
        own = os.open(f"/proc/self/fd/{descriptor}", os.O_RDONLY)
    except OSError:  # no /proc (not Linux)
        return
    try:
        os.dup2(own, descriptor)
    finally:
        os.close(own)
    _DESCRIPTORS_OF_OWN.add(descriptor)
    # Seeking to the end drops the reader's buffer, which ended where the shared
    # position stood; the new position then starts where the reader stood.
    fp.seek(0, os.SEEK_END)
    fp.seek(position)


def _pil_image_to_rgb_array(image, name):
    """:func:`_pil_to_rgb_array` of a PIL image given in a list, upright as its EXIF
    orientation says (as the image's file would be), whose failures to load (a closed
    or truncated file behind it) name the image."""
    _give_own_file_position_in_worker(image)
    try:
        image.load()
    except MemoryError:
        raise
    except Exception as exc:
        raise ValueError(
            f"{name}, a PIL image, cannot be read: {type(exc).__name__}: {exc}. Its file may be "
            "closed or damaged: call image.load() while the file is open, or pass the "
            "file path instead."
        ) from exc
    # A turned copy has no format, which tells how 32-bit integer pixels are scaled.
    return _pil_to_rgb_array(_upright(image), name, image.format)


_EXIF_ORIENTATION = 0x0112
_ORIENTATIONS_THAT_SWAP_AXES = (5, 6, 7, 8)


def _orientation(image):
    """The EXIF orientation of ``image``; 1 (upright) when it has none, or EXIF data
    too damaged to read, which does not harm the pixels."""
    try:
        return image.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # Pillow's TIFF parser raises SyntaxError, struct.error, ...
        return 1


def _upright(image, orientation=None):
    """``image`` turned as its EXIF orientation says; the image itself when it needs no
    turning, else a copy (``exif_transpose``'s ``in_place`` option needs Pillow 10)."""
    from PIL import ImageOps

    if orientation is None:
        orientation = _orientation(image)
    return image if orientation == 1 else ImageOps.exif_transpose(image)


class ImageFileError(ValueError):
    """An image file that cannot be read: not found, damaged, or too large.

    ``problem`` is the message without ``advice`` on what to do in Python, for the
    command, whose user does otherwise.
    """

    def __init__(self, problem, advice=""):
        super().__init__(problem + advice)
        self.problem = problem


def _open_image(path, min_size):
    """``PIL.Image.open(path)``, and whether PIL checked the image's size against its
    decompression-bomb limit: not for a JPEG file to be decoded at a reduced scale
    (``min_size`` given), which ``_check_jpeg_size`` checks instead, so that a
    200-megapixel phone photo decoded to an eighth of each side is not refused."""
    from PIL import Image, JpegImagePlugin

    # Only a regular file is read twice: a pipe would give its first bytes to the sniff.
    if min_size is not None and os.path.isfile(path):
        with open(path, "rb") as handle:
            starts_as_jpeg = handle.read(3) == b"\xff\xd8\xff"  # the start-of-image marker
        if starts_as_jpeg:
            try:
                return JpegImagePlugin.jpeg_factory(path), False  # what Image.open calls for a JPEG
            except (SyntaxError, IndexError, TypeError, struct.error):
                pass  # not a JPEG after all: PIL's other plugins may know it, or say why not
    return Image.open(path), True


def _check_jpeg_size(image, full_size, path):
    """PIL's decompression-bomb limit, ``PIL.Image.MAX_IMAGE_PIXELS``, applied to a
    JPEG ``image`` set to decode at a reduced scale from ``full_size``, naming the
    file in the warning.

    A progressive JPEG is decoded through coefficients of the full image, so its
    full size is checked, as PIL checks it. Otherwise the size it decodes to is,
    once the full size is at most ``JPEG_FULL_SIZE_LIMITS`` times the limit: a
    baseline file of several scans is buffered in full too.
    """
    from PIL import Image

    limit = Image.MAX_IMAGE_PIXELS
    if limit is None:
        return
    full_pixels = full_size[0] * full_size[1]
    if image.info.get("progressive") or image.info.get("progression"):
        size, when, why = full_size, "in full", " A progressive JPEG is decoded through its whole image."
    elif full_pixels > JPEG_FULL_SIZE_LIMITS * limit:
        raise Image.DecompressionBombError(
            f"Image size ({full_size[0]} x {full_size[1]} = {full_pixels:,} pixels) exceeds the limit of "
            f"{JPEG_FULL_SIZE_LIMITS * limit:,} pixels for a JPEG, could be decompression bomb DOS attack.")
    else:
        size, when, why = image.size, "when decoded", ""
    pixels = f"{size[0]} x {size[1]} = {size[0] * size[1]:,} pixels"
    if size[0] * size[1] > 2 * limit:  # where PIL's own check raises
        raise Image.DecompressionBombError(f"Image size {when} ({pixels}) exceeds the limit of "
                                           f"{2 * limit:,} pixels, could be decompression bomb DOS attack.{why}")
    if size[0] * size[1] > limit:
        warnings.warn(f"Image file {path!r}: its size {when} ({pixels}) exceeds PIL.Image.MAX_IMAGE_PIXELS "
                      f"({limit:,}), could be a decompression bomb; it is decoded, as PIL decodes up to twice "
                      f"that.{why}", Image.DecompressionBombWarning, stacklevel=stacklevel_of_user_code())


# The brands of the ISO media file header that mark a HEIF image, as phones save them.
_HEIF_BRANDS = (b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1")


def _what_pil_did_not_identify(path):
    """What a file that Pillow could not identify is, where that tells the user more
    than Pillow says: an empty file, or a HEIC/HEIF photo under another extension."""
    if not os.path.isfile(path):  # a pipe's bytes were read by PIL
        return None
    try:
        with open(path, "rb") as handle:
            header = handle.read(12)
    except OSError:
        return None
    if not header:
        return "the file is empty"
    if header[4:8] == b"ftyp" and header[8:12] in _HEIF_BRANDS and ".heic" not in readable_image_extensions():
        return ("it is a HEIC/HEIF photo, whatever its name: pip install pillow-heif, and in Python "
                "call pillow_heif.register_heif_opener(), which the skdeepclust command does")
    return None


def _decode_file(path, min_size=None, reduce=True):
    """The RGB pixels of an image file, upright as its EXIF orientation says (as photo viewers show it).

    With ``min_size=(height, width)``, a large image comes reduced, never below
    ``min_size`` in either dimension: a JPEG is decoded at 1/2, 1/4 or 1/8 of each
    side inside the JPEG decoder (several times faster), and what is then still four
    times ``min_size`` or more (other formats, and JPEGs past 1/8) is reduced by
    averaging blocks of pixels, to no less than twice ``min_size``, so that a batch
    of large photos holds and moves no more pixels than it needs. ``reduce=False``
    leaves out the averaging, for a check that the file decodes.
    """
    from PIL import Image

    try:
        image, size_checked = _open_image(path, min_size)
        with image:
            file_format, full_size = image.format, image.size
            orientation = _orientation(image)
            if min_size is not None:
                height, width = min_size
                if orientation in _ORIENTATIONS_THAT_SWAP_AXES:
                    height, width = width, height
                image.draft("RGB", (width, height))
            if not size_checked:
                _check_jpeg_size(image, full_size, path)
            image.load()
            image = _upright(image, orientation)
    except MemoryError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageFileError(
            f"Image file {path!r} is too large to decode safely: {exc} If you trust the "
            "file, raise PIL.Image.MAX_IMAGE_PIXELS (None lifts the limit); else remove it."
        ) from exc
    except Exception as exc:  # PIL's plugins raise many kinds on damaged files
        if isinstance(exc, Image.UnidentifiedImageError) and (what := _what_pil_did_not_identify(path)):
            # Said where the file is named, and in the cause, which the command shows.
            exc = ValueError(f"{exc} ({what})").with_traceback(exc.__traceback__)
        raise ImageFileError(
            f"Cannot read image file {path!r}: {exc}.", " Remove it from the folder or list, or "
            "convert it, and run again; load_image_folder(root, skip_unreadable=True) leaves "
            "such files out, as the skdeepclust command does."
        ) from exc
    try:  # outside the first: these are errors of the pixel values, not of the file
        pixels = _pil_to_rgb_array(image, "the image", file_format)
    except ValueError as exc:
        raise ImageFileError(f"Image file {path!r}: {exc}") from exc
    return pixels if min_size is None or not reduce else _reduced(pixels, min_size)


def _reduced(pixels, min_size):
    """uint8 RGB ``pixels`` reduced by the largest whole factor that keeps them at
    least twice ``min_size=(height, width)``, each output pixel the mean of a block
    (PIL's ``Image.reduce``); others, and those under four times ``min_size``, as
    they are."""
    from PIL import Image

    # Twice the size, as PIL's thumbnail() reduces (its reducing_gap): the resize that
    # follows then gives features within 0.002 in cosine of those of the whole image
    # (EfficientNet-Lite0, 35 4K and 12-megapixel PNGs, bicubic), 0.017 reduced to the
    # size itself. A nearest-neighbour resize picks from averaged pixels, as from a JPEG
    # decoded at a reduced scale.
    gap = 2
    factor = min(pixels.shape[0] // max(1, gap * min_size[0]), pixels.shape[1] // max(1, gap * min_size[1]))
    if factor < 2 or pixels.dtype != np.uint8:
        return pixels
    # Whole blocks, centred: PIL's last, partial block would stretch a few pixels to a
    # block's width, so the edges left over (fewer than ``factor`` pixels) are dropped.
    height, width = pixels.shape[0] // factor * factor, pixels.shape[1] // factor * factor
    top, left = (pixels.shape[0] - height) // 2, (pixels.shape[1] - width) // 2
    return np.asarray(Image.fromarray(pixels).reduce(factor, box=(left, top, left + width, top + height)))


def _channels_last_to_rgb(array):
    """An (..., H, W, C) array with C in 1, 2, 3, 4 as (..., H, W, 3); alpha is dropped."""
    if array.shape[-1] <= 2:
        return np.repeat(array[..., :1], 3, axis=-1)
    return array[..., :3]


def _channels_last(last, first):
    """Whether the channel axis is the ``last`` of an image's shape rather than the
    ``first`` candidate (the first of one image, the second of a batch); None when
    neither holds a channel count."""
    for counts in (_CHANNEL_COUNTS, (_GRAY_ALPHA,)):
        if last in counts:
            return True
        if first in counts:
            return False
    return None


def _layout_is_ambiguous(shape):
    """Whether an image's (3-D) or a batch's (4-D) ``shape`` reads both ways: its last
    axis and its first candidate channel axis both hold channel counts, as (3, 16, 4),
    an RGB image 16 x 4 or an RGBA one 3 x 16 (:func:`_channels_last` decides)."""
    first = shape[0] if len(shape) == 3 else shape[1]
    counts = _CHANNEL_COUNTS + (_GRAY_ALPHA,)
    return first in counts and shape[-1] in counts


def _warn_of_ambiguous_layout(name, shape, others=0):
    """Say how an ambiguous ``shape`` is read, and how to pass the other reading;
    ``others`` counts more images of that kind."""
    one_image = len(shape) == 3
    if _channels_last(shape[-1], shape[0] if one_image else shape[1]):
        order = "(height, width, channels)" if one_image else "NHWC"
        channels, other, axes = shape[-1], "first", ("0, -1", "0, 2, 3, 1")
    else:
        order = "(channels, height, width)" if one_image else "NCHW"
        channels, other, axes = shape[-3], "last", ("-1, 0", "0, 3, 1, 2")
    move = (f"np.moveaxis(image, {axes[0]}) for each" if one_image
            else f"X.transpose({axes[1]}) (X.permute for a tensor)")
    more = f" (and {others} more)" if others else ""
    warnings.warn(
        f"{name}{more} has shape {shape}, which could be channels-first or channels-last; it "
        f"is read as {order}, with {channels} channel{'s' if channels != 1 else ''}. If the "
        f"channels come {other}, pass {move}.",
        UserWarning,
        stacklevel=stacklevel_of_user_code(),
    )


# 16-bit pixels that all lie below this use 12 bits or fewer.
FEW_BITS_PEAK = 4096


def _sixteen_bit_peak(pixels):
    """The largest value of ``pixels`` (numpy or torch) if they are 16-bit, else None."""
    if not _is_sixteen_bit(pixels.dtype) or math.prod(pixels.shape) == 0:
        return None
    return _value_range(pixels)[1]


def _warn_if_fewer_than_sixteen_bits(name, peak):
    """Warn where 16-bit pixels peak at ``peak`` < FEW_BITS_PEAK: most likely 8- or 12-bit
    values in a uint16 array, which read as 16-bit come out nearly black."""
    if peak is None or peak >= FEW_BITS_PEAK or peak == 0:  # all black is black either way
        return
    warnings.warn(
        f"{name} read as 16-bit (0-65535), as uint16 pixels are, but {peak} is the largest "
        "value, so the images come out nearly black. If they hold 8-bit values, pass "
        "X.astype(np.uint8); if 12-bit, X * 16 (data of N bits, times 2 ** (16 - N)).",
        UserWarning,
        stacklevel=stacklevel_of_user_code(),
    )


def _channel_axis_of_one_image(shape, name):
    """Where the channels of a single image of ``shape`` lie: -1 (HWC), 0 (CHW) or None (HW).

    Raises a ValueError naming the image when it has no channel axis or no pixels.
    """
    if len(shape) not in (2, 3):
        raise ValueError(
            f"{name} is a {len(shape)}-D array; single images must be (height, width), "
            "(height, width, channels) or (channels, height, width)."
        )
    channels_last = _channels_last(shape[-1], shape[0]) if len(shape) == 3 else None
    if len(shape) == 2:
        axis, height_width = None, shape
    elif channels_last is True:
        axis, height_width = -1, shape[:2]
    elif channels_last is False:
        axis, height_width = 0, shape[1:]
    else:
        raise ValueError(
            f"{name} has shape {shape}: neither its last axis (height, width, channels) nor "
            "its first (channels, height, width) has 1 to 4 channels."
        )
    if 0 in height_width:
        raise ValueError(f"{name} has shape {shape}, with no pixels.")
    return axis


# Dtypes whose min and max torch implements on every device; batches of the others
# (uint16 to uint64, float8) are converted one at a time.
_TORCH_REDUCIBLE_DTYPES = (
    torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64,
    torch.float16, torch.bfloat16, torch.float32, torch.float64,
)
# Elements converted at once to find the range of a tensor of another dtype.
_RANGE_CHUNK_ELEMENTS = 2 ** 22


def _value_range(array):
    """(min, max) of a numpy array or torch tensor as Python numbers; a NaN or an
    infinity in ``array`` comes out in them."""
    if not isinstance(array, torch.Tensor) or array.dtype in _TORCH_REDUCIBLE_DTYPES:
        return array.min().item(), array.max().item()
    images_per_chunk = max(1, _RANGE_CHUNK_ELEMENTS // max(1, math.prod(array.shape[1:])))
    # float64 holds every value of these dtypes, or rounds one beyond 2**53 (a value
    # that is refused anyway), without a copy of the whole tensor.
    ranges = [(chunk.double().min().item(), chunk.double().max().item())
              for chunk in array.split(images_per_chunk)]
    low, high = min(low for low, _ in ranges), max(high for _, high in ranges)
    if not array.is_floating_point():
        low, high = int(low), int(high)
    return low, high


def _tensor_as_numpy(tensor):
    """A torch image as a numpy array on the host (float dtypes numpy lacks become float32)."""
    tensor = tensor.detach().cpu()
    if tensor.is_floating_point() and tensor.dtype not in (torch.float16, torch.float32, torch.float64):
        tensor = tensor.float()
    return tensor.numpy()


def _dtype_kind(dtype):
    """numpy's one-letter kind of a numpy or torch dtype: 'b', 'i', 'u', 'f', 'c' or other."""
    if isinstance(dtype, torch.dtype):
        if dtype == torch.bool:
            return "b"
        if dtype.is_complex:
            return "c"
        if dtype.is_floating_point:
            return "f"
        return "i" if dtype.is_signed else "u"
    return dtype.kind


def _is_sixteen_bit(dtype):
    """Whether pixels of the numpy or torch ``dtype`` are 16-bit, spanning 0-65535."""
    return _dtype_kind(dtype) == "u" and dtype.itemsize == 2


def _bound(value):
    """``value`` in nine digits, or in full where those would round it into [0, 1],
    which the message says it lies outside (1 + 1e-12 would print as 1)."""
    short = f"{value:.9g}"
    return short if (float(short) < 0.0 or float(short) > 1.0) == (value < 0.0 or value > 1.0) else repr(value)


def _check_pixel_range(array, name, fix="pass 16-bit data (0-65535) as uint16, X.astype(np.uint16)"):
    """Reject values that are not pixels; returns the array (numpy or torch) unchanged."""
    kind = _dtype_kind(array.dtype)
    if kind == "u" and array.dtype.itemsize <= 2:  # every value is a pixel
        return array
    if kind not in "iuf":
        raise TypeError(
            f"{name} has dtype {array.dtype}; images must be uint8 in [0, 255] or float in [0, 1]."
        )
    if math.prod(array.shape) == 0:
        return array
    # min and max carry a NaN or an infinity through, so they find them too, without
    # the full-size mask of isfinite (1.75 times a float tensor's size, in torch).
    low, high = _value_range(array)
    if kind == "f" and not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError(f"{name} contains NaN or infinite values; images must be finite.")
    if kind == "f":
        if low < 0.0 or high > 1.0:
            # A resize or a colour conversion overshoots [0, 1] by rounding errors;
            # 0-255 data overshoots it by far.
            fix = ("Clip them, np.clip(X, 0, 1), if they overshoot it by rounding"
                   if low >= -1e-3 and high <= 1 + 1e-3 else "Divide 0-255 data by 255, or pass it as uint8")
            raise ValueError(
                f"{name} is a float array with values in [{_bound(low)}, {_bound(high)}]; float "
                f"images must lie in [0, 1]. {fix}."
            )
    elif low < 0 or high > 255:
        raise ValueError(
            f"{name} is an integer array with values in [{low}, {high}]; integer images must "
            f"lie in [0, 255] (8-bit), unless they are uint16 (16-bit); {fix}."
        )
    return array


def _from_numpy(pixels):
    """numpy pixels as a torch tensor of the same layout (uint16 scaled to uint8, other
    integers as uint8, floats as float32).

    Shares memory with ``pixels`` where it can, and never writes to it.
    """
    if _is_sixteen_bit(pixels.dtype):
        pixels = _EIGHT_BITS_OF_SIXTEEN[pixels]
    elif pixels.dtype.kind in "iu" and pixels.dtype != np.uint8:
        pixels = pixels.astype(np.uint8)
    elif pixels.dtype.kind == "f" and pixels.dtype != np.float32:
        pixels = pixels.astype(np.float32)
    # torch cannot view negative strides, and warns on read-only memory (PIL buffers, memmaps).
    if not pixels.flags.writeable or min(pixels.strides, default=0) < 0:
        pixels = pixels.copy()
    return torch.from_numpy(pixels)


def _to_tensor(batch):
    """HWC or NHWC numpy pixels to a CHW or NCHW torch tensor (uint8 kept, floats as float32)."""
    return _from_numpy(np.ascontiguousarray(batch)).movedim(-1, -3)


def _rgb_batch(chunk, channels_first):
    """An (N, H, W, C) or (N, C, H, W) tensor of 1 to 4 channels as an (N, 3, H, W) RGB batch.

    A channels-last input stays a channels-last view (no copy reorders it), and
    a tensor on a GPU stays there.
    """
    if not channels_first:
        chunk = chunk.movedim(-1, 1)
    if chunk.shape[1] <= 2:  # gray, or gray and alpha
        chunk = chunk[:, :1].expand(-1, 3, -1, -1)
    elif chunk.shape[1] == 4:
        chunk = chunk[:, :3]
    if not (chunk.is_contiguous() or chunk.is_contiguous(memory_format=torch.channels_last)):
        chunk = chunk.contiguous()  # one dense block, which copies to a device in one go
    if _is_sixteen_bit(chunk.dtype):
        table = torch.from_numpy(_EIGHT_BITS_OF_SIXTEEN).to(chunk.device)
        chunk = table[chunk.to(torch.int32)]
    elif not chunk.is_floating_point() and chunk.dtype != torch.uint8:
        chunk = chunk.to(torch.uint8)  # the values were checked to lie in [0, 255]
    elif chunk.is_floating_point() and chunk.dtype not in _TORCH_REDUCIBLE_DTYPES:
        chunk = chunk.float()  # float8, which resizing does not take
    return chunk


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
        channels_last = _channels_last(array.shape[-1], array.shape[1])
        # A 3-D stack is grayscale, as settled above.
        if len(shape) == 4 and _layout_is_ambiguous(shape):
            _warn_of_ambiguous_layout("The image array", shape)
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
        self._array = _check_pixel_range(array, "The image array")
        _warn_if_fewer_than_sixteen_bits("The image array is", _sixteen_bit_peak(array))

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
            chunk = _from_numpy(chunk)
        return _rgb_batch(chunk, self._channels_first)


def unreadable_file_reason(error):
    """Why a file failed to decode, in one line, from the error ``_decode_file`` raised."""
    # A wrapped error's own message only names the file, which the caller does already.
    reason = error.__cause__ if error.__cause__ is not None else error
    lines = str(reason).strip().splitlines()
    return lines[0] if lines else type(reason).__name__


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
            _tensor_as_numpy(check_tensor_has_data(item, f"Image {position}"))
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
                _channel_axis_of_one_image(item.shape, f"Image {position}")
                if item.ndim == 3 and _layout_is_ambiguous(item.shape):
                    ambiguous.append(position)
                _check_pixel_range(item, f"Image {position}")
                peak = _sixteen_bit_peak(item)
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
            _warn_if_fewer_than_sixteen_bits(
                f"The {len(sixteen_bit_peaks)} uint16 images are" if len(sixteen_bit_peaks) > 1
                else f"Image {next(iter(sixteen_bit_peaks))} is", max(sixteen_bit_peaks.values()))
        if ambiguous:
            first = ambiguous[0]
            _warn_of_ambiguous_layout(f"Image {first}", self._items[first].shape, others=len(ambiguous) - 1)
        if missing:
            urls = " URLs are not downloaded: download the files and pass their paths." if any(
                name.lower().startswith(("http://", "https://", "s3://", "gs://")) for name in missing) else ""
            raise ImageFileError(f"Image files not found: {_shown(missing)}.{urls}")
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
            return _decode_file(os.fspath(item), min_size)
        if isinstance(item, Image.Image):
            return _pil_image_to_rgb_array(item, f"Image {position}")
        channel_axis = _channel_axis_of_one_image(item.shape, f"Image {position}")
        if channel_axis is None:
            item = item[..., None]
        elif channel_axis == 0:
            item = np.moveaxis(item, 0, -1)
        return _channels_last_to_rgb(item)

    def _decode_or_fail(self, position, min_size):
        """The pixels of image ``position``, or (with ``skip_unreadable``, for a file) the reason it failed."""
        if not (self.skip_unreadable and isinstance(self._items[position], (str, os.PathLike))):
            return self._decode(position, min_size)
        try:
            return self._decode(position, min_size)
        except MemoryError:
            raise
        except Exception as exc:  # _decode_file wraps PIL's many kinds in ValueError
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
            return _to_tensor(np.stack(images)), failures
        return [_to_tensor(image) for image in images], failures

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
        ``_decode_file``).
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
        raise ValueError(f"X={os.fspath(X)!r} is neither an existing folder nor a list of images.")
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
