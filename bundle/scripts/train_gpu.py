r"""Train the networks on a bare GPU machine in one call, and hand the weights back in pieces.

    OUT=/some/folder python -m scripts.train_gpu --minutes 9 --variants corx,corx_nocs      # from bundle/
    python -m scripts.train_gpu --out /tmp/dry --tiny                                         # CPU dry run

Steps: (1) generate the internal phantom cohort with the paper's protocol (22 sets, 204 training / 30 validation
pairs; seed 0) on all cores, unless the data folder already has one; (2) train each variant with the bundle's own
``train.json`` + ``train_gpu.json`` (full 128^3 volumes, bfloat16 autocast, all pairs cached in memory, cosine
learning rate over a wall-clock budget, then stop) + ``validate_truth.json`` (validation SPECT LNCC and true-field
error every epoch; the lowest true SPECT-field error is kept); the budget is split evenly between the variants;
(3) write into OUT ``corx_gpu_results.tar.part-NN`` (pieces of at most 15 MiB), ``SHA256SUMS`` and ``JOIN.txt``:
the tar holds ``<variant>/model.pt`` (state dict, large tensors float16), ``<variant>/tensorboard/`` and
``summary.json``. Join with
``cat corx_gpu_results.tar.part-* > corx_gpu_results.tar && sha256sum -c SHA256SUMS && tar xf corx_gpu_results.tar``.

``--tiny`` runs the same steps at toy size on a CPU (3 patients downsampled 4x, 32^3, a narrow network, a
budget of seconds) so that the script is known to work before GPU time is spent (tests/test_train_gpu.py).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import tarfile
import time
from pathlib import Path
from typing import Any

BUNDLE_ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ("train.json", "train_gpu.json", "validate_truth.json")
VARIANT_CONFIGS = {"corx": (), "corx_nocs": ("corx_nocs.json",), "transmorph": ("transmorph.json",)}
PIECE_BYTES = 15 * 2**20
ARCHIVE = "corx_gpu_results.tar"

# toy settings of the dry run: a 32^3 network input at 4x the phantom's voxel size
TINY_OVERRIDES: dict[str, Any] = {"spatial_size": [32, 32, 32], "pixdim": [15.48, 15.48, 15.48],
                                  "network_def#embed_dim": 12, "num_workers": 0, "train_limit": 4, "val_limit": 2}


def ensure_cohort(data_dir: Path, tiny: bool, workers: int) -> Path:
    """The internal paper-protocol cohort's datalist in ``data_dir`` (generated when absent)."""
    from .phantom import generate_cohort

    datalist = data_dir / "datalist.json"
    if datalist.is_file():
        return datalist
    t0 = time.perf_counter()
    if tiny:
        generate_cohort(data_dir, "internal", patients=3, seed=0, downsample=4, workers=min(workers, 3))
    else:
        generate_cohort(data_dir, "internal", seed=0, protocol="paper", workers=workers)
    print(f"phantom cohort -> {data_dir} in {time.perf_counter() - t0:.1f} s", flush=True)
    return datalist


def train_variant(variant: str, data_dir: Path, run_root: Path, budget_s: float, tiny: bool) -> Path:
    """Run the bundle's training for one variant; returns its run folder (models/model.pt = best validation)."""
    from monai.bundle import run

    run_dir = run_root / variant
    overrides: dict[str, Any] = {
        "bundle_root": str(BUNDLE_ROOT), "dataset_dir": str(data_dir), "generate_phantom": False,
        "gpu_run_dir": str(run_dir), "time_budget_s": float(budget_s),
        "num_workers": min(12, os.cpu_count() or 1),
    }
    if tiny:
        overrides.update(TINY_OVERRIDES)
    configs = [str(BUNDLE_ROOT / "configs" / c) for c in (*CONFIGS[:1], *VARIANT_CONFIGS[variant], *CONFIGS[1:])]
    t0 = time.perf_counter()
    run("training", config_file=configs, logging_file=str(BUNDLE_ROOT / "configs" / "logging.conf"), **overrides)
    print(f"{variant}: trained for {time.perf_counter() - t0:.1f} s", flush=True)
    return run_dir


def half_state_dict(checkpoint: Path, target: Path) -> dict[str, Any]:
    """Store ``checkpoint``'s network weights as the bundle ships them (scripts.publish_weights: large tensors
    float16, small ones float32) at ``target``; returns size and SHA-256."""
    from .publish_weights import publish

    size, digest = publish(checkpoint, target, overwrite=True)
    return {"bytes": size, "sha256": digest}


def pack(staging: Path, out: Path, piece_bytes: int = PIECE_BYTES) -> list[Path]:
    """Tar ``staging`` and split the archive into pieces in ``out``, with SHA256SUMS and JOIN.txt."""
    out.mkdir(parents=True, exist_ok=True)
    archive = staging.parent / ARCHIVE
    with tarfile.open(archive, "w") as tar:
        tar.add(staging, arcname=".")
    data = archive.read_bytes()
    pieces = []
    for i in range(0, max(len(data), 1), piece_bytes):
        piece = out / f"{ARCHIVE}.part-{i // piece_bytes:02d}"
        piece.write_bytes(data[i : i + piece_bytes])
        pieces.append(piece)
    (out / "SHA256SUMS").write_text(f"{hashlib.sha256(data).hexdigest()}  {ARCHIVE}\n")
    (out / "JOIN.txt").write_text(f"cat {ARCHIVE}.part-* > {ARCHIVE} && sha256sum -c SHA256SUMS && tar xf {ARCHIVE}\n")
    archive.unlink()
    return pieces


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=os.environ.get("OUT"), help="folder for the pieces ($OUT)")
    parser.add_argument("--minutes", type=float, default=9.0, help="training budget for all variants together")
    parser.add_argument("--variants", default="corx", help="comma-separated: corx, corx_nocs, transmorph")
    parser.add_argument("--data", type=Path, default=Path("/tmp/corx_gpu/data"), help="phantom cohort folder")
    parser.add_argument("--runs", type=Path, default=Path("/tmp/corx_gpu/runs"), help="training run folders")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="phantom generation processes")
    parser.add_argument("--tiny", action="store_true", help="toy-size dry run (CPU, seconds)")
    args = parser.parse_args(argv)
    if args.out is None:
        parser.error("give --out or set OUT")
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANT_CONFIGS]
    if unknown or not variants:
        parser.error(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANT_CONFIGS)}")
    if args.runs.exists() and any(args.runs.iterdir()):
        parser.error(f"{args.runs}: run folder not empty (each call trains from scratch)")

    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    print(f"device {device}, torch {torch.__version__}, {os.cpu_count()} cores", flush=True)
    t_start = time.perf_counter()
    ensure_cohort(args.data, args.tiny, args.workers)
    budget = args.minutes * 60.0 / len(variants)
    staging = args.runs / "staging"
    summary: dict[str, Any] = {"device": device, "torch": torch.__version__, "minutes": args.minutes, "variants": {}}
    for variant in variants:
        run_dir = train_variant(variant, args.data, args.runs, budget, args.tiny)
        best = run_dir / "models" / "model.pt"
        if not best.is_file():
            raise FileNotFoundError(f"{best}: training wrote no best model (did a validation run?)")
        info = half_state_dict(best, staging / variant / "model.pt")
        shutil.copytree(run_dir / "tensorboard", staging / variant / "tensorboard")
        summary["variants"][variant] = {**info, "budget_s": budget}
    summary["total_s"] = round(time.perf_counter() - t_start, 1)
    (staging / "summary.json").write_text(json.dumps(summary, indent=1))
    pieces = pack(staging, args.out)
    print(f"wrote {len(pieces)} piece(s) to {args.out}: {', '.join(p.name for p in pieces)}", flush=True)


if __name__ == "__main__":
    main()
