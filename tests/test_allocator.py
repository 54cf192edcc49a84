"""bundle/scripts/allocator.py: freed memory stays in the process, so big arrays stop page-faulting."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# malloc, touch and free 64 MiB 5 times, as torch does with its CPU tensors (numpy would madvise huge pages);
# print whether the tuning applied and the minor page faults of the last 4 rounds (the first may grow the heap).
PROBE = """
import ctypes, ctypes.util, json, resource
from corx_bundle.scripts.allocator import keep_freed_memory
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]
applied = keep_freed_memory()
faults = []
for _ in range(5):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = libc.malloc(64 * 1024 * 1024)
    ctypes.memset(block, 1, 64 * 1024 * 1024)
    libc.free(block)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"applied": applied, "again": keep_freed_memory(), "faults": sum(faults[1:])}))
"""


def _probe(**env: str) -> dict:
    run = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True,
                         env={**{k: v for k, v in os.environ.items() if k != "CORX_MALLOC"}, **env}, cwd=ROOT)
    return json.loads(run.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt tuning is for glibc only")
def test_freed_memory_is_reused_instead_of_faulted_in_again() -> None:
    pages = 4 * (64 * 1024 * 1024 // 4096)  # what 4 fresh 64 MiB arrays cost in 4 KiB pages
    tuned = _probe()
    default = _probe(CORX_MALLOC="default")
    assert tuned["applied"] and tuned["again"]
    assert not default["applied"]
    assert default["faults"] >= 0.9 * pages  # glibc's default: every big array is a fresh mmap
    assert tuned["faults"] <= 0.05 * pages  # tuned: the freed heap is reused


def test_bundle_workflows_apply_it_first() -> None:
    for name in ("train.json", "inference.json", "evaluate.json"):
        config = json.loads((ROOT / "bundle" / "configs" / name).read_text())
        assert config["initialize"][0] == "$scripts.allocator.keep_freed_memory()", name
