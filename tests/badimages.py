"""Generated bad and odd uploads for the app's bad-input tests (issue: reliability, "App under bad input").

Each generator returns the encoded bytes of one upload; nothing is read from disk.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

from datagen import class_patch


def _png(image: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", **kw)
    return buf.getvalue()


def patch(class_index: int = 1, seed: int = 0, size: int = 64) -> Image.Image:
    return Image.fromarray(class_patch(class_index, np.random.default_rng(seed), size))


def jpeg(image: Image.Image | None = None, **kw) -> bytes:
    buf = io.BytesIO()
    (image or patch()).save(buf, format="JPEG", quality=kw.pop("quality", 92), **kw)
    return buf.getvalue()


def text_as_jpg() -> bytes:
    return b"This is a text file that was renamed to patch.jpg.\n" * 20


def truncated_jpeg() -> bytes:
    data = jpeg(patch(size=256))
    return data[: len(data) // 2]


def empty() -> bytes:
    return b""


def decompression_bomb(side: int = 30000) -> bytes:
    """A valid 1-bit ``side x side`` PNG of zeros (~110 KB for 30000^2 = 900 MP), written row by row."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"\x00" * (1 + (side + 7) // 8) * 1000  # 1000 rows of filter byte + packed bits, all zero
    comp = zlib.compressobj(6)
    idat = b"".join(comp.compress(rows) for _ in range(side // 1000)) + comp.flush()
    assert side % 1000 == 0, "side must be a multiple of 1000"
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def oversize(n_bytes: int) -> bytes:
    return np.random.default_rng(0).integers(0, 256, n_bytes, dtype=np.uint8).tobytes()


def one_pixel() -> bytes:
    return _png(Image.new("RGB", (1, 1), (30, 120, 40)))


def rgba() -> bytes:
    img = patch().convert("RGBA")
    img.putalpha(128)
    return _png(img)


def grayscale() -> bytes:
    return _png(patch().convert("L"))


def palette() -> bytes:
    return _png(patch().convert("P", palette=Image.Palette.ADAPTIVE, colors=32), transparency=0)


def png16() -> bytes:
    arr = (np.asarray(patch().convert("L"), dtype=np.uint16) * 257)
    return _png(Image.fromarray(arr, mode="I;16"))


def tiff16() -> bytes:
    arr = (np.asarray(patch().convert("L"), dtype=np.uint16) * 257)
    buf = io.BytesIO()
    Image.fromarray(arr, mode="I;16").save(buf, format="TIFF")
    return buf.getvalue()


def multipage_tiff() -> bytes:
    buf = io.BytesIO()
    patch(1).save(buf, format="TIFF", save_all=True, append_images=[patch(8, 1), patch(9, 2)])
    return buf.getvalue()


def animated_gif() -> bytes:
    buf = io.BytesIO()
    patch(1).save(buf, format="GIF", save_all=True, append_images=[patch(8, 1), patch(9, 2)], duration=100,
                  loop=0)
    return buf.getvalue()


def exif_rotated_jpeg() -> tuple[bytes, Image.Image]:
    """A 64x32 JPEG tagged Orientation=6 (display rotated 90 degrees clockwise), and its upright image."""
    stored = Image.fromarray(np.concatenate([class_patch(1, np.random.default_rng(0))[:32],
                                             class_patch(9, np.random.default_rng(1))[:32]], axis=1)[:, :64])
    exif = Image.Exif()
    exif[0x0112] = 6
    data = jpeg(stored, exif=exif.tobytes(), quality=100)
    with Image.open(io.BytesIO(data)) as decoded:
        # via numpy: a transposed PIL image would still carry the EXIF tag and be rotated twice later
        upright = Image.fromarray(np.asarray(decoded.convert("RGB").transpose(Image.Transpose.ROTATE_270)))
    return data, upright


def large_photo(width: int = 6000, height: int = 4000) -> bytes:
    """A valid 24 MP JPEG of about half a MB (gradients scaled up in C, cheap to make)."""
    bands = [Image.linear_gradient("L").rotate(angle).resize((width, height), Image.Resampling.BILINEAR)
             for angle in (0, 90, 45)]
    return jpeg(Image.merge("RGB", bands), quality=85)
