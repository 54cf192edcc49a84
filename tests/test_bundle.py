"""The MONAI bundle end to end: `python -m monai.bundle run training|evaluating|inferring` on phantom pairs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

BUNDLE = Path(__file__).resolve().parents[1] / "bundle"
# a small but real configuration: 64^3 at 7.74 mm (the internal FOV), a narrow CoRX-NET, a few epochs
TINY = {
    "spatial_size": [64, 64, 64],
    "pixdim": [7.74, 7.74, 7.74],
    "network_def#embed_dim": 12,
    "max_epochs": 4,
    "val_interval": 2,
    "num_workers": 0,
    "cache_rate": 1.0,
    "learning_rate": 0.002,
    "train_limit": 4,
    "val_limit": 2,
    "generate_phantom": False,
    "amp": False,
}


def run_bundle(args: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="2", PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, "-m", "monai.bundle", *args], cwd=BUNDLE, capture_output=True,
                          text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc


def overrides(values: dict) -> list[str]:
    """Command-line overrides; python-fire reads Python literals (True/False, lists, quoted strings)."""
    return [arg for key, value in values.items() for arg in (f"--{key}", repr(value))]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from corx_bundle.scripts.phantom import generate_cohort

    out = tmp_path_factory.mktemp("bundle") / "cohort"
    generate_cohort(out, cohort="internal", patients=2, seed=3, downsample=2)
    return out


@pytest.fixture(scope="module")
def trained(cohort: Path) -> tuple[Path, str]:
    work = cohort.parent
    values = dict(TINY, dataset_dir=str(cohort), ckpt_dir=str(work / "models"), output_dir=str(work / "runs"))
    # both patients' pairs in training and validation keeps the tiny run quick and deterministic
    datalist = json.loads((cohort / "datalist.json").read_text())
    if not datalist.get("validation"):
        datalist["validation"] = datalist["training"][:2]
        (cohort / "datalist.json").write_text(json.dumps(datalist))
    proc = run_bundle(["run", "training", "--config_file", "configs/train.json", *overrides(values)])
    return work, proc.stdout + proc.stderr


def epoch_losses(log: str) -> list[float]:
    """Mean train loss per epoch from StatsHandler lines 'Epoch: e/E, Iter: i/I -- train_loss: x'."""
    per_epoch: dict[int, list[float]] = {}
    for epoch, value in re.findall(r"Epoch: (\d+)/\d+, Iter: \d+/\d+ -- train_loss: ([-\d.e]+)", log):
        per_epoch.setdefault(int(epoch), []).append(float(value))
    return [float(np.mean(per_epoch[e])) for e in sorted(per_epoch)]


@pytest.mark.slow
def test_training_runs_and_loss_decreases(trained: tuple[Path, str]) -> None:
    work, log = trained
    losses = epoch_losses(log)
    assert len(losses) == TINY["max_epochs"], log[-3000:]
    print("epoch mean loss:", ", ".join(f"{v:.4f}" for v in losses))
    assert losses[-1] < losses[0] - 1e-3, losses
    assert (work / "models" / "model.pt").is_file()  # best key metric (validation SPECT LNCC)
    assert list((work / "models").glob("checkpoint_*.pt"))
    assert "val_spect_lncc" in log


@pytest.mark.slow
def test_training_resumes_from_checkpoint(trained: tuple[Path, str], cohort: Path) -> None:
    work, _ = trained
    values = dict(TINY, max_epochs=TINY["max_epochs"] + 1, dataset_dir=str(cohort),
                  ckpt_dir=str(work / "models"), output_dir=str(work / "runs"))
    proc = run_bundle(["run", "training", "--config_file", "configs/train.json", *overrides(values)])
    log = proc.stdout + proc.stderr
    assert "resuming from" in log
    assert epoch_losses(log) and len(epoch_losses(log)) == 1  # only the one new epoch ran


@pytest.mark.slow
def test_evaluate_writes_metrics(trained: tuple[Path, str], cohort: Path) -> None:
    work, _ = trained
    values = dict(TINY, dataset_dir=str(cohort), ckpt_dir=str(work / "models"), output_dir=str(work / "eval"))
    run_bundle(["run", "evaluating", "--config_file", "['configs/train.json','configs/evaluate.json']",
                *overrides(values)])
    summary = (work / "eval" / "metrics.csv").read_text()
    assert "val_spect_lncc" in summary and "val_nonpositive_jacobian_pct" in summary


@pytest.mark.slow
def test_inference_writes_field_and_warped_images_in_fixed_space(trained: tuple[Path, str],
                                                                   cohort: Path) -> None:
    work, _ = trained
    pair = json.loads((cohort / "datalist.json").read_text())["training"][0]
    paths = {k: str((cohort / pair[k]).resolve()) for k in ("fixed_ct", "moving_ct", "fixed_spect",
                                                            "moving_spect")}
    values = {"spatial_size": TINY["spatial_size"], "pixdim": TINY["pixdim"],
              "network_def#embed_dim": TINY["network_def#embed_dim"], "ckpt_dir": str(work / "models"),
              "output_dir": str(work / "infer"), "output_name": "pair0", **paths}
    run_bundle(["run", "inferring", "--config_file", "configs/inference.json", *overrides(values)])
    field = nib.load(str(work / "infer" / "pair0_field.nii.gz"))
    spect = nib.load(str(work / "infer" / "pair0_warped_spect.nii.gz"))
    fixed = nib.load(paths["fixed_spect"])
    assert field.shape[:3] == tuple(TINY["spatial_size"]) and field.shape[-1] == 3
    np.testing.assert_allclose(np.abs(np.diag(spect.affine)[:3]), TINY["pixdim"], rtol=1e-4)
    np.testing.assert_allclose(field.affine, spect.affine, atol=1e-4)
    # same world centre as the fixed SPECT (resampled, centred crop/pad)
    centre = lambda img: img.affine[:3, :3] @ ((np.array(img.shape[:3]) - 1) / 2) + img.affine[:3, 3]  # noqa: E731
    np.testing.assert_allclose(centre(spect), centre(fixed), atol=TINY["pixdim"][0])
    # physical units kept: the warped SPECT is in Bq/mL, of the same order as the moving SPECT
    moving_max = float(np.asarray(nib.load(paths["moving_spect"]).dataobj).max())
    assert 0.2 * moving_max < float(np.asarray(spect.dataobj).max()) <= 1.01 * moving_max
