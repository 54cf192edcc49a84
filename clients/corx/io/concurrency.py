"""Run independent array work on a few threads: scipy.ndimage, zlib and numpy release the GIL, so on a
2-core machine two interpolations (or a gzip write beside an interpolation) take the time of one.

The worker count is ``CORX_THREADS`` when set, else the number of CPUs, at most :data:`MAX_WORKERS`.
"""

from __future__ import annotations

import importlib
import multiprocessing
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")
MAX_WORKERS = 4
THREAD_PREFIX = "corx-worker"
_POOL: ThreadPoolExecutor | None = None


def worker_count() -> int:
    """Threads used for concurrent array work (``CORX_THREADS``, else CPUs, capped at MAX_WORKERS)."""
    value = os.environ.get("CORX_THREADS", "")
    if value.strip().isdigit() and int(value) > 0:
        return int(value)
    return max(1, min(MAX_WORKERS, os.cpu_count() or 1))


def _pool() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=worker_count(), thread_name_prefix=THREAD_PREFIX)
    return _POOL


def submit(call: Callable[..., T], *args: Any) -> Future[T]:
    """Start ``call(*args)`` on the shared pool; ``.result()`` returns its value or raises its exception."""
    return _pool().submit(call, *args)


def concurrently(*calls: Callable[[], T]) -> list[T]:
    """Run the zero-argument ``calls`` at once; their results in order (the first exception is raised).

    With one worker, or one call, or inside a pool thread (no nested waiting: it could deadlock the pool),
    they run in this thread, in order.
    """
    in_pool = threading.current_thread().name.startswith(THREAD_PREFIX)
    if len(calls) <= 1 or worker_count() == 1 or in_pool:
        return [call() for call in calls]
    futures = [submit(call) for call in calls[1:]]
    first = calls[0]()  # this thread works too instead of waiting
    return [first, *(f.result() for f in futures)]


def peak_rss_mib() -> float:
    """This process's resident-set high-water mark, MiB (Linux: ru_maxrss is in KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _import_all(modules: Sequence[str]) -> None:
    for name in modules:
        importlib.import_module(name)


class SideProcess:
    """One spawned worker process for pure-Python work (pydicom, highdicom) that would hold this process's GIL
    while its threads draw figures: there it runs on the other core.

    The process starts at construction and imports ``preload`` there, so its start-up overlaps the caller's
    earlier work. ``submit`` pickles the arguments (use it for arrays of tens of MB, not GBs). ``close`` waits
    for what was submitted and ends the process.
    """

    def __init__(self, preload: Sequence[str] = ()) -> None:
        self._pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                                         initializer=_import_all, initargs=(tuple(preload),))
        self._started = self._pool.submit(os.getpid)  # start (and preload) now, not at the first real call

    @property
    def pid(self) -> int:
        """The worker's process id (waits for the start)."""
        return self._started.result()

    def submit(self, call: Callable[..., T], *args: Any, **kwargs: Any) -> Future[T]:
        """Run ``call(*args, **kwargs)`` in the worker; ``.result()`` returns its value or raises its exception."""
        return self._pool.submit(call, *args, **kwargs)

    def peak_rss_mib(self) -> float:
        """The worker's resident-set high-water mark so far, MiB."""
        return self.submit(peak_rss_mib).result()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def side_process_wanted() -> bool:
    """A side process pays off with a second CPU to run on (``CORX_SIDE_PROCESS=0`` turns it off)."""
    return worker_count() > 1 and os.environ.get("CORX_SIDE_PROCESS", "1").strip() != "0"
