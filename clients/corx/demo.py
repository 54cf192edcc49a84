"""`corx demo` (`make demo`): generate one phantom patient and run `corx pipeline` on it.

OUT/phantom/P001/ holds the patient (CT, SPECT, truth); OUT/results/ the pipeline's outputs and report.html.
Registration: CoRX-NET in-process. Without trained weights (bundle/models/model.pt) the network runs with
freshly initialised weights, which gives a near-identity field: the console and the report say so loudly. That
keeps the demo exercising the real path (preprocessing, network, resampling) at the real cost; the numbers
then equal those of ``--method identity`` (which skips the network and is faster).
"""

from __future__ import annotations

import time
from pathlib import Path

from .errors import CorxError
from .pipeline.run import PipelineResult, run_pipeline
from .registration.backends import DEFAULT_CHECKPOINT

DEMO_COHORT = "internal"
DEMO_INDEX = 0


def run_demo(out: Path, seed: int = 7, method: str = "corx", overwrite: bool = False,
             progress: bool = True) -> PipelineResult:
    """Phantom patient into OUT/phantom, pipeline results into OUT/results; returns the pipeline result."""
    from corx_bundle.scripts.phantom import generate_patient

    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise CorxError(f"{out}: output folder is not empty (use --overwrite to replace its results)")
    t0 = time.perf_counter()
    patient = generate_patient(out / "phantom", cohort=DEMO_COHORT, index=DEMO_INDEX, seed=seed, overwrite=overwrite)
    print(f"phantom patient ({DEMO_COHORT} cohort, seed {seed}) in {time.perf_counter() - t0:.1f} s -> {patient}")
    random_init = method == "corx" and not DEFAULT_CHECKPOINT.is_file()
    result = run_pipeline(patient / "patient.json", out / "results", method=method, random_init=random_init,
                          overwrite=overwrite, progress=progress)
    print(f"demo finished in {time.perf_counter() - t0:.1f} s; open {result.report}")
    return result
