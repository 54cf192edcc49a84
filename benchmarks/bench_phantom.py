"""Benchmark of the phantom generator: seconds and disk size per full-size patient (4 time points).

Usage: python benchmarks/bench_phantom.py [--patients N] [--downsample K] [--keep DIR]
The requirement is < 10 s per 4-time-point internal patient on 2 cores (gzip writes included).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from corx_bundle.scripts.phantom import generate_patient


def folder_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=2, help="patients per cohort (default 2)")
    parser.add_argument("--downsample", type=int, default=1)
    parser.add_argument("--keep", type=Path, default=None, help="write here instead of a temporary folder")
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="bench_phantom_"))
    print(f"cpu cores available: {len(os.sched_getaffinity(0))}; downsample={args.downsample}; output {root}")
    try:
        for cohort in ("internal", "external"):
            wall, cpu, sizes = [], [], []
            for index in range(args.patients):
                t0, c0 = time.perf_counter(), time.process_time()
                folder = generate_patient(root / cohort, cohort, index, seed=0, downsample=args.downsample,
                                          n_timepoints=4, overwrite=True)
                wall.append(time.perf_counter() - t0)
                cpu.append(time.process_time() - c0)
                sizes.append(folder_mb(folder))
            print(f"{cohort:8s}: {min(wall):5.2f} s best / {sum(wall) / len(wall):5.2f} s mean wall per 4-time-point "
                  f"patient (cpu {sum(cpu) / len(cpu):5.2f} s); disk {sum(sizes) / len(sizes):6.1f} MB per patient "
                  f"(truth/ {folder_mb(folder / 'truth'):5.1f} MB)")
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
