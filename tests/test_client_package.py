"""The thin client must not need torch; the CLI turns bad input into a clean error and exit code 2."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import corx

ROOT = Path(__file__).resolve().parents[1]
LAYER_PACKAGES = ("io", "geometry", "dosimetry", "registration", "report", "serving", "pipeline", "evaluation")


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
    found = set(names.split())
    assert int(count) >= 50 and {f"corx.{layer}" for layer in LAYER_PACKAGES} <= found
    assert {"corx.pipeline.run", "corx.evaluation.metrics", "corx.io.volume", "corx.dosimetry.command",
            "corx.registration.elastix", "corx.serving.server"} <= found


def _contract_layers() -> list[str]:
    tomllib = pytest.importorskip("tomllib")
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    (contract,) = config["contracts"]
    return [name.strip() for layer in contract["layers"] for name in layer.split("|")]


def test_every_module_is_in_a_layer_of_the_contract() -> None:
    """The import-linter contract names every top-level module and subpackage of corx (a new one needs a layer)."""
    layers = _contract_layers()
    top = {f"corx.{m.name}" for m in pkgutil.iter_modules(corx.__path__)}
    assert top == set(layers), f"not in the layers contract: {sorted(top - set(layers))}"
    assert {f"corx.{layer}" for layer in LAYER_PACKAGES} <= set(layers)


def test_layers_contract_is_kept() -> None:
    """`lint-imports` (the dev extra's import-linter) passes: every import goes down the layers."""
    exe = Path(sys.executable).parent / "lint-imports"
    if not exe.is_file():
        pytest.skip("import-linter not installed (the dev extra)")
    proc = subprocess.run([str(exe)], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 kept, 0 broken" in proc.stdout


def test_cli_bad_manifest_exits_2_with_message(tmp_path: Path) -> None:
    cli = Path(sys.executable).parent / "corx"
    proc = subprocess.run([str(cli), "montage", str(tmp_path / "none.json"), str(tmp_path / "m.png")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "error:" in proc.stderr and "none.json: manifest not found" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_version() -> None:
    assert corx.__version__
