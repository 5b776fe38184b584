"""Gradio tabs "Map a scene" and "Compare two dates" (see :mod:`landcover.scene`).

Call :func:`add_scene_tabs` inside an open ``gr.Blocks()`` (and ``gr.Tabs()``) context; the app in
:mod:`landcover.ui` does. Outputs are written to a fresh temporary folder per request (Gradio serves
files from the system temp dir) so concurrent users never share files.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Callable, Optional, Union

import gradio as gr

from . import scene as sc

SCENE_TYPES = [".png", ".jpg", ".jpeg", ".tif", ".tiff"]
STRIDES = [64, 32, 16]


def _provider(predictor) -> Callable:
    """``predictor`` may be a loaded Predictor or a zero-argument function returning one (lazy loading)."""
    if hasattr(predictor, "predict_tensor"):
        return lambda: predictor
    return predictor


def _path(upload: Union[str, dict, None], what: str) -> str:
    if not upload:
        raise gr.Error(f"Upload {what}: a PNG/JPEG larger than 64 px, or a GeoTIFF.")
    return upload if isinstance(upload, str) else upload.get("path") or upload.get("name")


def _area_rows(scene_map: sc.SceneMap) -> list[list]:
    table = sorted(scene_map.area_table().items(), key=lambda kv: -kv[1]["cells"])
    return [[name, round(v["percent"], 2), round(v["km2"], 4), v["cells"]] for name, v in table]


def map_scene_files(predictor, upload, stride: int = 64, out_dir: Optional[str] = None):
    """What the "Map a scene" button returns: map (with legend), overlay, area rows, summary, files.

    Raises:
        gr.Error: on a missing, unreadable, too small or badly banded scene.
    """
    path = _path(upload, "a scene")
    out = Path(out_dir or tempfile.mkdtemp(prefix="landcover-map-"))
    try:
        with sc.open_scene(path) as scene:
            result = sc.map_scene(predictor, scene, int(stride), progress=True)
            legend_map = sc.render_map_with_legend(result)
            overlay = sc.render_overlay(result, scene)
            files = [out / "map.png", out / "overlay.png", out / "map.json"]
            legend_map.save(files[0])
            overlay.save(files[1])
            files[2].write_text(json.dumps(result.to_json()))
            if scene.georeferenced:
                files.append(sc.write_class_geotiff(result, out / "map.tif"))
    except (ValueError, FileNotFoundError, OSError) as err:
        raise gr.Error(str(err)) from err
    rows, cols = result.grid.shape
    summary = (f"**{Path(path).name}**: {result.width}×{result.height} px, {rows}×{cols} cells of "
               f"{result.stride} px. Pixel size: {result.pixel_size_source}."
               + ("" if scene.georeferenced else " No georeference, so no GeoTIFF download."))
    return legend_map, overlay, _area_rows(result), summary, [str(f) for f in files]


def compare_scene_files(predictor, before_upload, after_upload, min_confidence: float = 0.5, stride: int = 64,
                        out_dir: Optional[str] = None):
    """What the "Compare two dates" button returns: change image, transition rows, summary, files."""
    before_path = _path(before_upload, "the BEFORE scene")
    after_path = _path(after_upload, "the AFTER scene")
    out = Path(out_dir or tempfile.mkdtemp(prefix="landcover-change-"))
    try:
        with sc.open_scene(before_path) as before, sc.open_scene(after_path) as after:
            result = sc.detect_change(predictor, before, after, int(stride), min_confidence=float(min_confidence),
                                      progress=True)
            image = sc.render_change(result, after)
    except (ValueError, FileNotFoundError, OSError) as err:
        raise gr.Error(str(err)) from err
    data = result.to_json()
    files = [out / "change.png", out / "change.json"]
    image.save(files[0])
    files[1].write_text(json.dumps(data))
    rows = [[t["from"], t["to"], t["tiles"], round(t["km2"], 4)] for t in data["transitions"]]
    summary = (f"{data['rows']}×{data['cols']} tiles: **{data['changed_tiles']} changed** "
               f"({data['changed_km2']:.3f} km²), {data['unchanged_tiles']} unchanged, "
               f"{data['uncertain_tiles']} below confidence {result.min_confidence:g}. "
               f"Pixel size: {data['pixel_size_source']}.")
    return image, rows, summary, [str(f) for f in files]


def add_scene_tabs(predictor) -> None:
    """Add the "Map a scene" and "Compare two dates" tabs to the open Blocks.

    Args:
        predictor: A loaded :class:`~landcover.predict.Predictor`, or a zero-argument function returning one.
    """
    get = _provider(predictor)

    def on_map(upload, stride, progress=gr.Progress(track_tqdm=True)):
        return map_scene_files(get(), upload, stride)

    def on_compare(before, after, min_confidence, stride, progress=gr.Progress(track_tqdm=True)):
        return compare_scene_files(get(), before, after, min_confidence, stride)

    with gr.Tab("Map a scene"):
        gr.Markdown("Upload a scene larger than one 64 px patch: an RGB PNG/JPEG at ~10 m/px, or a GeoTIFF "
                    "(RGB, or Sentinel-2 bands with B04/B03/B02 descriptions; 16-bit reflectance×10000 is "
                    "scaled like EuroSAT). It is cut into 64 px tiles and every tile is classified.")
        with gr.Row():
            with gr.Column(scale=1):
                scene_file = gr.File(label="Scene (PNG, JPEG or GeoTIFF)", file_types=SCENE_TYPES)
                stride = gr.Radio(STRIDES, value=64, label="Stride (px)",
                                  info="Below 64, overlapping tiles are averaged: a finer map, more tiles.")
                map_button = gr.Button("Map the scene", variant="primary")
                map_summary = gr.Markdown()
                areas = gr.Dataframe(headers=["class", "area %", "km²", "cells"], label="Area per class",
                                     interactive=False)
                map_files = gr.File(label="Downloads (PNG, JSON, GeoTIFF)", file_count="multiple",
                                    interactive=False)
            with gr.Column(scale=2):
                map_image = gr.Image(label="Land-cover map", type="pil", format="png", interactive=False)
                overlay_image = gr.Image(label="Map over the scene", type="pil", format="png", interactive=False)
        map_button.click(on_map, [scene_file, stride], [map_image, overlay_image, areas, map_summary, map_files],
                         api_name="map_scene")

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
                change_summary = gr.Markdown()
                transitions = gr.Dataframe(headers=["from", "to", "tiles", "km²"], label="Changes (from → to)",
                                           interactive=False)
                change_files = gr.File(label="Downloads (PNG, JSON)", file_count="multiple", interactive=False)
            with gr.Column(scale=2):
                change_image = gr.Image(label="Before | after | change", type="pil", format="png",
                                        interactive=False)
        compare_button.click(on_compare, [before_file, after_file, min_conf, change_stride],
                             [change_image, transitions, change_summary, change_files], api_name="compare_scenes")
