"""Images -> uint8 RGB, one path for every entry point (uploads, REST, ``predict``, data loading, scenes).

:func:`decode_rgb8` states the conversion rules once. :func:`open_upload` adds what untrusted uploads
need: it reads only the header first and refuses decompression bombs *before* any pixel is decoded,
turns every kind of broken file into a ``ValueError`` (:class:`UploadError`) with a message a user can
act on, and decodes large photos at reduced scale (JPEG draft mode). The uploaded file *name* is never
used: callers pass bytes or the path of Gradio's own temp file. No Gradio, no model here.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import BinaryIO, Optional, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Only formats with plain-Python or libjpeg/libpng/libtiff decoders; never EPS/PDF (Ghostscript) & co.
SAFE_FORMATS = ("PNG", "JPEG", "GIF", "TIFF", "WEBP", "BMP")
MAX_UPLOAD_BYTES = 10 * 1024 * 1024  # 10 MiB: EuroSAT patches are ~3 KB, phone photos ~2-8 MB
MAX_PIXELS = 64_000_000  # ~8000 x 8000; decoding beyond that is refused (a 30000^2 bomb is 900 MP)
WORK_SIDE = 1024  # images are decoded/downscaled to at most this side; the model needs ~64 px
TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF, both byte orders
# File names every entry point treats as images (folders of patches, examples, scenes decoded by PIL or rasterio).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".gif", ".webp", ".bmp")

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


def _as_stream(source: Source, max_bytes: Optional[int]) -> BinaryIO:
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
    if max_bytes is not None and size > max_bytes:
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


def _decode(image: Image.Image, work_side: Optional[int]) -> Image.Image:
    if work_side and image.format in ("JPEG", "MPO") and max(image.size) > 2 * work_side:  # MPO: multi-picture JPEG
        # Decode at 1/2, 1/4 or 1/8 scale straight from the DCT: big photos never exist at full size.
        image.draft("RGB", (work_side, work_side))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image.load()
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, zlib.error... for bad data
        raise UploadError(f"The {image.format} image could not be decoded: it is truncated or corrupt "
                          f"({type(err).__name__}: {err}). Re-export or re-download it.") from None
    return image


def _scale_to_uint8(arr: np.ndarray, mode: str) -> np.ndarray:
    """16/32-bit integer or float pixels -> uint8, rounded: integers by their full range (65535 when any value
    exceeds 255, else 255), floats in 0..1 by 255."""
    arr = arr.astype(np.float64)
    top = float(arr.max()) if arr.size else 0.0
    if mode == "F" and top <= 1.0:
        arr = arr * 255.0
    elif top > 255:
        arr = arr * (255.0 / 65535.0)
    return np.clip(np.rint(arr), 0, 255).astype(np.uint8)


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "RGBa", "LA", "La", "PA") or "transparency" in image.info


def pil_to_rgb8(image: Image.Image) -> np.ndarray:
    """An opened PIL image of any mode -> uint8 RGB ``(H, W, 3)``; see :func:`decode_rgb8` for the rules."""
    try:
        image = ImageOps.exif_transpose(image)
    except Exception:  # broken EXIF must not cost the user the classification
        pass
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        grey = _scale_to_uint8(np.asarray(image), image.mode)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if _has_alpha(image):
        rgba = np.asarray(image.convert("RGBA"), dtype=np.uint16)
        # Onto black, rounded: transparent pixels are "no data", as in a scene's nodata (zero) areas.
        return ((rgba[:, :, :3] * rgba[:, :, 3:] + 127) // 255).astype(np.uint8)
    return np.array(image if image.mode == "RGB" else image.convert("RGB"))  # a writable copy


# ---------------------------------------------------------------- multi-band / 16-bit GeoTIFFs (rasterio)


def is_tiff(head: bytes) -> bool:
    """Whether the first bytes of a file are a TIFF's (classic or BigTIFF, either byte order)."""
    return head[:4] in TIFF_MAGIC


def file_is_tiff(path: str | os.PathLike) -> bool:
    """:func:`is_tiff` of a file's first bytes."""
    with open(path, "rb") as f:
        return is_tiff(f.read(4))


def _raster_rgb8(data: bytes, max_pixels: int) -> Optional[np.ndarray]:
    """A TIFF that PIL cannot show faithfully (3+ bands of 16-bit/float data, or more than 4 bands, e.g. a
    Sentinel-2 or EuroSAT-MS 13-band patch) as uint8 RGB, with the band choice and scaling ``map`` uses
    (:func:`landcover.readers.radiometry.to_eurosat_rgb8`); ``None`` for TIFFs PIL decodes as they are (8-bit
    RGB/RGBA, 1-2 band greyscale of any depth, palette)."""
    from rasterio.errors import NotGeoreferencedWarning, RasterioIOError
    from rasterio.io import MemoryFile

    try:
        with warnings.catch_warnings(), MemoryFile(data) as memfile:
            warnings.simplefilter("ignore", NotGeoreferencedWarning)  # a patch needs no georeference
            with memfile.open() as ds:
                if ds.count < 3 or (ds.count <= 4 and all(dt == "uint8" for dt in ds.dtypes)):
                    return None
                return _read_raster(ds, max_pixels)
    except RasterioIOError:
        return None  # not a TIFF rasterio reads: PIL decides (and explains)


def _read_raster(ds, max_pixels: int) -> np.ndarray:
    from landcover.readers.radiometry import BandMetadata, choose_rgb_bands, to_eurosat_rgb8

    if ds.width * ds.height > max_pixels:
        raise UploadTooLarge(f"Image refused before decoding: {ds.width}x{ds.height} = "
                             f"{ds.width * ds.height / 1e6:.0f} megapixels, over the limit of "
                             f"{max_pixels / 1e6:.0f} MP. Crop it first (the model needs ~64x64 px), or map it "
                             f"as a scene with `python -m landcover map`.")
    try:
        chosen, _ = choose_rgb_bands(ds.count, ds.descriptions, ds.colorinterp)
    except ValueError as err:
        raise UnsupportedImage(f"{err} (For a patch: describe the bands B04/B03/B02 in the TIFF, or map it with "
                               f"`python -m landcover map --bands R,G,B`.)") from None
    raw = ds.read(list(chosen))  # only the three bands shown, as ``map`` reads scenes
    per_band = lambda values: [values[b - 1] for b in chosen]  # noqa: E731
    info = BandMetadata(nodata=ds.nodata, metadata=ds.tags(), scales=per_band(ds.scales), offsets=per_band(ds.offsets))
    rgb, _ = to_eurosat_rgb8(raw, info, bands=(1, 2, 3))
    return np.ascontiguousarray(rgb.transpose(1, 2, 0))


# ---------------------------------------------------------------- the decode path


def _load(source: Source, max_pixels: int, max_bytes: Optional[int],
          work_side: Optional[int]) -> tuple[np.ndarray, tuple[int, int]]:
    stream = _as_stream(source, max_bytes)
    try:
        stream.seek(0)
        head = stream.read(4)
        stream.seek(0)
        if is_tiff(head):
            raster = _raster_rgb8(stream.read(), max_pixels)
            stream.seek(0)
            if raster is not None:
                return _fit(raster, work_side), (raster.shape[1], raster.shape[0])
        image = _open_header(stream, max_pixels)
        original_size = image.size
        return _fit(pil_to_rgb8(_decode(image, work_side)), work_side), original_size
    finally:
        if isinstance(source, (str, os.PathLike)):
            stream.close()


def _fit(rgb: np.ndarray, work_side: Optional[int]) -> np.ndarray:
    if not work_side or max(rgb.shape[:2]) <= work_side:
        return rgb
    image = Image.fromarray(rgb)
    image.thumbnail((work_side, work_side), Image.Resampling.BILINEAR, reducing_gap=3.0)
    return np.asarray(image)


def decode_rgb8(source: "Source | Image.Image", *, max_pixels: int = MAX_PIXELS, max_bytes: Optional[int] = None,
                work_side: Optional[int] = None) -> np.ndarray:
    """The project's one way from an image to uint8 RGB ``(H, W, 3)``: uploads, ``predict``, data, scenes.

    Rules, the same wherever an image comes from:

    * EXIF orientation is applied; multi-page TIFFs and animated GIF/WebP give their first frame.
    * Greyscale and palette images become grey/colour RGB; 16-bit and 32-bit integer pixels are scaled by
      their full range (65535 when any value exceeds 255, else 255), float pixels in 0..1 by 255; always
      rounded, never truncated.
    * Transparency (alpha, or a palette/greyscale transparent colour) is composited onto black.
    * A TIFF with 3 or more bands of 16-bit or float data, or more than 4 bands (a Sentinel-2 or EuroSAT-MS
      13-band patch), is read with rasterio and its B04/B03/B02 bands scaled exactly as ``map`` scales a
      scene (:mod:`landcover.readers.radiometry`).

    Args:
        source: Encoded bytes, a file object, a path, or an already opened ``PIL.Image``.
        max_pixels: Width x height above which the image is refused, checked from the header before decoding.
        max_bytes: Size limit of the encoded file (``None``: no limit).
        work_side: Decode at reduced scale / downscale so the longest side is at most this (``None``: full size).

    Raises:
        UploadError: (a ``ValueError``) empty, truncated, corrupt, oversized or unsupported files, with a
            message that says what was expected.
    """
    if isinstance(source, Image.Image):
        return _fit(pil_to_rgb8(source), work_side)
    return _load(source, max_pixels, max_bytes, work_side)[0]


def open_upload(source: Source, max_pixels: int = MAX_PIXELS, max_bytes: int = MAX_UPLOAD_BYTES,
                work_side: int = WORK_SIDE) -> Image.Image:
    """Open an untrusted image upload safely and return it as 8-bit RGB (:func:`decode_rgb8`'s rules).

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

    Raises:
        UploadError: (a ``ValueError``) empty, truncated, corrupt or unsupported files, with
            ``status`` 400/413/415 and a message that says what was expected.
    """
    rgb, original_size = _load(source, max_pixels, max_bytes, work_side)
    image = Image.fromarray(rgb, mode="RGB")
    image.info["original_size"] = original_size
    return image


def open_image_file(path: "str | os.PathLike", max_pixels: int = MAX_PIXELS) -> Image.Image:
    """A local image file as RGB, like :func:`open_upload` but without the upload byte limit (``predict``).

    Raises:
        UploadError: not an image file, or a folder, or unreadable, with a message that says what was expected.
    """
    path = Path(path)
    if path.is_dir():
        raise UploadError(f"{path} is a folder; expected an image file (pass the folder's images, or the folder "
                          f"itself to `predict`, which expands it).")
    if not path.exists():
        raise UploadError(f"{path} does not exist; expected an image file.")
    return open_upload(path, max_pixels=max_pixels, max_bytes=None)
