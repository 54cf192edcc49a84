"""Whole-patient `corx pipeline` time, per step: one phantom patient with 4 time points (4, 24, 48, 120 h).

Usage::

    python benchmarks/bench_pipeline.py                          # internal cohort, 128^3, corx in-process, 2 threads
    python benchmarks/bench_pipeline.py --method identity        # without the network
    python benchmarks/bench_pipeline.py --cohort external --refine 10 --json bench_pipeline.json

The phantom is generated into a temporary folder (not timed). CoRX-NET runs in-process with the trained weights
(bundle/models/model.pt) or, without them, freshly initialised weights (same cost, near-identity field).
``--threads`` sets torch's intra-op threads and the TIA workers. Prints the wall time of every pipeline step
(the registration steps include preprocessing and the network; "resample" the one-interpolation warping onto the
reference SPECT grid, the voxel/ITK fields and the Jacobian, and writing them); nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cohort", default="internal", choices=("internal", "external"))
    parser.add_argument("--downsample", type=int, default=1)
    parser.add_argument("--method", default="corx", choices=("corx", "identity", "elastix", "elastix-spect"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--refine", type=int, default=0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", default=None, help="also write the timings to this JSON file")
    args = parser.parse_args()

    from corx.pipeline.run import run_pipeline
    from corx.registration.backends import DEFAULT_CHECKPOINT, TorchBackend
    from corx_bundle.scripts.phantom import generate_patient

    with tempfile.TemporaryDirectory(prefix="bench_pipeline_") as tmp:
        t0 = time.perf_counter()
        patient = generate_patient(Path(tmp) / "phantom", args.cohort, 0, args.seed, downsample=args.downsample,
                                   n_timepoints=4)
        t_phantom = time.perf_counter() - t0
        backend, random_init = None, False
        t_load = 0.0
        if args.method == "corx":
            random_init = not DEFAULT_CHECKPOINT.is_file()
            t0 = time.perf_counter()
            backend = TorchBackend(random_init=random_init, threads=args.threads)
            t_load = time.perf_counter() - t0
        res = run_pipeline(patient / "patient.json", Path(tmp) / "out", method=args.method, backend=backend,
                           random_init=random_init, refine=args.refine, threads=args.threads, progress=False,
                           quiet=True)
    grid = res.summary["grid"]["description"]
    print(f"corx pipeline, {args.cohort} phantom (4 time points, grid {grid}), method {args.method}"
          f"{' (untrained weights)' if random_init else ''}, {args.threads} threads, "
          f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}")
    print(f"  {'phantom generation (not part of the pipeline)':<44} {t_phantom:8.2f} s")
    if backend is not None:
        print(f"  {'network load (torch + MONAI import, weights)':<44} {t_load:8.2f} s")
    for step, seconds in res.timings_s.items():
        if step != "total":
            print(f"  {step:<44} {seconds:8.2f} s")
    print(f"  {'total pipeline':<44} {res.timings_s['total']:8.2f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "grid": grid, "phantom_s": t_phantom,
                                               "network_load_s": t_load, "timings_s": res.timings_s}, indent=2))


if __name__ == "__main__":
    main()
