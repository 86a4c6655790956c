import io
import os
import pickle
import warnings

import numpy as np
import pytest
import torch
from conftest import STAND_IN_HEIF
from PIL import Image

from skdeepclust.datasets import load_image_folder
from skdeepclust.embedding.image_files import find_image_files, readable_image_extensions
from skdeepclust.embedding.images import ImageList, _BatchDecoder, as_images


def _first_batch(X, batch_size=64):
    return next(as_images(X).batches(batch_size))


def test_nhwc_and_nchw_give_the_same_pixels(images):
    nhwc = _first_batch(images)
    nchw = _first_batch(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    assert nhwc.dtype == torch.uint8 and nhwc.shape == (16, 3, 32, 32)
    assert torch.equal(nhwc, nchw)


def test_grayscale_is_repeated_to_rgb(images):
    gray = images[..., 0]
    for X in (gray, gray[..., None], gray[:, None]):
        batch = _first_batch(X)
        assert batch.shape == (16, 3, 32, 32)
        assert torch.equal(batch[:, 0], batch[:, 2])


def test_a_grayscale_stack_two_pixels_wide_reads_without_a_layout_warning(images):
    # Its 3-D shape (2, 10, 2) was judged as one image's, and the warning said it was
    # read as one gray+alpha image.
    gray = images[:2, :10, :2, 0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        batch = _first_batch(gray)
    assert torch.equal(batch, _first_batch(gray[..., None]))
    assert batch.shape == (2, 3, 10, 2)


def test_alpha_channel_is_dropped(images):
    rgba = np.concatenate([images, np.full(images.shape[:3] + (1,), 7, np.uint8)], axis=-1)
    assert torch.equal(_first_batch(rgba), _first_batch(images))


def test_float_and_integer_arrays(images):
    as_float = _first_batch(images.astype(np.float64) / 255)
    assert as_float.dtype == torch.float32
    np.testing.assert_allclose(as_float.numpy() * 255, _first_batch(images).numpy(), atol=1e-3)
    assert torch.equal(_first_batch(images.astype(np.int64)), _first_batch(images))


def test_arrays_are_batched_as_views_in_their_own_layout(images):
    nhwc = _first_batch(images)
    assert nhwc.is_contiguous(memory_format=torch.channels_last)
    assert nhwc.data_ptr() == images.ctypes.data
    nchw_images = np.ascontiguousarray(images.transpose(0, 3, 1, 2))
    nchw = _first_batch(nchw_images)
    assert nchw.is_contiguous() and nchw.data_ptr() == nchw_images.ctypes.data


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_float_tensors_keep_their_values(images, dtype):
    pixels = torch.from_numpy(images).to(dtype) / 255
    batch = _first_batch(pixels)
    assert batch.dtype == dtype  # converted to float32 on the device, after the copy
    assert torch.equal(batch.float(), _first_batch(pixels.float().numpy()))


def test_tensors_in_every_layout_match_arrays(images):
    tensor = torch.from_numpy(images)
    rgba = np.concatenate([images, np.zeros(images.shape[:3] + (1,), np.uint8)], axis=-1)
    pairs = [
        (tensor.permute(0, 3, 1, 2), images),
        (tensor[..., 0], images[..., 0]),
        (tensor.permute(0, 3, 1, 2)[:, :1], images[..., :1]),
        (torch.from_numpy(rgba), rgba),
        (tensor.to(torch.int16), images),
        ((tensor.float() / 255).requires_grad_(), images.astype(np.float32) / 255),
    ]
    for X, same_as in pairs:
        assert torch.equal(_first_batch(X), _first_batch(same_as))


def test_bad_tensors_are_named():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        as_images(torch.full((2, 3, 8, 8), 2.0, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="NaN"):
        as_images(torch.full((2, 3, 8, 8), float("nan")))
    with pytest.raises(TypeError, match="dtype torch.bool"):
        as_images(torch.zeros((2, 3, 8, 8), dtype=torch.bool))
    with pytest.raises(ValueError, match=r"shape \(2, 8, 8, 3, 1\)"):
        as_images(torch.zeros((2, 8, 8, 3, 1)))
    # torch's own errors for these come from deep inside, or ask for a bug report.
    with pytest.raises(ValueError, match="The image tensor is a tensor on the meta device"):
        as_images(torch.empty((2, 3, 8, 8), dtype=torch.uint8, device="meta"))
    with pytest.raises(ValueError, match="Image 1 is a tensor on the meta device"):
        as_images([torch.zeros((3, 8, 8)), torch.empty((3, 8, 8), device="meta")])
    with pytest.raises(ValueError, match=r"sparse_coo tensor; pass a dense one, X.to_dense\(\)"):
        as_images(torch.rand((2, 3, 8, 8)).to_sparse())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch calls nested tensors a prototype
        nested = torch.nested.nested_tensor([torch.rand(3, 8, 8), torch.rand(3, 6, 8)])
    with pytest.raises(ValueError, match=r"nested tensor; pass its parts as a list, list\(X.unbind\(\)\)"):
        as_images(nested)


def test_negative_strides_are_copied_not_refused(images):
    flipped = images[:, ::-1]
    assert torch.equal(_first_batch(flipped), _first_batch(np.ascontiguousarray(flipped)))


def test_lists_of_channels_first_arrays_and_tensors(images):
    expected = _first_batch(list(images))
    channels_first = [np.ascontiguousarray(image.transpose(2, 0, 1)) for image in images]
    assert torch.equal(_first_batch(channels_first), expected)
    tensors = [torch.from_numpy(image).permute(2, 0, 1) for image in images]
    assert torch.equal(_first_batch(tensors), expected)
    as_bfloat16 = [tensor.to(torch.bfloat16) / 255 for tensor in tensors]
    assert torch.equal(_first_batch(as_bfloat16), _first_batch([t.float().numpy() for t in as_bfloat16]))
    mixed_sizes = _first_batch([tensors[0], tensors[1][:, :20]])
    assert [tuple(image.shape) for image in mixed_sizes] == [(3, 32, 32), (3, 20, 32)]


def test_input_is_not_modified(images):
    original = images.copy()
    list(as_images(images.transpose(0, 3, 1, 2)).batches(5))
    np.testing.assert_array_equal(images, original)


def test_batches_cover_all_images_in_order(images):
    batches = list(as_images(images).batches(5))
    assert [len(b) for b in batches] == [5, 5, 5, 1]
    assert torch.equal(torch.cat(batches), _first_batch(images))


def test_pil_and_array_lists_of_mixed_sizes(images):
    pictures = [Image.fromarray(images[0]), Image.fromarray(images[1]).resize((20, 40)).convert("L")]
    pictures.append(images[2][:16])
    pictures.append(Image.fromarray(images[3]).convert("RGBA"))
    batch = _first_batch(pictures)
    assert isinstance(batch, list)
    assert [tuple(image.shape) for image in batch] == [(3, 32, 32), (3, 40, 20), (3, 16, 32), (3, 32, 32)]


def test_folder_and_paths(image_folder):
    files = find_image_files(image_folder)
    assert len(files) == 8
    from_folder = as_images(str(image_folder))
    assert len(from_folder) == 8
    assert sum(len(b) for b in from_folder.batches(3)) == 8
    assert len(as_images(files)) == 8


def test_arrays_of_paths(image_folder):
    files = find_image_files(image_folder)
    for X in (np.array(files), np.array(files, dtype=object), np.array(files, dtype=bytes)):
        assert len(as_images(X)) == 8
    pandas = pytest.importorskip("pandas")
    assert len(as_images(pandas.Series(files))) == 8


def test_torch_tensor_input(images):
    assert torch.equal(_first_batch(torch.from_numpy(images)), _first_batch(images))


@pytest.mark.parametrize(
    "bad, error, match",
    [
        (np.zeros((0, 32, 32, 3), np.uint8), ValueError, "0 images"),
        ([], ValueError, "0 images"),
        (np.zeros((32, 32), np.uint8), ValueError, r"4-D.*X\[None, :, :, None\].*FeatureClusterer"),
        (np.zeros((2, 32, 32, 3, 1), np.uint8), ValueError, "4-D"),
        (np.zeros((32, 32, 3), np.uint8), ValueError, "one color image"),
        (np.zeros((2, 32, 32, 5), np.uint8), ValueError, "channel axis"),
        (np.zeros((3, 32, 32), np.uint8), ValueError, "one .channels, height, width. color image or 3 grayscale"),
        ([np.zeros((5, 0, 3), np.uint8)], ValueError, "Image 0 has shape .5, 0, 3., with no pixels"),
        ([np.zeros((4, 4, 3), np.uint8), Image.new("RGB", (0, 5))], ValueError, "Image 1 is a PIL image .* no pixels"),
        ([np.zeros((32, 32, 5), np.uint8)], ValueError, "neither its last axis"),
        ([np.zeros((2, 4, 4, 3), np.uint8)], ValueError, "4-D array"),
        ([np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4, 3), bool)], TypeError, "Image 1 has dtype bool"),
        ([np.zeros((4, 4, 3), np.uint8), np.full((4, 4), 2.0)], ValueError, "Image 1 is a float array"),
        (np.full((2, 8, 8, 3), np.nan), ValueError, "NaN"),
        (np.full((2, 8, 8, 3), np.inf, np.float32), ValueError, "NaN or infinite"),
        (np.full((2, 8, 8, 3), 255.0), ValueError, r"\[0, 1\]"),
        (np.full((2, 8, 8, 3), 300, np.int32), ValueError, r"\[0, 255\]"),
        (np.zeros((2, 8, 8, 3), bool), TypeError, "dtype bool"),
        (["/no/such/file.jpg"], ValueError, "not found"),
        ([1, 2], TypeError, "list of images"),
        ("/no/such/folder", ValueError, r"neither an existing folder nor a list of images\.$"),
        ("/no/such/folder/*.jpg", ValueError, r"A pattern is not expanded; .* sorted\(glob\.glob\(X\)\)\.$"),
        ("~/no/such/folder", ValueError, r"Python does not expand '~'; pass os\.path\.expanduser\(X\)\.$"),
        (42, TypeError, "Cannot read images"),
    ],
)
def test_bad_input_is_named(bad, error, match):
    with pytest.raises(error, match=match):
        as_images(bad)


@pytest.mark.parametrize("name, match", [
    ("photos.zip", r"X is an archive, '.*photos\.zip'; unpack it and pass the folder: "
                   r"skdeepclust\.datasets\.extract_image_archive\(path\)"),
    ("PHOTOS.TAR.GZ", "X is an archive"),
    ("photo.jpg", r"X is the path of one file, .*; pass a list of paths, e\.g\. \[path\]"),
])
def test_a_single_file_is_named_and_an_archive_is_told_how_to_unpack(tmp_path, name, match):
    (tmp_path / name).write_bytes(b"")
    with pytest.raises(TypeError, match=match):
        as_images(str(tmp_path / name))


def test_one_grayscale_image_with_a_channel_axis_is_not_taken_as_a_stack(images):
    gray = images[0, :, :, :1]  # (32, 32, 1): one image, or 32 images one pixel wide?
    with pytest.raises(ValueError, match=r"one \(height, width, 1\) grayscale image or 32 .* X\[None\] for the former"):
        as_images(gray)
    assert _first_batch(gray[None]).shape == (1, 3, 32, 32)
    assert _first_batch(gray[..., None]).shape == (32, 3, 32, 1)


def test_folder_inside_a_list_is_named_as_a_folder(image_folder):
    with pytest.raises(ValueError, match="Image 1, .*, is a folder.* Pass the folder itself"):
        as_images([find_image_files(image_folder)[0], image_folder])


def test_single_file_path_asks_for_a_list(image_folder):
    file = find_image_files(image_folder)[0]
    with pytest.raises(TypeError, match="list of paths"):
        as_images(file)


def test_unreadable_file_names_the_file(tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    with pytest.raises(ValueError, match="broken.jpg"):
        _first_batch([str(broken)])


def _photo(height, width):
    """A smooth gradient, which survives JPEG compression and downscaling alike."""
    rows = np.linspace(0, 255, height)[:, None, None]
    cols = np.linspace(0, 255, width)[None, :, None]
    return np.concatenate([rows + 0 * cols, 0 * rows + cols, (rows + cols) / 2], axis=-1).astype(np.uint8)


def test_large_jpeg_decodes_at_reduced_scale_that_still_covers_min_size(tmp_path):
    path = str(tmp_path / "large.jpg")
    Image.fromarray(_photo(384, 512)).save(path, quality=95)
    full = _first_batch([path])
    reduced = next(as_images([path]).batches(1, min_size=(64, 64)))
    assert full.shape == (1, 3, 384, 512)
    assert reduced.shape == (1, 3, 96, 128)  # 1/4 scale: 1/8 would give 48 rows, below 64
    shrunk = torch.nn.functional.interpolate(full.float(), size=(96, 128), mode="area")
    assert (shrunk - reduced.float()).abs().mean() < 3


def test_large_images_of_other_formats_come_reduced_to_twice_min_size(tmp_path):
    # A batch of 32 4K screenshots held 7.5 GB at full size, before resizing.
    pixels = np.random.default_rng(0).integers(0, 256, (203, 331, 3), dtype=np.uint8)
    path = str(tmp_path / "screenshot.png")
    Image.fromarray(pixels).save(path)
    reduced = next(as_images([path]).batches(1, min_size=(20, 30)))[0].permute(1, 2, 0).numpy()
    # Blocks of 5 x 5 (not 6: 203 // 6 rows would be under twice 20), whole, centred.
    blocks = pixels[1:201, :330].reshape(40, 5, 66, 5, 3).mean(axis=(1, 3))
    assert reduced.shape == (40, 66, 3) and np.abs(reduced - blocks).max() < 1  # PIL rounds nearly to nearest
    as_they_are = next(as_images([path]).batches(1, min_size=(60, 90)))  # under four times
    assert torch.equal(as_they_are, _first_batch([path]))


def test_exif_orientation_is_applied(tmp_path):
    picture = Image.fromarray(_photo(40, 80))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: a viewer turns it 90 degrees clockwise
    path = str(tmp_path / "sideways.jpg")
    picture.save(path, exif=exif)
    assert _first_batch([path]).shape == (1, 3, 80, 40)
    reduced = next(as_images([path]).batches(1, min_size=(20, 10)))
    assert reduced.shape == (1, 3, 20, 10)  # the reduced scale is chosen for the upright size
    with Image.open(path) as opened:  # the same photo as a PIL image is turned alike
        torch.testing.assert_close(_first_batch([opened]), _first_batch([path]))
        assert opened.size == (80, 40) and opened.getexif()[0x0112] == 6  # and left as it was


def test_damaged_files_of_every_kind_name_the_file(tmp_path, monkeypatch):
    # PIL's plugins raise ValueError, SyntaxError or their own errors, not only OSError.
    header = tmp_path / "bad_header.ppm"
    header.write_bytes(b"P6\n64 64\n'55\n" + bytes(64 * 64 * 3))
    with pytest.raises(ValueError, match="Cannot read image file .*bad_header.ppm"):
        _first_batch([str(header)])
    huge = str(tmp_path / "huge.png")
    Image.new("L", (64, 64)).save(huge)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # PIL refuses twice this many
    with pytest.raises(ValueError, match="huge.png' is too large.*PIL.Image.MAX_IMAGE_PIXELS"):
        _first_batch([huge])


def test_a_jpeg_over_pils_pixel_limit_is_checked_at_the_size_it_is_decoded_to(tmp_path, monkeypatch):
    # A 200-megapixel phone photo is over twice PIL's limit, but decoded at 1/8 of each side.
    path = str(tmp_path / "phone.jpg")
    Image.fromarray(_photo(120, 160)).save(path)  # 19,200 pixels, baseline
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    lifted = next(as_images([path]).batches(1, min_size=(15, 20)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5000)  # PIL refuses over 10,000
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        eighth = next(as_images([path]).batches(1, min_size=(15, 20)))  # 20 x 15 decoded
        half = next(as_images([path]).batches(1, min_size=(60, 80)))  # 80 x 60
    assert eighth.shape == (1, 3, 15, 20) and torch.equal(eighth, lifted) and half.shape == (1, 3, 60, 80)
    with pytest.raises(ValueError, match=r"phone.jpg' is too large.*decoded \(160 x 120 = 19,200 pixels\)"):
        next(as_images([path]).batches(1, min_size=(120, 160)))  # in full
    with pytest.raises(ValueError, match="phone.jpg' is too large"):  # no reduced scale: as PIL checks it
        next(as_images([path]).batches(1))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 12_000)
    with pytest.warns(Image.DecompressionBombWarning, match=r"phone.jpg'.*decoded \(160 x 120 = 19,200 pixels\)"):
        next(as_images([path]).batches(1, min_size=(120, 160)))  # between the limit and twice it, as PIL warns
    # More than four times the limit in full is refused whatever it decodes to: a
    # baseline file of several scans is buffered in full.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 4000)
    with pytest.raises(ValueError, match=r"\(160 x 120 = 19,200 pixels\) exceeds the limit of 16,000 pixels for a"):
        next(as_images([path]).batches(1, min_size=(15, 20)))


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_a_jpeg_read_from_a_pipe_is_read_once(tmp_path):
    # Sniffing a JPEG by its first bytes took them from the pipe (/dev/stdin, a FIFO).
    # Lists of images refuse pipes; the decoder itself reads them, as PIL does.
    import threading

    from skdeepclust.embedding.decoding import decode_file

    buffer = io.BytesIO()
    Image.fromarray(_photo(24, 32)).save(buffer, format="JPEG")
    pipe = tmp_path / "photo.jpg"
    os.mkfifo(pipe)

    def write_at_each_opening():  # twice at most; a reader that opens once takes the first
        for _ in range(2):
            with open(pipe, "wb") as writer:
                writer.write(buffer.getvalue())

    threading.Thread(target=write_at_each_opening, daemon=True).start()
    from_pipe = decode_file(str(pipe), min_size=(12, 16))
    buffer.seek(0)
    with Image.open(buffer) as image:
        image.draft("RGB", (16, 12))
        np.testing.assert_array_equal(from_pipe, np.asarray(image.convert("RGB")))


def test_a_progressive_jpeg_is_checked_at_its_full_size(tmp_path, monkeypatch):
    # libjpeg holds the coefficients of the whole image: a crafted 1.8 MB progressive
    # file of 30000 x 30000 took 2.3 GB to decode at 1/8.
    path = str(tmp_path / "progressive.jpg")
    Image.fromarray(_photo(120, 160)).save(path, progressive=True)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5000)
    with pytest.raises(ValueError, match=r"progressive.jpg' is too large.*in full \(160 x 120 = 19,200 pixels\)"
                                         r".*A progressive JPEG is decoded through its whole image"):
        next(as_images([path]).batches(1, min_size=(15, 20)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 12_000)
    with pytest.warns(Image.DecompressionBombWarning, match=r"progressive.jpg'.*in full"):
        assert next(as_images([path]).batches(1, min_size=(15, 20))).shape == (1, 3, 15, 20)


def test_damaged_exif_data_leaves_the_image_as_it_is(tmp_path):
    picture = Image.fromarray(_photo(6, 10))
    picture.info["exif"] = b"Exif\x00\x00garbage!garbage!"  # no TIFF header: unreadable
    path = str(tmp_path / "damaged_exif.png")
    picture.save(path, exif=picture.info["exif"])
    from_image, from_file = _first_batch([picture]), _first_batch([path])
    assert from_image.shape == (1, 3, 6, 10)
    torch.testing.assert_close(from_image, from_file)


def test_a_closed_pil_image_is_named():
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="PNG")
    closed = Image.open(buffer)
    closed.close()
    with pytest.raises(ValueError, match="Image 1, a PIL image, cannot be read.*image.load"):
        _first_batch([Image.new("RGB", (8, 8)), closed])


@pytest.mark.parametrize("suffix", [".png", ".tif", ".pgm"])
def test_sixteen_bit_gray_files_are_scaled_to_eight_bits(tmp_path, suffix):
    gray = np.arange(256, dtype=np.uint8).reshape(16, 16)
    path = str(tmp_path / f"sixteen{suffix}")
    if suffix == ".pgm":  # written by hand: Pillow's PGM writer varies between versions
        with open(path, "wb") as pgm:
            pgm.write(b"P5\n16 16\n65535\n" + (gray.astype(">u2") * 257).tobytes())
    else:
        Image.fromarray(gray.astype(np.uint16) * 257).save(path)
    assert Image.open(path).mode.startswith("I")
    torch.testing.assert_close(_first_batch([path]), _first_batch(gray[None, :, :, None]))
    # A dark one stays dark: 0-255 out of 65535 is 0 or 1 in 8 bits.
    dark = str(tmp_path / f"dark{suffix}")
    if suffix == ".pgm":
        with open(dark, "wb") as pgm:
            pgm.write(b"P5\n16 16\n65535\n" + gray.astype(">u2").tobytes())
    else:
        Image.fromarray(gray.astype(np.uint16)).save(dark)
    assert _first_batch([dark]).max() == 1


def test_pil_images_of_32_bit_modes_follow_the_rules_of_arrays():
    half = np.full((6, 6), 0.5, np.float32)
    torch.testing.assert_close(_first_batch([Image.fromarray(half)]),
                               _first_batch(half[None, :, :, None]))
    with pytest.raises(ValueError, match=r"Image 0 \(PIL mode 'I'\) .* \[70000, 70000\].*\[0, 255\]"):
        _first_batch([Image.fromarray(np.full((6, 6), 70000, np.int32))])


def test_sixteen_bit_arrays_and_tensors_are_read_as_sixteen_bit_files_are(tmp_path):
    # A dark 16-bit image (0-255 out of 65535) stays dark whichever way it comes.
    gray = np.arange(0, 2 ** 16, 64, dtype=np.uint16).reshape(32, 32)
    dark = np.arange(256, dtype=np.uint16).reshape(16, 16)
    for pixels in (gray, dark):
        path = str(tmp_path / "sixteen.png")
        Image.fromarray(pixels).save(path)
        expected = _first_batch([path])
        batch = pixels[None, :, :, None]
        forms = [batch, batch.astype(">u2"), [pixels], torch.from_numpy(batch.astype(np.int32)).to(torch.uint16)]
        opened = np.asarray(Image.open(path))
        if opened.dtype == np.uint16:  # older Pillow opens the file as 32-bit mode "I"
            forms.append([opened])
        for form in forms:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the dark one's: see the next test
                torch.testing.assert_close(_first_batch(form), expected)
    with pytest.warns(UserWarning, match="255 is the largest value"):
        assert _first_batch(dark[None, :, :, None]).max() == 1
    with pytest.raises(ValueError, match=r"unless they are uint16 .*X.astype\(np.uint16\)"):
        as_images(gray.astype(np.int32)[None, :, :, None])


def test_uint16_images_that_use_twelve_bits_or_fewer_are_warned_of(images):
    # 8-bit values cast to uint16, or a 12-bit camera's, read as 16-bit came out
    # (nearly) black, silently: the features of dark and bright images were the same.
    eight_bit = images.astype(np.uint16)
    match = (r"^The image array is read as 16-bit \(0-65535\), as uint16 pixels are, but 255 is the "
             r"largest value, so the images come out nearly black\. If they hold 8-bit values, pass "
             r"X\.astype\(np\.uint8\); if 12-bit, X \* 16 .*")
    for form in (eight_bit, torch.from_numpy(eight_bit.astype(np.int32)).to(torch.uint16)):
        with pytest.warns(UserWarning, match=match):
            as_images(form)
    with pytest.warns(UserWarning, match=r"^The 2 uint16 images are read as .* 4095 is the largest"):
        as_images([eight_bit[0], np.full((5, 5), 4095, np.uint16)])
    with pytest.warns(UserWarning, match=r"^Image 1 is read as 16-bit"):
        as_images([images[0], eight_bit[0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        as_images(eight_bit * 257)
        as_images([eight_bit[0], np.full((5, 5), 4096, np.uint16)])  # a dark one among others
        as_images(np.zeros((2, 5, 5), np.uint16))  # black, however read


@pytest.mark.parametrize("dtype", [torch.uint32, torch.uint64])
def test_wide_unsigned_tensors_are_read_as_integers(images, dtype):
    expected = _first_batch(images)
    wide = torch.from_numpy(images).to(dtype)
    held = as_images(wide)._array  # checked in place, converted a batch at a time
    assert held.dtype == dtype and held.data_ptr() == wide.data_ptr()
    torch.testing.assert_close(_first_batch(wide), expected)
    with pytest.raises(ValueError, match=r"values in \[0, 256\]"):
        as_images(torch.cat([wide, torch.full((1, 32, 32, 3), 256).to(dtype)]))
    if dtype == torch.uint64:
        with pytest.raises(ValueError, match=r"values in \[9223372036854775808, "):
            as_images(torch.full((1, 5, 5, 3), 2 ** 63, dtype=dtype))


def test_float8_tensors_are_read_as_float32():
    pixels = torch.full((1, 3, 5, 5), 0.5).to(torch.float8_e4m3fn)
    assert _first_batch(pixels).dtype == torch.float32


def test_masked_arrays_are_refused_unless_nothing_is_masked(images):
    masked = np.ma.masked_greater(images, 200)
    with pytest.raises(ValueError, match=r"masked array with .* masked values; fill them \(.filled\(value\)\)"):
        as_images(masked)
    with pytest.raises(ValueError, match="Image 0 is a masked array"):
        as_images([masked[-1]])
    torch.testing.assert_close(_first_batch(np.ma.masked_array(images)), _first_batch(images))


def test_images_two_pixels_wide_in_nchw_are_not_taken_for_gray_and_alpha(images):
    narrow = np.ascontiguousarray(images[:, :6, :2].transpose(0, 3, 1, 2))  # (N, 3, 6, 2)
    with pytest.warns(UserWarning, match="read as NCHW"):  # it reads both ways
        assert _first_batch(narrow).shape == (images.shape[0], 3, 6, 2)
    with pytest.warns(UserWarning, match=r"read as \(channels, height, width\)"):
        assert _first_batch([narrow[0]]).shape == (1, 3, 6, 2)


def test_a_layout_that_reads_both_ways_is_read_channels_last_with_a_warning(images):
    # (N, 3, 16, 4): RGB images 16 x 4 in NCHW, or RGBA images 3 x 16 in NHWC.
    nhwc = np.ascontiguousarray(images[:, :16, :4])
    nchw = np.ascontiguousarray(nhwc.transpose(0, 3, 1, 2))
    with pytest.warns(UserWarning, match=r"shape \(16, 3, 16, 4\), which could be channels-first or "
                                         r"channels-last; it is read as NHWC.*X.transpose\(0, 2, 3, 1\)"):
        assert _first_batch(nchw).shape == (16, 3, 3, 16)
    with pytest.warns(UserWarning, match=r"Image 0 \(and 15 more\) has shape \(3, 16, 4\).*np.moveaxis"):
        as_images(list(nchw))
    torch.testing.assert_close(_first_batch(nchw.transpose(0, 2, 3, 1)), _first_batch(nhwc))
    # Gray and alpha (2 channels) give way to 1, 3 or 4 on the other axis, but say so.
    two_wide = np.ascontiguousarray(images[:, :16, :2].transpose(0, 3, 1, 2))  # (16, 3, 16, 2)
    with pytest.warns(UserWarning, match=r"read as NCHW, with 3 channels. If the channels come last, "
                                         r"pass X.transpose\(0, 3, 1, 2\)"):
        assert _first_batch(two_wide).shape == (16, 3, 16, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the usual layouts read one way only
        for unambiguous in (images, images.transpose(0, 3, 1, 2), nhwc, list(nhwc)):
            as_images(unambiguous)


def test_gray_and_alpha_arrays_keep_the_gray(images):
    gray = images[..., :1]
    with_alpha = np.concatenate([gray, np.full_like(gray, 7)], axis=-1)
    torch.testing.assert_close(_first_batch(with_alpha), _first_batch(gray))
    torch.testing.assert_close(_first_batch(list(with_alpha)), _first_batch(gray))


def test_bytes_paths_and_a_single_pil_image(image_folder):
    path = find_image_files(image_folder)[0]
    torch.testing.assert_close(_first_batch(np.array([path.encode()])), _first_batch([path]))
    with pytest.raises(TypeError, match="Image 0 is a bytes.*os.fsdecode.*io.BytesIO"):
        as_images([path.encode()])
    with pytest.raises(TypeError, match=r"one PIL image; pass a list of images, e.g. \[image\]"):
        as_images(Image.open(path))


def test_what_other_libraries_hand_over_for_images_is_refused_with_the_way_to_pass_it(image_folder):
    path = find_image_files(image_folder)[0]
    with open(path, "rb") as file:
        data = file.read()
        with pytest.raises(TypeError, match=r"BufferedReader.*PIL.Image.open\(file\)"):
            as_images([file])
    with pytest.raises(TypeError, match=r"BytesIO.*PIL.Image.open\(file\)"):
        as_images([io.BytesIO(data)])
    with pytest.raises(TypeError, match=r"tuple.*\(image, label\) pairs.*\[image for image, label in pairs\]"):
        as_images([(Image.open(path), 3)])
    with pytest.raises(TypeError, match=r"dict.*Hugging Face.*dataset\['image'\]"):
        as_images([{"bytes": data, "path": None}])

    class MapStyleDataset:  # what torch.utils.data.Dataset subclasses look like
        def __len__(self):
            return 1

        def __getitem__(self, index):
            return Image.open(path), 0

    with pytest.raises(TypeError, match=r"MapStyleDataset.*\[image for image, label in dataset\]"):
        as_images(MapStyleDataset())
    with pytest.raises(ValueError, match="not found: 'https://example.com/a.jpg'.*URLs are not downloaded"):
        as_images(["https://example.com/a.jpg"])


def test_every_spelling_of_a_folder_path_reads_the_folder(image_folder):
    class BytesPath:
        def __fspath__(self):
            return os.fsencode(image_folder)

    expected = _first_batch(str(image_folder))
    for folder in (os.fsencode(image_folder), np.bytes_(os.fsencode(image_folder)), BytesPath(),
                   np.array(str(image_folder)), np.array(os.fsencode(image_folder))):
        torch.testing.assert_close(_first_batch(folder), expected)
    # The way back from rows to files takes the same spellings (pathlib's TypeError, before).
    for folder in (os.fsencode(image_folder), BytesPath()):
        assert find_image_files(folder) == find_image_files(image_folder)
        assert load_image_folder(folder).filenames == load_image_folder(image_folder).filenames
    with pytest.raises(TypeError, match=r"X is bytes, .*os.fsdecode\(X\).*io.BytesIO\(X\)"):
        as_images(b"\x89PNG not a folder")


def test_a_table_of_paths_asks_for_one_column(image_folder):
    pd = pytest.importorskip("pandas")
    table = pd.DataFrame({"path": find_image_files(image_folder)})
    with pytest.raises(ValueError, match=r"table of paths or objects with shape \(\d+, 1\); .*df\['path'\]"):
        as_images(table)
    torch.testing.assert_close(_first_batch(table["path"]), _first_batch(list(table["path"])))


def test_float_range_error_shows_the_excess():
    with pytest.raises(ValueError, match=r"values in \[0, 1.00000095\]; float images must lie in"):
        as_images(np.array([0, 1.000001] * 5, np.float32).reshape(1, 5, 2, 1))
    # Nine digits would print 1 + 1e-12 as 1; a rounding overshoot is clipped, 0-255 data divided.
    with pytest.raises(ValueError, match=r"values in \[0, 1.000000000001\]; .* Clip them, np.clip\(X, 0, 1\)"):
        as_images(np.array([0, 1 + 1e-12] * 5).reshape(1, 5, 2, 1))
    with pytest.raises(ValueError, match=r"values in \[0, 255\]; .* Divide 0-255 data by 255"):
        as_images(np.array([0, 255.0] * 5).reshape(1, 5, 2, 1))
    # Pixels normalised as torchvision's Normalize leaves them were told to be divided by 255.
    normalised = (torch.rand(2, 3, 8, 8) - torch.tensor([0.485, 0.456, 0.406])[:, None, None]) / 0.225
    with pytest.raises(ValueError, match=r"They look normalised already .* undo it, X \* std \+ mean"):
        as_images(normalised)
    with pytest.raises(ValueError, match=r"values in \[-0.03, 1.03\]; .* Clip them, np.clip\(X, 0, 1\), if they "
                                         r"overshoot it by rounding or a resize"):
        as_images(np.array([-0.03, 1.03] * 5).reshape(1, 5, 2, 1))  # a bicubic resize's, not normalised


def test_internal_helpers_once_listed_in_the_package_still_import_with_a_warning():
    import skdeepclust.embedding

    vars(skdeepclust.embedding).pop("as_images", None)  # kept there by an earlier import
    with pytest.warns(FutureWarning, match=r"skdeepclust.embedding.as_images is internal .* "
                                           r"import it from skdeepclust.embedding.images"):
        assert skdeepclust.embedding.as_images is as_images
    vars(skdeepclust.embedding).pop("as_images")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        from skdeepclust.embedding import as_images as imported  # asks for the name twice
    assert imported is as_images
    assert [type(warning.message) for warning in caught] == [FutureWarning]
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        skdeepclust.embedding.nope


@pytest.mark.parametrize("file_format", ["JPEG", "PNG", "GIF"])
def test_a_file_cut_short_is_said_to_be_so_in_plain_words_without_its_name_twice(tmp_path, file_format):
    # Pillow said "Truncated File Read" of some JPEGs, and of a file it could not
    # identify "cannot identify image file '<its path>'" after the command had named it.
    whole = tmp_path / f"whole.{file_format.lower()}"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(whole)
    cut, junk = tmp_path / f"cut.{file_format.lower()}", tmp_path / "junk.jpg"
    cut.write_bytes(whole.read_bytes()[:len(whole.read_bytes()) // 2])
    junk.write_bytes(b"not an image")
    # A folder's name is not the file's state: "truncated" was looked for in the path too.
    images = ImageList([str(cut), str(junk), str(tmp_path / "truncated-scans" / "gone.jpg")], skip_unreadable=True)
    list(images.batches(3))
    assert images.unreadable == {
        0: "image file is truncated (cut short, as by a copy or download that did not finish)",
        1: "cannot identify image file",
        2: "No such file or directory",
    }


def test_an_empty_file_and_a_heic_photo_under_another_name_are_told_apart(tmp_path):
    # Both were "cannot identify image file", without a word of pillow-heif.
    empty, heic = tmp_path / "empty.jpg", tmp_path / "IMG_0001.jpg"
    empty.write_bytes(b"")
    heic.write_bytes(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64))
    with pytest.raises(ValueError, match=r"empty.jpg': cannot identify .* \(the file is empty\)\. Remove"):
        _first_batch([str(empty)])
    if ".heic" in readable_image_extensions():
        pytest.skip("a HEIF opener is registered with Pillow here")
    images = ImageList([str(heic), str(empty)], skip_unreadable=True)  # as the command reads them
    next(images.batches(2))
    assert images.unreadable[0].endswith("(it is a HEIC/HEIF photo, whatever its name: pip install pillow-heif, "
                                         "and in Python call pillow_heif.register_heif_opener(), which the "
                                         "skdeepclust command does)")


def test_formats_a_pillow_plugin_registers_are_images_in_workers_started_afresh_too(tmp_path,
                                                                                  register_stand_in_heif):
    # pillow-heif's register_heif_opener() registers HEIF with the Pillow of this
    # process; a decode worker that spawn or forkserver (Python 3.14's default on
    # Linux) starts imports a Pillow without it. A PNG opener stands in for it.
    from PIL import PngImagePlugin

    register_stand_in_heif()
    Image.new("RGB", (4, 4), "red").save(tmp_path / "photo.heic", format="PNG")
    files = find_image_files(tmp_path)
    assert files == [str(tmp_path / "photo.heic")]
    pickled = pickle.dumps(_BatchDecoder(as_images(files), 1, None))  # as the DataLoader sends it

    del Image.OPEN[STAND_IN_HEIF], Image.EXTENSION[".heic"], Image.EXTENSION[".hif"]
    in_worker = pickle.loads(pickled)
    assert Image.OPEN[STAND_IN_HEIF] == (PngImagePlugin.PngImageFile, PngImagePlugin._accept)
    assert Image.registered_extensions()[".hif"] == STAND_IN_HEIF
    decoded = in_worker[0]
    assert not isinstance(decoded, Exception), decoded


def _rgba(alpha=100):
    rgb = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    return np.concatenate([rgb, np.full((16, 16, 1), alpha, np.uint8)], axis=-1)


def test_alpha_of_rgba_arrays_in_a_list_is_dropped():
    # test_alpha_channel_is_dropped covers 4-D arrays only, with a constant alpha.
    rgba = _rgba()
    batch = next(as_images([rgba, rgba]).batches(4))
    assert torch.equal(batch[0], torch.from_numpy(rgba[..., :3]).permute(2, 0, 1))


def _on_white(rgb, alpha):
    """``rgb`` over white with ``alpha`` (0-255), rounded as PIL's alpha_composite rounds."""
    blended = rgb.astype(np.float64) * alpha[..., None] / 255 + 255 * (1 - alpha[..., None] / 255)
    return torch.from_numpy(np.rint(blended).astype(np.uint8)).permute(2, 0, 1)


def test_transparent_pixels_of_pil_images_and_files_are_shown_on_white(tmp_path):
    # They kept the colour beneath them, most often black: cut-outs with a transparent
    # background were clustered apart from the same objects on white.
    rgba = _rgba()
    rgba[:8, :, 3] = 0  # fully transparent, over random colours
    rgba[8:12, :, 3] = 255
    path = tmp_path / "a.png"
    Image.fromarray(rgba, "RGBA").save(path)
    expected = _on_white(rgba[..., :3], rgba[..., 3])
    assert (expected[:, :8] == 255).all()
    assert torch.equal(expected[:, 8:12], torch.from_numpy(rgba[8:12, :, :3]).permute(2, 0, 1))
    for X in ([Image.fromarray(rgba, "RGBA")], [str(path)]):
        assert (next(as_images(X).batches(4))[0].int() - expected.int()).abs().max() <= 1


@pytest.mark.parametrize("mode", ["P", "L", "RGB", "LA"])
def test_every_kind_of_transparency_pillow_reads_is_shown_on_white(tmp_path, mode):
    # A palette entry, or one gray level or colour (PNG's tRNS), may stand for transparent.
    pixels = np.zeros((4, 4), np.uint8)
    pixels[:2] = 1
    if mode == "LA":
        image = Image.fromarray(np.stack([pixels * 90, np.where(pixels, 255, 0).astype(np.uint8)], -1), "LA")
    elif mode == "P":
        image = Image.fromarray(pixels, "P")
        image.putpalette([0, 0, 0, 200, 10, 10])
        image.info["transparency"] = 0
    else:
        image = Image.fromarray(pixels * 90, "L").convert(mode)
        image.info["transparency"] = 0 if mode == "L" else (0, 0, 0)
    image.save(tmp_path / "a.png")
    for X in ([image], [str(tmp_path / "a.png")]):
        batch = next(as_images(X).batches(4))[0]
        assert (batch[:, 2:] == 255).all(), mode  # the transparent rows
        assert (batch[:, :2] < 255).any(), mode  # the opaque ones as they are


@pytest.mark.parametrize("mode", ["LA", "RGBA"])
def test_premultiplied_alpha_images_are_shown_on_white_as_their_straight_alpha_twins(mode):
    # A PIL image in mode "La" failed with "conversion from La to L not supported".
    alpha = np.arange(0, 256, 17, np.uint8).reshape(4, 4)
    channels = np.stack([np.full((4, 4), 120, np.uint8)] * (len(mode) - 1) + [alpha], -1)
    straight = Image.fromarray(channels, mode)
    premultiplied = straight.convert(mode[:-1] + "a")
    batches = [next(as_images([image]).batches(1)).int() for image in (straight, premultiplied)]
    assert (batches[0] - batches[1]).abs().max() <= 2


def test_the_transparent_gray_level_of_a_sixteen_bit_png_is_shown_on_white(tmp_path):
    # Pillow opens it as I;16, whose pixels were scaled to 8 bits before transparency was asked about.
    samples = np.array([[0, 0], [40000, 65535]], np.uint16)
    image = Image.fromarray(samples)
    image.save(tmp_path / "a.png", transparency=0)
    assert Image.open(tmp_path / "a.png").info["transparency"] == 0
    pixels = next(as_images([str(tmp_path / "a.png")]).batches(1))[0, 0]
    assert pixels.tolist() == [[255, 255], [156, 255]]


def test_the_fourth_channel_of_an_array_is_dropped_not_taken_for_alpha():
    # It may be a satellite image's near infrared; a PIL image or file says what is alpha.
    rgba = _rgba(alpha=0)
    batch = next(as_images(rgba[None]).batches(4))
    assert torch.equal(batch[0], torch.from_numpy(rgba[..., :3]).permute(2, 0, 1))
