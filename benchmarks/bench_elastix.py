"""Benchmark of the Elastix baseline on one phantom pair: seconds per pair, CT and SPECT field error vs identity.

Usage: python benchmarks/bench_elastix.py [--downsample 1] [--iterations 1000] [--resolutions 4] [--grid-mm 10]
       [--variants ct,spect] [--threads 0] [--keep DIR]

Generates one internal phantom patient (4 h reference, 24 h moving) at the given downsample, registers the pair
with :func:`corx.registration.elastix.elastix_register_pair` on the network grid (128/D voxels) and prints the wall
time, the number of B-spline parameters, the normalised-CT L1 and the SPECT field error in the body (mm) for
identity and each variant, with the load average (the machine is shared: compare timings only at similar load).
The defaults are the paper's setting (1000 iterations per resolution) at full size; nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from corx.evaluation.cohort import network_geometry
from corx.evaluation.ground_truth import error_stats, load_pair_truth, regions_of, resample_field
from corx.geometry.warp import warp_image
from corx.registration.elastix import ElastixSettings, elastix_field
from corx.registration.preprocess import PreprocessConfig, preprocess_pair
from corx_bundle.scripts.phantom import generate_patient


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--downsample", type=int, default=1)
    parser.add_argument("--iterations", type=int, default=1000)
    parser.add_argument("--resolutions", type=int, default=4)
    parser.add_argument("--grid-mm", type=float, default=10.0)
    parser.add_argument("--variants", default="ct,spect")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--moving", default="24h")
    parser.add_argument("--keep", type=Path, default=None, help="phantom folder to reuse (default: temporary)")
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="bench_elastix_"))
    folder = root / "P001"
    if not (folder / "patient.json").is_file():
        generate_patient(root, "internal", index=0, seed=0, downsample=args.downsample, n_timepoints=4)
    size, spacing = network_geometry(args.downsample)
    cfg = PreprocessConfig(spatial_size=size, pixdim=spacing)
    m = args.moving
    prepared = preprocess_pair(folder / "ct_4h.nii.gz", folder / f"ct_{m}.nii.gz", folder / "spect_4h.nii.gz",
                               folder / f"spect_{m}.nii.gz", cfg)
    truth = load_pair_truth(folder, "4h", m)
    body = {"body": regions_of(truth.labels_ref)["body"]}
    settings = ElastixSettings(max_iterations=args.iterations, resolutions=args.resolutions,
                               grid_spacing_mm=args.grid_mm, threads=args.threads)
    print(f"cpu cores: {os.cpu_count()}; load average {os.getloadavg()[0]:.2f}; grid {size[0]}^3 at {spacing[0]} mm;"
          f" Elastix {settings}")

    def report(name: str, field: np.ndarray, seconds: float, n_params: int | str) -> None:
        l1 = float(np.abs(warp_image(prepared.image[1], field) - prepared.image[0]).mean())
        u_ref, _ = resample_field(field, prepared.affine, truth.labels_ref.shape, truth.affine)
        err = error_stats(u_ref, truth.u_spect, truth.affine, body)["err_body_mean_mm"]
        ct = error_stats(u_ref, truth.u_ct_pair, truth.affine, body)["err_body_mean_mm"] \
            if truth.u_ct_pair is not None else float("nan")
        print(f"{name:14s} {seconds:8.1f} s  params {n_params!s:>8}  CT L1 {l1:.4f}  SPECT-field err {err:.2f} mm  "
              f"CT-field err {ct:.2f} mm  (load {os.getloadavg()[0]:.2f})")

    report("identity", np.zeros((3, *size), np.float32), 0.0, "-")
    for variant in args.variants.split(","):
        t0 = time.perf_counter()
        field, info = elastix_field(prepared, variant, settings)
        report(f"elastix-{variant}", field, time.perf_counter() - t0, info["transform_parameters"])


if __name__ == "__main__":
    main()
