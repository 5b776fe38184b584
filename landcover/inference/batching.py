"""Concurrent single-image requests merged into one forward pass (the app's REST and Gradio paths share it).

:class:`MicroBatcher` is a leader/follower queue with no background thread; :class:`PatchClassifier`
decodes an untrusted upload with the project's one decode path (:func:`landcover.readers.imageio.decode_rgb8`,
upload limits included) and submits it to a shared batcher, so a request from ``POST /classify`` and one
from the Gradio API that arrive together run through the model once.

Why batch on two CPU cores where one forward pass already uses both: the per-call cost outside the
network (the engine call, the view stacking of test-time augmentation, the lock hand-over between
request threads) is paid once per batch instead of once per request, and the request threads spend
their time decoding and answering while the leader's pass runs.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Optional

import torch

from landcover.readers.imageio import MAX_PIXELS, MAX_UPLOAD_BYTES, WORK_SIDE, decode_rgb8

if TYPE_CHECKING:
    from landcover.inference.predictor import Predictor


class MicroBatcher:
    """Merges concurrent requests into calls of ``run`` (leader/follower, no background thread).

    The first caller that finds no pass running becomes the leader: it waits up to ``max_wait_s`` for
    more requests (until ``max_batch`` images are queued), runs them and hands the results out; requests
    that arrive meanwhile queue up and the next leader takes them all at once. With ``max_wait_s=0`` a
    lone request runs at once (no added latency) and merging is purely opportunistic. Requests whose
    images differ in height/width run as one call per size (stacking needs one shape).

    Each waiting caller has its own condition on one shared lock, and is woken only when its result is out
    or when it is next in line to lead: with 32 callers waiting, waking all of them at every arrival and
    after every pass (one ``notify_all``) cost each request dozens of thread wake-ups under the GIL.
    """

    def __init__(self, run: Callable[[torch.Tensor], torch.Tensor], max_batch: int = 64,
                 max_wait_s: float = 0.0):
        if max_batch < 1 or max_wait_s < 0:
            raise ValueError(f"Expected max_batch >= 1 and max_wait_s >= 0; got {max_batch} and {max_wait_s}.")
        self._run = run
        self.max_batch, self.max_wait_s = max_batch, max_wait_s
        self._lock = threading.Lock()
        self._collecting = threading.Condition(self._lock)  # a leader waiting for more images
        self._pending: list[_Request] = []
        self._busy = False
        self.passes = 0  # calls of ``run`` so far
        self.requests = 0  # requests served so far

    def submit(self, images: torch.Tensor) -> torch.Tensor:
        """Run ``images`` (the batch of one request) merged with whatever else is queued; returns its rows."""
        req = _Request(images, self._lock)
        with self._lock:
            self._pending.append(req)
            if self.max_wait_s > 0:
                self._collecting.notify()  # a collecting leader counts the new images
            while not req.done:
                if self._busy:
                    req.wake.wait()  # until served, or handed the lead
                    continue
                self._busy = True
                try:
                    self._lead()
                finally:
                    self._busy = False
                    if self._pending:  # the next in line leads the next pass
                        self._pending[0].wake.notify()
        if req.error is not None:
            raise req.error
        return req.result

    def _queued(self) -> int:
        return sum(r.n for r in self._pending)

    def _lead(self) -> None:
        # Called with the lock held; releases it while waiting and while the passes run.
        deadline = time.monotonic() + self.max_wait_s
        while self._queued() < self.max_batch:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._collecting.wait(remaining)
        batch, total = [], 0
        while self._pending and (not batch or total + self._pending[0].n <= self.max_batch):
            batch.append(self._pending.pop(0))
            total += batch[-1].n
        self._lock.release()
        try:
            groups: dict[tuple, list[_Request]] = {}
            for r in batch:
                groups.setdefault(tuple(r.images.shape[1:]), []).append(r)
            for group in groups.values():
                self._serve(group)
        finally:
            self._lock.acquire()
        for r in batch:
            r.wake.notify()
        self.passes += len(groups)
        self.requests += len(batch)

    def _serve(self, batch: list["_Request"]) -> None:
        try:
            merged = batch[0].images if len(batch) == 1 else torch.cat([r.images for r in batch])
            out = self._run(merged)
        except BaseException as err:  # every waiting caller gets the error, not a hang
            for r in batch:
                r.error, r.done = err, True
            return
        start = 0
        for r in batch:
            r.result, r.done = out[start:start + r.n], True
            start += r.n


class _Request:
    __slots__ = ("images", "n", "result", "error", "done", "wake")

    def __init__(self, images: torch.Tensor, lock: threading.Lock):
        self.images, self.n = images, int(images.shape[0])
        self.result: Optional[torch.Tensor] = None
        self.error: Optional[BaseException] = None
        self.done = False
        self.wake = threading.Condition(lock)


class PatchClassifier:
    """One upload -> top-k probabilities, batched with the other requests in flight.

    Args:
        predictor: the loaded :class:`~landcover.inference.predictor.Predictor` (its TTA and temperature apply).
        max_batch: images per forward pass at most.
        max_pixels: uploads with more pixels are refused from the header, before decoding.
        max_bytes: uploads larger than this are refused.
    """

    def __init__(self, predictor: "Predictor", max_batch: int = 32, max_pixels: int = MAX_PIXELS,
                 max_bytes: int = MAX_UPLOAD_BYTES):
        self.predictor = predictor
        self.max_pixels, self.max_bytes = max_pixels, max_bytes
        self.batcher = MicroBatcher(predictor.predict_tensor, max_batch=max_batch)

    def classify(self, source: Any, top_k: Optional[int] = None) -> dict[str, float]:
        """Probabilities (highest first) for one untrusted upload: bytes or a server-side temp path.

        Raises:
            landcover.readers.imageio.UploadError: not a usable image (empty, corrupt, too large, unsupported).
        """
        rgb = decode_rgb8(source, max_pixels=self.max_pixels, max_bytes=self.max_bytes, work_side=WORK_SIDE)
        probs = self.batcher.submit(torch.from_numpy(rgb).permute(2, 0, 1).unsqueeze(0))[0]
        labels = self.predictor.labels
        k = len(labels) if top_k is None else max(1, min(top_k, len(labels)))
        values, index = probs.topk(k)
        return {labels[i]: v for v, i in zip(values.tolist(), index.tolist())}
