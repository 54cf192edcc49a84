"""The tracked tree stays small enough for the GPU device tool (it sends at most 64 MiB of working tree)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIMIT_MIB = 60.0


def tracked_files() -> list[Path]:
    listing = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True)
    if listing.returncode != 0:
        pytest.skip(f"{ROOT} is not a git checkout")
    return [ROOT / name for name in listing.stdout.decode().split("\0") if name]


def test_tracked_tree_is_under_60_mib() -> None:
    sizes = {path: path.stat().st_size for path in tracked_files() if path.is_file()}
    assert any(path.suffix == ".pt" for path in sizes), "no weights tracked: is git ls-files read right?"
    total = sum(sizes.values()) / 2**20
    largest = sorted(sizes.items(), key=lambda item: -item[1])[:3]
    print(f"tracked tree: {len(sizes)} files, {total:.1f} MiB; largest: "
          + ", ".join(f"{p.relative_to(ROOT)} {s / 2**20:.1f} MiB" for p, s in largest))
    assert total < LIMIT_MIB, f"tracked tree is {total:.1f} MiB, over {LIMIT_MIB} MiB"
