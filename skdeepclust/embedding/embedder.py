"""Stage 1: images to L2-normalised feature vectors with a frozen timm backbone."""

from __future__ import annotations

import collections
import contextlib
import copy
import functools
import inspect
import math
import numbers
import os
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from .._device import (
    checked_random_state,
    cpu_computes_in_float16,
    fork_safe_lock,
    resolve_device,
    usable_cores,
)
from .._progress import progress_bar
from .._validation import check_verbose
from .._warnings import stacklevel_of_user_code
from .backbone import error_text, image_size_advice, build_backbone
from .images import as_images

# Threads sharing one fitted embedder (a server's) would otherwise each copy its
# backbone to the device, and compile it, at their first call. One lock for all
# embedders: preparing is rare.
_RUNTIME_PREPARATION_LOCK = fork_safe_lock()

INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
PRECISIONS = ("auto", "float32", "bfloat16", "float16")
# The smallest crop_pct: below a quarter, the resize before the crop would be over 4x
# the input size per side; no timm model crops below 0.875.
MIN_CROP_PCT = 0.25

# Measured on a 2-core CPU (benchmarks/README.md): ResNet-18 and ViT-S/16 run
# fastest per image at batches of 16 to 32 at 224 px; larger ones only cost memory.
CPU_BATCH_SIZE = 32
# Smaller inputs take larger batches, as many pixels as 32 images of 96 x 96 (a
# power of two, at most MAX_CPU_BATCH_SIZE): each forward pass costs some time of its
# own, which short passes feel. 2,048 random images on 2 cores, batch 128 against 32:
# at 32 px 0.55 vs 0.89 s (EfficientNet-Lite0), 0.78 vs 1.13 (ResNet-18), 0.65 vs
# 1.00 (ViT-Ti/16); at 48 px 1.27 vs 1.45, 2.54-2.82 vs 3.07, 1.18 vs 1.57. At 96 px
# batch 128 is slower: 512 images through ResNet-18 in 1.86-1.88 s vs 1.65-1.82 s.
CPU_BATCH_PIXELS = CPU_BATCH_SIZE * 96 * 96
MAX_CPU_BATCH_SIZE = 256
# On a GPU the default batch is the largest power of two whose activations fit
# in this share of the free memory, up to a cap. At the cap, 256, one ViT-B/16 batch
# is about 9 TFLOP, 25 ms on an H200, and the package fed it from host uint8 arrays at
# 94% of the model-only rate (benchmarks/README.md); larger batches were not tried.
GPU_MEMORY_SHARE = 0.4
MAX_GPU_BATCH_SIZE = 256
# One core decodes a 298x224 JPEG in 0.9 ms and a 500x375 one in 2.0 ms, so a
# GPU model running at thousands of images/s needs every core the host can spare.
MAX_DECODE_WORKERS = 16
# Pixel values that preprocessing turns to float32 at once, before resizing (256 MiB):
# hundreds of images at the input size, a few at 4K.
FLOAT_VALUES_AT_ONCE = 2 ** 26
# Device-to-host copies of features that may be in flight at once, so that the
# GPU never waits for the host to collect a batch.
FEATURE_COPIES_IN_FLIGHT = 3


# Reach of the widest filter (bicubic) in source pixels when enlarging, and the
# enlarged area, in multiples of the area to cover, above which only the part of
# an image that the crop keeps is enlarged.
FILTER_REACH = 2
OVERSIZE_AREA = 4


def _interpolate(images, interpolation, **resize):
    """``F.interpolate`` in mode ``interpolation``, pixel centres aligned (align_corners=False)
    where the mode takes the option."""
    corners = {} if interpolation == "nearest" else {"align_corners": False}
    return F.interpolate(images, mode=interpolation, **corners, **resize)


def _centre_crop_start(length, kept):
    """Where the centre ``kept`` pixels of ``length`` start: half the excess rounded
    half to even, as torchvision's CenterCrop (in timm's evaluation transform) has it."""
    return int(round((length - kept) / 2.0))


def _source_window(length, factor, start, kept):
    """Source pixels ``[first, stop)`` that output pixels ``[start, start + kept)`` of
    an enlargement by ``factor`` are interpolated from, the filter's reach included."""
    first = math.floor((start + 0.5) / factor - 0.5) - FILTER_REACH
    stop = math.ceil((start + kept - 0.5) / factor - 0.5) + FILTER_REACH + 1
    return max(0, first), min(length, stop)


def _enlarge_kept_part(images, resized, target, interpolation):
    """The centre ``target`` of ``images`` enlarged to ``resized``, computed from the
    source pixels that it reads alone.

    The enlargement factors of the whole image (to an ulp), passed to torch as
    such, keep its sampling positions; they move by less than half an output
    pixel where the cut-off source pixels do not map to whole output pixels.
    """
    factors, windows, offsets = [], [], []
    for length, out_length, kept in zip(images.shape[-2:], resized, target):
        # One ulp up: torch sizes the output floor(length * factor), which the
        # rounded quotient would make out_length - 1 for some lengths (55 of 224).
        factor = math.nextafter(out_length / length, math.inf)
        start = _centre_crop_start(out_length, kept)  # where the whole image's crop starts
        first, stop = _source_window(length, factor, start, kept)
        factors.append(factor)
        windows.append(slice(first, stop))
        offsets.append(round(start - first * factor))
    enlarged = _interpolate(images[..., windows[0], windows[1]], interpolation,
                            scale_factor=factors, recompute_scale_factor=False)
    top, left = (min(offset, length - kept)
                 for offset, length, kept in zip(offsets, enlarged.shape[-2:], target))
    return enlarged[..., top:top + target[0], left:left + target[1]]


def _resize_and_center_crop(images, size, interpolation, resize_size=None):
    """Resize (N, C, H, W) so that it covers ``resize_size`` (by default ``size``) keeping
    its aspect, then crop the centre ``size``."""
    target_h, target_w = size
    cover_h, cover_w = resize_size or size
    height, width = images.shape[-2:]
    if (height, width) != (target_h, target_w) or (cover_h, cover_w) != (target_h, target_w):
        scale = max(cover_h / height, cover_w / width)
        if cover_h == cover_w:
            # The short side sized exactly, the long one truncated, as torchvision's
            # Resize of the short side (in timm's evaluation transform) sizes them.
            resized = ((cover_h, max(cover_w, cover_h * width // height)) if height <= width
                       else (max(cover_h, cover_w * height // width), cover_w))
        else:  # as timm's ResizeKeepRatio, which it uses for other shapes, to the last bit
            ratio = min(height / cover_h, width / cover_w)
            resized = (max(cover_h, round(height / ratio)), max(cover_w, round(width / ratio)))
        if scale > 1 and resized[0] * resized[1] > OVERSIZE_AREA * cover_h * cover_w:
            # A strip of 1x2000 pixels enlarged whole would be 224x448000, nearly all
            # of it cropped away after.
            images = _enlarge_kept_part(images, resized, size, interpolation)
        else:
            images = _interpolate(images, interpolation, size=resized,
                                  antialias=interpolation != "nearest" and scale < 1)
            top, left = _centre_crop_start(resized[0], target_h), _centre_crop_start(resized[1], target_w)
            images = images[..., top:top + target_h, left:left + target_w]
    if interpolation == "bicubic":
        images = images.clamp(0.0, 1.0)  # bicubic overshoots at edges
    return images


@functools.lru_cache(maxsize=16)
def _normalization(mean, std, device):
    """Mean and std as (1, 3, 1, 1) tensors on ``device``, made once.

    Made per batch, their small copies from pageable host memory would make the
    host wait for all queued GPU work, and so stall the pipeline each batch.
    """
    mean = torch.tensor(mean, device=device, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(std, device=device, dtype=torch.float32).view(1, -1, 1, 1)
    return mean, std


def _copied_to(device, tensors, copy_stream):
    """``tensors`` on ``device``; with a CUDA ``copy_stream`` the copies run on it, beside the compute."""
    if copy_stream is None:
        # Asynchronous only towards the GPU: a GPU-to-host copy made non-blocking lands
        # in pinned memory the host may read before the copy has finished.
        non_blocking = torch.device(device).type == "cuda"
        return [tensor.to(device, non_blocking=non_blocking) for tensor in tensors]
    with torch.cuda.stream(copy_stream):
        copies = [tensor.to(device, non_blocking=True) for tensor in tensors]
    compute_stream = torch.cuda.current_stream(device)
    compute_stream.wait_stream(copy_stream)  # once for the whole batch
    for on_device in copies:
        on_device.record_stream(compute_stream)  # its memory is reused only once the computation is done
    return copies


def prepare_batch(batch, preprocessing, device, copy_stream=None):
    """Pixels (uint8 or [0, 1] floats, on the host) to the backbone's normalised input on ``device``.

    The copy to ``device`` is of the raw pixels: uint8 is 4x smaller than float32,
    and resizing and normalising run on the device. With a CUDA ``copy_stream``
    the copy runs on it, beside the computation on the current stream; it is
    asynchronous only from page-locked memory, which ``batches(pin_memory=True)``
    of the image inputs provides. A list of (3, H, W) images of different sizes
    is resized image by image, then normalised as one batch; large images become
    floats and are resized a few at a time (``FLOAT_VALUES_AT_ONCE``).
    """
    images = batch if isinstance(batch, list) else [batch]
    resized = []
    for pixels in _copied_to(device, images, copy_stream):
        if pixels.ndim == 3:
            pixels = pixels[None]
        # A few images at a time when they are large: 32 4K images as floats take 3.2 GB.
        for part in pixels.split(max(1, FLOAT_VALUES_AT_ONCE // max(1, pixels[0].numel()))):
            # uint8 / 255 is one pass that reads bytes and writes floats.
            part = part / 255.0 if part.dtype == torch.uint8 else part.float()
            resized.append(_resize_and_center_crop(part, preprocessing.input_size,
                                                   preprocessing.interpolation,
                                                   preprocessing.resize_size))
    pixels = torch.cat(resized) if len(resized) > 1 else resized[0]
    mean, std = _normalization(tuple(preprocessing.mean), tuple(preprocessing.std), device)
    return (pixels - mean) / std


def compute_dtype(device, precision):
    """The dtype that the backbone's weights and inputs take for ``precision`` on ``device``."""
    if precision == "auto":
        if device.type != "cuda":
            return torch.float32
        # Pre-Ampere NVIDIA GPUs (compute capability below 8.0) only emulate bfloat16,
        # slowly; float16 runs natively there. Read from the capability, as torch
        # before 2.3 has no is_bf16_supported(including_emulation=False).
        native_bf16 = torch.version.hip is not None or torch.cuda.get_device_capability(device) >= (8, 0)
        return torch.bfloat16 if native_bf16 else torch.float16
    return getattr(torch, precision)


def _check_features(features, backbone, n_images, n_features=None):
    """``features``, if they are a (n_images, n_features) matrix, one row per image."""
    if not isinstance(features, torch.Tensor) or features.ndim != 2:
        shape = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
        raise ValueError(
            f"The backbone {backbone} returned {shape}, not a (batch, features) matrix. A module "
            "backbone must return pooled features, e.g. end it with global average pooling "
            "and flatten."
        )
    # Rows cut off or missing would give images the features of others.
    if features.shape[0] != n_images:
        raise ValueError(
            f"The backbone {backbone} returned {features.shape[0]} rows of features for a batch "
            f"of {n_images} images. A module backbone must return one row per image, "
            "(batch, features), and treat each image on its own."
        )
    if features.shape[1] == 0 or n_features not in (None, features.shape[1]):
        raise ValueError(
            f"The backbone {backbone} returned {features.shape[1]} features per image"
            + (f", after {n_features} for earlier images" if n_features else "")
            + ". A module backbone must return the same, positive number for every image."
        )
    return features


def _check_finite(features, backbone, dtype):
    """Refuse NaN or infinite features, which every clusterer would refuse later
    without saying where they came from."""
    finite_rows = np.isfinite(features).all(axis=1)
    if finite_rows.all():
        return
    bad = np.flatnonzero(~finite_rows)
    cause = ("float16 overflowed in the backbone: use precision='bfloat16' or precision='float32'"
             if dtype == torch.float16 else
             "check the backbone's weights (a checkpoint holding NaN?) and those images")
    raise ValueError(
        f"The backbone {backbone} returned NaN or infinite features for {bad.size} of "
        f"{features.shape[0]} images (the first is image {bad[0]}); {cause}."
    )


def _warn_of_features_all_zero(features, backbone, input_size):
    """Warn of images whose features are all zero, which no clusterer tells apart,
    whatever they show. A warning, not an error, even where every row of a call is
    zero: it may embed a few images of a larger set (a predict of one image)."""
    zero_rows = ~features.any(axis=1)
    if zero_rows.any():
        warnings.warn(
            f"The backbone {backbone} returned features that are all zero for {zero_rows.sum()} of "
            f"{features.shape[0]} images (the first is image {np.flatnonzero(zero_rows)[0]}), which no "
            f"clusterer can tell apart. At {input_size[0]} x {input_size[1]} pixels its layers may leave "
            "nothing of an image; use a larger image_size.",
            UserWarning,
            stacklevel=stacklevel_of_user_code(),
        )


def _is_positive_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value > 0


def _three_finite_numbers(value):
    """Whether ``value`` is a sequence of 3 finite numbers (0-d arrays and tensors count).

    Element by element: numpy would read strings as numbers, or refuse them obscurely.
    """
    if np.ndim(value) != 1 or len(value) != 3:
        return False
    try:
        values = [float(number) for number in value if not isinstance(number, (str, bytes, bool, np.bool_))]
    except (TypeError, ValueError):
        return False
    return len(values) == 3 and all(map(math.isfinite, values))


def _check_compile_options(options):
    """Refuse what torch.compile refuses, now rather than at the first transform."""
    parameters = inspect.signature(torch.compile).parameters.values()
    if not any(parameter.kind is inspect.Parameter.VAR_KEYWORD for parameter in parameters):
        accepted = [
            parameter.name for parameter in parameters if parameter.kind is inspect.Parameter.KEYWORD_ONLY
        ]
        unknown = [key for key in options if key not in accepted]
        if unknown:
            raise ValueError(
                f"compile has keys that torch.compile does not take: {', '.join(map(repr, unknown))}; "
                f"it takes {', '.join(map(repr, accepted))}."
            )
    # torch.compile checks mode, backend and options when called, and compiles only at
    # the first forward pass, so wrapping a stand-in module checks them at no cost.
    try:
        torch.compile(torch.nn.Identity(), **options)
    except Exception as exc:
        reason = " ".join(str(exc).split())
        reason = reason if len(reason) <= 300 else reason[:300] + " ..."
        raise ValueError(f"compile={options!r} is refused by torch.compile: {reason}") from exc


def _is_convolutional(model):
    """Whether ``model`` is mostly convolutions (a ViT has a single one, its patch embedding)."""
    return sum(isinstance(module, torch.nn.Conv2d) for module in model.modules()) > 1


def auto_batch_size(model, input_size, device, dtype):
    """Images per forward pass that suit ``model`` on ``device``.

    On a GPU, one forward pass of a small probe batch measures the activation
    memory per image; the batch is the largest power of two whose activations
    fill at most ``GPU_MEMORY_SHARE`` of the free memory, capped at
    ``MAX_GPU_BATCH_SIZE``. Elsewhere it is :func:`cpu_batch_size`.
    """
    if device.type != "cuda":
        return cpu_batch_size(input_size)
    probe_size = 8
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    with torch.inference_mode():
        model(torch.zeros(probe_size, 3, *input_size, device=device, dtype=dtype))
    torch.cuda.synchronize(device)
    per_image = (torch.cuda.max_memory_allocated(device) - before) / probe_size
    free, _ = torch.cuda.mem_get_info(device)
    reusable = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return batch_size_that_fits(per_image, free + reusable)


def cpu_batch_size(input_size):
    """``CPU_BATCH_SIZE``, or for inputs under 96 x 96 the largest power of two (up to
    ``MAX_CPU_BATCH_SIZE``) whose images hold at most ``CPU_BATCH_PIXELS`` pixels."""
    fits = max(1, CPU_BATCH_PIXELS // (input_size[0] * input_size[1]))
    return min(MAX_CPU_BATCH_SIZE, max(CPU_BATCH_SIZE, 1 << (fits.bit_length() - 1)))


def batch_size_that_fits(bytes_per_image, available_bytes):
    """Largest power of two up to ``MAX_GPU_BATCH_SIZE`` whose images fill ``GPU_MEMORY_SHARE`` at most.

    At least 1: when not even one image fits, the out-of-memory halving has the last word.
    """
    fits = int(GPU_MEMORY_SHARE * available_bytes / max(1.0, bytes_per_image))
    if fits < 1:
        return 1
    return min(MAX_GPU_BATCH_SIZE, 1 << (fits.bit_length() - 1))


_Runtime = collections.namedtuple("_Runtime", "model batch_size dtype memory_format")


class _FeatureSink:
    """Writes feature batches into a host array, letting copies from a GPU run asynchronously.

    The count of rows filled only ever covers rows written (or whose copy is
    queued), so that after a KeyboardInterrupt at any point ``completed`` is right.
    """

    def __init__(self, n_images, embedding_dim):
        self.features = np.empty((n_images, embedding_dim), dtype=np.float32)
        self._filled = 0
        self._in_flight = collections.deque()

    def add(self, output):
        start, end = self._filled, self._filled + output.shape[0]
        if output.device.type != "cuda":
            self.features[start:end] = output.cpu().numpy()  # a no-op on the CPU
            self._filled = end
            return
        host = torch.empty(output.shape, dtype=output.dtype, pin_memory=True)
        host.copy_(output, non_blocking=True)
        copied = torch.cuda.Event()
        copied.record()
        self._in_flight.append((start, host, copied))
        self._filled = end
        while len(self._in_flight) > FEATURE_COPIES_IN_FLIGHT:
            self._collect_oldest()

    def _collect_oldest(self):
        start, host, copied = self._in_flight[0]  # taken off once written, not before
        copied.synchronize()
        self.features[start:start + host.shape[0]] = host.numpy()
        self._in_flight.popleft()

    def completed(self):
        """The rows of the images embedded so far, in order."""
        while self._in_flight:
            self._collect_oldest()
        return self.features[:self._filled]

    def result(self):
        self.completed()
        if self._filled != self.features.shape[0]:  # rows never written would hold garbage
            raise RuntimeError(
                f"Internal error: features were computed for {self._filled} of "
                f"{self.features.shape[0]} images."
            )
        return self.features


@contextlib.contextmanager
def _keeping_completed_features(sink):
    """On Ctrl-C or an error, hand the features of the images embedded so far to
    the caller as the exception's ``completed_features``: the command keeps them,
    and its next run goes on from there."""
    try:
        yield
    except BaseException as exc:
        try:
            exc.completed_features = sink.completed()
        except Exception:  # after a device error the copies may fail too: the error matters
            pass
        raise


def _has_weights_other_than_float32(model):
    """Whether a module holds floating-point weights of another dtype (its buffers
    where it has no weights): torch names the mismatch in words that differ by layer
    ("weight type (torch.HalfTensor)", "expected mat1 and mat2 to have the same dtype")."""
    tensors = list(model.parameters()) or list(model.buffers())
    return any(tensor.is_floating_point() and tensor.dtype != torch.float32 for tensor in tensors)


class ImageEmbedder(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """Turn images into L2-normalised feature vectors with a frozen pretrained backbone.

    Any timm model works; self-supervised ViTs (DINO, DINOv2) separate classes best.
    Images are resized on the device so that they cover ``image_size`` (keeping
    their aspect ratio), centre-cropped, and normalised with the model's own mean
    and std, as read from timm's data config.

    Parameters
    ----------
    backbone : str or torch.nn.Module, default="vit_small_patch16_224.dino"
        A timm model name, with an optional pretrained tag, or a module that maps a
        (batch, 3, H, W) tensor to (batch, features). timm's source prefixes work:
        ``"hf-hub:REPOSITORY"`` (a model on the Hugging Face Hub) and
        ``"local-dir:FOLDER"`` (a downloaded copy of one: its ``config.json``, which
        gives the architecture and preprocessing, and weights). A module is copied, never
        changed; unless it is a timm model, give ``image_size``, ``mean`` and ``std``.
        It is run as given: a timm model that still has its classifier gives its
        class scores (with a warning), not its pooled features.
        A ``Pipeline(memory=...)`` reuses the embeddings of a named backbone only:
        joblib's hash of a module changes with each copy (torch pickles tensors by
        their memory address), so the clones a search fits never find them.
    pretrained : bool or str or path-like, default=True
        ``True``: timm's own weights for the name (from the model hub, or its cache).
        A path: a local checkpoint (``.safetensors``, ``.pth``, ``.pt``, ``.bin``,
        ``.ckpt``, ``.pth.tar``),
        including training checkpoints such as DINO's (``teacher``/``student``,
        ``backbone.`` and ``module.`` prefixes, and PyTorch Lightning's ``model.``,
        are handled; the teacher is used).
        Name the tag of the weights (``"vit_small_patch16_224.dino"``): it gives
        their preprocessing.
        ``False``: random weights, seeded by ``random_state``.
    image_size : int or (int, int), default=None
        Input size of the backbone. ``None`` uses the model's own; ViTs are built
        for the given size (position embeddings are resampled), which must be a
        multiple of their patch size.
    mean, std : tuple of 3 floats, default=None
        Normalisation, overriding the model's own, on the 0-1 scale of pixel
        values (ImageNet's mean is (0.485, 0.456, 0.406)).
    interpolation : {"bilinear", "bicubic", "nearest"}, default=None
        Resampling for resizing, overriding the model's own.
    crop_pct : float in [0.25, 1] or "model", default=1.0
        Share of the resized image that the centre crop keeps, as in timm's
        evaluation transform: images are resized to cover ``image_size /
        crop_pct`` (keeping their aspect), then the centre ``image_size`` is cut
        out. ``1.0`` keeps all of the short side. ``"model"`` takes the model's
        own (0.9 for DINO's ViTs, 0.875 for EfficientNet-Lite0, 1.0 for DINOv2),
        which reproduces timm's evaluation of the models whose ``crop_mode`` is
        ``"center"``, most of them (not of those whose mode is ``"squash"`` or
        ``"border"``). On CIFAR-10 photos, whose objects fill the frame, 1.0
        clustered better on average (mean k-means accuracy over five samples of
        1,000: 0.530 against 0.502 with the SimCLR ResNet-18's own 0.95, 0.456
        against 0.447 with EfficientNet-Lite0's 0.875).
    batch_size : int or "auto", default="auto"
        Images per forward pass. ``"auto"`` is 32 on the CPU (up to 256 for inputs
        under 96 x 96: 128 at 48 px, 256 at 32 px); on a GPU it is the
        largest power of two up to 256 whose activations, measured on a probe
        batch, fill at most 40% of the free memory. On a CUDA out-of-memory error
        the batch is halved and retried.
    num_workers : int or None, default=None
        Worker processes that decode image files (and lists of PIL images or
        arrays) ahead of the backbone, a few batches at a time. ``0`` decodes in
        the calling process. ``None`` uses one worker per usable core but one
        (at most 16) when the backbone runs on CUDA, and none elsewhere: on the
        CPU the backbone already keeps every core busy. Arrays of images need
        no decoding and ignore it.
    device : str or torch.device, default="auto"
        ``"auto"`` runs on CUDA when there is a CUDA device, else on the CPU. It is
        read at each ``transform``, so an embedder fitted on a GPU runs on a CPU after
        unpickling.
    precision : {"auto", "float32", "bfloat16", "float16"}, default="auto"
        Compute precision of the backbone: a copy of it, and its inputs, are cast
        to this dtype. ``"auto"`` is bfloat16 (float16 where bfloat16 is
        unsupported) on CUDA and float32 elsewhere. Features are returned as
        float32 in every case. On CUDA, ``"float32"`` follows torch's TF32
        settings (``torch.backends.cudnn.allow_tf32``, on by default, for
        convolutions). On a CPU that computes in bfloat16 natively (AVX-512 BF16
        or AMX), ``"bfloat16"`` embedded 1.8 to 2.3 times as fast as float32 on 2
        cores (ResNet-18, ViT-S/16, EfficientNet-Lite0), with features within
        cosine 0.97 of float32's and the same k-means accuracy on CIFAR-10 (SimCLR
        ResNet-18, EfficientNet-Lite0); other CPUs emulate bfloat16 and are
        expected to be slower with it. ``"float16"`` on a CPU without AMX-FP16 is
        emulated (5 times slower than float32 here) and warned of.
    compile : bool or dict, default=False
        Compile the backbone with :func:`torch.compile`; a dict is passed to it as
        keyword arguments, e.g. ``{"mode": "max-autotune"}``. Compiling takes from
        seconds to minutes at the first ``transform`` on each device and then
        speeds up every batch; the last, smaller batch is padded so that it
        needs no second compilation.
    normalize : bool, default=True
        Scale each feature vector to unit L2 norm.
    random_state : int, RandomState instance or None, default=None
        Seeds the random weights when ``pretrained=False``. timm draws them from
        torch's global stream, which is shared by the threads of a process: fits
        in threads wait for each other, but other torch code drawing in another
        thread during ``fit`` changes them.
    verbose : int, default=0
        Show a progress bar (tqdm) over the images when positive.

    Attributes
    ----------
    model_ : torch.nn.Module
        The backbone, in eval mode, with its weights on the CPU. Convolutional
        backbones run in channels-last memory format, on a copy made per device.
    preprocessing_ : Preprocessing
        Input size, mean, std, interpolation and crop share in use.
    embedding_dim_ : int
        Length of the feature vectors.

    Notes
    -----
    Accepted image inputs, in ``fit`` and ``transform``:

    - a 4-D numpy array in NHWC or NCHW order, uint8 or float in [0, 1], or a
      3-D stack of grayscale images;
    - the same as a torch tensor, of any float dtype (bfloat16 included); a
      tensor on a GPU is batched there, never copied through the host;
    - a list of PIL images, of HWC/CHW/HW arrays or tensors, or of file paths
      (sizes may differ);
    - the path of a folder, searched recursively for image files (links are
      followed, each folder and image taken once; hidden files, macOS's
      ``__MACOSX`` folders and photo software's thumbnails are skipped, as
      :func:`~skdeepclust.embedding.find_image_files` says), taken in the order
      of :func:`~skdeepclust.embedding.find_image_files`.

    Grayscale is repeated to RGB. The transparent pixels of a file or PIL image
    are shown on white; the fourth channel of an array is dropped. A shape that reads
    both ways, such as (n, 3, 16, 4) (RGB 16 x 4, or RGBA 3 x 16), is read one way,
    with a warning that says how to pass the other. uint16 pixels are 16-bit
    (0-65535) and scaled to 8 bits, as 16-bit grayscale files (PNG, TIFF, PGM) are,
    with a warning where all lie below 4096 (8- or 12-bit values in a uint16 array
    would come out nearly black); other integer pixels must lie in [0, 255]. Files and PIL images are turned
    upright by their EXIF orientation, as ``PIL.ImageOps.exif_transpose`` does
    (which also removes the tag, so an image it has turned is not turned again).

    Examples
    --------
    >>> import numpy as np
    >>> from skdeepclust import ImageEmbedder
    >>> images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    >>> embedder = ImageEmbedder("test_vit", pretrained=False, random_state=0)
    >>> features = embedder.fit_transform(images)
    >>> features.shape, features.dtype
    ((4, 64), dtype('float32'))
    >>> np.allclose(np.linalg.norm(features, axis=1), 1.0, atol=1e-5)
    True
    """

    def __init__(
        self,
        backbone="vit_small_patch16_224.dino",
        pretrained=True,
        image_size=None,
        mean=None,
        std=None,
        interpolation=None,
        crop_pct=1.0,
        batch_size="auto",
        num_workers=None,
        device="auto",
        precision="auto",
        compile=False,
        normalize=True,
        random_state=None,
        verbose=0,
    ):
        self.backbone = backbone
        self.pretrained = pretrained
        self.image_size = image_size
        self.mean = mean
        self.std = std
        self.interpolation = interpolation
        self.crop_pct = crop_pct
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.device = device
        self.precision = precision
        self.compile = compile
        self.normalize = normalize
        self.random_state = random_state
        self.verbose = verbose

    def _validate_params(self):
        if not isinstance(self.backbone, (str, torch.nn.Module)):
            raise TypeError(
                "backbone must be a timm model name or a torch.nn.Module; got "
                f"{type(self.backbone).__name__}."
            )
        if not isinstance(self.pretrained, (bool, np.bool_, str, os.PathLike)):
            raise TypeError(
                "pretrained must be True, False or the path of a checkpoint file; got "
                f"{self.pretrained!r}."
            )
        size = self.image_size
        if size is not None and not (
            _is_positive_int(size)
            or (isinstance(size, (tuple, list)) and len(size) == 2 and all(map(_is_positive_int, size)))
        ):
            raise ValueError(f"image_size must be None, a positive int or (height, width); got {size!r}.")
        for name in ("mean", "std"):
            value = getattr(self, name)
            if value is None:
                continue
            if not _three_finite_numbers(value):
                raise ValueError(f"{name} must be None or 3 finite numbers (R, G, B); got {value!r}.")
            if name == "std" and np.any(np.asarray(value) <= 0):
                raise ValueError(f"std must be positive; got {value!r}.")
            # Pixels are scaled to [0, 1] before normalising, and every timm model's mean
            # and std lie in [0, 1]: values above 1 are 0-255 units, which would quietly
            # map every image to nearly the same input.
            if not np.all((np.asarray(value) >= 0) & (np.asarray(value) <= 1)):
                raise ValueError(
                    f"{name} must be on the 0-1 scale of pixel values, as ImageNet's mean "
                    "(0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225) are; got "
                    f"{name}={value!r}. For values in 0-255 units, divide them by 255."
                )
        if self.interpolation is not None and self.interpolation not in INTERPOLATIONS:
            raise ValueError(
                f"interpolation must be None or one of {INTERPOLATIONS}; got {self.interpolation!r}."
            )
        if not (isinstance(self.crop_pct, str) and self.crop_pct == "model") and not (
            isinstance(self.crop_pct, numbers.Real) and not isinstance(self.crop_pct, bool)
            and MIN_CROP_PCT <= self.crop_pct <= 1
        ):
            raise ValueError(
                f"crop_pct must be a share of the image in [{MIN_CROP_PCT}, 1], e.g. 0.875, or "
                f"'model' for the model's own; got {self.crop_pct!r}."
            )
        is_auto = isinstance(self.batch_size, str) and self.batch_size == "auto"
        if not (_is_positive_int(self.batch_size) or is_auto):
            raise ValueError(f"batch_size must be a positive integer or 'auto'; got {self.batch_size!r}.")
        if self.num_workers is not None and not (
            isinstance(self.num_workers, numbers.Integral)
            and not isinstance(self.num_workers, bool)
            and self.num_workers >= 0
        ):
            raise ValueError(
                f"num_workers must be None or a non-negative integer; got {self.num_workers!r}."
            )
        if not isinstance(self.compile, (bool, np.bool_, dict)):
            raise TypeError(
                "compile must be True, False or a dict of torch.compile keyword arguments; "
                f"got {self.compile!r}."
            )
        if isinstance(self.compile, dict):
            _check_compile_options(self.compile)
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}; got {self.precision!r}.")
        if not isinstance(self.normalize, (bool, np.bool_)):
            raise TypeError(f"normalize must be True or False; got {self.normalize!r}.")
        check_verbose(self.verbose)
        checked_random_state(self.random_state)
        resolve_device(self.device)

    def fit(self, X, y=None):
        """Load the backbone and check the form of ``X``.

        Nothing is learned from ``X``: the backbone is frozen. Arrays are checked
        whole and files for existence; files are decoded only when embedded, by
        ``transform``, so a damaged one is found there. ``fit_transform`` embeds
        ``X`` once.

        Parameters
        ----------
        X : array-like of images, list of images or paths, or folder path
            See :class:`ImageEmbedder` for the accepted forms.
        y : None
            Ignored.

        Returns
        -------
        self : ImageEmbedder
            The fitted embedder.
        """
        self._validate_params()
        as_images(X)
        model, preprocessing = build_backbone(
            self.backbone,
            self.pretrained,
            self.image_size,
            self.mean,
            self.std,
            self.interpolation,
            self.random_state,
            self.crop_pct,
        )
        backbone_name = self._backbone_name()
        probe_shape = (1, 3, *preprocessing.input_size)
        with torch.inference_mode():
            try:
                features = model(torch.zeros(probe_shape, dtype=torch.float32))
            except Exception as exc:
                if isinstance(exc, torch.OutOfMemoryError) or "can't allocate memory" in str(exc):
                    fix = "that is more than this machine's memory holds for one image; lower image_size"
                # Images always reach the backbone as RGB; a stem built for one channel
                # (or four) fails on them, and image_size is not the culprit then.
                elif "channels" in str(exc):
                    fix = "it must take 3 input channels, as every image is given to it as RGB"
                elif _has_weights_other_than_float32(model):
                    fix = "its weights must be float32 (module.float()), as the images reach it in float32"
                elif self.image_size is not None and isinstance(self.backbone, str):
                    # a timm model at a size of the user's: name one it runs at
                    default_size = (getattr(model, "pretrained_cfg", None) or {}).get("input_size")
                    fix = image_size_advice(self.backbone, preprocessing.input_size,
                                             default_size[1:] if default_size else None)
                else:
                    fix = "check image_size"
                raise ValueError(
                    f"The backbone {backbone_name} fails on a {probe_shape} input "
                    f"({error_text(exc)}); {fix}."
                ) from exc
        self.model_ = model
        self.preprocessing_ = preprocessing
        self.embedding_dim_ = int(_check_features(features, backbone_name, probe_shape[0]).shape[1])
        self._n_features_out = self.embedding_dim_  # named by get_feature_names_out
        self._runtime = None
        return self

    def _backbone_name(self):
        return self.backbone if isinstance(self.backbone, str) else type(self.backbone).__name__

    def _compile_options(self):
        """torch.compile's keyword arguments, or None when the backbone is not compiled."""
        if isinstance(self.compile, dict):
            return self.compile
        return {} if self.compile else None

    def _runtime_on(self, device):
        """The backbone prepared for ``device``, with the batch size and input format to use there.

        Cached until a parameter that shapes them changes.
        """
        key = (device, repr(self.compile), self.batch_size, self.precision)
        cached = getattr(self, "_runtime", None)
        if cached is not None and cached[0] == key:
            return cached[1]
        with _RUNTIME_PREPARATION_LOCK:
            cached = getattr(self, "_runtime", None)
            if cached is None or cached[0] != key:
                self._runtime = (key, self._prepared_runtime(device))
            return self._runtime[1]

    def _prepared_runtime(self, device):
        model = self.model_
        convolutional = _is_convolutional(model)
        dtype = compute_dtype(device, self.precision)
        if device.type == "cpu" and dtype == torch.float16 and not cpu_computes_in_float16():
            warnings.warn(
                "precision='float16' on a CPU without float16 instructions (AMX-FP16) is emulated: "
                "it embedded 4 to 6 times slower than float32 in skdeepclust's benchmarks (ResNet-18, "
                "ViT-S/16 on 2 cores). Use precision='bfloat16' on a CPU with bfloat16 instructions "
                "(AVX-512 BF16, AMX), else precision='float32'.",
                UserWarning,
                stacklevel=stacklevel_of_user_code(),
            )
        # A convolutional backbone is copied on the CPU too: channels-last weights, which
        # run faster, would make model_'s tensors non-contiguous, and safetensors refuses
        # to save those.
        compile_options = self._compile_options()
        if device.type != "cpu" or convolutional or dtype != torch.float32 or compile_options is not None:
            model = copy.deepcopy(model).to(device, dtype)  # model_ itself stays as fitted, on the CPU
        memory_format = torch.channels_last if convolutional else torch.contiguous_format
        if convolutional:
            model = model.to(memory_format=memory_format)
        batch_size = self.batch_size
        if batch_size == "auto":
            batch_size = auto_batch_size(model, self.preprocessing_.input_size, device, dtype)
        if compile_options is not None:
            model = torch.compile(model, **compile_options)
        return _Runtime(model, batch_size, dtype, memory_format)

    def _decode_workers(self, device):
        if self.num_workers is not None:
            return self.num_workers
        if device.type != "cuda":  # the backbone keeps the cores busy; macOS (MPS) would spawn workers
            return 0
        return min(MAX_DECODE_WORKERS, max(1, usable_cores() - 1))  # one core runs the main loop

    def fit_transform(self, X, y=None):
        """Load the backbone and embed ``X``, which is read and checked once.

        Parameters
        ----------
        X : array-like of images, list of images or paths, or folder path
            See :class:`ImageEmbedder` for the accepted forms.
        y : None
            Ignored.

        Returns
        -------
        features : ndarray of shape (n_images, embedding_dim_), dtype float32
            One feature vector per image, of unit L2 norm when ``normalize=True``.

        Notes
        -----
        Stopped part way, the exception carries the rows embedded so far as
        ``completed_features``, as :meth:`transform`'s does.
        """
        # fit then transform would each wrap X: list folders, check every path
        # and the pixel range of every array, and copy GPU tensors in lists twice.
        images = as_images(X)
        # Not self.transform: set_output wraps it, and given the wrapped images
        # instead of X it would number the rows of a data frame afresh.
        return self.fit(images, y)._transform_images(images)

    def transform(self, X):
        """Embed images.

        Parameters
        ----------
        X : array-like of images, list of images or paths, or folder path
            See :class:`ImageEmbedder` for the accepted forms.

        Returns
        -------
        features : ndarray of shape (n_images, embedding_dim_), dtype float32
            One feature vector per image, of unit L2 norm when ``normalize=True``.

        Notes
        -----
        Stopped part way, by Ctrl-C or an error, the exception carries
        ``completed_features``: the rows of the images embedded so far, in order,
        so that a long run need not start again::

            try:
                features = embedder.transform(files)
            except KeyboardInterrupt as stopped:
                done = stopped.completed_features  # the rows of files[:len(done)]
        """
        check_is_fitted(self)
        self._validate_params()  # set_params may have changed them since fit
        return self._transform_images(as_images(X))

    def _transform_images(self, images):
        device = resolve_device(self.device)
        # CUDA calls without a device argument (events, bf16 support, pinning
        # threads) take the current device, which for "cuda:1" is not this one.
        with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
            return self._embed(images, device)

    def _embed(self, images, device):
        runtime = self._runtime_on(device)
        sink = _FeatureSink(len(images), self.embedding_dim_)
        forward_size = runtime.batch_size
        batches = images.batches(
            runtime.batch_size,
            num_workers=self._decode_workers(device),
            pin_memory=device.type == "cuda",
            min_size=self.preprocessing_.resize_size,
        )
        copy_stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        progress = progress_bar(enabled=bool(self.verbose), total=len(images), desc="embedding", unit="img")
        # Closing the batches at once shuts their decoding workers down: after an
        # error, a traceback kept alive (as a notebook keeps the last one) would
        # keep them and their shared memory around.
        with (torch.inference_mode(), progress, contextlib.closing(batches),
              _keeping_completed_features(sink)):
            for batch in batches:
                inputs = prepare_batch(batch, self.preprocessing_, device, copy_stream)
                inputs = inputs.to(runtime.dtype).contiguous(memory_format=runtime.memory_format)
                position = 0
                while position < inputs.shape[0]:
                    chunk = inputs[position:position + forward_size]
                    try:
                        output = self._forward(runtime, chunk, forward_size)
                    except torch.cuda.OutOfMemoryError:
                        if forward_size == 1:
                            raise
                        output = None
                    if output is None:
                        # Out here the failed pass's tensors, held by the traceback, are freed.
                        forward_size //= 2
                        torch.cuda.empty_cache()
                        warnings.warn(
                            f"Out of device memory; retrying with batches of {forward_size} images.",
                            RuntimeWarning,
                            stacklevel=stacklevel_of_user_code(),
                        )
                        continue
                    sink.add(output)
                    position += output.shape[0]
                    progress.update(output.shape[0])
        features = sink.result()
        _check_finite(features, self._backbone_name(), runtime.dtype)
        _warn_of_features_all_zero(features, self._backbone_name(), self.preprocessing_.input_size)
        return features

    def _forward(self, runtime, chunk, forward_size):
        """Features of ``chunk`` as float32.

        A compiled model always sees full batches in one memory format: a new
        shape or new strides would compile it again.
        """
        n_images = chunk.shape[0]
        if self._compile_options() is not None and n_images < forward_size:
            padding = chunk.new_zeros((forward_size - n_images, *chunk.shape[1:]))
            chunk = torch.cat([chunk, padding]).contiguous(memory_format=runtime.memory_format)
        output = runtime.model(chunk)
        output = _check_features(output, self._backbone_name(), chunk.shape[0],
                                 self.embedding_dim_)[:n_images].float()
        return F.normalize(output, dim=1) if self.normalize else output

    def __getstate__(self):
        state = dict(super().__getstate__())
        state.pop("_runtime", None)  # device copies are rebuilt where the pickle is loaded
        return state

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.three_d_array = True
        tags.transformer_tags.preserves_dtype = []
        return tags
