"""Run independent array work on a few threads: scipy.ndimage, zlib and numpy release the GIL, so on a
2-core machine two interpolations (or a gzip write beside an interpolation) take the time of one.

The worker count is ``CORX_THREADS`` when set, else the number of CPUs, at most :data:`MAX_WORKERS`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
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
