"""The speed features of ImageEmbedder: decode workers, channels-last, torch.compile, batch size.

Their speed is measured in benchmarks/; these tests check that each gives the
same features as the plain path and that its parameter is checked.
"""

import copy
import itertools
import multiprocessing
import os
import pickle
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import joblib
import numpy as np
import pytest
import torch
from conftest import TINY
from PIL import Image

from skdeepclust import ImageEmbedder
from skdeepclust.embedding import embedder as embedder_module
from skdeepclust.embedding import images as images_module
from skdeepclust.embedding.images import as_images

CONV = dict(backbone="test_resnet", pretrained=False, image_size=32, random_state=0)


@pytest.fixture
def image_files(images, tmp_path):
    paths = []
    for position, image in enumerate(images):
        paths.append(str(tmp_path / f"{position:02d}.png"))
        Image.fromarray(image).save(paths[-1])
    return paths


def test_decode_workers_give_the_same_batches_in_order_and_draw_nothing(image_files):
    in_process = list(as_images(image_files).batches(5))
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    with_workers = list(as_images(image_files).batches(5, num_workers=2))
    # The workers' seeds come from a generator of the loader's own, not from the caller's stream.
    torch.testing.assert_close(torch.rand(3), expected)
    assert [len(batch) for batch in with_workers] == [5, 5, 5, 1]
    for ours, theirs in zip(with_workers, in_process):
        assert torch.equal(ours, theirs)


def test_decode_workers_keep_images_of_different_sizes_apart(images):
    pictures = [Image.fromarray(image).resize((20 + i, 30)) for i, image in enumerate(images[:6])]
    batches = list(as_images(pictures).batches(3, num_workers=2))
    assert [[tuple(image.shape) for image in batch] for batch in batches] == [
        [(3, 30, 20 + i) for i in range(3)],
        [(3, 30, 20 + i) for i in range(3, 6)],
    ]


def test_unreadable_file_in_a_worker_is_a_clear_error(image_files):
    with open(image_files[12], "wb") as broken:
        broken.write(b"not an image")
    with pytest.raises(ValueError, match=r"^Cannot read image file .*12\.png"):
        list(as_images(image_files).batches(4, num_workers=2))


@pytest.mark.parametrize("workers", [0, 2])
def test_unreadable_files_can_pass_as_black_pixels_with_their_reasons(image_files, workers):
    from skdeepclust.embedding.images import ImageList

    for position in (4, 5, 6, 7, 9):  # the whole second batch, and one of the third
        with open(image_files[position], "wb") as broken:
            broken.write(b"not an image")
    images = ImageList(image_files, skip_unreadable=True)
    batches = list(images.batches(4, num_workers=workers))
    assert sorted(images.unreadable) == [4, 5, 6, 7, 9]
    assert all(reason.startswith("cannot identify image file") for reason in images.unreadable.values())
    readable = list(ImageList([image_files[p] for p in (0, 1, 2, 3, 8, 10, 11)]).batches(7))[0]
    assert torch.equal(batches[0], readable[:4])
    assert not batches[1].any()  # no readable image in that batch to take the size of
    assert torch.equal(batches[2][[0, 2, 3]], readable[4:]) and batches[2].shape == (4, 3, 32, 32)
    assert not batches[2][1].any()
    # A subset numbers its own images.
    subset = images.subset([9, 0])
    assert subset.unreadable == {}
    list(subset.batches(2))
    assert subset.unreadable == {0: images.unreadable[9]}
    # A file that vanished since it was listed is one more unreadable file.
    os.remove(image_files[0])
    images = ImageList(image_files, skip_unreadable=True)
    list(images.batches(4, num_workers=workers))
    assert images.unreadable[0] == "No such file or directory"


class _FailsOnSecondBatch(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(3, 4)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        if self.calls == 2:
            raise RuntimeError("failed on the second batch")
        return self.linear(x.mean((2, 3)))


def test_an_error_while_embedding_stops_the_decode_workers_at_once(image_files):
    embedder = ImageEmbedder(_FailsOnSecondBatch(), image_size=16, mean=(0.5,) * 3, std=(0.25,) * 3,
                             batch_size=2, num_workers=2).fit(image_files[:1])
    # pytest keeps the exception, and so its traceback, alive, as a notebook keeps the last one.
    with pytest.raises(RuntimeError, match="second batch") as raised:
        embedder.transform(image_files)
    assert multiprocessing.active_children() == []
    assert raised.value is not None


def test_embedding_files_with_workers_matches_in_process(images, image_files):
    embedder = ImageEmbedder(**TINY, batch_size=4, num_workers=0).fit(images)
    expected = embedder.transform(image_files)
    np.testing.assert_array_equal(embedder.set_params(num_workers=2).transform(image_files), expected)


def test_decode_workers_leave_lazily_opened_pil_images_readable(tmp_path):
    # Forked workers read through the caller's open files, sharing their position:
    # afterwards the caller's own reads of those images failed ("image file is
    # truncated"), and the same image twice in one list failed at once. Files are
    # larger than Python's 8 KiB read buffer, which hid it. The images the workers read
    # must keep the changes made to them before loading.
    rng = np.random.default_rng(0)
    paths = []
    for position, suffix in enumerate([".jpg", ".png", ".jpg", ".png", ".gif"]):
        paths.append(str(tmp_path / f"{position}{suffix}"))
        frames = [Image.fromarray(rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)) for _ in range(3)]
        frames[0].save(paths[-1], save_all=suffix == ".gif", append_images=frames[1:])

    turned = Image.Exif()
    turned[0x0112] = 6  # EXIF orientation: turned a quarter
    Image.open(paths[0]).save(tmp_path / "turned.jpg", exif=turned)

    def opened(load):
        images = [Image.open(path) for path in paths + [paths[0], str(tmp_path / "turned.jpg")]]
        images[4].seek(2)  # the GIF's third frame
        images[5].draft("RGB", (30, 40))  # and the changes a user may make before loading:
        images[6].getexif()[0x0112] = 1  # JPEG's reduced-scale decoding; upright after all
        for image in images if load else []:
            image.load()
        return images + images[:1]  # one image twice: two workers read it at once

    lazy, loaded = opened(load=False), opened(load=True)
    embedder = ImageEmbedder(**TINY, batch_size=2, num_workers=0).fit(loaded)
    expected = embedder.transform(loaded)
    embedder.set_params(num_workers=2)
    for _ in range(2):
        np.testing.assert_array_equal(embedder.transform(lazy), expected)
    np.testing.assert_array_equal(embedder.set_params(num_workers=0).transform(lazy), expected)
    for image, reference in zip(lazy, loaded):
        np.testing.assert_array_equal(np.asarray(image), np.asarray(reference))


def test_decode_workers_started_from_an_executor_thread_exit_cleanly(images, image_files):
    # As a server's request handler, or asyncio's run_in_executor, would call it. Such
    # workers exited with code 1, and the DataLoader raised in the main thread.
    embedder = ImageEmbedder(**TINY, batch_size=4, num_workers=2).fit(images)
    expected = embedder.transform(image_files)
    with ThreadPoolExecutor(2) as pool:
        for _ in range(4):
            calls = [pool.submit(embedder.transform, image_files) for _ in range(2)]
            while not all(call.done() for call in calls):
                time.sleep(0.001)  # the main thread runs Python code, where the signal lands
            for call in calls:
                np.testing.assert_array_equal(call.result(), expected)


def test_threads_start_their_decode_workers_one_at_a_time(images, image_files, monkeypatch):
    # On Python 3.12 or newer, filelock (4.3.1 seen here; timm's hub client imports
    # it) makes a fork raise RuntimeError while another thread's fork is under way:
    # 27 of 40 transforms in 4 threads failed so on Python 3.13.
    embedder = ImageEmbedder(**TINY, batch_size=4, num_workers=2).fit(images)
    expected = embedder.transform(image_files)
    real_fork, guard = os.fork, threading.Lock()
    forking = most_at_once = 0

    def counting_fork():
        nonlocal forking, most_at_once
        with guard:
            forking += 1
            most_at_once = max(most_at_once, forking)
        time.sleep(0.02)  # a window in which another thread's fork would overlap
        pid = real_fork()
        if pid:  # the child must not touch the guard, which another thread may hold
            with guard:
                forking -= 1
        return pid

    monkeypatch.setattr(os, "fork", counting_fork)
    with ThreadPoolExecutor(2) as pool:
        for _ in range(3):
            calls = [pool.submit(embedder.transform, image_files) for _ in range(2)]
            for call in calls:
                np.testing.assert_array_equal(call.result(), expected)
    assert most_at_once == 1


def _in_joblib_workers(function, argument):
    return joblib.Parallel(n_jobs=2, backend="loky")(joblib.delayed(function)(argument) for _ in range(2))


def _in_a_process_pool(function, argument):
    # Spawned: a forked child of a process that has run torch (as this one has)
    # hangs in its first multithreaded operation, whatever the code under test.
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return [pool.apply(function, (argument,))]


@pytest.mark.parametrize("run_in_workers", [_in_joblib_workers, _in_a_process_pool])
def test_decode_workers_inside_worker_processes(images, run_in_workers):
    # As in GridSearchCV(n_jobs=2): loky's workers default to a start method that
    # DataLoader workers cannot use, and a Pool's daemonic workers may have no children.
    pictures = [Image.fromarray(image) for image in images[:4]]
    embedder = ImageEmbedder(**TINY, batch_size=2, num_workers=0).fit(pictures)
    expected = embedder.transform(pictures)
    for features in run_in_workers(embedder.set_params(num_workers=1).transform, pictures):
        np.testing.assert_allclose(features, expected, atol=1e-6)


def test_default_workers_decode_in_process_on_the_cpu(images):
    embedder = ImageEmbedder(**TINY, device="cpu")
    assert embedder._decode_workers(torch.device("cpu")) == 0
    assert 1 <= embedder._decode_workers(torch.device("cuda")) <= embedder_module.MAX_DECODE_WORKERS
    assert embedder.set_params(num_workers=3)._decode_workers(torch.device("cpu")) == 3


def test_convolutional_backbone_runs_channels_last_on_a_copy(images):
    embedder = ImageEmbedder(**CONV, device="cpu").fit(images)
    features = embedder.transform(images)
    runtime = embedder._runtime_on(torch.device("cpu"))
    assert runtime.memory_format == torch.channels_last and runtime.model is not embedder.model_
    assert all(p.is_contiguous() for p in embedder.model_.parameters())  # the fitted model is untouched
    inputs = embedder_module.prepare_batch(
        as_images(images).batches(16).__next__(), embedder.preprocessing_, torch.device("cpu")
    )
    with torch.inference_mode():
        expected = torch.nn.functional.normalize(embedder.model_(inputs.contiguous()), dim=1)
    np.testing.assert_allclose(features, expected.numpy(), atol=1e-5)


def test_large_images_become_floats_a_few_at_a_time_with_the_same_result(monkeypatch):
    # 32 4K images took 3.2 GB as floats before resizing; parts give the same inputs.
    embedder = ImageEmbedder(**TINY, device="cpu").fit(np.zeros((1, 8, 8, 3), np.uint8))
    rng = np.random.default_rng(0)
    batch = torch.from_numpy(rng.integers(0, 256, (5, 3, 70, 90), dtype=np.uint8))
    ragged = [torch.from_numpy(rng.integers(0, 256, (3, 60 + 7 * i, 50), dtype=np.uint8)) for i in range(3)]
    whole = [embedder_module.prepare_batch(pixels, embedder.preprocessing_, torch.device("cpu"))
             for pixels in (batch, batch.float() / 255, ragged)]
    parts = []
    real_resize = embedder_module._resize_and_center_crop
    monkeypatch.setattr(embedder_module, "_resize_and_center_crop",
                        lambda images, *args: parts.append(len(images)) or real_resize(images, *args))
    monkeypatch.setattr(embedder_module, "FLOAT_VALUES_AT_ONCE", 2 * 3 * 70 * 90)
    in_parts = [embedder_module.prepare_batch(pixels, embedder.preprocessing_, torch.device("cpu"))
                for pixels in (batch, batch.float() / 255, ragged)]
    assert parts == [2, 2, 1, 2, 2, 1, 1, 1, 1]
    for expected, got in zip(whole, in_parts):
        torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_fitted_convolutional_backbone_can_be_saved_with_safetensors(images, tmp_path):
    from safetensors.torch import load_file, save_file

    embedder = ImageEmbedder(**CONV, device="cpu").fit(images)
    embedder.transform(images[:2])  # builds the channels-last runtime
    save_file(embedder.model_.state_dict(), tmp_path / "backbone.safetensors")
    saved = load_file(tmp_path / "backbone.safetensors")
    assert all(torch.equal(saved[name], tensor) for name, tensor in embedder.model_.state_dict().items())


def test_threads_sharing_a_fitted_embedder_copy_its_backbone_once(images, monkeypatch):
    # A convolutional backbone is copied (channels-last) for the CPU too, as every
    # backbone is for a GPU: concurrent first calls made one copy each.
    embedder = ImageEmbedder(**CONV, device="cpu").fit(images)
    expected = embedder.transform(images)
    embedder = pickle.loads(pickle.dumps(embedder))  # as a server loads it: nothing prepared
    copies = []
    real_deepcopy = copy.deepcopy

    def slow_deepcopy(value, *args):
        if isinstance(value, torch.nn.Module):
            copies.append(value)
            time.sleep(0.2)  # the window in which other threads arrive
        return real_deepcopy(value, *args)

    monkeypatch.setattr(embedder_module.copy, "deepcopy", slow_deepcopy)
    start = threading.Barrier(4)

    def first_call(_):
        start.wait()
        return embedder.transform(images)

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(first_call, range(4)))
    assert len(copies) == 1
    for features in results:
        np.testing.assert_array_equal(features, expected)


def test_transformer_backbone_is_not_copied_on_the_cpu(images):
    embedder = ImageEmbedder(**TINY, device="cpu").fit(images)
    runtime = embedder._runtime_on(torch.device("cpu"))
    assert runtime.model is embedder.model_ and runtime.memory_format == torch.contiguous_format


@pytest.mark.parametrize("params", [TINY, CONV], ids=["transformer", "convolutional"])
def test_compile_passes_its_options_and_always_sees_full_batches(images, monkeypatch, params):
    expected = ImageEmbedder(**params, batch_size=6).fit_transform(images)
    calls, seen_inputs = [], []

    def fake_compile(model, **options):
        if isinstance(model, torch.nn.Identity):
            return model  # the options' check on a stand-in module
        calls.append(options)

        def run(inputs):
            seen_inputs.append((inputs.shape, inputs.stride()))
            return model(inputs)

        return run

    monkeypatch.setattr(torch, "compile", fake_compile)
    embedder = ImageEmbedder(**params, batch_size=6, compile={"mode": "max-autotune"}).fit(images)
    features = embedder.transform(images)
    assert calls == [{"mode": "max-autotune"}]
    # 16 images: the last 4 are padded to 6, with the strides of the full batches,
    # since torch.compile guards on both.
    assert len(seen_inputs) == 3 and len(set(seen_inputs)) == 1 and seen_inputs[0][0][0] == 6
    np.testing.assert_allclose(features, expected, atol=1e-5)
    embedder.transform(images[:3])
    assert len(calls) == 1  # the compiled model is kept between calls


def test_compile_takes_numpy_booleans_from_a_parameter_grid(images, monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "compile", lambda model, **options: calls.append(options) or model)
    expected = ImageEmbedder(**TINY).fit_transform(images)
    np.testing.assert_array_equal(ImageEmbedder(**TINY, compile=np.False_).fit_transform(images), expected)
    assert calls == []
    np.testing.assert_allclose(ImageEmbedder(**TINY, compile=np.True_).fit_transform(images), expected, atol=1e-5)
    assert calls == [{}]


def test_compile_with_torch_gives_the_same_features(images):
    expected = ImageEmbedder(**TINY, batch_size=8).fit_transform(images)
    compiled = ImageEmbedder(**TINY, batch_size=8, compile={"backend": "eager"}).fit(images)
    np.testing.assert_allclose(compiled.transform(images), expected, atol=1e-5)
    np.testing.assert_allclose(compiled.transform(images[:5]), expected[:5], atol=1e-5)


@pytest.mark.parametrize(
    "bytes_per_image, available, expected",
    [
        (1e6, 1e9, 256),  # 400 fit: capped
        (1e7, 1e9, 32),  # 40 fit: the power of two below
        (1e7, 3.2e8, 8),  # exactly 12.8 fit
        (4e8, 1e9, 1),  # not even one fits: try one, and let the out-of-memory halving speak
        (0, 1e9, 256),  # a backbone that allocates nothing
    ],
)
def test_gpu_batch_size_is_the_largest_power_of_two_that_fits(bytes_per_image, available, expected):
    assert embedder_module.batch_size_that_fits(bytes_per_image, available) == expected


def test_auto_batch_size_on_the_cpu(images):
    embedder = ImageEmbedder(**TINY, device="cpu").fit(images)
    expected = embedder_module.cpu_batch_size(embedder.preprocessing_.input_size)
    assert embedder._runtime_on(torch.device("cpu")).batch_size == expected
    embedder.set_params(batch_size=5)
    assert embedder._runtime_on(torch.device("cpu")).batch_size == 5


@pytest.mark.parametrize("input_size, expected", [
    ((224, 224), 32), ((96, 96), 32), ((64, 64), 64), ((48, 48), 128), ((32, 32), 256),
    ((8, 8), 256), ((96, 95), 32), ((4000, 4000), 32),
])
def test_cpu_batch_size_grows_for_small_inputs(input_size, expected):
    # 32 images whatever their size: short passes at 32 px each paid a fixed cost (a
    # third of the time of ResNet-18, EfficientNet-Lite0 and ViT-Ti/16).
    assert embedder_module.cpu_batch_size(input_size) == expected


@pytest.mark.parametrize(
    "params, error, match",
    [
        ({"batch_size": "large"}, ValueError, "batch_size must be a positive integer or 'auto'"),
        ({"batch_size": 2.5}, ValueError, "batch_size"),
        ({"num_workers": -1}, ValueError, "num_workers must be None or a non-negative integer"),
        ({"num_workers": True}, ValueError, "num_workers"),
        ({"num_workers": 1.5}, ValueError, "num_workers"),
        ({"compile": "yes"}, TypeError, "compile must be True, False or a dict"),
        ({"compile": {"nonsense": 1}}, ValueError, "torch.compile does not take: 'nonsense'; it takes .*'mode'"),
        ({"compile": {"mode": "fastest"}}, ValueError, "refused by torch.compile: .*mode=fastest"),
        ({"compile": {"backend": "nope"}}, ValueError, "refused by torch.compile: .*backend"),
    ],
)
def test_bad_speed_parameters_are_named_at_fit(images, params, error, match):
    with pytest.raises(error, match=match):
        ImageEmbedder(**{**TINY, **params}).fit(images)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_auto_batch_size_is_a_power_of_two_that_fits(images):
    embedder = ImageEmbedder(**TINY, device="cuda").fit(images)
    batch_size = embedder._runtime_on(torch.device("cuda")).batch_size
    assert 1 <= batch_size <= embedder_module.MAX_GPU_BATCH_SIZE
    assert batch_size & (batch_size - 1) == 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("params", [TINY, CONV])
def test_gpu_pipeline_matches_the_cpu(images, image_files, params):
    """Many small batches keep several asynchronous feature copies in flight."""
    on_cpu = ImageEmbedder(**params, device="cpu", batch_size=2).fit_transform(images)
    on_gpu = ImageEmbedder(**params, device="cuda", precision="float32", batch_size=2, num_workers=2)
    on_gpu.fit(images)
    np.testing.assert_allclose(on_gpu.transform(images), on_cpu, atol=1e-3)
    np.testing.assert_allclose(on_gpu.transform(image_files), on_cpu, atol=1e-3)
    mixed_sizes = [images[0], images[1][:20, :28], images[2], images[3][:24]]
    expected = ImageEmbedder(**params, device="cpu").fit_transform(mixed_sizes)
    np.testing.assert_allclose(on_gpu.transform(mixed_sizes), expected, atol=1e-3)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_tensor_input_stays_on_the_gpu(images):
    on_cpu = ImageEmbedder(**TINY, device="cpu").fit_transform(images)
    pixels = torch.from_numpy(images).cuda().permute(0, 3, 1, 2)
    assert all(batch.is_cuda for batch in as_images(pixels).batches(5, pin_memory=True))
    on_gpu = ImageEmbedder(**TINY, device="cuda", precision="float32").fit(pixels)
    np.testing.assert_allclose(on_gpu.transform(pixels), on_cpu, atol=1e-3)
    np.testing.assert_allclose(ImageEmbedder(**TINY, device="cpu").fit_transform(pixels), on_cpu, atol=1e-5)


@pytest.mark.parametrize(
    "capability, expected", [((7, 0), torch.float16), ((7, 5), torch.float16), ((8, 0), torch.bfloat16)]
)
def test_auto_precision_is_bfloat16_only_where_the_gpu_runs_it_natively(monkeypatch, capability, expected):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.version, "hip", None)
    assert embedder_module.compute_dtype(torch.device("cuda"), "auto") == expected
    assert embedder_module.compute_dtype(torch.device("cpu"), "auto") == torch.float32
    assert embedder_module.compute_dtype(torch.device("cuda"), "float32") == torch.float32


def test_produced_ahead_keeps_order_and_stays_bounded():
    made = []

    def source():
        for number in range(10):
            made.append(number)
            yield number

    items = images_module.produced_ahead(source(), depth=2)
    assert next(items) == 0
    time.sleep(0.05)  # room for the thread to run ahead as far as it may
    assert len(made) <= 3  # the item handed out, and at most 2 ahead of it
    assert list(items) == list(range(1, 10))


def test_produced_ahead_raises_where_the_source_failed_and_stops_early():
    def failing():
        yield 1
        raise ValueError("Cannot read image file 'broken.jpg'")

    items = images_module.produced_ahead(failing(), depth=2)
    assert next(items) == 1
    with pytest.raises(ValueError, match="broken.jpg"):
        next(items)
    endless = images_module.produced_ahead(itertools.count(), depth=3)
    assert next(endless) == 0
    endless.close()  # returns: the thread is not left producing


@pytest.mark.parametrize("source", ["array", "files", "mixed sizes"])
def test_pinned_batches_are_pinned_in_a_background_thread(images, image_files, monkeypatch, source):
    pinned_in = []

    def fake_pin_memory(tensor):  # pinning needs CUDA; record who asked for it
        pinned_in.append(threading.current_thread())
        return tensor.clone()

    monkeypatch.setattr(torch.Tensor, "pin_memory", fake_pin_memory)
    items = {
        "array": images,
        "files": image_files,
        "mixed sizes": [Image.fromarray(image).resize((20 + i % 2, 30)) for i, image in enumerate(images)],
    }[source]
    expected = list(as_images(items).batches(5))
    pinned = list(as_images(items).batches(5, pin_memory=True))
    assert len(pinned) == len(expected) == 4
    for ours, theirs in zip(pinned, expected):
        for our_image, their_image in zip(ours, theirs):  # tensors and lists alike
            assert torch.equal(our_image, their_image)
    assert pinned_in and threading.main_thread() not in pinned_in
