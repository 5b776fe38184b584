"""Safe opening of untrusted uploaded images (app and REST API). No Gradio, no model here.

``open_upload`` reads only the header first and refuses decompression bombs *before* any pixel is
decoded, turns every kind of broken file into a ``ValueError`` (:class:`UploadError`) with a message a
user can act on, and returns an 8-bit RGB image whatever came in (EXIF rotation, alpha, palette,
grayscale, 16-bit, multi-page TIFF / animated GIF -> first frame). Large valid photos are decoded at
reduced scale (JPEG draft mode) and downscaled, never refused unless over the pixel limit.
The uploaded file *name* is never used: callers pass bytes or the path of Gradio's own temp file.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import BinaryIO, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Only formats with plain-Python or libjpeg/libpng/libtiff decoders; never EPS/PDF (Ghostscript) & co.
SAFE_FORMATS = ("PNG", "JPEG", "GIF", "TIFF", "WEBP", "BMP")
MAX_UPLOAD_BYTES = 10 * 1024 * 1024  # 10 MiB: EuroSAT patches are ~3 KB, phone photos ~2-8 MB
MAX_PIXELS = 64_000_000  # ~8000 x 8000; decoding beyond that is refused (a 30000^2 bomb is 900 MP)
WORK_SIDE = 1024  # images are decoded/downscaled to at most this side; the model needs ~64 px

Source = Union[bytes, bytearray, memoryview, str, os.PathLike, BinaryIO]


class UploadError(ValueError):
    """An upload that cannot be classified; ``status`` is the HTTP status the REST API answers with."""

    status = 400


class UploadTooLarge(UploadError):
    """Too many bytes or too many pixels."""

    status = 413


class UnsupportedImage(UploadError):
    """Not an image in one of :data:`SAFE_FORMATS`."""

    status = 415


def limit_pil_pixels(max_pixels: int = MAX_PIXELS) -> None:
    """Set PIL's global decompression-bomb guard for code paths that open images without this module.

    PIL warns above ``MAX_IMAGE_PIXELS`` and raises above twice that, so other callers (Gradio's own
    previews, example caching) are protected too. Call once at app start; it is a process-wide setting.
    """
    Image.MAX_IMAGE_PIXELS = int(max_pixels)


def _as_stream(source: Source, max_bytes: int) -> BinaryIO:
    if isinstance(source, (bytes, bytearray, memoryview)):
        size = len(source)
        stream: BinaryIO = io.BytesIO(bytes(source))
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise UploadError(f"Upload file {path.name!r} is missing; expected an image file.")
        size = path.stat().st_size
        stream = open(path, "rb")  # closed by the caller via the returned image / finally
    else:
        stream = source
        pos = stream.tell()
        size = stream.seek(0, io.SEEK_END) - pos
        stream.seek(pos)
    if size == 0:
        raise UploadError("The upload is empty (0 bytes); expected an image file (PNG, JPEG, TIFF, ...).")
    if size > max_bytes:
        stream.close()
        raise UploadTooLarge(f"The upload is {size / 2**20:.1f} MiB; the limit is {max_bytes / 2**20:.0f} MiB. "
                             f"Send a smaller image (the model only needs ~64x64 px).")
    return stream


def _sniff(stream: BinaryIO) -> str:
    stream.seek(0)
    head = stream.read(16)
    if head and all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        return "it looks like text"
    return f"it starts with bytes {head[:8].hex(' ')}"


def _open_header(stream: BinaryIO, max_pixels: int) -> Image.Image:
    try:
        with warnings.catch_warnings():
            # Our own pixel check below is the authority; PIL's warning would only be noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(stream, formats=SAFE_FORMATS)  # reads the header only
    except Image.DecompressionBombError as err:
        raise UploadTooLarge(f"Image refused before decoding: {err} The limit is {max_pixels / 1e6:.0f} "
                             f"megapixels; downscale it first (the model only needs ~64x64 px).") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as err:
        raise UnsupportedImage(f"The upload is not a readable image ({_sniff(stream)}); expected one of "
                               f"{', '.join(SAFE_FORMATS)}. ({type(err).__name__})") from None
    width, height = image.size
    if width <= 0 or height <= 0:
        raise UploadError(f"The image has an invalid size {width}x{height}.")
    if width * height > max_pixels:
        raise UploadTooLarge(f"Image refused before decoding: {width}x{height} = {width * height / 1e6:.0f} "
                             f"megapixels, over the limit of {max_pixels / 1e6:.0f} MP. Downscale it first "
                             f"(the model only needs ~64x64 px).")
    return image


def _decode(image: Image.Image, work_side: int) -> Image.Image:
    if image.format in ("JPEG", "MPO") and max(image.size) > 2 * work_side:  # MPO: multi-picture JPEG
        # Decode at 1/2, 1/4 or 1/8 scale straight from the DCT: big photos never exist at full size.
        image.draft("RGB", (work_side, work_side))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image.load()
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, zlib.error... for bad data
        raise UploadError(f"The {image.format} image could not be decoded: it is truncated or corrupt "
                          f"({type(err).__name__}: {err}). Re-export or re-download it.") from None
    try:
        image = ImageOps.exif_transpose(image)
    except Exception:  # broken EXIF must not cost the user the classification
        pass
    return image


def to_rgb8(image: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB. 16/32-bit data is scaled by its full range (65535 if it exceeds 255)."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(image, dtype=np.float64)
        top = float(arr.max()) if arr.size else 0.0
        scale = 1.0 if image.mode == "F" and top <= 1.0 else (65535.0 if top > 255 else 255.0)
        image = Image.fromarray(np.clip(arr / scale * 255.0, 0, 255).round().astype(np.uint8), mode="L")
    elif image.mode in ("P", "PA", "LA") or (image.mode == "L" and "transparency" in image.info):
        image = image.convert("RGBA")
    return image.convert("RGB") if image.mode != "RGB" else image


def open_upload(source: Source, max_pixels: int = MAX_PIXELS, max_bytes: int = MAX_UPLOAD_BYTES,
                work_side: int = WORK_SIDE) -> Image.Image:
    """Open an untrusted image upload safely and return it as 8-bit RGB.

    Args:
        source: the uploaded bytes, a file object, or the path of the server's own temp file (never a
            path built from a user-supplied file name).
        max_pixels: width x height above which the image is refused, checked from the header before
            decoding (decompression bombs).
        max_bytes: size limit of the encoded file.
        work_side: larger images are decoded at reduced scale / downscaled so their longest side is at
            most this; the classifier resizes to its input size (~64 px) anyway.

    Returns:
        A fully loaded RGB ``PIL.Image``; ``info["original_size"]`` is the size before downscaling.
        Multi-page TIFFs and animated GIF/WebP give their first frame.

    Raises:
        UploadError: (a ``ValueError``) empty, truncated, corrupt or unsupported files, with
            ``status`` 400/413/415 and a message that says what was expected.
    """
    stream = _as_stream(source, max_bytes)
    try:
        image = _open_header(stream, max_pixels)
        original_size = image.size
        image = to_rgb8(_decode(image, work_side))
        if max(image.size) > work_side:
            image.thumbnail((work_side, work_side), Image.Resampling.BILINEAR, reducing_gap=3.0)
        image.info["original_size"] = original_size
        return image
    finally:
        if not isinstance(source, (bytes, bytearray, memoryview)) and isinstance(source, (str, os.PathLike)):
            stream.close()
