"""Every use of Gradio internals, in one place, pinned to the Gradio release it was written for.

Each patch below says why it exists (measured in ``docs/reliability.md``) and checks the installed Gradio first:
on any other release than :data:`GRADIO_VERSION` it logs a warning and leaves Gradio's own behaviour in place, so
a Space rebuilt on another release keeps serving (at Gradio's own cost) instead of breaking. ``requirements.txt``
and the Space's ``sdk_version`` pin the same release; when upgrading Gradio, re-measure each patch with
``bench/load_app.py`` and drop those that no longer pay.

* :func:`use_lazy_session_state`: Gradio's ``SessionState`` builds the config of every component (52 here,
  9-12 ms of CPU) for each new session, and every raw API call is a new session.
* :func:`bound_queue_analytics`: Gradio's queue recomputes a pandas summary of up to 10,000 event records after
  every event (20 ms of CPU per event at 10,000 records).
* :func:`replace_temp_file_sweep`: Gradio's ``delete_cache`` sweep iterates over live sets and dies under load
  (``Set changed size during iteration``), after which the temp folder grows without bound.
* :func:`mounted_gradio_app`: the ``App`` that ``gr.mount_gradio_app`` mounted (Gradio does not return it).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import functools
import logging
import os
import time
from collections.abc import MutableMapping
from typing import Any, Callable, Optional

logger = logging.getLogger(__name__)

GRADIO_VERSION = "6.31.0"  # the release every patch here was written and measured against
# Gradio's queue records every event for its monitoring summary (10,000 kept) and recomputes that summary, a pandas
# DataFrame of all records, after every event: 20 ms of CPU per event at 10,000 records, 6.4 ms at 1,000.
ANALYTICS_EVENTS = 1000  # records kept
ANALYTICS_EVERY = 100  # events between two recomputations (the summary is at most this many events old)
UPLOAD_TTL_S = 300  # uploads older than this are deleted from Gradio's temp folder, checked every minute
SWEEP_EVERY_S = 60


def written_for_installed_gradio(patch: str) -> bool:
    """Whether the installed Gradio is :data:`GRADIO_VERSION`; warns (naming ``patch``) when it is not."""
    import gradio

    if gradio.__version__ == GRADIO_VERSION:
        return True
    logger.warning("Gradio %s is installed; %s was written for Gradio %s and is not applied (Gradio's own "
                   "behaviour is kept). Install gradio==%s, or re-measure and update landcover/app/gradio_compat.py.",
                   gradio.__version__, patch, GRADIO_VERSION, GRADIO_VERSION)
    return False


_PENDING = object()  # a config copy not built yet


class LazyConfigs(MutableMapping):
    """The per-component config copies of one Gradio session, each built when first read.

    Gradio 6.31's ``SessionState`` builds ``config_for_block`` of every component (52 here: 9-12 ms of CPU) for each
    new session, and every raw API call is a new session, though an event reads only the entries of its own inputs
    and outputs (all of them only for deep links). An entry built late is the one Gradio built early: the block it
    is built from is replaced only by ``SessionState.__setitem__``, which writes the entry itself.
    """

    def __init__(self, blocks_config, block_ids):
        self._blocks_config = blocks_config
        self._data = dict.fromkeys((k for k in blocks_config.blocks if k in block_ids), _PENDING)

    def __getitem__(self, key):
        value = self._data[key]
        if value is _PENDING:
            value = self._data[key] = self._blocks_config.config_for_block(key, [], self._blocks_config.blocks[key])
        return value

    def __setitem__(self, key, value) -> None:
        self._data[key] = value

    def __delitem__(self, key) -> None:
        del self._data[key]

    def __contains__(self, key) -> bool:
        return key in self._data

    def __iter__(self):
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def built(self) -> int:
        """How many entries have been built so far."""
        return sum(value is not _PENDING for value in self._data.values())


@functools.lru_cache(maxsize=None)
def _lean_state_holder_classes():
    """``(LazySessionState, LeanStateHolder)``: Gradio's session state with :class:`LazyConfigs`."""
    from gradio.state_holder import SessionState, StateHolder

    class LazySessionState(SessionState):
        """Gradio's ``SessionState`` with its ``config_values`` a :class:`LazyConfigs`."""

        def __init__(self, blocks):  # noqa: D107 - Gradio's attributes, the config copies deferred
            self.blocks_config = copy.copy(blocks.default_config)
            self.config_values = LazyConfigs(self.blocks_config, blocks.blocks)
            self.state_data: dict[int, Any] = {}
            self._state_ttl: dict = {}
            self.is_closed = False
            self.STATE_TTL_WHEN_CLOSED = 1 if os.getenv("GRADIO_IS_E2E_TEST", None) else 3600

    class LeanStateHolder(StateHolder):
        """Gradio's ``StateHolder`` making :class:`LazySessionState` sessions."""

        def __getitem__(self, session_id: str):
            if session_id not in self.session_data:
                self.session_data[session_id] = LazySessionState(self.blocks)
            return super().__getitem__(session_id)

    return LazySessionState, LeanStateHolder


def use_lazy_session_state(gradio_app) -> bool:
    """Give a mounted Gradio ``App`` (and its Blocks) a holder of :class:`LazySessionState` sessions.

    Returns whether the patch was applied (only on :data:`GRADIO_VERSION`).
    """
    if not written_for_installed_gradio("the lazy session state"):
        return False
    _, holder_class = _lean_state_holder_classes()
    holder = holder_class()
    holder.set_blocks(gradio_app.get_blocks())  # also sets blocks.state_holder and the session capacity
    gradio_app.state_holder = holder
    return True


def bound_queue_analytics(demo, keep: int = ANALYTICS_EVENTS, every: int = ANALYTICS_EVERY) -> bool:
    """Keep ``keep`` event records in the queue of ``demo`` and recompute its monitoring summary every ``every``.

    Gradio reads these two settings from ``GRADIO_ANALYTICS_MAX_EVENTS`` and ``GRADIO_ANALYTICS_CACHE_FREQUENCY``
    when the queue is made; they are set on this app's queue instead of in the environment of the whole process.
    Returns whether the patch was applied.
    """
    if not written_for_installed_gradio("the bounded queue analytics"):
        return False
    queue = demo._queue
    settings = {"ANALYTICS_MAX_EVENTS": keep, "ANAYLTICS_CACHE_FREQUENCY": every}  # sic: Gradio's spelling
    missing = [name for name in settings if not hasattr(queue, name)]
    if missing:
        logger.warning("Gradio's queue has no %s; its event analytics stay at Gradio's defaults", missing)
        return False
    for name, value in settings.items():
        setattr(queue, name, value)
    return True


def sweep_temp_files(blocks, age: Optional[float]) -> int:
    """Delete the Gradio temp files of ``blocks`` created more than ``age`` seconds ago (all with None).

    Gradio's own ``delete_cache`` sweep (6.31) iterates over the live file sets that uploads add to from the event
    loop while it runs in a worker thread; under steady load it died on its first ``RuntimeError: Set changed size
    during iteration`` (the soak's app log), and from then on nothing was deleted: the temp folder grew by ~21
    files/s. This sweep iterates over copies and keeps what components mark ``keep_in_cache`` (examples).

    Returns:
        The number of files deleted.
    """
    keep = set()
    for component in list(blocks.blocks.values()):
        keep.update(getattr(component, "keep_in_cache", set()))
    now, removed = time.time(), 0
    for file_set in list(blocks.temp_file_sets):
        for file in list(file_set):
            if file in keep:
                continue
            try:
                if age is None or now - os.lstat(file).st_ctime > age:
                    os.remove(file)
                    removed += 1
                    file_set.discard(file)
            except FileNotFoundError:
                file_set.discard(file)
            except OSError as err:  # e.g. a directory or a permission problem: log, keep sweeping the rest
                logger.warning("could not delete temp file %s: %s", file, err)
    return removed


@contextlib.asynccontextmanager
async def temp_file_sweeper(blocks, every: float = SWEEP_EVERY_S, age: float = UPLOAD_TTL_S):
    """Run :func:`sweep_temp_files` every ``every`` seconds while the server runs, and delete all at shutdown."""

    async def loop():
        while True:
            await asyncio.sleep(every)
            try:
                removed = await asyncio.to_thread(sweep_temp_files, blocks, age)
            except Exception:  # noqa: BLE001 - a failed sweep must not end the sweeping
                logger.exception("temp file sweep failed")
                continue
            if removed:
                logger.info("deleted %d temp files older than %.0f s", removed, age)

    task = asyncio.create_task(loop())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        sweep_temp_files(blocks, None)


def replace_temp_file_sweep(demo) -> Optional[Callable]:
    """Switch off Gradio's own ``delete_cache`` sweep of ``demo`` and return the replacement to run while serving.

    The return value is ``lambda: temp_file_sweeper(demo)`` (an async context manager factory), or None where the
    patch is not applied and Gradio's own sweep stays. A bare ``demo.launch()`` keeps Gradio's sweep.
    """
    if not written_for_installed_gradio("the temp-file sweep"):
        return None
    demo.delete_cache = None
    return lambda: temp_file_sweeper(demo)


def mounted_gradio_app(api):
    """The Gradio ``App`` that :func:`gradio.mount_gradio_app` mounted on ``api``."""
    from gradio.routes import App

    for route in api.routes:
        if isinstance(getattr(route, "app", None), App):
            return route.app
    raise RuntimeError("No Gradio app is mounted on the REST app; expected gr.mount_gradio_app to add one.")
