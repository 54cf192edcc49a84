"""The thin client must not need torch; the CLI turns bad input into a clean error and exit code 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import corx


def test_client_modules_do_not_import_torch() -> None:
    code = (
        "import importlib, pkgutil, sys, corx\n"
        "mods = [m.name for m in pkgutil.iter_modules(corx.__path__, 'corx.')]\n"
        "[importlib.import_module(m) for m in mods]\n"
        "import corx_bundle.scripts.phantom\n"
        "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.') or m == 'monai')\n"
        "print(len(mods), bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert int(proc.stdout.split()[0]) >= 5


def test_cli_bad_manifest_exits_2_with_message(tmp_path: Path) -> None:
    cli = Path(sys.executable).parent / "corx"
    proc = subprocess.run([str(cli), "montage", str(tmp_path / "none.json"), str(tmp_path / "m.png")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "error:" in proc.stderr and "none.json: manifest not found" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_version() -> None:
    assert corx.__version__
