"""Gradio tabs "Map a scene" and "Compare two dates".

Reading: :mod:`landcover.readers.raster`; maps: :mod:`landcover.scenes.mapping` (the map tab's controls are
:class:`~landcover.scenes.mapping.MapOptions` fields, as ``landcover map``'s flags are).

Call :func:`add_scene_tabs` inside an open ``gr.Blocks()`` (and ``gr.Tabs()``) context; the app in
:mod:`landcover.app.blocks` does. Both buttons run in the app's shared ``"inference"`` concurrency group, so
scene maps and the other model calls share one limit. Uploads are checked the way
:mod:`landcover.readers.imageio` checks patches (size, content sniffed from the bytes, pixel limit before any
tile is classified): only PNG/JPEG and TIFF content is opened, whatever the file name says, so a
renamed GDAL VRT (which could point at other files or URLs) is refused. Outputs are written to a
fresh temporary folder per request (Gradio serves files from the system temp dir).
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Optional, Union

import gradio as gr

from landcover.scenes.change import detect_change, render_change
from landcover.scenes.export import class_geojson, write_class_geotiff, write_geojson
from landcover.readers.imageio import IMAGE_SUFFIXES, UnsupportedImage, UploadError, UploadTooLarge, is_tiff
from landcover.scenes.mapping import DEFAULT_MIN_CONFIDENCE, MapOptions, SceneMap, map_scene
from landcover.readers.raster import Scene, open_scene
from landcover.scenes.render import method_note, render_map_with_legend, render_overlay, scene_note

SCENE_TYPES = [s for s in IMAGE_SUFFIXES if s in (".png", ".jpg", ".jpeg", ".tif", ".tiff")]  # what the tabs open
STRIDES = [64, 32, 16]
MAX_SCENE_BYTES = 512 * 2**20  # a full 10980 x 10980 px Sentinel-2 RGB uint16 tile is ~700 MB raw, ~300 MB as COG
MAX_SCENE_PIXELS = 10980 * 10980  # one Sentinel-2 tile at 10 m
_IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff")


def _path(upload: Union[str, dict, None], what: str) -> str:
    if not upload:
        raise gr.Error(f"Upload {what}: a PNG/JPEG larger than 64 px, or a GeoTIFF.")
    return upload if isinstance(upload, str) else upload.get("path") or upload.get("name")


def check_scene_upload(path: str, max_bytes: int = MAX_SCENE_BYTES) -> None:
    """Refuse empty, oversized and non-PNG/JPEG/TIFF uploads before any decoder sees them.

    Raises:
        UploadError: (a ValueError) with what was expected.
    """
    file = Path(path)
    size = file.stat().st_size if file.is_file() else 0
    if size == 0:
        raise UploadError("The upload is empty (0 bytes); expected a PNG, JPEG or GeoTIFF scene.")
    if size > max_bytes:
        raise UploadTooLarge(f"The scene is {size / 2**20:.0f} MiB; the app takes up to {max_bytes / 2**20:.0f} "
                             f"MiB. Crop it, or map it with the command line: `landcover map SCENE --out map.png`.")
    with open(file, "rb") as f:
        head = f.read(8)
    if not (is_tiff(head) or any(head.startswith(m) for m in _IMAGE_MAGIC)):
        raise UnsupportedImage(f"The upload is not a PNG, JPEG or TIFF (it starts with bytes {head.hex(' ')}); "
                               f"expected a scene image or GeoTIFF.")


def _open_checked(path: str, max_pixels: int = MAX_SCENE_PIXELS) -> Scene:
    check_scene_upload(path)
    scene = open_scene(path)
    if scene.height * scene.width > max_pixels:
        shape = f"{scene.width}x{scene.height}"
        scene.close()
        raise UploadTooLarge(f"The scene is {shape} px at 10 m/px, over the app's limit of "
                             f"{max_pixels / 1e6:.0f} MP (one Sentinel-2 tile). Crop it, or use `landcover map`.")
    return scene


def _warn(result: SceneMap, label: str = "") -> None:
    for warning in result.scene_info.get("warnings", []):
        gr.Warning(f"{label}{warning}")


def _area_rows(scene_map: SceneMap) -> list[list]:
    table = sorted(scene_map.area_table().items(), key=lambda kv: -kv[1]["cells"])
    rows = [[name, round(v["percent"], 2), round(v["km2"], 4), v["cells"]] for name, v in table]
    rows += [[f"masked: {reason}", None, round(v["km2"], 4), v["cells"]]
             for reason, v in scene_map.masked_table().items()]
    return rows


def map_scene_files(predictor, upload, options: Optional[MapOptions] = None, out_dir: Optional[str] = None):
    """What the "Map a scene" button returns: map (with legend), overlay, area rows, summary, files.

    ``options``: the stride, confidence threshold and adaptation the tab's controls set (the tab maps with
    ``landcover map``'s defaults otherwise).

    Raises:
        gr.Error: on a missing, refused, unreadable, too small or badly banded scene, or a bad option.
    """
    path = _path(upload, "a scene")
    out = Path(out_dir or tempfile.mkdtemp(prefix="landcover-map-"))
    try:
        options = replace(options or MapOptions(), progress=True)
        with _open_checked(path) as scene:
            result = map_scene(predictor, scene, options)
            legend_map = render_map_with_legend(result)
            overlay = render_overlay(result, scene)
            files = [out / "map.png", out / "overlay.png", out / "map.json"]
            legend_map.save(files[0])
            overlay.save(files[1])
            files[2].write_text(json.dumps(result.to_json()))
            if scene.georeferenced:
                files.append(write_class_geotiff(result, out / "map.tif"))
                files.append(write_geojson(class_geojson(result), out / "map.geojson"))
    except (ValueError, FileNotFoundError, OSError) as err:
        raise gr.Error(str(err)) from err
    _warn(result)
    rows, cols = result.grid.shape
    summary = (f"**{Path(path).name}**: {result.width}×{result.height} px, {rows}×{cols} cells of "
               f"{result.stride} px. Pixel size: {result.pixel_size_source}. {method_note(result)}"
               f"{int(result.uncertain.sum())} cells below confidence {result.min_confidence:g} (uncertain). "
               + scene_note(result)
               + ("" if scene.georeferenced else " No georeference, so no GeoTIFF/GeoJSON download."))
    return legend_map, overlay, _area_rows(result), summary, [str(f) for f in files]


def compare_scene_files(predictor, before_upload, after_upload, min_confidence: float = 0.5, stride: int = 64,
                        out_dir: Optional[str] = None):
    """What the "Compare two dates" button returns: change image, transition rows, summary, files."""
    before_path = _path(before_upload, "the BEFORE scene")
    after_path = _path(after_upload, "the AFTER scene")
    out = Path(out_dir or tempfile.mkdtemp(prefix="landcover-change-"))
    try:
        with _open_checked(before_path) as before, _open_checked(after_path) as after:
            result = detect_change(predictor, before, after, min_confidence=float(min_confidence),
                                   stride=int(stride), progress=True)
            image = render_change(result, after)
    except (ValueError, FileNotFoundError, OSError) as err:
        raise gr.Error(str(err)) from err
    _warn(result.before, "BEFORE: ")
    _warn(result.after, "AFTER: ")
    data = result.to_json()
    files = [out / "change.png", out / "change.json"]
    image.save(files[0])
    files[1].write_text(json.dumps(data))
    rows = [[t["from"], t["to"], t["tiles"], round(t["km2"], 4)] for t in data["transitions"]]
    summary = (f"{data['rows']}×{data['cols']} tiles: **{data['changed_tiles']} changed** "
               f"({data['changed_km2']:.3f} km²), {data['unchanged_tiles']} unchanged, "
               f"{data['uncertain_tiles']} below confidence {result.min_confidence:g}, "
               f"{data['masked_tiles']} masked. Pixel size: {data['pixel_size_source']}.")
    return image, rows, summary, [str(f) for f in files]


def add_scene_tabs(predictor, concurrency_id: str = "inference") -> None:
    """Add the "Map a scene" and "Compare two dates" tabs to the open Blocks.

    Args:
        predictor: A loaded :class:`~landcover.inference.predictor.Predictor`.
        concurrency_id: The app's shared inference concurrency group (its limit is set by the app's queue).
    """

    def on_map(upload, stride, min_confidence, adapt, progress=gr.Progress(track_tqdm=True)):
        try:
            options = MapOptions(stride=int(stride), min_confidence=float(min_confidence),
                                 adapt="bn" if adapt else "none")
        except ValueError as err:
            raise gr.Error(str(err)) from err
        return map_scene_files(predictor, upload, options)

    def on_compare(before, after, min_confidence, stride, progress=gr.Progress(track_tqdm=True)):
        return compare_scene_files(predictor, before, after, min_confidence, stride)

    with gr.Tab("Map a scene"):
        gr.Markdown("Upload a scene larger than one 64 px patch: an RGB PNG/JPEG at ~10 m/px, or a GeoTIFF "
                    "(RGB, or Sentinel-2 bands). 16-bit and float reflectance are scaled like EuroSAT "
                    "(the scaling is inferred and shown); scenes not at 10 m/px are resampled to 10 m. It is "
                    "cut into 64 px tiles and every tile is classified.")
        with gr.Row():
            with gr.Column(scale=1):
                scene_file = gr.File(label="Scene (PNG, JPEG or GeoTIFF)", file_types=SCENE_TYPES,
                                     elem_id="scene-input")
                stride = gr.Radio(STRIDES, value=64, label="Stride (px)",
                                  info="Below 64, overlapping tiles are averaged: a finer map, more tiles.")
                map_min_conf = gr.Slider(0.0, 1.0, value=DEFAULT_MIN_CONFIDENCE, step=0.05,
                                         label="Minimum confidence",
                                         info="Cells whose top class is less likely are 'uncertain' (hatched grey).")
                adapt = gr.Checkbox(False, label="Adapt the model to this scene",
                                    info="Re-estimates the CNN's BatchNorm statistics on the scene's own tiles "
                                         "(AdaBN): on a winter scene more villages and forests are found, and "
                                         "some fields are taken for villages. About twice the time.",
                                    elem_id="scene-adapt")
                map_button = gr.Button("Map the scene", variant="primary", elem_id="map-button")
                map_summary = gr.Markdown(label="Summary", elem_id="map-summary")
                areas = gr.Dataframe(headers=["class", "area %", "km²", "cells"], label="Area per class",
                                     interactive=False)
                map_files = gr.File(label="Downloads (PNG, JSON, GeoTIFF, GeoJSON)", file_count="multiple",
                                    interactive=False)
            with gr.Column(scale=2):
                map_image = gr.Image(label="Land-cover map", type="pil", format="png", interactive=False,
                                     elem_id="map-image")
                overlay_image = gr.Image(label="Map over the scene", type="pil", format="png", interactive=False)
        map_button.click(on_map, [scene_file, stride, map_min_conf, adapt],
                         [map_image, overlay_image, areas, map_summary, map_files], api_name="map_scene",
                         concurrency_id=concurrency_id)

    with gr.Tab("Compare two dates"):
        gr.Markdown("Upload two co-registered scenes of the same place (same size; GeoTIFFs on the same grid). "
                    "Tiles whose class changed, with both dates above the confidence threshold, are highlighted.")
        with gr.Row():
            with gr.Column(scale=1):
                before_file = gr.File(label="Before", file_types=SCENE_TYPES)
                after_file = gr.File(label="After", file_types=SCENE_TYPES)
                min_conf = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="Minimum confidence (both dates)")
                change_stride = gr.Radio(STRIDES, value=64, label="Stride (px)")
                compare_button = gr.Button("Compare", variant="primary")
                change_summary = gr.Markdown(label="Change summary")
                transitions = gr.Dataframe(headers=["from", "to", "tiles", "km²"], label="Changes (from → to)",
                                           interactive=False)
                change_files = gr.File(label="Downloads (PNG, JSON)", file_count="multiple", interactive=False)
            with gr.Column(scale=2):
                change_image = gr.Image(label="Before | after | change", type="pil", format="png",
                                        interactive=False)
        compare_button.click(on_compare, [before_file, after_file, min_conf, change_stride],
                             [change_image, transitions, change_summary, change_files], api_name="compare_scenes",
                             concurrency_id=concurrency_id)
