"""The thin client must not need torch; the CLI turns bad input into a clean error and exit code 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import corx


def test_every_client_module_imports_without_torch() -> None:
    """Every module of ``corx``, found recursively, imports in a process where torch, MONAI and Ignite cannot."""
    code = (
        "import importlib, pkgutil, sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'monai', 'ignite'):\n"
        "            raise ImportError(f'blocked for this test: {name}')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import corx\n"
        "mods = sorted(m.name for m in pkgutil.walk_packages(corx.__path__, 'corx.'))\n"
        "mods.append('corx_bundle.scripts.phantom')\n"
        "failed = []\n"
        "for name in mods:\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception as err:\n"
        "        failed.append(f'{name}: {err!r}')\n"
        "print(len(mods), ' '.join(mods))\n"
        "print('\\n'.join(failed))\n"
        "sys.exit(1 if failed else 0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    count, names = proc.stdout.split(maxsplit=1)
    assert int(count) >= 40 and "corx.pipeline.run" in names and "corx.evaluation.metrics" in names


def test_cli_bad_manifest_exits_2_with_message(tmp_path: Path) -> None:
    cli = Path(sys.executable).parent / "corx"
    proc = subprocess.run([str(cli), "montage", str(tmp_path / "none.json"), str(tmp_path / "m.png")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "error:" in proc.stderr and "none.json: manifest not found" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_version() -> None:
    assert corx.__version__
