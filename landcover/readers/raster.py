"""Opening scenes: image files, GeoTIFFs, STAC items and band folders, on a 10 m grid, with masks.

:func:`open_scene` accepts

* a PNG/JPEG (decoded whole, as single patches are) or any raster rasterio reads (GeoTIFF, COG, JP2);
* a STAC item JSON (path or URL; read as plain JSON: only asset hrefs, ``eo:bands`` and ``raster:bands`` are
  needed, and pystac is not a runtime dependency) whose ``red``/``green``/``blue`` (or
  ``B04``/``B03``/``B02``) assets are one file per band, with an optional ``scl`` asset. Remote hrefs
  are replaced by files of the same name next to the item when they are there (downloaded products),
  otherwise read over HTTP by GDAL;
* a folder of per-band files (``*B02*``, ``*B03*``, ``*B04*``, optional ``*SCL*``; a STAC item JSON in the
  folder is used for its metadata).

Every scene is read on one target grid: when the ground pixel size (transform, or ``pixel_size_m``) is
not within ``RESAMPLE_TOLERANCE`` of EuroSAT's 10 m, the bands are resampled to 10 m first (``average``
when shrinking, so fine detail is averaged rather than aliased; ``bilinear`` when enlarging), through
``WarpedVRT`` windows, so memory stays bounded. Areas come from the target grid, so they stay right.

Radiometry is decided once per scene (:func:`landcover.readers.radiometry.infer_scaling` on a decimated read of
the whole scene, never per window, so all tiles share one scaling). Reads return the EuroSAT 8-bit RGB
and a per-pixel mask code (:data:`MASK_REASONS`): input nodata, and the Sentinel-2 scene classification
(SCL) classes no-data (0), saturated/defective (1), cloud shadow (3), cloud medium/high probability
(8, 9), thin cirrus (10) and snow/ice (11; EuroSAT has no snow class), read at the target grid with nearest
resampling. (Scenes without SCL get a spectral snow test in :mod:`landcover.scenes.evidence`.)
"""

from __future__ import annotations

import json
import math
import re
import urllib.parse
import urllib.request
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Mapping, Optional, Protocol, Sequence

import numpy as np

from landcover.core.labels import GROUND_SAMPLING_M, PATCH_SIZE_PX
from landcover.readers.imageio import IMAGE_SUFFIXES, file_is_tiff
from landcover.readers.radiometry import (Radiometry, choose_rgb_bands, choose_spectral_bands, infer_scaling,
                                          valid_mask)

RESAMPLE_TOLERANCE = 0.1  # pixel sizes within 10 % of 10 m are used as they are
# Pixels coarser than Sentinel-2's 20 m bands (with the same tolerance) carry too little of the 10 m detail the model
# was trained on for its classes to mean much, resampled or not: such scenes map with a warning.
COARSE_PIXEL_M = 2 * GROUND_SAMPLING_M * (1 + RESAMPLE_TOLERANCE)
SAMPLE_PX = 1024  # longest side of the decimated read the scaling is inferred from
# Mask codes (uint8) of read(): 0 = valid; then why a pixel is not classified.
MASK_REASONS = ("no data", "saturated/defective", "cloud shadow", "cloud", "thin cirrus", "snow/ice")
SNOW_CODE = MASK_REASONS.index("snow/ice") + 1
SCL_TO_REASON = {0: 1, 1: 2, 3: 3, 8: 4, 9: 4, 10: 5, 11: SNOW_CODE}  # SCL class -> mask code
_SCL_LUT = np.zeros(256, dtype=np.uint8)  # the same as a lookup table over every uint8 SCL value
for _cls, _reason in SCL_TO_REASON.items():
    _SCL_LUT[_cls] = _reason
_STAC_COLOURS = {"red": ("red", "B04", "b04", "B4"), "green": ("green", "B03", "b03", "B3"),
                 "blue": ("blue", "B02", "b02", "B2"), "nir": ("nir", "B08", "b08", "B8", "nir08", "B8A"),
                 "swir16": ("swir16", "B11", "b11"), "swir22": ("swir22", "B12", "b12")}
# Bands read besides R, G, B when the scene has them, for per-pixel spectral evidence (NIR B08: water and
# vegetation indices; SWIR B11: the modified water index; SWIR2 B12: leaf-off forest). STAC common names.
SPECTRAL_BANDS = ("nir", "swir16", "swir22")


# ---------------------------------------------------------------- the target grid


@dataclass(frozen=True)
class Grid:
    """The pixel grid a scene is read on (after any resampling to 10 m)."""

    height: int
    width: int
    pixel_area_m2: float
    pixel_size_source: str
    crs: Optional[object] = None  # rasterio CRS
    transform: Optional[object] = None  # affine.Affine
    resampled: str = ""  # what resampling did, or "" when the native grid is used
    warning: str = ""  # why maps of this grid deserve caution (pixels far coarser than 10 m), or ""

    @property
    def georeferenced(self) -> bool:
        return self.crs is not None


def _metres_per_pixel(ds) -> tuple[float, float, str]:
    """Ground size (x, y) in metres of one pixel of a georeferenced dataset, and a description."""
    t = ds.transform
    sx, sy = math.hypot(t.a, t.d), math.hypot(t.b, t.e)
    if ds.crs.is_geographic:  # geodesic lengths of one pixel step at the scene centre, on the CRS's ellipsoid
        from pyproj import CRS

        lon, lat = t @ (ds.width / 2, ds.height / 2)
        geod = CRS.from_wkt(ds.crs.to_wkt()).get_geod()
        mx = geod.inv(lon - sx / 2, lat, lon + sx / 2, lat)[2]
        my = geod.inv(lon, lat - sy / 2, lon, lat + sy / 2)[2]
        return mx, my, f"GeoTIFF transform ({ds.crs.to_string()}, degrees at latitude {lat:.3f})"
    _, factor = ds.crs.linear_units_factor
    return sx * factor, sy * factor, f"GeoTIFF transform ({ds.crs.to_string()}, {sx * factor:g} m/px)"


def plan_grid(height: int, width: int, size_m: tuple[float, float], source: str, crs=None, transform=None,
              resample: bool = True) -> Grid:
    """The 10 m target grid of a raster of ``height x width`` pixels of ``size_m`` (x, y) metres."""
    mx, my = size_m
    warning = ""
    if max(mx, my) > COARSE_PIXEL_M:
        warning = (f"the scene's pixels are {max(mx, my):g} m, {max(mx, my) / GROUND_SAMPLING_M:.3g}x coarser than the "
                   f"{GROUND_SAMPLING_M:g} m the model was trained on; "
                   + ("enlarged to 10 m they hold none of that detail" if resample else
                      f"kept as they are, each {PATCH_SIZE_PX} px tile covers "
                      f"{PATCH_SIZE_PX * max(mx, my) / 1000:g} km")
                   + ", so the classes are a coarse guess. Map a 10 m product (Sentinel-2 B02, B03, B04 at 10 m).")
    native = Grid(height, width, mx * my, source, crs, transform, warning=warning)
    if not resample or (abs(mx / GROUND_SAMPLING_M - 1) <= RESAMPLE_TOLERANCE
                        and abs(my / GROUND_SAMPLING_M - 1) <= RESAMPLE_TOLERANCE):
        return native
    new_w, new_h = max(1, round(width * mx / GROUND_SAMPLING_M)), max(1, round(height * my / GROUND_SAMPLING_M))
    new_transform = transform @ transform.scale(width / new_w, height / new_h) if transform is not None else None
    area = mx * my * (width * height) / (new_w * new_h)  # the same ground, split into the new pixels
    how = "average" if new_w < width else "bilinear"
    note = (f"resampled from {mx:g} x {my:g} m/px ({width}x{height} px) to {GROUND_SAMPLING_M:g} m/px "
            f"({new_w}x{new_h} px, {how})")
    return Grid(new_h, new_w, area, f"{source}; {note}", crs, new_transform, note, warning)


# ---------------------------------------------------------------- band readers


class BandReader(Protocol):
    """Raw values of the three display bands (R, G, B) on the scene's target grid."""

    nodata: Optional[float]

    def read(self, row: int, col: int, height: int, width: int) -> np.ndarray:
        """Raw ``(3, height, width)`` block at ``(row, col)`` of the target grid."""

    def read_decimated(self, height: int, width: int, average: bool) -> np.ndarray:
        """Raw ``(3, height, width)`` of the whole scene (``average`` for display, else nearest)."""

    def close(self) -> None:
        """Release files."""


class ArrayBands:
    """Bands held in memory (decoded PNG/JPEG, or a small raster read whole)."""

    def __init__(self, array: np.ndarray, nodata: Optional[float] = None):
        self.array, self.nodata = array, nodata

    def read(self, row: int, col: int, height: int, width: int) -> np.ndarray:
        return self.array[:, row:row + height, col:col + width]

    def read_decimated(self, height: int, width: int, average: bool) -> np.ndarray:
        return resize_array(self.array, height, width, average)

    def close(self) -> None:
        self.array = np.empty((3, 0, 0), dtype=self.array.dtype)


def resize_array(array: np.ndarray, height: int, width: int, average: bool = True) -> np.ndarray:
    """``(bands, H, W)`` resized per band with PIL (box filter = area average when shrinking)."""
    from PIL import Image

    if array.shape[1:] == (height, width):
        return array
    method = Image.Resampling.BOX if average and height <= array.shape[1] else (
        Image.Resampling.BILINEAR if average else Image.Resampling.NEAREST)
    out = [np.asarray(Image.fromarray(np.ascontiguousarray(band.astype(np.float32))).resize((width, height), method))
           for band in array]
    result = np.stack(out)
    return np.rint(result).astype(array.dtype) if np.issubdtype(array.dtype, np.integer) else result


class RasterioBands:
    """Bands read from rasterio datasets (one multi-band file, or one file per band) on the target grid."""

    def __init__(self, sources: Sequence[tuple[object, int]], grid: Grid, nodata: Optional[float], nearest=False):
        from rasterio.enums import Resampling

        self.nodata = nodata
        self._owned: list[object] = []
        views: dict[int, object] = {}
        self._bands = []
        self._native = list(sources)  # whole-scene decimated reads: same extent, no warp needed
        for ds, bidx in sources:
            if id(ds) not in views:
                views[id(ds)] = _on_grid(ds, grid, nodata, Resampling.nearest if nearest else None)
                self._owned.append(ds)
                if views[id(ds)] is not ds:
                    self._owned.append(views[id(ds)])
            self._bands.append((views[id(ds)], bidx))

    def read(self, row: int, col: int, height: int, width: int) -> np.ndarray:
        from rasterio.windows import Window

        window = Window(col, row, width, height)
        return np.stack([view.read(bidx, window=window, boundless=False) for view, bidx in self._bands])

    def read_decimated(self, height: int, width: int, average: bool) -> np.ndarray:
        from rasterio.enums import Resampling

        how = Resampling.average if average else Resampling.nearest
        return np.stack([ds.read(bidx, out_shape=(height, width), resampling=how) for ds, bidx in self._native])

    def close(self) -> None:
        for obj in reversed(self._owned):
            obj.close()
        self._owned, self._bands, self._native = [], [], []


def _on_grid(ds, grid: Grid, nodata: Optional[float], resampling=None):
    """``ds`` itself when it is on ``grid``, else a ``WarpedVRT`` of it onto ``grid``."""
    from rasterio.enums import Resampling
    from rasterio.vrt import WarpedVRT

    if (ds.height, ds.width) == (grid.height, grid.width) and (
            grid.transform is None or ds.transform.almost_equals(grid.transform)):
        return ds
    if resampling is None:
        resampling = Resampling.average if ds.width > grid.width else Resampling.bilinear
    options = dict(crs=grid.crs, transform=grid.transform, width=grid.width, height=grid.height,
                   resampling=resampling)
    if nodata is not None:
        options.update(src_nodata=nodata, nodata=nodata)
    return WarpedVRT(ds, **options)


# ---------------------------------------------------------------- the scene


@dataclass
class Scene:
    """A scene opened for windowed reads on its 10 m grid. Use :func:`open_scene`; close it (or ``with``).

    ``bands`` yields raw values of R, G, B; ``radiometry`` turns them into EuroSAT 8-bit values;
    ``scl`` (optional) yields Sentinel-2 scene classes on the same grid.
    """

    source: str
    grid: Grid
    bands: BandReader
    radiometry: Radiometry
    scl: Optional[BandReader] = None
    notes: list[str] = field(default_factory=list)
    spectral: Optional[BandReader] = None  # raw bands named by spectral_names, on the same grid
    spectral_names: tuple[str, ...] = ()

    @property
    def has_evidence(self) -> bool:
        """Whether :meth:`read_block` yields per-pixel evidence beside RGB (spectral reflectance, or SCL classes)."""
        return self.has_spectral or self.scl is not None

    @property
    def has_spectral(self) -> bool:
        """Whether the scene yields reflectance of NIR (and maybe SWIR) beside R, G, B."""
        return self.spectral is not None and self.radiometry.scaling.has_reflectance

    def sample_reflectance(self) -> Optional[tuple[dict[str, np.ndarray], np.ndarray]]:
        """``(reflectance per band name, bool valid)`` of the whole scene on a decimated grid (longest side
        ``SAMPLE_PX``, nearest), for decisions taken once per scene; None when it has no spectral reflectance."""
        if not self.has_spectral:
            return None
        shape = _sample_shape(self.grid)
        raw = self.bands.read_decimated(*shape, average=False)
        extra = self.spectral.read_decimated(*shape, average=False)
        return self._reflectance(raw, extra), valid_mask(raw, self.bands.nodata) & valid_mask(extra, self.bands.nodata)

    def _reflectance(self, raw: np.ndarray, extra: np.ndarray) -> dict[str, np.ndarray]:
        """float32 reflectance per band name of raw R, G, B and the raw spectral bands (one scaling for all)."""
        scaling = self.radiometry.scaling
        reflectance = dict(zip(("red", "green", "blue"), scaling.reflectance(raw)))
        reflectance.update(zip(self.spectral_names, scaling.reflectance(extra)))
        return reflectance

    @property
    def height(self) -> int:
        return self.grid.height

    @property
    def width(self) -> int:
        return self.grid.width

    @property
    def georeferenced(self) -> bool:
        return self.grid.georeferenced

    @property
    def warnings(self) -> tuple[str, ...]:
        return tuple(self.radiometry.warnings) + ((self.grid.warning,) if self.grid.warning else ())

    def read(self, row: int, col: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        """``(uint8 RGB (3, h, w), uint8 mask code (h, w))`` at ``(row, col)``; code 0 = valid."""
        rgb, code, _ = self.read_block(row, col, height, width)
        return rgb, code

    def read_block(self, row: int, col: int, height: int, width: int
                   ) -> tuple[np.ndarray, np.ndarray, Optional[dict[str, np.ndarray]]]:
        """:meth:`read`, plus the scene's evidence bands (None when it has none): float32 reflectance per band name
        (``blue green red nir [swir16] [swir22]``) when the scene :attr:`has_spectral`, read from the same raw
        values, and the Sentinel-2 scene classes as ``scl`` (uint8) when it has an SCL layer."""
        raw = self.bands.read(row, col, height, width)
        reflectance = None
        if self.has_spectral:
            reflectance = self._reflectance(raw, self.spectral.read(row, col, height, width))
        rgb = self.radiometry.scaling.apply(raw)
        code = np.zeros(raw.shape[1:], dtype=np.uint8)
        if self.bands.nodata is not None or np.issubdtype(raw.dtype, np.floating):
            code[~valid_mask(raw, self.bands.nodata)] = 1
        if self.scl is not None:
            scl = self.scl.read(row, col, height, width)[0]
            code = np.where(code == 0, _SCL_LUT[scl], code)
            reflectance = {**(reflectance or {}), "scl": scl}
        return rgb, code, reflectance

    def thumbnail(self, height: int, width: int) -> np.ndarray:
        """The whole scene as uint8 ``(height, width, 3)`` for display (area-averaged read)."""
        raw = self.bands.read_decimated(height, width, average=True)
        return self.radiometry.scaling.apply(raw).transpose(1, 2, 0)

    def describe(self) -> dict:
        """JSON-able metadata: source, grid, bands, scaling, masks, notes and warnings."""
        return {"scene": self.source, "pixel_size_source": self.grid.pixel_size_source,
                "resampled": self.grid.resampled or None, "radiometry": self.radiometry.to_json(),
                "scl_mask": self.scl is not None, "spectral_bands": list(self.spectral_names) if self.has_spectral
                else [], "notes": list(self.notes), "warnings": list(self.warnings)}

    def close(self) -> None:
        self.bands.close()
        for reader in (self.scl, self.spectral):
            if reader is not None:
                reader.close()

    def __enter__(self) -> "Scene":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---------------------------------------------------------------- opening


def open_scene(path: str | Path, bands: Optional[Sequence[int]] = None, given: Optional[Mapping] = None,
               pixel_size_m: Optional[float] = None, resample: bool = True) -> Scene:
    """Open an image, a raster, a STAC item JSON or a folder of per-band files (see the module docstring).

    Args:
        path: File, folder, or ``http(s)`` URL of a STAC item.
        bands: 1-based band numbers to use as R, G, B (single multi-band rasters only).
        given: Explicit radiometry, from :func:`landcover.readers.radiometry.scaling_from_flags`.
        pixel_size_m: Ground pixel size in metres, overriding the transform (or the 10 m assumption).
        resample: Resample to 10 m when the pixel size differs (default True).

    Raises:
        FileNotFoundError: no such file or folder. ValueError: unreadable, not RGB, bad band choice.
    """
    text = str(path)
    if pixel_size_m is not None and not pixel_size_m > 0:
        raise ValueError(f"--pixel-size must be a positive number of metres, got {pixel_size_m}.")
    if re.match(r"https?://", text):
        return _open_stac(_load_json_url(text), text, None, given, pixel_size_m, resample)
    path = Path(path)
    if path.is_dir():
        return _open_folder(path, given, pixel_size_m, resample, bands)
    if not path.is_file():
        raise FileNotFoundError(f"Scene {text!r} does not exist; expected a PNG/JPEG, a GeoTIFF, a STAC item "
                                f"JSON or a folder of per-band files (B02, B03, B04).")
    if path.suffix.lower() == ".json":
        if bands:
            raise ValueError("--bands applies to single multi-band rasters; a STAC item is read by asset name.")
        return _open_stac(_load_json(path), str(path), path.parent, given, pixel_size_m, resample)
    if path.suffix.lower() in IMAGE_SUFFIXES and not file_is_tiff(path):  # TIFFs, whatever their name: rasterio
        return _open_image(path, bands, given, pixel_size_m, resample)
    return _open_raster(path, bands, given, pixel_size_m, resample)


def _assumed_size(pixel_size_m: Optional[float]) -> tuple[tuple[float, float], str]:
    if pixel_size_m:
        return (float(pixel_size_m),) * 2, f"given: {pixel_size_m:g} m/px"
    return (GROUND_SAMPLING_M,) * 2, (f"assumed {GROUND_SAMPLING_M:g} m/px (no georeference; EuroSAT's "
                                      f"Sentinel-2 GSD)")


def _open_image(path: Path, bands, given, pixel_size_m, resample) -> Scene:
    from PIL import Image

    from landcover.inference.predictor import pil_to_tensor  # the decoding single patches get (EXIF, palette, alpha)

    if bands:
        raise ValueError("--bands applies to GeoTIFF scenes only; a PNG/JPEG is used as RGB.")
    try:
        with Image.open(path) as im:
            im.load()
            array = pil_to_tensor(im).numpy()
    except (OSError, Image.DecompressionBombError) as err:
        raise ValueError(f"Cannot read {path.name} as an image ({err}); expected a PNG, JPEG or GeoTIFF.") from err
    size, source = _assumed_size(pixel_size_m)
    grid = plan_grid(array.shape[1], array.shape[2], size, source, resample=resample)
    if (grid.height, grid.width) != array.shape[1:]:
        array = resize_array(array, grid.height, grid.width)
    radiometry = _radiometry(array, Sources([], (1, 2, 3), "image RGB", None, {}, None, None), given)
    return Scene(str(path), grid, ArrayBands(array), radiometry)


def _radiometry(sample: np.ndarray, sources: "Sources", given) -> Radiometry:
    scaling = infer_scaling(sample, sources.nodata, sources.metadata, sources.scales, sources.offsets, given)
    return Radiometry(tuple(sources.chosen), sources.note, scaling)


def _sample_shape(grid: Grid) -> tuple[int, int]:
    f = min(1.0, SAMPLE_PX / max(grid.height, grid.width))
    return max(1, round(grid.height * f)), max(1, round(grid.width * f))


def _grid_of(ds, pixel_size_m, resample) -> Grid:
    georef = ds.crs is not None and not ds.transform.is_identity
    if pixel_size_m or not georef:
        size, source = _assumed_size(pixel_size_m)
    else:
        *size, source = _metres_per_pixel(ds)
    return plan_grid(ds.height, ds.width, tuple(size), source, ds.crs if georef else None,
                     ds.transform if georef else None, resample)


def _open_dataset(href: str):
    import rasterio
    from rasterio.errors import RasterioIOError

    try:
        return rasterio.open(href)
    except RasterioIOError as err:
        raise ValueError(f"Cannot read {href!r} as a raster ({err}); expected a GeoTIFF/COG.") from err


def _band_metadata(ds, bidx: int) -> dict:
    return {**ds.tags(), **ds.tags(bidx)}


def _open_raster(path: Path, bands, given, pixel_size_m, resample) -> Scene:
    ds = _open_dataset(str(path))
    try:
        chosen, note = choose_rgb_bands(ds.count, ds.descriptions, ds.colorinterp, bands) if ds.count > 1 or bands \
            else ((1, 1, 1), "one band shown as grey")
        grid = _grid_of(ds, pixel_size_m, resample)
        spectral = choose_spectral_bands(ds.count, ds.descriptions, note) if ds.count > 3 else {}
        metadata = {**ds.tags(), **_band_metadata(ds, chosen[0]), **_product_hints(str(path))}
        sources = Sources([(ds, b) for b in chosen], chosen, note, ds.nodata, metadata,
                          [ds.scales[b - 1] for b in chosen], [ds.offsets[b - 1] for b in chosen],
                          spectral=[(ds, b) for b in spectral.values()], spectral_names=tuple(spectral))
        return _assemble(str(path), grid, sources, given)
    except Exception:
        ds.close()
        raise


@dataclass
class Sources:
    """The rasterio bands a scene is assembled from, and what is known about them."""

    rgb: list  # (dataset, 1-based band) for R, G, B
    chosen: tuple  # band numbers shown as R, G, B (for the record)
    note: str  # how they were chosen
    nodata: Optional[float]
    metadata: dict
    scales: list
    offsets: list
    scl: Optional[object] = None  # SCL dataset, if any
    spectral: list = field(default_factory=list)  # (dataset, band) per name of spectral_names
    spectral_names: tuple = ()


def _reader(bands: list, grid: Grid, nodata: Optional[float]) -> BandReader:
    """Windowed reader of ``(dataset, band)`` pairs on ``grid``."""
    if grid.transform is None and any((ds.height, ds.width) != (grid.height, grid.width) for ds, _ in bands):
        # No georeference to warp with (e.g. --pixel-size on a plain TIFF): resample in memory.
        raw = np.stack([ds.read(b, out_shape=(grid.height, grid.width), resampling=_average()) for ds, b in bands])
        return ArrayBands(raw, nodata)
    return RasterioBands(bands, grid, nodata)


def _assemble(source: str, grid: Grid, sources: Sources, given) -> Scene:
    """Scene from rasterio sources: readers on the target grid, radiometry from a decimated read."""
    readers: list[BandReader] = []
    try:
        readers.append(_reader(sources.rgb, grid, sources.nodata))
        sample = readers[0].read_decimated(*_sample_shape(grid), average=False)
        radiometry = _radiometry(sample, sources, given)
        scl = RasterioBands([(sources.scl, 1)], grid, None, nearest=True) if sources.scl is not None else None
        spectral = _reader(sources.spectral, grid, sources.nodata) if sources.spectral else None
    except Exception:
        for reader in readers:
            reader.close()
        raise
    # Bands read into memory (ArrayBands) no longer need their files; RasterioBands readers own theirs.
    kept = {id(ds) for r in (readers[0], spectral) if isinstance(r, RasterioBands) for ds, _ in r._native}
    for ds in {id(d): d for d, _ in sources.rgb + sources.spectral}.values():
        if id(ds) not in kept:
            ds.close()
    notes = [grid.resampled] if grid.resampled else []
    if scl is not None:
        notes.append("SCL cloud / cloud shadow / no-data / saturated cells masked")
    if spectral is not None and radiometry.scaling.has_reflectance:
        notes.append(f"spectral bands read: {', '.join(sources.spectral_names)}")
    return Scene(source, grid, readers[0], radiometry, scl, notes, spectral, tuple(sources.spectral_names))


def _average():
    from rasterio.enums import Resampling

    return Resampling.average


_BASELINE = re.compile(r"_N(\d{2})(\d{2})_")


def _product_hints(text: str) -> dict:
    """Processing baseline from a Sentinel-2 product name in a path (``..._N0400_...``), if any."""
    match = _BASELINE.search(text)
    return {"processing_baseline": f"{match.group(1)}.{match.group(2)}"} if match else {}


# ---------------------------------------------------------------- STAC items and band folders


def _load_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"Cannot read {path.name} as a STAC item JSON ({err}).") from err


def _load_json_url(url: str) -> dict:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return json.loads(response.read())
    except (OSError, ValueError) as err:
        raise ValueError(f"Cannot fetch the STAC item {url!r} ({err}).") from err


def _asset_key(assets: Mapping[str, dict], colour: str) -> Optional[str]:
    """The asset holding ``colour`` (red/green/blue/scl): by key, then by ``eo:bands`` common name."""
    names = _STAC_COLOURS.get(colour, (colour, colour.upper()))
    for key in names:
        if key in assets:
            return key
    for key, asset in assets.items():
        if key.endswith("-jp2"):
            continue
        bands = asset.get("eo:bands") or asset.get("bands") or []
        if len(bands) == 1 and (bands[0].get("common_name") == colour or bands[0].get("name") in names):
            return key
    return None


def _resolve_href(href: str, base: Optional[Path], base_url: Optional[str]) -> str:
    """Local file of the same name next to the item when present (downloaded product), else the href."""
    parsed = urllib.parse.urlparse(href)
    name = Path(parsed.path).name
    if base is not None and (base / name).is_file():
        return str(base / name)
    if parsed.scheme in ("http", "https"):
        return href
    if parsed.scheme == "s3":
        raise ValueError(f"Asset {href!r} is on S3; download it next to the item or use the item's https hrefs.")
    if base is not None and not Path(href).is_absolute():
        return str((base / href).resolve())
    if base_url and not parsed.scheme:
        return urllib.parse.urljoin(base_url, href)
    return href


def _open_stac(item: dict, source: str, base: Optional[Path], given, pixel_size_m, resample) -> Scene:
    if item.get("type") != "Feature" or not isinstance(item.get("assets"), dict):
        raise ValueError(f"{source!r} is not a STAC item (expected a GeoJSON Feature with 'assets').")
    assets = item["assets"]
    keys = {c: _asset_key(assets, c) for c in ("red", "green", "blue")}
    missing = [c for c, k in keys.items() if k is None]
    if missing:
        raise ValueError(f"The STAC item has no {'/'.join(missing)} asset (expected keys red/green/blue or "
                         f"B04/B03/B02); it has {', '.join(sorted(assets))}.")
    base_url = source if re.match(r"https?://", source) else None
    hrefs = {c: _resolve_href(assets[k]["href"], base, base_url) for c, k in keys.items()}
    raster_bands = [(assets[keys[c]].get("raster:bands") or [{}])[0] for c in ("red", "green", "blue")]
    scl_key = _asset_key(assets, "scl")
    scl_href = _resolve_href(assets[scl_key]["href"], base, base_url) if scl_key else None
    spectral = {name: _resolve_href(assets[key]["href"], base, base_url)
                for name in SPECTRAL_BANDS if (key := _asset_key(assets, name))}
    metadata = {**item.get("properties", {}), **_product_hints(json.dumps(item.get("properties", {})))}
    note = f"STAC assets {keys['red']}/{keys['green']}/{keys['blue']}"
    files = BandFiles([hrefs["red"], hrefs["green"], hrefs["blue"]], scl_href, spectral, note, metadata,
                      [b.get("scale") for b in raster_bands], [b.get("offset") for b in raster_bands],
                      raster_bands[0].get("nodata"))
    return _open_band_files(files, source, given, pixel_size_m, resample)


@dataclass
class BandFiles:
    """One file per band (a STAC item's assets, a band folder): what :func:`_open_band_files` opens."""

    rgb: list[str]  # R, G, B
    scl: Optional[str]
    spectral: dict[str, str]  # SPECTRAL_BANDS name -> file
    note: str
    metadata: dict
    scales: list
    offsets: list
    nodata: Optional[float] = None


def _open_band_files(files: BandFiles, source: str, given, pixel_size_m, resample) -> Scene:
    datasets, skipped = [], []
    try:
        for f in files.rgb:
            datasets.append(_open_dataset(f))
        spectral = {}
        for name, f in files.spectral.items():  # optional: a band that cannot be read is left out, and said
            try:
                datasets.append(_open_dataset(f))
                spectral[name] = f
            except ValueError as err:
                skipped.append(f"{name} band not read ({err})")
        files = replace(files, spectral=spectral)
        scl_ds = _open_dataset(files.scl) if files.scl else None
        if scl_ds is not None:
            datasets.append(scl_ds)
        finest = min(datasets[:3], key=lambda d: abs(d.transform.a) if d.crs else 1.0)
        grid = _grid_of(finest, pixel_size_m, resample)
        if len({d.crs for d in datasets}) > 1:
            raise ValueError(f"The band files of {source!r} are in different CRSs; expected one product grid.")
        nodata = files.nodata if files.nodata is not None else datasets[0].nodata
        scales, offsets = files.scales, files.offsets
        if all(s is None for s in scales):
            scales, offsets = [d.scales[0] for d in datasets[:3]], [d.offsets[0] for d in datasets[:3]]
        n = len(files.spectral)
        sources = Sources([(d, 1) for d in datasets[:3]], (1, 2, 3), files.note, nodata,
                          {**datasets[0].tags(), **files.metadata}, scales, offsets, scl_ds,
                          [(d, 1) for d in datasets[3:3 + n]], tuple(files.spectral))
        scene = _assemble(source, grid, sources, given)
        scene.notes.extend(skipped)
        return scene
    except Exception:
        for d in datasets:
            d.close()
        raise


_BAND_FILE = {c: re.compile(rf"(?<![A-Za-z0-9]){p}(?![0-9A-Za-z])", re.I)
              for c, p in (("red", "B0?4"), ("green", "B0?3"), ("blue", "B0?2"), ("scl", "SCL"),
                           ("nir", "B0?8"), ("nir08", "B8A"), ("swir16", "B11"),
                           ("swir22", "B12"))}
_RASTER_SUFFIXES = (".tif", ".tiff", ".jp2")


def _open_folder(folder: Path, given, pixel_size_m, resample, bands) -> Scene:
    if bands:
        raise ValueError("--bands applies to single multi-band rasters; a band folder is read by file name.")
    items = [p for p in sorted(folder.glob("*.json")) if _looks_like_stac(p)]
    if len(items) == 1:
        return _open_stac(_load_json(items[0]), str(folder), folder, given, pixel_size_m, resample)
    files = [p for p in sorted(folder.rglob("*")) if p.suffix.lower() in _RASTER_SUFFIXES]
    found = {}
    for colour, pattern in _BAND_FILE.items():
        # SAFE folders hold each band at several resolutions: the finest (R10m before R20m before R60m) wins.
        matches = sorted((p for p in files if pattern.search(p.stem)),
                         key=lambda p: (0 if "10m" in str(p) else 1 if "20m" in str(p) else 2, str(p)))
        if matches:
            found[colour] = matches[0]
    missing = [c for c in ("red", "green", "blue") if c not in found]
    if missing:
        raise ValueError(f"The folder {folder.name!r} has no {'/'.join(missing)} band file; expected files "
                         f"named like B04.tif, B03.tif, B02.tif (or T32TQM_..._B04_10m.jp2), optionally SCL.")
    if "nir" not in found and "nir08" in found:  # B8A (20 m) where the folder has no B08
        found["nir"] = found["nir08"]
    metadata = _product_hints(str(folder.resolve()))
    note = f"band files {found['red'].name}/{found['green'].name}/{found['blue'].name}"
    files = BandFiles([str(found[c]) for c in ("red", "green", "blue")],
                      str(found["scl"]) if "scl" in found else None,
                      {name: str(found[name]) for name in SPECTRAL_BANDS if name in found}, note, metadata,
                      [None] * 3, [None] * 3)
    return _open_band_files(files, str(folder), given, pixel_size_m, resample)


def _looks_like_stac(path: Path) -> bool:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(data, dict) and data.get("type") == "Feature" and "assets" in data
