import multiprocessing
import os
import pickle
import sys
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor

import joblib
import numpy as np
import pytest
import torch
from conftest import TINY, interrupt_embedding_at
from PIL import Image
from sklearn.base import clone

from skdeepclust import ImageEmbedder
from skdeepclust._device import GLOBAL_TORCH_STATE_LOCK
from skdeepclust.embedding import backbone as backbone_module
from skdeepclust.embedding import embedder as embedder_module
from skdeepclust.embedding import images as images_module
from skdeepclust.embedding.images import as_images


def test_features_are_float32_unit_vectors(images):
    features = ImageEmbedder(**TINY).fit_transform(images)
    assert features.shape == (16, 64) and features.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1.0, atol=1e-5)


def test_normalize_false_keeps_raw_features(images):
    raw = ImageEmbedder(**TINY, normalize=False).fit_transform(images)
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0)
    unit = ImageEmbedder(**TINY).fit_transform(images)
    np.testing.assert_allclose(raw / np.linalg.norm(raw, axis=1, keepdims=True), unit, atol=1e-5)


def test_every_input_form_gives_the_same_features(images, tmp_path):
    embedder = ImageEmbedder(**TINY).fit(images)
    expected = embedder.transform(images)
    paths = []
    for i, image in enumerate(images):
        paths.append(tmp_path / f"{i:02d}.png")  # lossless, so pixels survive the round trip
        Image.fromarray(image).save(paths[-1])
    forms = {
        "nchw": np.ascontiguousarray(images.transpose(0, 3, 1, 2)),
        "float": images / 255.0,
        "pil": [Image.fromarray(image) for image in images],
        "arrays": list(images),
        "paths": [str(p) for p in paths],
        "folder": str(tmp_path),
        "tensor": torch.from_numpy(images),
        "nchw tensor": torch.from_numpy(images).permute(0, 3, 1, 2),
        "bfloat16 tensor": torch.from_numpy(images).to(torch.bfloat16) / 255,
    }
    for name, X in forms.items():
        # bfloat16 keeps 8 bits of each pixel's mantissa, so that form is close, not equal.
        atol = 2e-2 if name.startswith("bfloat16") else 1e-5
        np.testing.assert_allclose(embedder.transform(X), expected, atol=atol, err_msg=name)


def test_tensor_input_is_not_modified(images):
    embedder = ImageEmbedder(**TINY).fit(images)
    pixels = torch.from_numpy(images / 255.0).float().permute(0, 3, 1, 2)  # already at the input size
    original = pixels.clone()
    embedder.transform(pixels)
    assert torch.equal(pixels, original)


def test_fit_transform_reads_its_input_once(images, monkeypatch):
    wrapped = []

    def counting_as_images(X):
        if isinstance(X, list):
            wrapped.append(X)
        return as_images(X)

    monkeypatch.setattr(embedder_module, "as_images", counting_as_images)
    features = ImageEmbedder(**TINY).fit_transform(list(images))
    assert len(wrapped) == 1
    np.testing.assert_allclose(features, ImageEmbedder(**TINY).fit(images).transform(images), atol=1e-5)


def test_images_of_different_sizes(images):
    mixed = [images[0], images[1][:20, :28], np.asarray(Image.fromarray(images[2]).resize((50, 40)))]
    embedder = ImageEmbedder(**TINY).fit(images)
    features = embedder.transform(mixed)
    assert features.shape == (3, 64)
    one_by_one = np.concatenate([embedder.transform([image]) for image in mixed])
    np.testing.assert_allclose(features, one_by_one, atol=1e-5)


def test_batching_does_not_change_features(images):
    whole = ImageEmbedder(**TINY, batch_size=64).fit_transform(images)
    batched = ImageEmbedder(**TINY, batch_size=3).fit_transform(images)
    np.testing.assert_allclose(whole, batched, atol=1e-5)


def test_random_state_makes_random_weights_repeatable(images):
    first = ImageEmbedder(**TINY).fit_transform(images)
    again = ImageEmbedder(**TINY).fit_transform(images)
    other = ImageEmbedder(**{**TINY, "random_state": 1}).fit_transform(images)
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other)


def test_random_state_leaves_the_global_torch_stream_alone(images):
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    ImageEmbedder(**TINY).fit(images)
    torch.testing.assert_close(torch.rand(3), expected)


def test_fits_in_threads_draw_the_same_random_weights(images):
    # torch's global RNG is shared by all threads; a seeded build in one thread
    # must not draw from, or reseed, another's.
    expected = ImageEmbedder(**TINY).fit_transform(images)
    torch.manual_seed(0)
    stream = torch.get_rng_state()
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: ImageEmbedder(**TINY).fit_transform(images), range(8)))
    for features in results:
        np.testing.assert_array_equal(features, expected)
    assert torch.equal(torch.get_rng_state(), stream)


def test_seeded_build_leaves_the_gpu_streams_alone(images, monkeypatch):
    # torch.manual_seed would reseed every CUDA device, or queue that until CUDA
    # starts, and fork_rng(devices=[]) restores the CPU stream only.
    reseeded = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", reseeded.append)
    monkeypatch.setattr(torch.cuda, "manual_seed", reseeded.append)
    ImageEmbedder(**TINY).fit(images)
    assert reseeded == []


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@pytest.mark.parametrize("lock", [
    GLOBAL_TORCH_STATE_LOCK,
    embedder_module._RUNTIME_PREPARATION_LOCK,
    backbone_module._LOAD_STATE_DICT_SWAP,
], ids=["seeding", "runtime", "load_state_dict"])
def test_a_process_forked_while_another_thread_holds_a_lock_gets_it_anew(lock):
    # It would inherit the lock held, by a thread the fork does not have.
    holding, release = threading.Event(), threading.Event()

    def hold_the_lock():
        with lock:
            holding.set()
            release.wait(60)

    holder = threading.Thread(target=hold_the_lock)
    holder.start()
    holding.wait(60)
    try:
        child = multiprocessing.get_context("fork").Process(target=_take_within_five_seconds, args=(lock,))
        child.start()
        child.join(30)
    finally:
        release.set()
        holder.join()
    assert child.exitcode == 0


def _take_within_five_seconds(lock):
    sys.exit(0 if lock.acquire(timeout=5) else 1)


@pytest.mark.parametrize("backbone", ["test_vit", "resnet18"])
def test_embeds_whatever_torch_default_dtype_is(backbone, images):
    params = {**TINY, "backbone": backbone}
    expected = ImageEmbedder(**params).fit_transform(images)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        embedder = ImageEmbedder(**params).fit(images)
        features = embedder.transform(images)
        assert torch.get_default_dtype() == torch.float64
    finally:
        torch.set_default_dtype(default)
    # The same random weights, drawn in float32, and the same float32 features.
    assert next(embedder.model_.parameters()).dtype == torch.float32
    assert features.dtype == np.float32
    np.testing.assert_allclose(features, expected, atol=1e-5)


@pytest.mark.parametrize("random_state", [-1, 2**32, 0.5, "0", np.random.default_rng(0)])
def test_bad_random_state_is_named(random_state, images):
    with pytest.raises(ValueError, match=r"^random_state must be None, an int in \[0, 2\*\*32 - 1\]"):
        ImageEmbedder(**{**TINY, "random_state": random_state}).fit(images)


def test_input_array_is_not_modified(images):
    original = images.copy()
    ImageEmbedder(**TINY).fit_transform(images)
    np.testing.assert_array_equal(images, original)


def test_pickle_and_joblib_roundtrip(images, tmp_path):
    embedder = ImageEmbedder(**TINY).fit(images)
    expected = embedder.transform(images)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(embedder)).transform(images), expected)
    joblib.dump(embedder, tmp_path / "embedder.joblib")
    np.testing.assert_array_equal(joblib.load(tmp_path / "embedder.joblib").transform(images), expected)


def test_pickle_leaves_out_device_copies(images):
    embedder = ImageEmbedder(**TINY).fit(images)
    embedder._runtime = ("a key", "a device copy")
    state = embedder.__getstate__()
    assert "_runtime" not in state
    assert embedder._runtime is not None


def test_bfloat16_precision_is_close_to_float32(images):
    full = ImageEmbedder(**TINY, precision="float32").fit_transform(images)
    half = ImageEmbedder(**TINY, precision="bfloat16", device="cpu").fit_transform(images)
    assert half.dtype == np.float32
    assert np.min(np.sum(full * half, axis=1)) > 0.99


@pytest.mark.parametrize("amx_fp16", [False, True])
def test_float16_on_a_cpu_that_emulates_it_is_warned_of(images, monkeypatch, amx_fp16):
    import skdeepclust.embedding.embedder as embedder_module

    monkeypatch.setattr(embedder_module, "cpu_computes_in_float16", lambda: amx_fp16)
    embedder = ImageEmbedder(**TINY, precision="float16", device="cpu")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        features = embedder.fit_transform(images)
        embedder.transform(images)  # prepared once: one warning
    emulated = [str(w.message) for w in caught if "is emulated" in str(w.message)]
    assert features.dtype == np.float32
    if amx_fp16:
        assert emulated == []
    else:
        assert len(emulated) == 1 and "precision='bfloat16'" in emulated[0], emulated


def test_out_of_memory_halves_the_batch(images, monkeypatch):
    # On the CPU in float32 the model is run as it is, so the patched forward is called;
    # on a GPU the runtime is a copy made at the first transform.
    embedder = ImageEmbedder(**TINY, batch_size=8, device="cpu").fit(images)
    expected = embedder.transform(images)
    forward = embedder.model_.forward
    seen = []

    def forward_that_fits_four(x):
        seen.append(x.shape[0])
        if x.shape[0] > 4:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return forward(x)

    monkeypatch.setattr(embedder.model_, "forward", forward_that_fits_four)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    with pytest.warns(RuntimeWarning, match="batches of 4") as record:
        features = embedder.transform(images)
    assert record[0].filename == __file__  # the user's line, not a frame inside the library
    np.testing.assert_allclose(features, expected, atol=1e-5)
    assert seen[0] == 8 and set(seen[1:]) == {4}


def test_resize_keeps_aspect_and_crops_the_centre():
    wide = torch.zeros(1, 3, 10, 40)
    wide[..., 18:22] = 1.0  # a bright band in the middle of the width
    out = embedder_module._resize_and_center_crop(wide, (20, 20), "bilinear")
    # Scaled by 2 to cover 20x20 (20x80), then the central 20 columns (30-50) kept:
    # the band lands on columns 6-14, and its dark surroundings on both sides.
    assert out.shape == (1, 3, 20, 20)
    assert out[..., 7:13].mean() > 0.9
    assert out[..., :4].mean() < 0.1 and out[..., 16:].mean() < 0.1


@pytest.mark.parametrize("interpolation", embedder_module.INTERPOLATIONS)
@pytest.mark.parametrize("shape, crop_size", [((1, 500), (16, 16)), ((300, 2), (16, 16)),
                                              ((6, 90), (16, 16)), ((7, 60), (16, 12))])
def test_a_strip_is_enlarged_only_where_the_crop_keeps_it(shape, crop_size, interpolation,
                                                          monkeypatch):
    rows, columns = torch.meshgrid(torch.arange(shape[0]), torch.arange(shape[1]), indexing="ij")
    smooth = (2 + torch.sin(rows / 3) + torch.cos(columns / 4)) / 4  # no edges to shift
    strip = smooth.expand(1, 3, *shape).clone()
    cover = (20, 20) if crop_size == (16, 12) else None  # a crop_pct below 1
    wanted_h, wanted_w = cover or crop_size
    # torchvision's sizes (timm's evaluation): the other side truncated, the excess
    # over the crop halved and rounded half to even
    resized = ((wanted_h, max(wanted_w, wanted_h * shape[1] // shape[0])) if wanted_h * shape[1] >= wanted_w * shape[0]
               else (max(wanted_h, wanted_w * shape[0] // shape[1]), wanted_w))
    whole = torch.nn.functional.interpolate(
        strip, size=resized, mode=interpolation,
        **({} if interpolation == "nearest" else {"align_corners": False}))
    top, left = (int(round((length - kept) / 2)) for length, kept in zip(resized, crop_size))
    expected = whole[..., top:top + crop_size[0], left:left + crop_size[1]]
    if interpolation == "bicubic":
        expected = expected.clamp(0, 1)

    interpolate, enlarged_sizes = torch.nn.functional.interpolate, []

    def recorded(*args, **kwargs):
        out = interpolate(*args, **kwargs)
        enlarged_sizes.append(out.shape[-2] * out.shape[-1])
        return out

    monkeypatch.setattr(torch.nn.functional, "interpolate", recorded)
    out = embedder_module._resize_and_center_crop(strip, crop_size, interpolation, cover)
    assert out.shape == expected.shape
    assert enlarged_sizes and max(enlarged_sizes) <= resized[0] * resized[1] / 4
    # Where a source pixel maps to whole output pixels (1x500 and 300x2 enlarged 16
    # times) the pixels are the same; elsewhere they move by under half a pixel
    # (7x60 here, 0.007 at most), and nearest may then take a neighbouring source
    # pixel, whose columns differ by at most 1/16 here.
    exact = shape in ((1, 500), (300, 2))
    np.testing.assert_allclose(out, expected, atol=1e-5 if exact else 0.07 if interpolation == "nearest" else 0.02)


@pytest.mark.parametrize("interpolation", embedder_module.INTERPOLATIONS)
def test_a_strip_keeps_the_crop_size_whatever_its_short_side(interpolation):
    # For some sides (55, 71, 110 of 224) the enlargement factor rounds down, and an
    # output sized by it alone came out a pixel short.
    for short_side in range(1, 224):
        for shape in ((short_side, 1000), (1000, short_side)):
            out = embedder_module._resize_and_center_crop(torch.rand(1, 1, *shape), (224, 224), interpolation)
            assert out.shape == (1, 1, 224, 224), shape


def test_unfitted_transform_raises(images):
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        ImageEmbedder(**TINY).transform(images)


@pytest.mark.parametrize(
    "params, error, match",
    [
        ({"backbone": 3}, TypeError, "backbone must be"),
        ({"pretrained": 1.5}, TypeError, "pretrained must be"),
        ({"image_size": 0}, ValueError, "image_size"),
        ({"normalize": "yes"}, TypeError, "normalize must be True or False"),
        ({"verbose": -1}, ValueError, "verbose must be an integer >= 0"),
        ({"image_size": (32, 32, 3)}, ValueError, "image_size"),
        ({"mean": (0.5, 0.5)}, ValueError, "mean must be"),
        ({"std": (0.5, 0.0, 0.5)}, ValueError, "std must be positive"),
        ({"mean": (123.675, 116.28, 103.53)}, ValueError, "mean must be on the 0-1 scale.*255"),
        ({"std": (58.395, 57.12, 57.375)}, ValueError, "std must be on the 0-1 scale.*255"),
        ({"interpolation": "lanczos"}, ValueError, "interpolation"),
        ({"batch_size": 0}, ValueError, "batch_size"),
        ({"precision": "int8"}, ValueError, "precision"),
        ({"device": "tpu"}, ValueError, "not a device name"),
        ({"device": "meta"}, ValueError, "device='meta' is not supported; use 'auto', 'cpu', 'cuda'"),
        ({"device": torch.device("meta")}, ValueError, "is not supported"),
        ({"device": 7}, TypeError, "device must be"),
    ],
)
def test_bad_parameters_are_named_at_fit(images, params, error, match):
    embedder = ImageEmbedder(**{**TINY, **params})
    with pytest.raises(error, match=match):
        embedder.fit(images)


@pytest.mark.parametrize(
    "params, match",
    [
        ({"batch_size": -1}, "batch_size must be a positive integer or 'auto'; got -1"),
        ({"batch_size": 0}, "batch_size must be"),
        ({"batch_size": 2.5}, "batch_size must be"),
        ({"precision": "fp16"}, "precision must be one of"),
        ({"device": "meta"}, "is not supported"),
    ],
)
def test_parameters_set_after_fit_are_checked_at_transform(images, params, match):
    embedder = ImageEmbedder(**TINY).fit(images)
    with pytest.raises(ValueError, match=match):
        embedder.set_params(**params).transform(images)


def test_features_never_written_are_never_returned():
    sink = embedder_module._FeatureSink(3, 4)
    sink.add(torch.ones(2, 4))
    with pytest.raises(RuntimeError, match="for 2 of 3 images"):
        sink.result()


def test_pretrained_may_be_a_numpy_bool(images):
    # GridSearchCV passes the values of a grid given as an array as numpy scalars.
    pretrained = np.array([True, False])[1]
    features = ImageEmbedder(**{**TINY, "pretrained": pretrained}).fit_transform(images)
    np.testing.assert_array_equal(features, ImageEmbedder(**TINY).fit_transform(images))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_without_a_gpu_is_a_clear_error(images):
    with pytest.raises(ValueError, match="no CUDA device"):
        ImageEmbedder(**TINY, device="cuda").fit(images)


def test_clone_keeps_parameters_and_drops_fitted_state(images):
    embedder = ImageEmbedder(**TINY).fit(images)
    copy = clone(embedder)
    assert copy.get_params() == embedder.get_params()
    assert not hasattr(copy, "model_")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fitted_on_gpu_predicts_on_cpu(images):
    embedder = ImageEmbedder(**TINY, device="cuda", precision="float32").fit(images)
    on_gpu = embedder.transform(images)
    restored = pickle.loads(pickle.dumps(embedder))
    restored.set_params(device="cpu")
    # cuDNN convolutions (the patch embedding) run in TF32 even at precision="float32".
    np.testing.assert_allclose(restored.transform(images), on_gpu, atol=1e-3)


def test_output_features_are_named_for_set_output(images):
    embedder = ImageEmbedder(**TINY)
    with pytest.raises(Exception, match="not fitted"):
        embedder.get_feature_names_out()
    names = embedder.fit(images).get_feature_names_out()
    assert names.tolist() == [f"imageembedder{i}" for i in range(64)]
    pytest.importorskip("pandas")
    frame = embedder.set_output(transform="pandas").transform(images)
    assert frame.columns.tolist() == names.tolist()


def test_fit_transform_keeps_the_index_of_a_series_of_paths(images, tmp_path):
    pd = pytest.importorskip("pandas")
    from sklearn.compose import ColumnTransformer
    from sklearn.preprocessing import FunctionTransformer, StandardScaler

    paths = []
    for position, image in enumerate(images[:6]):
        paths.append(str(tmp_path / f"{position}.png"))
        Image.fromarray(image).save(paths[-1])
    table = pd.DataFrame({"path": paths, "size": np.arange(6.0)}, index=[7, 2, 9, 4, 0, 5])
    embedder = ImageEmbedder(**TINY).set_output(transform="pandas")
    fitted = embedder.fit_transform(table["path"])
    # As scikit-learn's own transformers: the Series' index from scikit-learn 1.7 on.
    reference = FunctionTransformer(lambda column: np.zeros((len(column), 1)),
                                    feature_names_out=lambda *_: np.array(["zero"]))
    expected = reference.set_output(transform="pandas").fit_transform(table["path"]).index
    assert fitted.index.tolist() == expected.tolist()
    pd.testing.assert_frame_equal(fitted, embedder.transform(table["path"]))
    if expected.tolist() != table.index.tolist():
        return  # ColumnTransformer could not join its outputs: scikit-learn's doing before 1.7
    # A split or filtered table, whose index is not 0..n-1, through a ColumnTransformer.
    columns = ColumnTransformer([("image", ImageEmbedder(**TINY), "path"),
                                 ("size", StandardScaler(), ["size"])]).set_output(transform="pandas")
    assert columns.fit_transform(table).shape == (6, 64 + 1)


@pytest.mark.parametrize("crop_pct, close_to_timm", [("model", True), (1.0, False)])
def test_crop_pct_model_reproduces_timms_evaluation_transform(crop_pct, close_to_timm):
    import timm.data

    rows, cols = np.mgrid[0:120, 0:200]
    waves = 127.5 * (1 + np.sin(rows / 6.0) * np.cos(cols / 9.0))  # smooth, but not linear
    photo = np.stack([waves, waves[::-1], waves[:, ::-1]], axis=-1).astype(np.uint8)
    embedder = ImageEmbedder("test_resnet", pretrained=False, crop_pct=crop_pct).fit(photo[None])
    timm_transform = timm.data.create_transform(
        **timm.data.resolve_model_data_config(embedder.model_), is_training=False)
    expected = timm_transform(Image.fromarray(photo))  # resized to 168 x 280, centre 160 kept
    inputs = embedder_module.prepare_batch(torch.from_numpy(photo).permute(2, 0, 1)[None],
                                           embedder.preprocessing_, torch.device("cpu"))
    assert inputs.shape == (1, *expected.shape)
    difference = (inputs[0] - expected).abs().mean().item()
    assert (difference < 0.02) == close_to_timm, difference


@pytest.mark.parametrize("height, width", [(300, 200), (375, 500), (281, 500), (97, 130)])
@pytest.mark.parametrize("crop_pct", [0.875, 0.9, 0.95, 1.0])
@pytest.mark.parametrize("size", [(64, 64), (64, 48), (48, 64)])
def test_the_crop_falls_on_the_pixels_of_timms_evaluation_transform(height, width, crop_pct, size):
    # Where the excess over the crop is odd, torchvision's CenterCrop rounds half of
    # it to even, and its Resize truncates the long side (timm's ResizeKeepRatio,
    # for other shapes than squares, rounds it): one pixel apart gave mean
    # differences up to 0.17 on these waves (0.001 when the crops agree).
    import timm.data

    rows, cols = np.mgrid[0:height, 0:width]
    waves = 127.5 * (1 + np.sin(rows / 6.0) * np.cos(cols / 9.0))
    photo = np.stack([waves, waves[::-1], waves[:, ::-1]], axis=-1).astype(np.uint8)
    preprocessing = backbone_module.Preprocessing(size, (0, 0, 0), (1, 1, 1), "bilinear", crop_pct)
    inputs = embedder_module.prepare_batch(torch.from_numpy(photo).permute(2, 0, 1)[None], preprocessing,
                                           torch.device("cpu"))
    expected = timm.data.create_transform(input_size=(3, *size), interpolation="bilinear", crop_pct=crop_pct,
                                          mean=(0, 0, 0), std=(1, 1, 1), crop_mode="center")(Image.fromarray(photo))
    assert (inputs[0] - expected).abs().mean().item() < 0.003


def test_crop_pct_is_checked(images):
    for bad in (1.2, 0.1, True, "timm"):
        with pytest.raises(ValueError, match=r"crop_pct must be a share of the image in \[0.25, 1\]"):
            ImageEmbedder(**TINY, crop_pct=bad).fit(images)
    assert ImageEmbedder(**TINY, crop_pct="model").fit(images).preprocessing_.crop_pct == 0.95


def test_progress_bars_that_are_off_leave_no_trace_in_the_process(tmp_path):
    # Even a disabled tqdm bar fixes multiprocessing's start method and starts a
    # monitor thread; a fresh interpreter shows whether any call made one.
    import subprocess

    for name in ["a.png", "b.png", "c.png"]:
        Image.new("RGB", (16, 16)).save(tmp_path / name)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    program = f"""
import multiprocessing, threading, warnings
import numpy as np
from skdeepclust import ImageEmbedder
from skdeepclust.clustering import SCANClusterer
from skdeepclust.datasets import load_image_folder

warnings.simplefilter("ignore")
files = load_image_folder({str(tmp_path)!r}, skip_unreadable=True).filenames
features = ImageEmbedder(**{TINY!r}).fit_transform(files)
SCANClusterer(n_clusters=2, n_neighbors=1, n_epochs=2, device="cpu").fit(features)
print(multiprocessing.get_start_method(allow_none=True), [thread.name for thread in threading.enumerate()])
"""
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "None ['MainThread']"


@pytest.mark.parametrize("params, match", [
    (dict(std=["0.2", "0.2", "0.2"]), r"^std must be None or 3 finite numbers \(R, G, B\)"),
    (dict(mean=(0.5, 0.5)), r"^mean must be None or 3 finite numbers"),
    (dict(verbose=-1), "^verbose must be"),
])
def test_preprocessing_and_verbose_are_checked_in_our_words(images, params, match):
    with pytest.raises(ValueError, match=match):
        ImageEmbedder(**TINY, **params).fit(images)
    ImageEmbedder(**TINY, verbose=np.bool_(False)).fit(images)  # as scikit-learn's estimators take it
    ImageEmbedder(**TINY, mean=[torch.tensor(0.5)] * 3, std=np.full(3, 0.25)).fit(images)


@pytest.mark.parametrize("backbone", ["test_resnet", "test_vit"])  # bilinear, bicubic
def test_downscaling_matches_timms_evaluation_transform(backbone):
    # The existing timm comparison only enlarges (120 x 200 to 168 x 280), where
    # antialiasing does nothing, and uses test_resnet, whose own mode is bilinear.
    import timm.data

    photo = np.random.default_rng(0).integers(0, 256, (480, 800, 3), dtype=np.uint8)
    embedder = ImageEmbedder(backbone, pretrained=False, crop_pct="model").fit(photo[None])
    expected = timm.data.create_transform(
        **timm.data.resolve_model_data_config(embedder.model_), is_training=False)(Image.fromarray(photo))
    inputs = embedder_module.prepare_batch(torch.from_numpy(photo).permute(2, 0, 1)[None],
                                           embedder.preprocessing_, torch.device("cpu"))
    assert inputs.shape == (1, *expected.shape)
    assert (inputs[0] - expected).abs().mean().item() < 0.01  # 0.002 as is; 0.03-0.36 when wrong


def test_mean_and_std_are_applied_to_red_green_and_blue_in_that_order():
    # Every test model normalises with (0.5, 0.5, 0.5), which reads the same in either order.
    mean, std = (0.1, 0.5, 0.9), (0.1, 0.2, 0.3)
    red = np.zeros((1, 32, 32, 3), np.uint8)
    red[..., 0] = 255
    embedder = ImageEmbedder(**TINY, mean=mean, std=std).fit(red)
    assert embedder.preprocessing_.mean == mean and embedder.preprocessing_.std == std
    inputs = embedder_module.prepare_batch(torch.from_numpy(red).permute(0, 3, 1, 2),
                                           embedder.preprocessing_, torch.device("cpu"))
    expected = (np.array([1.0, 0.0, 0.0]) - mean) / np.array(std)
    np.testing.assert_allclose(inputs[0, :, 5, 5].numpy(), expected, atol=1e-5)


def test_the_interpolation_parameter_overrides_the_models_own():
    X = np.random.default_rng(0).integers(0, 256, (2, 100, 100, 3), dtype=np.uint8)
    own = ImageEmbedder(**TINY).fit(X)
    assert own.preprocessing_.interpolation == "bicubic"  # test_vit's own
    for interpolation in ("bilinear", "nearest"):
        embedder = ImageEmbedder(**TINY, interpolation=interpolation).fit(X)
        assert embedder.preprocessing_.interpolation == interpolation
        assert not np.allclose(embedder.transform(X), own.transform(X), atol=1e-4)


def test_bicubic_resizing_keeps_pixels_in_the_unit_range():
    step = torch.zeros(1, 3, 8, 8)
    step[..., 4:] = 1.0  # a sharp edge, where bicubic overshoots
    for size in ((32, 32), (4, 4)):  # enlarged and reduced
        out = embedder_module._resize_and_center_crop(step, size, "bicubic")
        assert out.min().item() >= 0.0 and out.max().item() <= 1.0


def test_large_jpegs_decode_to_cover_the_resize_size_not_only_the_crop(tmp_path, monkeypatch):
    # With crop_pct < 1, decoding to cover only the crop took a 512 px JPEG to 1/8
    # scale (64 px), enlarged to 128 px.
    rows, cols = np.mgrid[0:512, 0:512]
    photo = (127.5 * (1 + np.sin(rows / 3.0) * np.cos(cols / 5.0)))[..., None].repeat(3, -1).astype(np.uint8)
    path = str(tmp_path / "big.jpg")
    Image.fromarray(photo).save(path, quality=95)
    asked, decode = [], images_module.decode_file
    monkeypatch.setattr(images_module, "decode_file",
                        lambda file, min_size=None: asked.append(min_size) or decode(file, min_size))
    embedder = ImageEmbedder(**{**TINY, "crop_pct": 0.25}, num_workers=0).fit(photo[None])
    from_file = embedder.transform([path])
    assert asked == [embedder.preprocessing_.resize_size] == [(128, 128)]
    whole = embedder.transform(np.asarray(Image.open(path).convert("RGB"))[None])
    assert float((from_file * whole).sum()) > 0.995  # 0.9998 as is, 0.963 when decoded at 64 px


def test_ctrl_c_hands_over_the_features_of_the_images_embedded_so_far(images, monkeypatch):
    # The command keeps them, and its next run goes on from there; transform's Notes
    # tell Python users how to take them.
    embedder = ImageEmbedder(**TINY, batch_size=4).fit(images)
    expected = embedder.transform(images)
    interrupt_embedding_at(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt) as interrupt:
        embedder.transform(images)
    np.testing.assert_allclose(interrupt.value.completed_features, expected[:8], atol=1e-5)


def test_feature_sink_counts_only_rows_written():
    sink = embedder_module._FeatureSink(5, 2)
    sink.add(torch.ones(2, 2))
    np.testing.assert_array_equal(sink.completed(), np.ones((2, 2)))
    with pytest.raises(RuntimeError, match="computed for 2 of 5 images"):
        sink.result()
