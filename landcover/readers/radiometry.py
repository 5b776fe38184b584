"""Raw band values -> EuroSAT's 8-bit RGB: band choice and radiometric scaling, inferred or given.

EuroSAT's RGB JPEGs are Sentinel-2 L1C reflectance mapped linearly so that reflectance
``EUROSAT_WHITE`` (0.275, i.e. digital number 2750 of the x 10000 products) is 255. A model trained on
them sees the right brightness only if every input is brought onto that stretch, whatever its storage:

===================  ===========================================  ==========================================
kind                 storage                                      reflectance
===================  ===========================================  ==========================================
``uint8``            8-bit image (EuroSAT patch, TCI)              used as is (already 0..255)
``stretched8``       8-bit percentile-stretched quick-look         per channel onto EuroSAT's 2-98 % range
``x10000``           integer reflectance x 10000 (L1C/L2A)         ``(v - offset) / 10000``
``x1000``            integer reflectance x 1000                    ``(v - offset) / 1000``
``float``            floating-point reflectance 0..1               ``v - offset``
``display16``        16-bit display image (0..65535)               none: ``v / 257`` is the 8-bit value
===================  ===========================================  ==========================================

``offset`` is 1000 for Sentinel-2 products of processing baseline >= 04.00 (January 2022 on), which
add 1000 to every digital number (``BOA_ADD_OFFSET`` / ``RADIO_ADD_OFFSET`` = -1000).

:func:`infer_scaling` decides from, in this order: explicit flags; per-band scale/offset (GDAL band
metadata, STAC ``raster:bands``); product metadata (``*_ADD_OFFSET``, ``*QUANTIFICATION_VALUE``,
processing baseline); the dtype and the value distribution. Each decision records why
(:attr:`Scaling.source`) and implausible data gets :attr:`Scaling.warnings` instead of a silent black or
white image. Pure numpy: no rasterio, no PIL, so any reader (scenes, uploads, patches) can use it.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field, replace
from typing import Mapping, Optional, Sequence

import numpy as np

EUROSAT_WHITE = 0.275  # reflectance shown as 255 in EuroSAT's RGB JPEGs
KINDS = ("uint8", "stretched8", "x10000", "x1000", "float", "display16")
# Per-channel (R, G, B) 2nd and 98th percentiles of EuroSAT's RGB patches (mosaics of 1,024 random training
# patches: 24-25 / 44-46 / 66-67 and 232-242 / 193-197 / 183-188). A percentile-stretched quick-look is mapped back
# onto them, since its own stretch cannot be undone from the image alone.
EUROSAT_P2 = (25.0, 45.0, 67.0)
EUROSAT_P98 = (235.0, 195.0, 185.0)
STRETCH_ZEROS = 0.005  # share of pixels at (or within JPEG ringing of) 0 and 255 per channel: a stretched image
# JPEG compression of a stretched quick-look moves part of its clipped pixels off 0 and 255 by a step or two: on
# mosaics of real EuroSAT patches (2-98 % stretch, quality 85) down to 0.49 % exact zeros in one channel, but never
# under 0.8 % within 2 of 0; EuroSAT's own stretch has none there (blue keeps its path radiance).
STRETCH_LOW, STRETCH_HIGH = 2, 253
_SCALE = {"x10000": 1e-4, "x1000": 1e-3, "float": 1.0}
S2_BASELINE_OFFSET = 1000.0  # digital numbers added from processing baseline 04.00 on
MAX_SAMPLE = 1 << 20  # values looked at per band when inferring (a strided subsample beyond that)


@dataclass(frozen=True)
class Scaling:
    """How raw values become EuroSAT 8-bit values, and why. JSON-able with :meth:`to_json`.

    Attributes:
        kind: One of :data:`KINDS`.
        offset: Raw value subtracted first (1000 for Sentinel-2 baseline >= 04.00 digital numbers).
        scale: Reflectance per raw unit after the offset (``1e-4`` for x 10000); 0 for ``uint8``/``display16``.
        white: Reflectance shown as 255 (EuroSAT: 0.275).
        source: How the scaling was chosen (flags, metadata key, or the value statistics).
        warnings: Why the result may be wrong (implausible range, mostly black/saturated output).
    """

    kind: str
    offset: float = 0.0
    scale: float = 0.0
    white: float = EUROSAT_WHITE
    source: str = ""
    warnings: tuple[str, ...] = ()

    @property
    def clip(self) -> float:
        """Raw value (after the offset) shown as 255; ``inf`` where no reflectance is involved."""
        return self.white / self.scale if self.scale else math.inf

    def apply(self, data: np.ndarray) -> np.ndarray:
        """uint8 array of ``data``'s shape on EuroSAT's stretch (``rint`` then clip to 0..255)."""
        if self.kind == "uint8":
            return data if data.dtype == np.uint8 else np.clip(np.rint(data), 0, 255).astype(np.uint8)
        values = data.astype(np.float32)
        if self.kind == "stretched8":
            lo = np.asarray(EUROSAT_P2, dtype=np.float32).reshape(-1, *([1] * (data.ndim - 1)))[:len(values)]
            hi = np.asarray(EUROSAT_P98, dtype=np.float32).reshape(lo.shape)
            return np.clip(np.rint(lo + values * ((hi - lo) / 255.0)), 0, 255).astype(np.uint8)
        if self.kind == "display16":
            values = values / 257.0
        else:
            if self.offset:
                values -= np.float32(self.offset)
            values *= np.float32(self.scale * 255.0 / self.white)
        np.rint(values, out=values)
        np.clip(values, 0, 255, out=values)
        return values.astype(np.uint8)

    @property
    def has_reflectance(self) -> bool:
        """Whether raw values convert to physical reflectance (not for 8-bit or 16-bit display images)."""
        return self.scale > 0 and self.kind not in ("uint8", "stretched8", "display16")

    def reflectance(self, data: np.ndarray) -> np.ndarray:
        """float32 reflectance of raw ``data`` (``(raw - offset) * scale``); needs :attr:`has_reflectance`."""
        if not self.has_reflectance:
            raise ValueError(f"A {self.kind} image carries no reflectance; spectral indices need raw bands "
                             f"(reflectance x 10000, x 1000 or float).")
        values = data.astype(np.float32)
        if self.offset:
            values -= np.float32(self.offset)
        values *= np.float32(self.scale)
        return values

    def describe(self) -> str:
        """One line for the console, the legend and the app."""
        if self.kind == "uint8":
            text = "8-bit values used as is"
        elif self.kind == "stretched8":
            text = "8-bit percentile-stretched image mapped onto EuroSAT's per-channel 2-98 % range"
        elif self.kind == "display16":
            text = "16-bit display image: value / 257"
        else:
            unit = {"x10000": "reflectance x 10000", "x1000": "reflectance x 1000", "float": "float reflectance"}
            name = unit.get(self.kind, f"reflectance x {1 / self.scale:g}")
            off = f" - offset {self.offset:g}" if self.offset else ""
            text = f"{name}{off}, {self.white:g} reflectance = 255"
        return f"{text} ({self.source})" if self.source else text

    def to_json(self) -> dict:
        data = asdict(self)
        data["warnings"] = list(self.warnings)
        data["description"] = self.describe()
        return data


def scaling_for(kind: str, offset: float = 0.0, source: str = "given") -> Scaling:
    """The :class:`Scaling` of a storage ``kind`` (see :data:`KINDS`)."""
    if kind not in KINDS:
        raise ValueError(f"Unknown scaling {kind!r}; expected one of {', '.join(KINDS)} (or auto).")
    return Scaling(kind, float(offset) if kind in _SCALE else 0.0, _SCALE.get(kind, 0.0), source=source)


def looks_stretched(values: np.ndarray) -> bool:
    """True for 8-bit RGB whose every channel has >= ``STRETCH_ZEROS`` of its pixels at <= ``STRETCH_LOW`` and at
    >= ``STRETCH_HIGH`` (0 and 255, give or take JPEG ringing).

    A percentile stretch (quick-looks, "auto contrast") clips ~2 % of each channel to 0 and 255; EuroSAT-stretched
    Sentinel-2 data essentially never gets near 0 in all three channels (blue keeps its path radiance). Pixels
    dark in all channels (borders, no data without a nodata value) are not counted.

    Args:
        values: ``(3, N)`` sampled pixel values.
    """
    if values.ndim != 2 or values.shape[0] != 3 or values.shape[1] == 0:
        return False
    zero = values <= STRETCH_LOW
    lone = zero & ~zero.all(axis=0)
    full = values >= STRETCH_HIGH
    return bool((lone.mean(axis=1) >= STRETCH_ZEROS).all() and (full.mean(axis=1) >= STRETCH_ZEROS).all())


def scaling_from_flags(kind: Optional[str] = None, offset: Optional[float] = None,
                       clip: Optional[float] = None) -> dict:
    """Explicit choices for :func:`infer_scaling` (``given=``); ``None``/``"auto"`` leave a part to inference.

    Args:
        kind: ``--scale``: one of :data:`KINDS`, or ``auto``/None.
        offset: ``--offset``: raw value subtracted first.
        clip: ``--clip``: raw value (after the offset) shown as 255; implies a reflectance scaling.
    """
    if kind not in (None, "auto") and kind not in KINDS:
        raise ValueError(f"--scale must be auto or one of {', '.join(KINDS)}, got {kind!r}.")
    if clip is not None and not clip > 0:
        raise ValueError(f"--clip must be positive (the raw value shown as 255), got {clip}.")
    return {k: v for k, v in (("kind", None if kind == "auto" else kind), ("offset", offset), ("clip", clip))
            if v is not None}


# ---------------------------------------------------------------- band choice

_S2_NAME = re.compile(r"\bB0?(\d|8A|1[0-2])\b")
_COMMON = {"red": "4", "green": "3", "blue": "2"}
# Band orders of common stacks without descriptions: band count -> 1-based (R, G, B), description.
_DEFAULT_ORDERS = {
    4: ((3, 2, 1), "4 bands without descriptions: assumed B02, B03, B04, B08 (blue, green, red, NIR)"),
    10: ((3, 2, 1), "10 bands without descriptions: assumed Sentinel-2 10+20 m order B02, B03, B04, B05, "
                    "B06, B07, B08, B8A, B11, B12"),
    12: ((4, 3, 2), "12 bands without descriptions: assumed Sentinel-2 L2A order B01, B02, B03, B04, ... B12"),
    13: ((4, 3, 2), "13 bands without descriptions: assumed Sentinel-2 order B01 ... B08, B8A, B09 ... B12 "
                    "(EuroSAT-MS)"),
}


# 1-based NIR (B08) and SWIR (B11, B12) of the stacks of _DEFAULT_ORDERS, for spectral evidence.
_DEFAULT_SPECTRAL = {4: {"nir": 4}, 10: {"nir": 7, "swir16": 9, "swir22": 10},
                     12: {"nir": 8, "swir16": 11, "swir22": 12}, 13: {"nir": 8, "swir16": 12, "swir22": 13}}
_SPECTRAL_KEYS = {"nir": ("8",), "swir16": ("11",), "swir22": ("12",)}


def choose_spectral_bands(count: int, descriptions: Sequence[Optional[str]] = (), rgb_note: str = ""
                          ) -> dict[str, int]:
    """1-based NIR (``nir``, B08) and SWIR (``swir16`` B11, ``swir22`` B12) band numbers of a stack, where they
    can be told.

    From band descriptions naming B08 / B11 / B12 (or ``nir`` / ``swir16`` / ``swir22``), else from the stack
    orders the RGB choice assumed (``rgb_note`` names one of ``_DEFAULT_ORDERS``); empty when neither applies.
    """
    found: dict[str, int] = {}
    for number, desc in enumerate(descriptions or (), start=1):
        text = (desc or "").strip()
        match = _S2_NAME.search(text.upper())
        key = match.group(1) if match else None
        for name, keys in _SPECTRAL_KEYS.items():
            if key in keys or text.lower() == name:
                found.setdefault(name, number)
    if found or any(descriptions or ()):
        return found
    if count in _DEFAULT_SPECTRAL and rgb_note == _DEFAULT_ORDERS[count][1]:
        return dict(_DEFAULT_SPECTRAL[count])
    return {}


def choose_rgb_bands(count: int, descriptions: Sequence[Optional[str]] = (), colorinterp: Sequence[object] = (),
                     bands: Optional[Sequence[int]] = None) -> tuple[tuple[int, int, int], str]:
    """1-based (R, G, B) band numbers of a raster, and how they were chosen.

    Order of preference: explicit ``bands``; band descriptions naming Sentinel-2 B04/B03/B02 (``B4``,
    ``B04``, ``B04 red``...) or the colours red/green/blue; the colour interpretation; a 3-band raster as
    is; 4/10/12/13-band stacks in the usual Sentinel-2 orders (see ``_DEFAULT_ORDERS``).

    Raises:
        ValueError: bad explicit bands, or no rule applies (the message says how to pass ``--bands``).
    """
    if bands:
        bands = tuple(int(b) for b in bands)
        if len(bands) != 3 or not all(1 <= b <= count for b in bands):
            raise ValueError(f"--bands needs three 1-based band numbers between 1 and {count} (R,G,B), got {bands}.")
        return bands, "bands given"
    found: dict[str, int] = {}
    for number, desc in enumerate(descriptions or (), start=1):
        text = (desc or "").strip()
        match = _S2_NAME.search(text.upper())
        key = match.group(1) if match else _COMMON.get(text.lower())
        if key:
            found.setdefault(key, number)
    if all(k in found for k in "432"):
        return (found["4"], found["3"], found["2"]), "B04/B03/B02 (red/green/blue) from band descriptions"
    names = [getattr(ci, "name", str(ci)).lower() for ci in colorinterp or ()]
    if all(c in names for c in ("red", "green", "blue")):
        return tuple(names.index(c) + 1 for c in ("red", "green", "blue")), "red/green/blue colour interpretation"
    if count == 3:
        return (1, 2, 3), "bands 1-3 as RGB"
    if count in _DEFAULT_ORDERS:
        return _DEFAULT_ORDERS[count]
    raise ValueError(f"The raster has {count} band(s) and none is described as B04/B03/B02 or red/green/blue. "
                     f"Pass --bands R,G,B with 1-based band numbers (e.g. --bands 4,3,2).")


# ---------------------------------------------------------------- inferring the scaling


def valid_mask(data: np.ndarray, nodata: Optional[float] = None) -> np.ndarray:
    """bool ``(H, W)``: pixels where every band is finite and differs from ``nodata``."""
    ok = np.ones(data.shape[1:], dtype=bool)
    if np.issubdtype(data.dtype, np.floating):
        ok &= np.isfinite(data).all(axis=0)
    if nodata is not None and not (isinstance(nodata, float) and math.isnan(nodata)):
        ok &= (data != nodata).all(axis=0) if data.dtype.kind != "f" else ~np.isclose(data, nodata).all(axis=0)
    return ok


def _lower_keys(metadata: Optional[Mapping]) -> dict[str, object]:
    return {str(k).lower(): v for k, v in (metadata or {}).items()}


def _number(value) -> Optional[float]:
    try:
        out = float(str(value).strip().split()[0])
    except (ValueError, IndexError):
        return None
    return out if math.isfinite(out) else None


def _from_band_scales(scales: Optional[Sequence[float]], offsets: Optional[Sequence[float]]) -> Optional[Scaling]:
    """Per-band ``value * scale + offset`` (GDAL band metadata, STAC ``raster:bands``), if non-trivial."""
    scales = [s for s in (scales or ()) if s is not None]
    offsets = [o for o in (offsets or ()) if o is not None]
    scale = scales[0] if scales else 1.0
    offset = offsets[0] if offsets else 0.0
    if scale == 1.0 and offset == 0.0:
        return None  # GDAL's default: says nothing
    if len(set(scales)) > 1 or len(set(offsets)) > 1:
        return None  # bands disagree: leave it to the other rules
    if not scale > 0:
        return None
    kind = {1e-4: "x10000", 1e-3: "x1000", 1.0: "float"}.get(round(scale, 12), "given")
    return Scaling(kind, -offset / scale, float(scale),
                   source=f"band metadata: reflectance = value x {scale:g} {offset:+g}")


def _from_product_metadata(meta: dict[str, object]) -> tuple[Optional[float], Optional[float], str]:
    """``(offset, quantification, note)`` from Sentinel-2 product tags / STAC properties."""
    offset, note = None, ""
    for key, value in meta.items():
        if key.endswith("add_offset") or re.search(r"(boa|radio)_add_offset", key):
            number = _number(value)
            if number is not None:
                offset, note = -number, f"metadata {key.upper()}={number:g}"
                break
    quant = None
    for key, value in meta.items():
        if "quantification_value" in key or key == "quantification":
            quant = _number(value)
            if quant:
                break
    if offset is None:
        applied = meta.get("earthsearch:boa_offset_applied")
        baseline = next((meta[k] for k in ("s2:processing_baseline", "processing_baseline", "processingbaseline")
                         if k in meta), None)
        number = _number(baseline) if baseline is not None else None
        if str(applied).lower() == "true":
            offset, note = 0.0, "metadata earthsearch:boa_offset_applied=true"
        elif number is not None:
            offset = S2_BASELINE_OFFSET if number >= 4.0 else 0.0
            note = f"processing baseline {baseline}"
    return offset, quant, note


def _sample(data: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """float64 ``(bands, n)`` valid values, strided down to at most ``MAX_SAMPLE`` per band."""
    flat = data.reshape(data.shape[0], -1)[:, valid.ravel()]
    step = max(1, flat.shape[1] // MAX_SAMPLE)
    return flat[:, ::step].astype(np.float64)


def _guess_offset(values: np.ndarray) -> tuple[float, str]:
    """1000 when (almost) no value of any band is below 1000, as in baseline >= 04.00 digital numbers.

    Natural scenes have dark pixels (water, shadow, vegetation in blue/red) at reflectance < 0.1, i.e.
    raw < 1000 without the offset; with it they sit just above 1000. Bright deserts, snow and cloud
    decks have none, so the rule can fire wrongly there: the note says so.
    """
    if values.size and values.max() > 2000 and np.mean(values < S2_BASELINE_OFFSET) < 1e-3:
        return S2_BASELINE_OFFSET, ("no value below 1000 (baseline >= 04.00 offset assumed; pass --offset 0 "
                                    "if this is a bright desert/snow scene without it)")
    return 0.0, ""


def _guess_kind(values: np.ndarray, floating: bool) -> tuple[str, str]:
    """Storage kind from the median and 99th percentile of the (offset-free) values."""
    mid, high = (float(v) for v in np.percentile(values, [50, 99])) if values.size else (0.0, 0.0)
    stats = f"median {mid:.4g}, 99th percentile {high:.4g}"
    if floating and high <= 1.6:
        return "float", f"float values, {stats}: reflectance 0..1"
    if high > 20000:
        return "display16", f"{stats}: above any reflectance x 10000, taken as a 16-bit display image"
    # Plausible reflectance: the 99th percentile between 0.02 and 1.6. Where both x 10000 and x 1000
    # are plausible, pick the one whose median is closer (in log) to 0.1, typical of land scenes in RGB.
    plausible = [k for k in ("x10000", "x1000") if 0.02 <= high * _SCALE[k] <= 1.6]
    if not plausible:
        return "x10000", stats
    if len(plausible) == 2:
        kind = "x10000" if mid > math.sqrt(1e5) else "x1000"  # sqrt(1e5) ~ 316: equidistant from 0.1
    else:
        kind = plausible[0]
    return kind, stats


def _check(scaling: Scaling, values: np.ndarray) -> Scaling:
    """Add warnings when the scaled values are implausible (almost all black or saturated)."""
    warnings = list(scaling.warnings)
    if values.size == 0:
        warnings.append("no valid pixel (all nodata): nothing to classify.")
        return replace(scaling, warnings=tuple(warnings))
    out = scaling.apply(values)
    dark, bright = float(np.mean(out <= 2)), float(np.mean(out >= 253))
    mid, high = np.percentile(values, [50, 99])
    fix = "Check the storage and pass --scale (uint8, x10000, x1000, float) and/or --offset/--clip."
    if dark > 0.95:
        warnings.append(f"{100 * dark:.0f} % of the pixels scale to black (raw median {mid:.4g}, 99th "
                        f"percentile {high:.4g}, read as {scaling.kind}): the map would be meaningless. {fix}")
    elif np.percentile(out, 99) < 32:
        warnings.append(f"99 % of the pixels scale below 32/255 (raw median {mid:.4g}, 99th percentile {high:.4g}, "
                        f"read as {scaling.kind}): far darker than EuroSAT, even for water. {fix}")
    elif bright > 0.95:
        warnings.append(f"{100 * bright:.0f} % of the pixels scale to white (raw median {mid:.4g}, 99th "
                        f"percentile {high:.4g}, read as {scaling.kind}): clouds, snow, or a wrong scaling. {fix}")
    elif scaling.kind in _SCALE:
        refl = (high - scaling.offset) * scaling.scale
        if not 0.02 <= refl <= 1.6:
            warnings.append(f"the 99th percentile is reflectance {refl:.3g} when read as {scaling.kind}, "
                            f"outside the plausible 0.02..1.6. {fix}")
    return replace(scaling, warnings=tuple(warnings))


def infer_scaling(data: np.ndarray, nodata: Optional[float] = None, metadata: Optional[Mapping] = None,
                  band_scales: Optional[Sequence[float]] = None, band_offsets: Optional[Sequence[float]] = None,
                  given: Optional[Mapping] = None) -> Scaling:
    """Decide how ``data`` (bands, H, W) -- the RGB bands, or a decimated read of them -- is stored.

    Args:
        data: Raw values of the bands to show, any dtype; a whole-scene overview is enough.
        nodata: Raw nodata value (left out of the statistics).
        metadata: Dataset/band tags or STAC item properties (keys matched case-insensitively:
            ``BOA_ADD_OFFSET``/``RADIO_ADD_OFFSET`` (``_B4`` suffixes too), ``BOA_QUANTIFICATION_VALUE``,
            ``PROCESSING_BASELINE``/``s2:processing_baseline``, ``earthsearch:boa_offset_applied``).
        band_scales, band_offsets: Per-band ``reflectance = value * scale + offset`` (GDAL ``ds.scales``/
            ``ds.offsets``, STAC ``raster:bands``); ``(1, 0)`` means unknown.
        given: From :func:`scaling_from_flags`: ``kind``, ``offset``, ``clip`` override the inference.

    Returns:
        The :class:`Scaling`, with ``source`` saying why and ``warnings`` when the result looks wrong.
    """
    given = dict(given or {})
    data = np.asarray(data)
    if data.ndim == 2:
        data = data[None]
    values = _sample(data, valid_mask(data, nodata))
    meta = _lower_keys(metadata)
    floating = np.issubdtype(data.dtype, np.floating)
    reasons = []

    scaling = None
    if "kind" in given:
        scaling = scaling_for(given["kind"], source="--scale given")
    elif "clip" not in given:
        scaling = _from_band_scales(band_scales, band_offsets)
    if scaling is None and data.dtype == np.uint8 and "clip" not in given:
        if looks_stretched(values):
            scaling = Scaling("stretched8", source="8-bit data clipped at 0 and 255 in every channel: a percentile "
                                                    "stretch")
        else:
            scaling = Scaling("uint8", source="8-bit data")
    if scaling is None:
        offset, quant, note = _from_product_metadata(meta)
        if offset is None and not floating and "offset" not in given:
            offset, note = _guess_offset(values)
        offset = offset or 0.0
        if note:
            reasons.append(note)
        if "clip" in given:
            scaling = Scaling("given", offset, EUROSAT_WHITE / float(given["clip"]), source="--clip given")
        elif quant:
            kind = {10000.0: "x10000", 1000.0: "x1000"}.get(quant, "given")
            reasons.append(f"quantification value {quant:g}")
            scaling = Scaling(kind, offset, 1.0 / quant)
        else:
            kind, why = _guess_kind(values - offset, floating)
            reasons.append(why)
            scaling = scaling_for(kind, offset if kind in _SCALE else 0.0, source="")
        if "source" not in given and not scaling.source:
            scaling = replace(scaling, source="; ".join(r for r in reasons if r))
    if "offset" in given and scaling.kind in (*_SCALE, "given"):
        scaling = replace(scaling, offset=float(given["offset"]),
                          source=f"{scaling.source}; --offset {given['offset']:g} given".lstrip("; "))
    return _check(scaling, values)


# ---------------------------------------------------------------- one call


@dataclass(frozen=True)
class Radiometry:
    """What :func:`to_eurosat_rgb8` did: the bands used and the :class:`Scaling` (JSON-able)."""

    bands: tuple[int, int, int]
    band_note: str
    scaling: Scaling
    extra: dict = field(default_factory=dict)

    @property
    def warnings(self) -> tuple[str, ...]:
        return self.scaling.warnings

    def describe(self) -> str:
        return f"bands {','.join(map(str, self.bands))} ({self.band_note}); {self.scaling.describe()}"

    def to_json(self) -> dict:
        return {"bands": list(self.bands), "band_note": self.band_note, "scaling": self.scaling.to_json(),
                **self.extra}


@dataclass(frozen=True)
class BandMetadata:
    """What a raster says about its bands: names, colour interpretation, nodata, tags, per-band scale/offset."""

    descriptions: Sequence[Optional[str]] = ()
    colorinterp: Sequence[object] = ()
    nodata: Optional[float] = None
    metadata: Optional[Mapping] = None
    scales: Optional[Sequence[float]] = None
    offsets: Optional[Sequence[float]] = None


def to_eurosat_rgb8(data: np.ndarray, info: BandMetadata = BandMetadata(), bands: Optional[Sequence[int]] = None,
                    given: Optional[Mapping] = None) -> tuple[np.ndarray, Radiometry]:
    """Any raster array -> uint8 RGB ``(3, H, W)`` on EuroSAT's stretch, and what was done.

    Picks R, G, B with :func:`choose_rgb_bands`, infers the scaling on those bands with
    :func:`infer_scaling`, and applies it. Nodata pixels become 0.

    Args:
        data: ``(bands, H, W)`` (or ``(H, W)`` for one band, repeated as grey), any dtype.
        info: Per-band names and colour interpretations (may be empty), nodata, metadata and per-band
            scales/offsets of ``data``, as for :func:`infer_scaling`.
        bands: Explicit 1-based (R, G, B).
        given: Explicit scaling, as for :func:`infer_scaling`.

    Raises:
        ValueError: no usable band choice (2 bands, 5 undescribed bands, ...) -- the message names ``--bands``.
    """
    data = np.asarray(data)
    if data.ndim == 2:
        data = data[None]
    if data.ndim != 3:
        raise ValueError(f"Expected raster data shaped (bands, height, width), got shape {data.shape}.")
    if data.shape[0] == 1 and not bands:
        chosen, note = (1, 1, 1), "one band shown as grey"
    else:
        chosen, note = choose_rgb_bands(data.shape[0], info.descriptions, info.colorinterp, bands)
    rgb = data[[b - 1 for b in chosen]]
    pick = (lambda seq: [seq[b - 1] for b in chosen] if seq is not None and len(seq) >= max(chosen) else None)
    scaling = infer_scaling(rgb, info.nodata, info.metadata, pick(info.scales), pick(info.offsets), given)
    out = scaling.apply(rgb)
    if info.nodata is not None:
        out[:, ~valid_mask(rgb, info.nodata)] = 0
    return out, Radiometry(chosen, note, scaling)
