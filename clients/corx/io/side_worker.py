"""The side process's loop (``python -m corx.io.side_worker MODULE...``): import MODULEs, then run pickled calls.

Requests come on stdin and answers go to stdout, each one pickle: ``(call, args, kwargs)`` in, ``(True, value)``
or ``(False, exception)`` out. Anything the calls print goes to stderr, so it cannot corrupt the answers. The loop
ends when stdin closes. Started by :class:`corx.io.concurrency.SideProcess`; a fresh interpreter, so unlike
multiprocessing's spawn it never re-runs the caller's main script.
"""

from __future__ import annotations

import importlib
import os
import pickle
import sys
from typing import Any, BinaryIO


def _answer(out: BinaryIO, ok: bool, value: Any) -> None:
    try:
        payload = pickle.dumps((ok, value), protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:  # an unpicklable result or exception: say what it was
        payload = pickle.dumps((False, RuntimeError(f"side process: cannot send back {value!r}: {exc}")))
    out.write(payload)
    out.flush()


def serve(modules: list[str]) -> None:
    """Import ``modules``, then answer requests until stdin closes."""
    requests = sys.stdin.buffer
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # prints of the calls (Python or C level) go to stderr
    for name in modules:
        importlib.import_module(name)
    while True:
        try:
            call, args, kwargs = pickle.load(requests)
        except EOFError:
            return
        try:
            value = call(*args, **kwargs)
        except BaseException as exc:  # every failure, an interrupt too, goes back to the caller
            _answer(answers, False, exc)
        else:
            _answer(answers, True, value)


if __name__ == "__main__":
    serve(sys.argv[1:])
    # every answer was flushed and every call closed its files: skip the interpreter's teardown of the imported
    # modules (0.6-1.3 s that the caller's close() would wait for)
    sys.stderr.flush()
    os._exit(0)
