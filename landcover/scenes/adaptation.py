"""Adapting the CNN to one scene: BatchNorm statistics re-estimated on the scene's own tiles (AdaBN).

A network's BatchNorm layers normalise each feature with the mean and variance it saw in training (EuroSAT
patches). A real scene from another season, sun angle or processing level shifts those statistics: a hazy winter
L1C scene is brighter and flatter than any EuroSAT patch. AdaBN (Li et al. 2016, "Revisiting batch normalization
for practical domain adaptation") re-estimates them on the target domain; here the scene's own tiles, blended with
the trained ones (``(1 - BN_BLEND) * trained + BN_BLEND * scene``), since a scene is one place and one day, not a
domain, and fully re-estimated statistics follow whatever class dominates it.

Only the BatchNorm statistics change (no labels, no training); the adapted predictor is a copy, so a shared
predictor (the app's) is never altered. The float ONNX graph the model folder ships is filled with the adapted
statistics (its batch norms are fused into the convolutions when it loads), so adapted maps run at ONNX speed;
other engines map with the adapted torch model.
"""

from __future__ import annotations

import copy
import math
from dataclasses import replace
from typing import TYPE_CHECKING, Iterator

import numpy as np
import torch

from landcover.core.labels import PATCH_SIZE_PX
from landcover.data.transforms import preprocess
from landcover.scenes.mapping import iter_blocks, tile_grid, tile_windows

if TYPE_CHECKING:
    from landcover.inference.predictor import Predictor
    from landcover.readers.raster import Scene

# Share of the scene's statistics, chosen on the development scene (Brandenburg L1C, February, stride 16, every
# band fused; bench/scene_adaptation.py, figures of each blend in docs/scenes.md): 0.4 gains nearly all the balanced
# accuracy of 0.5 (+0.106 of +0.109) for under half its agreement loss (-0.015 of -0.036); at 1.0 most fields become
# villages.
BN_BLEND = 0.4
BN_STRIDE = 32  # tiles the statistics are estimated on: half-overlapping (1,081 on the development scene) ...
BN_MAX_TILES = 2048  # ... at most this many, evenly spread (a whole Sentinel-2 tile has ~117,000 at stride 32)
BN_BATCH = 128


def _norms(model: torch.nn.Module) -> list[torch.nn.BatchNorm2d]:
    return [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]


def scene_tiles(scene: "Scene", max_tiles: int = BN_MAX_TILES) -> "Iterator[np.ndarray]":
    """uint8 ``(n, 3, 64, 64)`` batches of the scene's unmasked tiles at :data:`BN_STRIDE`, at most ``max_tiles``
    in all, evenly spread. Snow counts as masked here too (it is no class the map gives, and would pull the
    statistics towards white)."""
    rows, cols = tile_grid(scene.height, scene.width, PATCH_SIZE_PX, BN_STRIDE)
    step = max(1, math.ceil(rows * cols / max_tiles))
    k = PATCH_SIZE_PX // BN_STRIDE
    seen = 0
    for block in iter_blocks(scene, BN_STRIDE, PATCH_SIZE_PX, spectral_masks=True):
        n = block.tiles.shape[0]
        # Tiles none of whose cells are masked (cells of the next block's rows are not known yet: counted free).
        ii, jj = np.nonzero(tile_windows(block.cell_reason == 0, n, cols, k).all(axis=(2, 3)))
        order = (block.i0 + ii) * cols + jj
        keep = (order % step) == 0
        if keep.any():
            seen += int(keep.sum())
            yield np.ascontiguousarray(block.tiles[ii[keep], jj[keep]])
    if seen == 0:
        raise ValueError("Scene adaptation (--adapt bn) found no unmasked 64 px tile to estimate statistics on; "
                         "map this scene without --adapt.")


def estimate_statistics(model: torch.nn.Module, predictor: "Predictor", scene: "Scene") -> None:
    """Set ``model``'s BatchNorm running mean / var to those of the scene's tiles (in place; ``model`` is left in
    eval mode). ``predictor`` gives the preprocessing."""
    for m in _norms(model):
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over every batch
        m.train()  # only the batch norms: the rest of the network keeps its inference behaviour
    with torch.inference_mode():
        for tiles in scene_tiles(scene):
            for start in range(0, len(tiles), BN_BATCH):
                chunk = torch.from_numpy(tiles[start:start + BN_BATCH])
                model(preprocess(chunk, predictor.input_size, predictor.mean, predictor.std))
    model.eval()


def adapt_to_scene(predictor: "Predictor", scene: "Scene", blend: float = BN_BLEND) -> "Predictor":
    """A copy of ``predictor`` whose BatchNorm statistics are ``(1 - blend) * trained + blend * the scene's``."""
    if not 0.0 <= blend <= 1.0:
        raise ValueError(f"The adaptation blend must be between 0 and 1, got {blend}.")
    from landcover.inference.predictor import Predictor, TorchEngine

    model = copy.deepcopy(predictor.model).cpu().eval()
    estimate_statistics(model, predictor, scene)
    trained = predictor.model.state_dict()
    with torch.no_grad():
        for key, value in model.state_dict().items():
            if key.endswith(("running_mean", "running_var")):
                value.copy_((1.0 - blend) * trained[key].to(value) + blend * value)
    # Statistics are estimated on the CPU; a torch predictor's adapted copy runs where the original ran.
    engine = _adapted_onnx(predictor, model) or TorchEngine(model, predictor.input_size, predictor.mean,
                                                             predictor.std, str(predictor.device))
    return Predictor(replace(predictor.loaded, model=model), engine, tta=predictor.tta or False)


def describe(blend: float = BN_BLEND) -> str:
    """The line maps carry (JSON ``adaptation``, legend, GeoTIFF tag) when they were adapted."""
    return f"BatchNorm statistics re-estimated on the scene's tiles, blended {blend:g} with the trained"


def _adapted_onnx(predictor: "Predictor", model: torch.nn.Module):
    """An ONNX engine of the folder's shipped float graph filled with ``model``'s weights, or None when the
    predictor does not run that graph (torch, int8, a locally exported graph)."""
    from landcover.inference.onnx_backend import OnnxModel, fill_weights, shipped_status
    from landcover.inference.predictor import OnnxEngine

    session = getattr(predictor.engine, "session", None)
    if session is None or session.precision != "float" or session.source != "shipped":
        return None
    entry, _ = shipped_status(predictor.loaded.folder, "float", predictor.input_size, predictor.mean, predictor.std)
    if entry is None:
        return None
    state = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    data = fill_weights(entry["path"], state, entry["weights"])
    return OnnxEngine(OnnxModel(entry["path"], session.threads, "float", "adapted", model_bytes=data),
                      predictor.input_size)
