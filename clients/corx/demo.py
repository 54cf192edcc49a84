"""`corx demo`: the main job on a generated phantom patient."""

from __future__ import annotations

import time
from pathlib import Path

from .errors import CorxError
from .manifest import load_manifest
from .montage import write_montage


def run_demo(out: Path, seed: int = 7, overwrite: bool = False) -> Path:
    """Generate one internal phantom patient under OUT/phantom and write OUT/montage.png."""
    from corx_bundle.scripts.phantom import generate_patient

    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise CorxError(f"{out}: output folder is not empty (use --overwrite to replace its results)")
    t0 = time.perf_counter()
    patient_dir = generate_patient(out / "phantom", cohort="internal", index=0, seed=seed, overwrite=overwrite)
    t1 = time.perf_counter()
    manifest = load_manifest(patient_dir / "patient.json")
    montage = write_montage(manifest, out / "montage.png", overwrite=overwrite)
    t2 = time.perf_counter()
    print(f"phantom patient {manifest.patient_id}: {len(manifest.timepoints)} time points "
          f"({', '.join(tp.id for tp in manifest.timepoints)}) in {t1 - t0:.1f} s -> {patient_dir}")
    print(f"montage: {montage} ({t2 - t1:.1f} s)")
    return montage
