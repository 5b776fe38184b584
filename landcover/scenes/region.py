"""Map a whole region: many scenes in parallel on Ray, resumable, one mosaic with areas measured on the ground.

:func:`map_region` maps every scene (anything :func:`landcover.readers.raster.open_scene` reads) on a Ray cluster:
a local one with ``workers`` processes by default, or an existing one by ``address``. Each worker is an actor that
loads the model once (:class:`SceneMapper`); scenes are handed to idle workers as they finish, so at most one job
per worker is in flight (memory stays bounded by a few scenes). A scene of more than ``PART_TILES`` tiles is mapped
in tile-row parts by every worker and assembled by one (the parts' per-cell sums add up to the one-pass map), so one
big scene also uses the whole cluster. A task whose worker dies is retried on a restarted one, and a scene that
keeps failing is reported in ``run.json`` without hiding the others.

Outputs in ``out`` (every per-scene result is written atomically as it finishes, so a rerun of the same command
skips the scenes already done, and ``kill -9`` loses at most the scenes in flight):

* ``scenes/<id>/classes.tif`` and ``summary.json``: each scene's class map (the ``landcover map --geotiff`` raster)
  and its areas;
* ``classes.tif``: one Cloud-Optimized GeoTIFF mosaic of class indices (uint8 in the model's label order; 255 = no
  data, masked or uncertain; tag ``labels``), in one CRS (``crs``, default the first scene's), overlaps resolved by
  the higher confidence; ``confidence.tif`` likewise (percent, 255 = none);
* ``areas.json``: km² per class per scene and for the mosaic (``total``), from geodesic pixel areas (equal-area on
  the WGS 84 ellipsoid), never from pixel counts of a geographic CRS;
* ``scenes.geojson``: footprints (WGS 84), status and time of every scene; ``overview.png``: the mosaic with its
  legend; ``run.json``: engine, workers, scenes done / skipped / failed, tiles per second.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import sys
import time
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from landcover.core.labels import PATCH_SIZE_PX
from landcover.scenes.mapping import MapOptions, tile_grid

NODATA = 255
SUMMARY = "summary.json"
# Scenes of more tiles than this are mapped in row parts by every worker: ~5 s of int8 inference on one worker
# (767 tiles/s measured on 2 cores, docs/performance.md), long against Ray's per-task cost and the re-open of the
# scene per part, short enough that the parts spread evenly over the workers.
PART_TILES = 4096
AREA_BLOCK_PX = 64  # pixel areas are computed per block of this many pixels a side (they vary slowly)


@dataclass
class RegionOptions:
    """What :func:`map_region` does besides the per-scene :class:`MapOptions`."""

    out: Path
    map: MapOptions = field(default_factory=MapOptions)
    model: Optional[str] = None  # model folder or Hub id; None: the embedded model
    backend: str = "auto"
    workers: int = 2  # local Ray workers (ignored with an address: the cluster's own size decides)
    address: Optional[str] = None  # an existing Ray cluster ("auto", "ray://host:10001", ...)
    crs: Optional[str] = None  # the mosaic's CRS (default: the first scene's)
    retries: int = 2  # restarts of a dead worker, and re-runs of its task, before a scene counts as failed
    # Threads per worker (ONNX Runtime and torch). Default: locally the machine's cores shared out among the workers,
    # so that workers never oversubscribe the cores (on 2 cores it measured alike: a large scene in parts on two
    # workers took 26 s with two threads each and 28-30 s with one, against 21-25 s on one worker); on a cluster 1,
    # one worker per CPU as Ray accounts for them.
    threads: Optional[int] = None
    reading: dict = field(default_factory=dict)  # open_scene options: bands, given, pixel_size_m, resample
    progress: bool = True

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        if self.workers < 1:
            raise ValueError(f"--workers must be at least 1, got {self.workers}.")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"--threads must be at least 1, got {self.threads}.")
        if self.map.adapt != "none":
            raise ValueError(f"Region maps do not adapt the CNN per scene (adapt={self.map.adapt!r}): a mosaic's "
                             f"scenes must share one classifier. Map single scenes with `landcover map --adapt bn`.")

    @property
    def worker_threads(self) -> int:
        if self.threads:
            return self.threads
        return 1 if self.address else max(1, (os.cpu_count() or 1) // self.workers)


def _safe_name(text: str) -> str:
    """``text`` as a file name: runs of anything but letters, digits, ``_ . -`` become ``_``."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


def scene_id(ref: str) -> str:
    """A stable folder name for a scene reference: a readable stem plus a hash of the whole reference."""
    stem = _safe_name(Path(ref.rstrip("/")).stem or "scene")[:60]
    return f"{stem}-{hashlib.sha1(ref.encode()).hexdigest()[:8]}"


class SceneMapper:
    """One worker: loads the model once and maps scenes, or row parts of large scenes, with it (run as a Ray
    actor by :func:`map_region`)."""

    def __init__(self, model: Optional[str], backend: str, options: MapOptions, reading: dict,
                 part_tiles: Optional[int] = None, threads: Optional[int] = None):
        import torch

        from landcover.inference.predictor import load_predictor

        if threads:
            torch.set_num_threads(threads)  # this process is the worker: its threads are its share of the cores
        self.predictor = load_predictor(model, backend=backend, task="scenes", threads=threads)
        self.options, self.reading, self.part_tiles = replace(options, progress=False), reading, part_tiles

    def _open(self, ref: str):
        from landcover.readers.raster import open_scene

        scene = open_scene(ref, **self.reading)
        if not scene.georeferenced:
            scene.close()
            raise ValueError(f"{ref!r} has no CRS/transform; a region mosaic needs georeferenced scenes.")
        return scene

    def start(self, ref: str, folder: str) -> dict:
        """Map ``ref`` into ``folder`` and return its summary; a scene of more than ``part_tiles`` tiles is not
        mapped here but planned: ``{"parts": [[r0, r1], ...], "leaf_on": ...}`` (tile rows, and the scene's
        season guard, decided once here) for :meth:`part` on every worker."""
        from landcover.scenes.mapping import map_scene, scene_season

        began = time.perf_counter()
        with self._open(ref) as scene:
            rows, cols = tile_grid(scene.height, scene.width, PATCH_SIZE_PX, self.options.stride)
            if self.part_tiles and rows * cols > self.part_tiles and rows > 1:
                step = max(1, self.part_tiles // cols)
                return {"parts": [[r, min(r + step, rows)] for r in range(0, rows, step)],
                        "leaf_on": scene_season(scene, self.options)}
            tmp = _in_flight(Path(folder))
            result = map_scene(self.predictor, scene, self.options)
        return _write_scene(result, ref, tmp, Path(folder), time.perf_counter() - began)

    def part(self, ref: str, rows: tuple[int, int], leaf_on: Optional[bool]):
        """The :class:`~landcover.scenes.mapping.TileSums` of tile rows ``rows`` of ``ref``, under the scene's
        season guard ``leaf_on`` (from :meth:`start`)."""
        from landcover.scenes.mapping import accumulate_tiles

        with self._open(ref) as scene:
            return accumulate_tiles(self.predictor, scene, self.options, tuple(rows), leaf_on)

    def assemble(self, ref: str, folder: str, seconds: float, *parts) -> dict:
        """Write the map of ``ref`` from all its parts (Ray hands them over as values) and return its summary."""
        from landcover.scenes.mapping import assemble_map

        tmp = _in_flight(Path(folder))
        with self._open(ref) as scene:
            result = assemble_map(scene, self.predictor.labels, self.options, list(parts))
        return _write_scene(result, ref, tmp, Path(folder), seconds)


def _in_flight(target: Path) -> Path:
    """The empty folder a scene's result is written into while it is in flight, named by the worker's process."""
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def _write_scene(result, ref: str, tmp: Path, target: Path, seconds: float) -> dict:
    """Write a scene's class GeoTIFF and summary into ``tmp`` (from :func:`_in_flight`), then rename it to
    ``target`` in one step; returns the summary."""
    from landcover.scenes import export

    export.write_class_geotiff(result, tmp / "classes.tif")
    summary = {"scene": ref, "id": target.name, "status": "done", "crs": result.crs.to_string(),
               "labels": result.labels, "evidence": result.evidence_note,
               "areas_km2": {k: round(v["km2"], 6) for k, v in result.area_table().items()},
               "uncertain_km2": round(int(result.uncertain.sum()) * result.cell_area_km2, 6),
               "masked_km2": {k: round(v["km2"], 6) for k, v in result.masked_table().items()},
               "warnings": list(result.scene_info.get("warnings", [])),
               "tiles": int(np.prod(tile_grid(result.height, result.width, result.patch_size, result.stride))),
               "seconds": round(seconds, 3), "mapped_at": _now()}
    (tmp / SUMMARY).write_text(json.dumps(summary, indent=1))
    if target.exists():  # a concurrent or earlier partial result of the same scene
        shutil.rmtree(target)
    os.replace(tmp, target)
    return summary


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def expand_inputs(inputs: Sequence[str]) -> list[str]:
    """Scene references; ``@list.txt`` reads one reference per line (blank lines and ``#`` comments skipped)."""
    refs: list[str] = []
    for item in inputs:
        if item.startswith("@"):
            lines = Path(item[1:]).read_text().splitlines()
            refs += [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
        else:
            refs.append(item)
    if not refs:
        raise ValueError("No scenes given; expected scene files, band folders, STAC items or @list.txt.")
    return list(dict.fromkeys(refs))  # each scene once, in the given order


@dataclass(frozen=True)
class StacSearch:
    """A STAC API item search: the scenes of a place and time (``landcover map-region --stac-api``)."""

    url: str  # the API's landing page, e.g. https://earth-search.aws.element84.com/v1
    collections: tuple[str, ...] = ("sentinel-2-l2a",)
    bbox: Optional[tuple[float, float, float, float]] = None  # west, south, east, north in degrees
    datetime: Optional[str] = None  # "2024-06-01/2024-06-30"
    max_cloud: Optional[float] = None  # eo:cloud_cover below this (percent)
    max_items: int = 100


def search_stac(search: StacSearch, folder: Path) -> list[str]:
    """Run ``search`` with pystac-client and save each item as ``folder/<id>.json`` (its asset hrefs absolute, so
    the scene is read from wherever the API says it lives); returns the item files, in the API's order."""
    from pystac_client import Client

    client = Client.open(search.url)
    query = {"eo:cloud_cover": {"lt": search.max_cloud}} if search.max_cloud is not None else None
    results = client.search(collections=list(search.collections), bbox=search.bbox, datetime=search.datetime,
                            query=query, max_items=search.max_items)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for item in results.items():
        item.make_asset_hrefs_absolute()
        path = folder / f"{_safe_name(item.id)}.json"
        path.write_text(json.dumps(item.to_dict(include_self_link=False)))
        paths.append(str(path))
    if not paths:
        raise ValueError(f"The STAC search of {search.url} found no item (collections {list(search.collections)}, "
                         f"bbox {search.bbox}, datetime {search.datetime}, cloud < {search.max_cloud}); widen it.")
    return paths


def map_region(inputs: Sequence[str], options: RegionOptions) -> dict:
    """Map every scene on Ray, then build the mosaic and the area tables (see the module docstring).

    Returns the ``run.json`` record.
    """
    refs = expand_inputs(inputs)
    scenes_dir = options.out / "scenes"
    scenes_dir.mkdir(parents=True, exist_ok=True)
    todo = [r for r in refs if not (scenes_dir / scene_id(r) / SUMMARY).is_file()]
    start = time.perf_counter()
    failed, parts = _run_on_ray(todo, scenes_dir, options) if todo else ({}, 0)
    seconds = time.perf_counter() - start
    for stale in scenes_dir.glob("*.tmp-*"):  # scenes whose worker died (retried elsewhere) or that failed
        shutil.rmtree(stale, ignore_errors=True)
    summaries = {r: json.loads((scenes_dir / scene_id(r) / SUMMARY).read_text()) for r in refs
                 if (scenes_dir / scene_id(r) / SUMMARY).is_file()}
    new_tiles = sum(summaries[r]["tiles"] for r in todo if r in summaries)
    record = {"engine": "ray", "workers": options.workers if not options.address else None,
              "address": options.address, "scenes": len(refs), "done": len(summaries),
              "mapped": len([r for r in todo if r in summaries]), "skipped": len(refs) - len(todo),
              "failed": [{"scene": r, "error": e} for r, e in failed.items()],
              "mapping_seconds": round(seconds, 2), "tiles": new_tiles, "scene_parts": parts,
              "tiles_per_s": round(new_tiles / seconds, 1) if new_tiles and seconds > 0 else None}
    if summaries:
        record.update(build_outputs(refs, summaries, failed, options))
    (options.out / "run.json").write_text(json.dumps(record, indent=1))
    return record


def _run_on_ray(refs: list[str], scenes_dir: Path, options: RegionOptions) -> tuple[dict[str, str], int]:
    """Map ``refs`` on Ray; returns ``{ref: error}`` of the scenes that failed every try, and the number of row
    parts that large scenes were mapped in."""
    import ray

    started_here = not ray.is_initialized()
    if started_here:
        package_root = str(Path(__file__).resolve().parents[2])  # workers import landcover as the driver does
        env = {"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH"))
                                                          if p)}}
        if options.address:
            ray.init(address=options.address, runtime_env=env, log_to_driver=False)
        else:
            ray.init(num_cpus=options.workers * options.worker_threads, include_dashboard=False, runtime_env=env,
                     log_to_driver=False)
    try:
        size = options.workers if not options.address else \
            int(ray.cluster_resources().get("CPU", 1)) // options.worker_threads
        schedule = _Schedule(refs, scenes_dir, options, size)
        return schedule.run(), schedule.part_count
    finally:
        if started_here:
            ray.shutdown()


class _Schedule:
    """Jobs to idle workers, one job per worker at a time (memory stays bounded): a scene (``start``), the row
    parts of a large scene (``part``, queued first so that every worker helps with it) and their ``assemble``."""

    def __init__(self, refs: list[str], scenes_dir: Path, options: RegionOptions, size: int):
        import ray
        from tqdm.auto import tqdm

        self.scenes_dir, self.options, self.size = scenes_dir, options, max(1, size)
        part_tiles = PART_TILES if self.size > 1 else None  # one worker gains nothing from parts
        threads = options.worker_threads
        self.actor = ray.remote(num_cpus=threads, max_restarts=options.retries,
                                max_task_retries=options.retries)(SceneMapper)
        self.args = (options.model, options.backend, options.map, options.reading, part_tiles, threads)
        # Workers start with one per scene (a small job stays cheap) and grow when a scene is split.
        self.idle = [self.actor.remote(*self.args) for _ in range(min(len(refs), self.size))]
        self.started = len(self.idle)
        self.jobs = deque(("start", ref) for ref in refs)
        self.pending: dict = {}
        self.parts: dict[str, dict] = {}  # split scenes: their part results and when they began
        self.failed: dict[str, str] = {}
        self.tiles = self.part_count = 0
        self.bar = tqdm(total=len(refs), unit="scene", desc="region", disable=not options.progress, file=sys.stderr)

    def folder(self, ref: str) -> str:
        return str(self.scenes_dir / scene_id(ref))

    def submit(self, worker, job: tuple):
        kind, ref = job[0], job[1]
        if kind == "start":
            return worker.start.remote(ref, self.folder(ref))
        if kind == "part":
            return worker.part.remote(ref, job[2], job[3])
        split = self.parts[ref]
        return worker.assemble.remote(ref, self.folder(ref), time.perf_counter() - split["began"], *split["done"])

    def run(self) -> dict[str, str]:
        import ray

        while self.jobs or self.pending:
            while self.jobs and self.idle:
                worker, job = self.idle.pop(), self.jobs.popleft()
                self.pending[self.submit(worker, job)] = (job, worker)
            (ready,), _ = ray.wait(list(self.pending), num_returns=1)
            job, worker = self.pending.pop(ready)
            self.idle.append(worker)
            if job[1] in self.failed:  # a part of a scene that already failed
                continue
            try:
                value = ray.get(ready)
            except Exception as err:  # noqa: BLE001 - a failed scene is reported, the others go on
                self.fail(job[1], _error_text(err))
                continue
            self.done(job, ready, value)
            self.bar.set_postfix(tiles=self.tiles, failed=len(self.failed), refresh=False)
        self.bar.close()
        return self.failed

    def done(self, job: tuple, ready, value) -> None:
        kind, ref = job[0], job[1]
        if kind == "start" and "parts" in value:
            self.parts[ref] = {"began": time.perf_counter(), "done": [], "left": len(value["parts"])}
            self.jobs.extendleft(reversed([("part", ref, rows, value["leaf_on"]) for rows in value["parts"]]))
            self.part_count += len(value["parts"])
            while self.started < self.size:  # a split scene can keep every worker busy
                self.idle.append(self.actor.remote(*self.args))
                self.started += 1
        elif kind == "part":
            split = self.parts[ref]
            split["done"].append(ready)  # handed to assemble as a reference: the sums stay in Ray's store
            split["left"] -= 1
            self.tiles += value.tiles
            if not split["left"]:
                self.jobs.appendleft(("assemble", ref))
        else:
            if kind == "start":
                self.tiles += value["tiles"]
            self.parts.pop(ref, None)
            self.bar.update(1)

    def fail(self, ref: str, error: str) -> None:
        self.failed[ref] = error
        self.parts.pop(ref, None)
        self.jobs = deque(j for j in self.jobs if j[1] != ref)
        self.bar.update(1)


def _error_text(err: Exception) -> str:
    cause = getattr(err, "cause", None) or err
    lines = [line for line in str(cause).splitlines() if line.strip()]
    return lines[-1][:500] if lines else type(err).__name__


# ---------------------------------------------------------------- mosaic and areas


def build_outputs(refs: Sequence[str], summaries: dict, failed: dict, options: RegionOptions) -> dict:
    """``classes.tif``, ``confidence.tif``, ``areas.json``, ``scenes.geojson`` and ``overview.png`` from the
    per-scene results; returns what ``run.json`` records of them."""
    import rasterio
    from rasterio.crs import CRS

    done = [r for r in refs if r in summaries]
    paths = [options.out / "scenes" / scene_id(r) / "classes.tif" for r in done]
    with rasterio.open(paths[0]) as first:
        labels = json.loads(first.tags()["classes"])
        crs = CRS.from_user_input(options.crs) if options.crs else first.crs
        pixel = abs(first.transform.a)
    grid = _mosaic_grid(paths, crs, pixel)
    classes, confidence = _mosaic(paths, grid, len(labels))
    _write_cog(options.out / "classes.tif", classes, grid, {"labels": json.dumps(labels)}, colours=labels)
    _write_cog(options.out / "confidence.tif", confidence, grid, {"units": "percent"})
    areas = _class_areas(classes, grid, len(labels))
    table = {"labels": labels, "crs": crs.to_string(), "method": "geodesic pixel areas on the WGS 84 ellipsoid",
             "scenes": {summaries[r]["id"]: summaries[r]["areas_km2"] for r in done},
             "total": dict(zip(labels, [round(float(a), 6) for a in areas[:-1]])),
             "no_data_masked_or_uncertain_km2": round(float(areas[-1]), 6)}
    (options.out / "areas.json").write_text(json.dumps(table, indent=1))
    _write_footprints(options.out / "scenes.geojson", refs, summaries, failed)
    _write_overview(options.out / "overview.png", classes, labels, table)
    return {"crs": crs.to_string(), "mosaic_size": [grid["height"], grid["width"]]}


def _mosaic_grid(paths: list[Path], crs, pixel: float) -> dict:
    import rasterio
    from affine import Affine
    from rasterio.warp import transform_bounds

    bounds = []
    for path in paths:
        with rasterio.open(path) as ds:
            bounds.append(transform_bounds(ds.crs, crs, *ds.bounds, densify_pts=21))
    west, south = min(b[0] for b in bounds), min(b[1] for b in bounds)
    east, north = max(b[2] for b in bounds), max(b[3] for b in bounds)
    width, height = math.ceil((east - west) / pixel), math.ceil((north - south) / pixel)
    return {"crs": crs, "transform": Affine(pixel, 0, west, 0, -pixel, north), "width": width, "height": height}


def _mosaic(paths: list[Path], grid: dict, n_labels: int) -> tuple[np.ndarray, np.ndarray]:
    """Class and confidence mosaics: each scene warped (nearest) onto the grid; the higher confidence wins."""
    import rasterio
    from rasterio.warp import Resampling, reproject

    shape = (grid["height"], grid["width"])
    classes = np.full(shape, NODATA, dtype=np.uint8)
    confidence = np.full(shape, NODATA, dtype=np.uint8)
    best = np.full(shape, -1, dtype=np.int16)
    for path in paths:
        with rasterio.open(path) as ds:
            warped = np.full((2, *shape), NODATA, dtype=np.uint8)
            for band in (1, 2):
                reproject(rasterio.band(ds, band), warped[band - 1], dst_transform=grid["transform"],
                          dst_crs=grid["crs"], dst_nodata=NODATA, resampling=Resampling.nearest)
        cls, conf = warped
        valid = cls < n_labels  # masked (2xx), uncertain (207) and nodata (255) carry no class
        score = np.where(valid, conf.astype(np.int16), -1)
        take = score > best
        classes[take], confidence[take], best[take] = cls[take], conf[take], score[take]
    return classes, confidence


def _write_cog(path: Path, data: np.ndarray, grid: dict, tags: dict, colours: Optional[list] = None) -> None:
    """A Cloud-Optimized GeoTIFF (GDAL's COG driver: tiled, overviews, deflate), written via a temporary file."""
    import rasterio
    from rasterio.shutil import copy as raster_copy

    tmp = path.with_suffix(".tmp.tif")
    profile = dict(driver="GTiff", height=data.shape[0], width=data.shape[1], count=1, dtype="uint8",
                   crs=grid["crs"], transform=grid["transform"], nodata=NODATA, tiled=True, blockxsize=256,
                   blockysize=256, compress="deflate")
    with rasterio.open(tmp, "w", **profile) as dst:
        dst.write(data, 1)
        dst.update_tags(**tags)
        if colours:
            from landcover.scenes.render import class_colours

            table = class_colours(colours)
            dst.write_colormap(1, {i: (*map(int, table[i]), 255) for i in range(len(colours))})
    raster_copy(tmp, path, driver="COG", compress="DEFLATE", overview_resampling="nearest")
    tmp.unlink()


def _class_areas(classes: np.ndarray, grid: dict, n_labels: int) -> np.ndarray:
    """km² per class (and a last entry for no class) from geodesic areas of blocks of pixels."""
    areas = np.zeros(n_labels + 1)
    block = AREA_BLOCK_PX
    pixel_km2 = _block_pixel_areas_km2(grid, block)
    for bi in range(pixel_km2.shape[0]):
        for bj in range(pixel_km2.shape[1]):
            cells = classes[bi * block:(bi + 1) * block, bj * block:(bj + 1) * block]
            counts = np.bincount(np.where(cells < n_labels, cells, n_labels).ravel(), minlength=n_labels + 1)
            areas += counts[:n_labels + 1] * pixel_km2[bi, bj]
    return areas


def _block_pixel_areas_km2(grid: dict, block: int) -> np.ndarray:
    """km² of one pixel in each ``block`` x ``block`` block: the block's geodesic area over its pixel count."""
    from pyproj import CRS, Geod, Transformer

    rows, cols = math.ceil(grid["height"] / block), math.ceil(grid["width"] / block)
    to_lonlat = Transformer.from_crs(CRS.from_wkt(grid["crs"].to_wkt()), "EPSG:4326", always_xy=True)
    geod = Geod(ellps="WGS84")
    t = grid["transform"]
    out = np.zeros((rows, cols))
    for i in range(rows):
        for j in range(cols):
            r0, c0 = i * block, j * block
            r1, c1 = min(r0 + block, grid["height"]), min(c0 + block, grid["width"])
            corners = [t @ (c0, r0), t @ (c1, r0), t @ (c1, r1), t @ (c0, r1)]
            lon, lat = to_lonlat.transform([x for x, _ in corners], [y for _, y in corners])
            area, _ = geod.polygon_area_perimeter(lon, lat)
            out[i, j] = abs(area) / 1e6 / ((r1 - r0) * (c1 - c0))
    return out


def _write_footprints(path: Path, refs: Sequence[str], summaries: dict, failed: dict) -> None:
    import rasterio
    from rasterio.warp import transform_geom

    features = []
    for ref in refs:
        props = {"scene": ref, "id": scene_id(ref)}
        geometry = None
        if ref in summaries:
            props.update(status="done", mapped_at=summaries[ref]["mapped_at"],
                         seconds=summaries[ref]["seconds"])
            with rasterio.open(path.parent / "scenes" / scene_id(ref) / "classes.tif") as ds:
                w, s, e, n = ds.bounds
                ring = [[w, s], [e, s], [e, n], [w, n], [w, s]]
                geometry = transform_geom(ds.crs, "EPSG:4326", {"type": "Polygon", "coordinates": [ring]})
        else:
            props.update(status="failed" if ref in failed else "not mapped", error=failed.get(ref))
        features.append({"type": "Feature", "geometry": geometry, "properties": props})
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))


def _write_overview(path: Path, classes: np.ndarray, labels: list, table: dict) -> None:
    from PIL import Image

    from landcover.scenes.render import UNCLASSIFIED_COLOUR, add_legend, class_colours, display_size

    h, w = display_size(*classes.shape)
    ys = (np.arange(h) * classes.shape[0] / h).astype(int)
    xs = (np.arange(w) * classes.shape[1] / w).astype(int)
    shown = classes[ys[:, None], xs[None, :]]
    colours = np.concatenate([class_colours(labels)[:len(labels)],
                              np.full((256 - len(labels), 3), UNCLASSIFIED_COLOUR, dtype=np.uint8)])
    image = Image.fromarray(colours[shown])
    entries = [(tuple(int(v) for v in class_colours(labels)[i]), f"{name}  {table['total'][name]:.3f} km2")
               for i, name in enumerate(labels)]
    entries.append((UNCLASSIFIED_COLOUR, f"no data / masked / uncertain  "
                                         f"{table['no_data_masked_or_uncertain_km2']:.3f} km2"))
    add_legend(image, entries, "Land cover (region)", f"Mosaic in {table['crs']}; areas: {table['method']}.").save(path)


__all__ = ["RegionOptions", "SceneMapper", "map_region", "scene_id", "expand_inputs"]
