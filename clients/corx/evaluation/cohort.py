"""The benchmark's pairs: the validation pairs of a phantom cohort, generated with the paper's protocol if absent.

Cohorts: ``internal-val`` = the validation split of the internal cohort with the paper's protocol (4 patients,
30 ordered pairs: 1 x 4P2 + 3 x 3P2); ``external`` = the external cohort, all validation (14 patients, 84 pairs,
0.5 h excluded). Every ordered pair is evaluated, as in the paper's Table 2; only pairs whose fixed image is the
reference time point (4 h in both cohorts) have true fields, so the ground-truth and TIA columns use those.

Order: first every reference pair (patient by patient, moving time points in acquisition order), then the other
pairs; ``--limit K`` takes the first K, so a short run still has ground truth and, once a patient's reference pairs
are all in, its TIA. Generation writes only the validation patients that the selected pairs need (the training
patients of the internal cohort are never used here), plus ``datalist.json`` (validation pairs only) and
``cohort.json``. An existing cohort folder (e.g. from ``corx phantom --protocol paper``) is used as it is.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import CorxError
from ..io.imageio import save_json

COHORTS: dict[str, str] = {"internal-val": "internal", "external": "external"}
BASE_SIZE = 128
BASE_PIXDIM = 3.87


@dataclass(frozen=True)
class Pair:
    """One ordered (fixed, moving) pair of a patient; paths absolute."""

    patient_id: str
    fixed_id: str
    moving_id: str
    fixed_hours: float
    moving_hours: float
    fixed_ct: Path
    moving_ct: Path
    fixed_spect: Path
    moving_spect: Path
    patient_dir: Path
    reference: bool  # fixed is the patient's reference time point (truth available)

    @property
    def name(self) -> str:
        return f"{self.patient_id}:{self.fixed_id}->{self.moving_id}"

    @property
    def truth_field(self) -> Path | None:
        """The phantom's true SPECT field of this pair (reference pairs only), else None."""
        return self.patient_dir / "truth" / f"field_spect_{self.moving_id}.nii.gz" if self.reference else None


def cohort_name(cohort: str) -> str:
    """'internal-val' -> 'internal'; CorxError for an unknown cohort."""
    if cohort not in COHORTS:
        raise CorxError(f"unknown cohort {cohort!r} (choose from {', '.join(COHORTS)})")
    return COHORTS[cohort]


def _entry_pair(entry: dict[str, Any], root: Path, reference: str) -> Pair:
    pid = str(entry["patient_id"])
    return Pair(patient_id=pid, fixed_id=str(entry["fixed_id"]), moving_id=str(entry["moving_id"]),
                fixed_hours=float(entry["fixed_hours"]), moving_hours=float(entry["moving_hours"]),
                fixed_ct=root / entry["fixed_ct"], moving_ct=root / entry["moving_ct"],
                fixed_spect=root / entry["fixed_spect"], moving_spect=root / entry["moving_spect"],
                patient_dir=root / pid, reference=str(entry["fixed_id"]) == reference)


def order_pairs(pairs: list[Pair]) -> list[Pair]:
    """Reference pairs first (patient by patient, moving in time order), then the others."""
    def key(p: Pair) -> tuple[int, str, float, float]:
        return (0 if p.reference else 1, p.patient_id, p.fixed_hours, p.moving_hours)

    return sorted(pairs, key=key)


def planned_datalist(cohort: str, seed: int) -> list[dict[str, Any]]:
    """The validation entries of the paper protocol (no images needed)."""
    from corx_bundle.scripts.phantom import build_datalist, plan_cohort

    plans = [p for p in plan_cohort(cohort_name(cohort), seed=seed, protocol="paper") if p.split == "validation"]
    return build_datalist(cohort_name(cohort), plans)["validation"]


def pairs_from_datalist(entries: list[dict[str, Any]], root: Path, reference: str) -> list[Pair]:
    return order_pairs([_entry_pair(e, root, reference) for e in entries])


def _reference_of(cohort: str) -> str:
    from corx_bundle.scripts.phantom.spec import get_cohort

    return get_cohort(cohort_name(cohort)).reference


def prepare_cohort(cohort: str, data: str | Path, seed: int = 0, downsample: int | None = None,
                   limit: int | None = None, log: Any = print) -> tuple[list[Pair], int]:
    """All the cohort's pairs (ordered) and the data's downsample factor; generates what the first ``limit`` need.

    ``data`` is the cohort folder. Without ``datalist.json`` there, the validation patients of the paper protocol
    (``seed``, ``downsample``, default 1) are generated into it as needed.
    """
    root = Path(data).resolve()
    reference = _reference_of(cohort)
    datalist = root / "datalist.json"
    info_path = root / "cohort.json"
    if datalist.is_file():
        raw = json.loads(datalist.read_text())
        entries = raw.get("validation") or []
        if not entries:
            raise CorxError(f"{datalist}: no validation pairs")
        info = json.loads(info_path.read_text()) if info_path.is_file() else {}
        generated = bool(info.get("benchmark_generated"))
        data_ds = _data_downsample(info, root, entries)
        if generated and int(info.get("seed", seed)) != seed:
            raise CorxError(f"{info_path}: generated with seed {info.get('seed')}, not {seed} (use another --data)")
    else:
        entries = planned_datalist(cohort, seed)
        data_ds = int(downsample or 1)
        generated = True
        info = {"cohort": cohort_name(cohort), "protocol": "paper", "split": "validation", "seed": seed,
                "downsample": data_ds, "benchmark_generated": True,
                "note": "validation patients of the paper protocol only, generated by corx benchmark on demand"}
        root.mkdir(parents=True, exist_ok=True)
        save_json({"training": [], "validation": entries}, datalist)
        save_json(info, info_path, overwrite=True)
    if downsample is not None and int(downsample) != data_ds:
        raise CorxError(f"{root}: the cohort there has downsample {data_ds}, not {downsample} (use another --data)")
    pairs = pairs_from_datalist(entries, root, reference)
    selected = pairs[:limit] if limit else pairs
    missing = sorted({p.patient_id for p in selected if not (p.patient_dir / "patient.json").is_file()})
    if missing and not generated:
        raise CorxError(f"{root}: patient folders missing: {', '.join(missing)}")
    if missing:
        _generate(cohort, root, missing, entries, seed, data_ds, log)
    return pairs, data_ds


def _data_downsample(info: dict[str, Any], root: Path, entries: list[dict[str, Any]]) -> int:
    if "downsample" in info:
        return int(info["downsample"])
    manifest = root / str(entries[0]["patient_id"]) / "patient.json"
    if manifest.is_file():
        return int(json.loads(manifest.read_text()).get("phantom", {}).get("downsample", 1))
    return 1


def _generate(cohort: str, root: Path, patient_ids: list[str], entries: list[dict[str, Any]], seed: int,
              downsample: int, log: Any) -> None:
    from corx_bundle.scripts.phantom import generate_patient

    for pid in patient_ids:
        tps = {e["fixed_id"] for e in entries if e["patient_id"] == pid}
        log(f"generating phantom {cohort_name(cohort)} {pid} ({len(tps)} pairable time points, "
            f"downsample {downsample}) into {root}")
        generate_patient(root, cohort_name(cohort), int(pid[1:]) - 1, seed, downsample, _n_timepoints(cohort, tps))


def _n_timepoints(cohort: str, pairable: set[str]) -> int:
    from corx_bundle.scripts.phantom.spec import get_cohort

    spec = get_cohort(cohort_name(cohort))
    return len(pairable) + len(spec.pair_exclude)


def network_geometry(downsample: int) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    """Network grid (size, spacing) for a downsample factor: 128 // D voxels over the same field of view as 128 at
    3.87 mm (the phantom scales its matrices the same way, so the internal SPECT grid stays the network grid)."""
    n = BASE_SIZE // int(downsample)
    s = round(BASE_PIXDIM * BASE_SIZE / n, 6)
    return (n, n, n), (s, s, s)
