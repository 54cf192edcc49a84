"""Single-time-point TIA (Hänscheid, prior half-life) against the multi-time-point fit and the phantom truth.

Usage: python benchmarks/bench_single_time_point.py [--data DIR] [--patients N] [--downsample D]

Organ-based (VOI) TIA, so that no registration enters: at each time point the VOI is drawn on that time
point's own SPECT frame (the phantom's truth/labels_<id>.nii.gz, as a clinic segments each CT), its activity
is mean concentration x volume. The multi-time-point TIA is eq. 6 on those VOI curves (corx.dosimetry.tia); the
single-time-point TIAs use one sample: Hänscheid (T_eff = t) and the prior-half-life method with, per VOI
class, the median effective half-life (at most the physical one) of the multi-time-point fits of the *other*
patients (leave one out).
The reference is the imaged true TIA (truth/tia_imaged.nii.gz summed over the reference-frame VOI), so the
errors are those of the time integration, not of the SPECT resolution. Prints mean +/- sd of the signed error (%).
Without --data, N internal phantom patients are generated in a temporary folder first.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections import defaultdict
from pathlib import Path

import nibabel as nib
import numpy as np

from corx.dosimetry.bed import effective_half_life_h
from corx.dosimetry.tia import tia_from_curves
from corx.io.manifest import load_manifest

VOI_CLASSES = ("kidneys", "liver", "spleen", "tumour")


def voi_class(name: str) -> str | None:
    """kidneys / liver / spleen / tumour for the phantom VOIs the comparison uses."""
    if name.startswith("tumour"):
        return "tumour"
    return name if name in VOI_CLASSES else None


def patient_vois(patient: Path) -> list[tuple[str, list[int]]]:
    raw = json.loads((patient / "truth" / "tia_voi.json").read_text())
    return [(v["name"], list(v["labels"])) for v in raw["vois"] if voi_class(v["name"])]


def measure(patient: Path) -> dict[str, dict[str, object]]:
    """Per VOI: hours, activity (MBq) per time point, imaged true TIA (MBq h) and the multi-time-point fit."""
    m = load_manifest(patient / "patient.json", check_images=False)
    truth = patient / "truth"
    imaged = np.asarray(nib.load(str(truth / "tia_imaged.nii.gz")).dataobj, np.float64)
    ref_labels = np.asarray(nib.load(str(truth / "labels_ref.nii.gz")).dataobj)
    vv = abs(float(np.linalg.det(nib.load(str(truth / "tia_imaged.nii.gz")).affine[:3, :3]))) / 1000.0
    frames = [(np.asarray(nib.load(str(tp.spect)).dataobj, np.float64),
               np.asarray(nib.load(str(truth / f"labels_{tp.id}.nii.gz")).dataobj)) for tp in m.timepoints]
    out: dict[str, dict[str, object]] = {}
    for name, labels in patient_vois(patient):
        mask_ref = np.isin(ref_labels, labels)
        if not mask_ref.any():
            continue
        act = np.array([spect[np.isin(lab, labels)].sum() * vv * 1e-6 for spect, lab in frames])  # MBq
        fit = tia_from_curves(act[:, None].astype(np.float32), m.hours)
        out[name] = {"hours": m.hours, "activity_mbq": act, "true_mbqh": float(imaged[mask_ref].sum() * vv),
                     "multi_mbqh": float(fit.tia[0]), "t_eff_h": float(effective_half_life_h(fit.lambda_eff[0]))}
    return out


def single(activity: float, hours: float, prior_h: float | None) -> float:
    prior = None if prior_h is None else np.array([prior_h])
    return float(tia_from_curves(np.array([[activity]], np.float32), [hours], prior_half_life_h=prior).tia[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, help="folder of phantom patients P001, P002, ... (with truth/)")
    ap.add_argument("--patients", type=int, default=6, help="patients to generate without --data")
    ap.add_argument("--downsample", type=int, default=2, help="phantom downsampling when generating")
    args = ap.parse_args()
    tmp = None
    if args.data is None:
        from corx_bundle.scripts.phantom import generate_patient

        tmp = tempfile.TemporaryDirectory()
        args.data = Path(tmp.name)
        for i in range(args.patients):
            generate_patient(args.data, "internal", i, 0, downsample=args.downsample)
    patients = sorted(p for p in args.data.iterdir() if (p / "truth" / "tia_voi.json").is_file())
    per_patient = {p.name: measure(p) for p in patients}
    errors: dict[tuple[str, str], list[float]] = defaultdict(list)
    for pid, vois in per_patient.items():
        for name, r in vois.items():
            cls = voi_class(name)
            others = [v["t_eff_h"] for q, vs in per_patient.items() if q != pid for n, v in vs.items()
                      if voi_class(n) == cls]
            prior = float(np.median(others)) if others else None
            true = r["true_mbqh"]
            errors[(cls, "multi-time-point (eq. 6)")].append(100 * (r["multi_mbqh"] / true - 1))
            for t, a in zip(r["hours"], r["activity_mbq"], strict=True):
                if t < 20:
                    continue  # a 4 h sample is far from any T_eff: not a single-time-point protocol
                errors[(cls, f"Hänscheid at {t:g} h")].append(100 * (single(a, t, None) / true - 1))
                if prior is not None:
                    errors[(cls, f"prior T_eff at {t:g} h")].append(100 * (single(a, t, prior) / true - 1))
    print(f"{len(patients)} patients from {args.data}; error of the VOI TIA vs the imaged true TIA (%)\n")
    print("| VOI | method | n | error mean ± sd | |error| max |")
    print("|---|---|---|---|---|")
    for cls in VOI_CLASSES:
        for (c, method), e in sorted(errors.items(), key=lambda kv: (kv[0][1] != "multi-time-point (eq. 6)",
                                                                     kv[0][1])):
            if c == cls:
                v = np.array(e)
                print(f"| {cls} | {method} | {v.size} | {v.mean():+.1f} ± {v.std():.1f} | {np.abs(v).max():.1f} |")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
