"""One image file or PIL image to the RGB pixels of the picture a viewer shows.

Upright as the EXIF orientation says; 16-bit gray scaled to 8 bits; where a smaller
size is asked for, JPEGs decoded at a reduced scale and other large images reduced
by whole blocks; files over PIL's pixel limit refused before they are decoded. An
error names the file and what would make it readable.
"""

from __future__ import annotations

import os
import struct
import warnings

import numpy as np
import torch

from .._warnings import stacklevel_of_user_code
from .image_files import readable_image_extensions
from .pixels import EIGHT_BITS_OF_SIXTEEN, channels_last_to_rgb, check_pixel_range


# How many times PIL.Image.MAX_IMAGE_PIXELS a JPEG that is not progressive may be in
# full, when what it decodes to is within the limit: a 200-megapixel phone photo is
# 1.1 times, and a file of several scans, which libjpeg buffers in full (2 bytes a
# sample), takes at most some 2 GB.
JPEG_FULL_SIZE_LIMITS = 4
# Raised whenever files decode to other pixels than before, so that the embeddings an
# earlier revision made are not taken for this one's (the command's record of
# embeddings and its saved models keep it). 1: JPEGs decoded at a reduced scale;
# 2: any image of four times the model's input or more reduced by whole blocks first;
# 3: transparent pixels shown on white; 4: the resize's long side and the centre crop
# placed as torchvision's (one pixel apart for some sizes).
DECODING_REVISION = 4
# What transparent pixels are shown on, as a browser shows them on a white page.
TRANSPARENT_SHOWN_ON = (255, 255, 255)


def _pil_to_rgb_array(image, name, file_format=None):
    """An (H, W, 3) array of a PIL image: uint8, transparent pixels shown on white, or
    for 32-bit modes the values as they are, checked as an array's would be."""
    file_format = image.format or file_format
    if image.mode.startswith("I;16") or (image.mode == "I" and file_format in ("PNG", "PPM")):
        # Pillow opens a 16-bit PGM, and on older versions a 16-bit PNG, as "I",
        # stretching a PGM's maximum to 65535; PIL's own convert("RGB") would clip
        # 16-bit samples at 255.
        samples = np.asarray(image)
        gray = EIGHT_BITS_OF_SIXTEEN[samples]
        if isinstance(transparent := image.info.get("transparency"), int):  # PNG's tRNS: one gray level
            gray[samples == transparent] = TRANSPARENT_SHOWN_ON[0]
        return channels_last_to_rgb(gray[..., None])
    if image.mode in ("I", "F"):  # 32-bit integers or floats: no range is implied
        pixels = np.asarray(image)
        check_pixel_range(pixels, f"{name} (PIL mode {image.mode!r})",
                           fix="convert the image to 8 bits first")
        return channels_last_to_rgb(pixels[..., None])
    if image.has_transparency_data:
        # convert("RGB") keeps the colour stored beneath transparent pixels, most often
        # black, and cut-outs with a transparent background were then clustered apart
        # from the same objects on white (benchmarks/transparency.py).
        from PIL import Image

        if image.mode == "La":  # premultiplied, which Pillow converts to RGBA only by way of LA
            image = image.convert("LA")
        if image.mode != "RGBA":  # a palette entry, gray level or colour (PNG's tRNS), LA
            image = image.convert("RGBA")
        alpha = image.getchannel("A")
        if alpha.getextrema()[0] < 255:  # many screenshots keep an alpha channel all opaque
            shown = Image.new("RGB", image.size, TRANSPARENT_SHOWN_ON)
            shown.paste(image, mask=alpha)  # exactly PIL's alpha_composite, in half the time
            image = shown
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


def pil_image_to_rgb_array(image, name):
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


def decode_file(path, min_size=None, reduce=True):
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
        # Said where the file is named, and in the cause, which the command shows: without
        # the file's name, which Pillow's message repeats, and in plain words.
        if isinstance(exc, Image.UnidentifiedImageError):
            what = _what_pil_did_not_identify(path)
            exc = ValueError("cannot identify image file" + (f" ({what})" if what else "")
                             ).with_traceback(exc.__traceback__)
        elif (isinstance(exc, OSError) and exc.errno is None and exc.args
              and "truncated" in str(exc.args[0]).lower()):  # Pillow's, also "Truncated File Read"
            exc = OSError("image file is truncated (cut short, as by a copy or download that did not finish)"
                          ).with_traceback(exc.__traceback__)
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


def unreadable_file_reason(error):
    """Why a file failed to decode, in one line, from the error ``decode_file`` raised."""
    # A wrapped error's own message only names the file, which the caller does already.
    reason = error.__cause__ if error.__cause__ is not None else error
    if isinstance(reason, OSError) and reason.strerror:  # "Permission denied", without the path
        return reason.strerror
    lines = str(reason).strip().splitlines()
    return lines[0] if lines else type(reason).__name__
