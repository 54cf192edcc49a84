"""The output folder, written so that nothing half-written ever looks complete.

Design: every result is first written into a hidden staging folder ``DIR/.partial-XXXX/`` (each file itself
through a temporary name and ``os.replace``). Only when every step has succeeded are the staged entries moved
into ``DIR`` (renames within one file system) and ``DIR/COMPLETE`` is written last; an earlier ``COMPLETE`` is
removed before anything is replaced. So: the results in ``DIR`` are complete if and only if ``DIR/COMPLETE``
exists; it lists every file with its size and SHA-256. A failing run removes its staging folder and leaves an
earlier run's results (and their ``COMPLETE``) untouched.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from ..errors import CorxError
from ..io.concurrency import submit
from ..io.imageio import atomic_path, save_image, save_json, write_nifti

COMPLETE = "COMPLETE"
PARTIAL_PREFIX = ".partial-"


def check_out_dir(out: Path, overwrite: bool, managed: Iterable[str], inputs: Iterable[Path]) -> None:
    """Refuse a non-empty ``out`` without ``overwrite``, and any run that would replace one of its inputs."""
    if out.exists() and not out.is_dir():
        raise CorxError(f"{out}: exists and is not a folder")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise CorxError(f"{out}: output folder is not empty (use --overwrite to replace its results)")
    out_abs = out.resolve()
    replaced = [out_abs / name for name in (*managed, COMPLETE)]
    for path in inputs:
        p = Path(path).resolve()
        for target in replaced:
            if p == target or target in p.parents:
                raise CorxError(f"{p}: this input lies where the pipeline writes its results ({target}); "
                                f"choose another output folder")


class Staging:
    """Writes results under a staging folder inside ``out``; :meth:`commit` publishes them."""

    def __init__(self, out: Path, managed: Iterable[str]) -> None:
        self.out = Path(out)
        self.managed = tuple(managed)
        self.out.mkdir(parents=True, exist_ok=True)
        self.root = Path(tempfile.mkdtemp(prefix=PARTIAL_PREFIX, dir=self.out))
        self.written: list[str] = []
        self._pending: list[Future[Any]] = []

    def path(self, rel: str) -> Path:
        """Staged location of the output ``rel`` (e.g. ``fields/field_24h.nii.gz``); parents are created."""
        target = self.root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def _record(self, rel: str) -> Path:
        if rel not in self.written:
            self.written.append(rel)
        return self.out / rel

    def _guard(self, rel: str, write: Any) -> Path:
        try:
            write(self.path(rel))
        except CorxError as exc:
            raise CorxError(f"writing {self.out / rel} failed: {exc}") from exc
        except (OSError, ValueError, TypeError) as exc:
            raise CorxError(f"writing {self.out / rel} failed: {type(exc).__name__}: {exc}") from exc
        return self._record(rel)

    def _in_background(self, rel: str, write: Any) -> Path:
        """Write on a worker thread (gzip releases the GIL); :meth:`flush` waits and raises its error."""
        self.path(rel)  # parents now, in this thread
        self._pending.append(submit(self._guard, rel, write))
        return self.out / rel

    def later(self, write: Any) -> None:
        """Run ``write()`` (which records what it writes, e.g. with :meth:`adopt`) on a worker thread;
        :meth:`flush` waits for it."""
        self._pending.append(submit(write))

    def flush(self) -> None:
        """Wait for the background writes; the first failure is raised (as CorxError naming the file)."""
        pending, self._pending = self._pending, []
        errors = []
        for future in pending:
            try:
                future.result()
            except CorxError as exc:
                errors.append(exc)
        if errors:
            raise errors[0]

    def image(self, rel: str, data: np.ndarray, affine: np.ndarray, dtype: Any = np.float32) -> Path:
        """Stage a NIfTI image (atomic write, in the background: ``data`` must not change afterwards)."""
        return self._in_background(rel, lambda p: save_image(data, affine, p, dtype=dtype))

    def nifti(self, rel: str, img: nib.Nifti1Image) -> Path:
        """Stage a prepared NIfTI image object (atomic write, in the background)."""
        def write(p: Path) -> None:
            with atomic_path(p) as tmp:
                write_nifti(img, tmp)
        return self._in_background(rel, write)

    def json(self, rel: str, obj: Any) -> Path:
        """Stage a JSON document (atomic write)."""
        return self._guard(rel, lambda p: save_json(obj, p))

    def text(self, rel: str, text: str) -> Path:
        """Stage a text file (atomic write)."""
        def write(p: Path) -> None:
            with atomic_path(p) as tmp:
                tmp.write_text(text)
        return self._guard(rel, write)

    def adopt(self, rel: str) -> Path:
        """Record a file that another writer put at :meth:`path` ``(rel)``."""
        if not self.path(rel).is_file():
            raise CorxError(f"writing {self.out / rel} failed: the file was not produced")
        return self._record(rel)

    def commit(self, info: dict[str, Any]) -> Path:
        """Move the staged entries into ``out`` (replacing earlier results) and write ``COMPLETE`` last."""
        self.flush()
        marker = self.out / COMPLETE
        if marker.exists():
            marker.unlink()
        staged = {p.name for p in self.root.iterdir()}
        for name in sorted(set(self.managed) | staged):
            target = self.out / name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()
            if name in staged:
                os.replace(self.root / name, target)
        self.root.rmdir()
        mode = 0o666 & ~_umask()  # temporary files are created 0600: give results the usual permissions
        for rel in self.written:
            os.chmod(self.out / rel, mode)
        files = [{"path": rel, "bytes": (self.out / rel).stat().st_size, "sha256": sha256(self.out / rel)}
                 for rel in sorted(self.written)]
        with atomic_path(marker, overwrite=True) as tmp:
            tmp.write_text(json.dumps({**info, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "files": files},
                                      indent=2) + "\n")
        os.chmod(marker, mode)
        return marker

    def discard(self) -> None:
        """Remove the staging folder (after a failure); earlier results in ``out`` stay as they were."""
        for future in self._pending:
            future.exception()  # wait: a write still running must not recreate files in the removed folder
        self._pending = []
        shutil.rmtree(self.root, ignore_errors=True)


def remove_stale_partials(out: Path) -> None:
    """Remove staging folders left by killed runs (only with --overwrite)."""
    if out.is_dir():
        for p in out.glob(f"{PARTIAL_PREFIX}*"):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def sha256(path: Path) -> str:
    """Hex SHA-256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
