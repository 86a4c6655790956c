"""Pixel arrays as the embedder takes them: which axis of an array holds the
channels (gray, RGB, RGB and alpha), the range its dtype implies, and batches of
them as RGB tensors."""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch

from .._warnings import stacklevel_of_user_code


# Gray, RGB, RGB and alpha. Gray and alpha (2) is taken only where no other axis
# has one of these: an NCHW batch of images two pixels wide must stay NCHW.
_CHANNEL_COUNTS = (1, 3, 4)
_GRAY_ALPHA = 2
# 16-bit samples span 0-65535 as 8-bit ones span 0-255: each 8-bit level is 257
# 16-bit ones. A table makes the conversion one lookup, without a float copy.
EIGHT_BITS_OF_SIXTEEN = np.rint(np.arange(2 ** 16) / 257).astype(np.uint8)


def channels_last_to_rgb(array):
    """An (..., H, W, C) array with C in 1, 2, 3, 4 as (..., H, W, 3); a second or
    fourth channel (alpha, or near infrared) is dropped."""
    if array.shape[-1] <= 2:
        return np.repeat(array[..., :1], 3, axis=-1)
    return array[..., :3]


def channel_axis_is_last(last, first):
    """Whether the channel axis is the ``last`` of an image's shape rather than the
    ``first`` candidate (the first of one image, the second of a batch); None when
    neither holds a channel count."""
    for counts in (_CHANNEL_COUNTS, (_GRAY_ALPHA,)):
        if last in counts:
            return True
        if first in counts:
            return False
    return None


def layout_is_ambiguous(shape):
    """Whether an image's (3-D) or a batch's (4-D) ``shape`` reads both ways: its last
    axis and its first candidate channel axis both hold channel counts, as (3, 16, 4),
    an RGB image 16 x 4 or an RGBA one 3 x 16 (:func:`channel_axis_is_last` decides)."""
    first = shape[0] if len(shape) == 3 else shape[1]
    counts = _CHANNEL_COUNTS + (_GRAY_ALPHA,)
    return first in counts and shape[-1] in counts


def warn_of_ambiguous_layout(name, shape, others=0):
    """Say how an ambiguous ``shape`` is read, and how to pass the other reading;
    ``others`` counts more images of that kind."""
    one_image = len(shape) == 3
    if channel_axis_is_last(shape[-1], shape[0] if one_image else shape[1]):
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


def sixteen_bit_peak(pixels):
    """The largest value of ``pixels`` (numpy or torch) if they are 16-bit, else None."""
    if not _is_sixteen_bit(pixels.dtype) or math.prod(pixels.shape) == 0:
        return None
    return _value_range(pixels)[1]


def warn_if_fewer_than_sixteen_bits(name, peak):
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


def channel_axis_of_one_image(shape, name):
    """Where the channels of a single image of ``shape`` lie: -1 (HWC), 0 (CHW) or None (HW).

    Raises a ValueError naming the image when it has no channel axis or no pixels.
    """
    if len(shape) not in (2, 3):
        raise ValueError(
            f"{name} is a {len(shape)}-D array; single images must be (height, width), "
            "(height, width, channels) or (channels, height, width)."
        )
    channels_last = channel_axis_is_last(shape[-1], shape[0]) if len(shape) == 3 else None
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


def tensor_as_numpy(tensor):
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


def check_pixel_range(array, name, fix="pass 16-bit data (0-65535) as uint16, X.astype(np.uint16)"):
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
            # A colour conversion overshoots [0, 1] by rounding errors, a bicubic resize by
            # a few hundredths; 0-255 data overshoots it by far; pixels normalised by a mean
            # and std (a torchvision Normalize: about -2.1 to 2.6 with ImageNet's) lie about 0.
            if low >= -0.1 and high <= 1.1:
                fix = "Clip them, np.clip(X, 0, 1), if they overshoot it by rounding or a resize"
            elif low < 0 and high < 16:
                fix = ("They look normalised already (by a mean and std, as torchvision's Normalize "
                       "does): pass the pixels before that, or undo it, X * std + mean; the embedder "
                       "normalises them itself, with the backbone's mean and std")
            else:
                fix = "Divide 0-255 data by 255, or pass it as uint8"
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


def tensor_of_pixels(pixels):
    """numpy pixels as a torch tensor of the same layout (uint16 scaled to uint8, other
    integers as uint8, floats as float32).

    Shares memory with ``pixels`` where it can, and never writes to it.
    """
    if _is_sixteen_bit(pixels.dtype):
        pixels = EIGHT_BITS_OF_SIXTEEN[pixels]
    elif pixels.dtype.kind in "iu" and pixels.dtype != np.uint8:
        pixels = pixels.astype(np.uint8)
    elif pixels.dtype.kind == "f" and pixels.dtype != np.float32:
        pixels = pixels.astype(np.float32)
    # torch cannot view negative strides, and warns on read-only memory (PIL buffers, memmaps).
    if not pixels.flags.writeable or min(pixels.strides, default=0) < 0:
        pixels = pixels.copy()
    return torch.from_numpy(pixels)


def to_tensor(batch):
    """HWC or NHWC numpy pixels to a CHW or NCHW torch tensor (uint8 kept, floats as float32)."""
    return tensor_of_pixels(np.ascontiguousarray(batch)).movedim(-1, -3)


def rgb_batch(chunk, channels_first):
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
        table = torch.from_numpy(EIGHT_BITS_OF_SIXTEEN).to(chunk.device)
        chunk = table[chunk.to(torch.int32)]
    elif not chunk.is_floating_point() and chunk.dtype != torch.uint8:
        chunk = chunk.to(torch.uint8)  # the values were checked to lie in [0, 255]
    elif chunk.is_floating_point() and chunk.dtype not in _TORCH_REDUCIBLE_DTYPES:
        chunk = chunk.float()  # float8, which resizing does not take
    return chunk
