"""Run independent array work on a few threads: scipy.ndimage, zlib and numpy release the GIL, so on a
2-core machine two interpolations (or a gzip write beside an interpolation) take the time of one.

The worker count is ``CORX_THREADS`` when set, else the number of CPUs, at most :data:`MAX_WORKERS`.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
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


def peak_rss_mib() -> float:
    """This process's resident-set high-water mark, MiB (Linux: ru_maxrss is in KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class SideProcess:
    """One worker process for pure-Python work (pydicom, highdicom) that would hold this process's GIL while its
    threads draw figures: there it runs on the other core.

    A fresh interpreter (``python -m corx.io.side_worker``) starts at construction and imports ``preload``, so its
    start-up overlaps the caller's earlier work; it never re-runs the caller's main script (multiprocessing's
    spawn would, in a script without a main guard). ``submit`` pickles the call and its arguments (use it for
    arrays of tens of MB, not GBs); calls run one at a time, in order. ``close`` waits for them and ends it.
    """

    def __init__(self, preload: Sequence[str] = ()) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}  # what this process imports
        self._process = subprocess.Popen([sys.executable, "-m", "corx.io.side_worker", *preload],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        self._queue = ThreadPoolExecutor(max_workers=1, thread_name_prefix="corx-side")

    @property
    def pid(self) -> int:
        return self._process.pid

    def submit(self, call: Callable[..., T], *args: Any, **kwargs: Any) -> Future[T]:
        """Run ``call(*args, **kwargs)`` there; ``.result()`` returns its value or raises its exception."""
        return self._queue.submit(self._call, call, args, kwargs)

    def _call(self, call: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]) -> T:
        stdin, stdout = self._process.stdin, self._process.stdout
        assert stdin is not None and stdout is not None
        try:
            pickle.dump((call, args, kwargs), stdin, protocol=pickle.HIGHEST_PROTOCOL)
            stdin.flush()
            ok, value = pickle.load(stdout)
        except (BrokenPipeError, EOFError) as exc:
            raise RuntimeError(f"the side process (pid {self._process.pid}) ended unexpectedly "
                               f"(exit code {self._process.poll()})") from exc
        if ok:
            return value
        raise value

    def peak_rss_mib(self) -> float:
        """The worker's resident-set high-water mark so far, MiB."""
        return self.submit(peak_rss_mib).result()

    def close(self) -> None:
        """Wait for the submitted calls, then end the process."""
        self._queue.shutdown(wait=True)
        if self._process.stdin is not None:
            self._process.stdin.close()
        try:
            self._process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        if self._process.stdout is not None:
            self._process.stdout.close()


def side_process_wanted() -> bool:
    """A side process pays off with a second CPU to run on (``CORX_SIDE_PROCESS=0`` turns it off)."""
    return worker_count() > 1 and os.environ.get("CORX_SIDE_PROCESS", "1").strip() != "0"
