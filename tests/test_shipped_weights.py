"""The weights shipped in bundle/models register: on a fixed phantom pair they cut the true SPECT-field error.

The pair comes from a phantom seed that training never saw (training used seed 0). The bound is set so that the
freshly initialised network (a near-identity field) fails it: the test checks both.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from corx.backends import DEFAULT_CHECKPOINT
from corx.evaluation.methods import WEIGHTS

UNSEEN_SEED, INDEX = 7, 2
# trained error must be below this fraction of the identity (no registration) error; see the model card
ERROR_RATIO_BOUND = 0.75


@pytest.fixture(scope="module")
def pair_and_truth(tmp_path_factory: pytest.TempPathFactory):
    from corx.evaluation.ground_truth import load_pair_truth
    from corx.preprocess import preprocess_pair
    from corx_bundle.scripts.phantom import generate_patient

    folder = generate_patient(tmp_path_factory.mktemp("weights"), "internal", INDEX, UNSEEN_SEED, n_timepoints=3)
    patient = json.loads((folder / "patient.json").read_text())
    ref = patient["reference"]
    tps = {tp["id"]: tp for tp in patient["timepoints"]}
    moving = next(tp for tp in tps if tp != ref)
    prepared = preprocess_pair(folder / tps[ref]["ct"], folder / tps[moving]["ct"], folder / tps[ref]["spect"],
                               folder / tps[moving]["spect"])
    truth = load_pair_truth(folder, ref, moving)
    return prepared, truth


def body_error_mm(field: np.ndarray, prepared, truth) -> float:
    from corx.evaluation.ground_truth import ground_truth_metrics

    return ground_truth_metrics(field, prepared.affine, truth)["err_body_mean_mm"]


def test_weights_are_shipped_small_and_listed() -> None:
    listed = (DEFAULT_CHECKPOINT.parents[1] / "large_files.yml").read_text()
    for path in WEIGHTS.values():
        assert path.is_file(), f"{path}: shipped weights missing"
        assert path.stat().st_size < 50 * 2**20, f"{path}: over 50 MB"
        assert str(path.relative_to(DEFAULT_CHECKPOINT.parents[1])) in listed


@pytest.mark.slow
@pytest.mark.parametrize("method", ["corx", "corx-nocs", "transmorph"])
def test_shipped_weights_beat_identity_and_untrained(pair_and_truth, method: str) -> None:
    from corx.backends import TorchBackend
    from corx.evaluation.metrics import NETWORK_VARIANTS

    prepared, truth = pair_and_truth
    variant = NETWORK_VARIANTS[method]
    identity = body_error_mm(np.zeros((3, *prepared.image.shape[1:]), np.float32), prepared, truth)
    trained = body_error_mm(TorchBackend(WEIGHTS[method], variant=variant, precision="bf16").infer(prepared.image),
                            prepared, truth)
    untrained = body_error_mm(TorchBackend(None, random_init=True, variant=variant, precision="bf16")
                              .infer(prepared.image), prepared, truth)
    print(f"{method}: body mean SPECT-field error identity {identity:.2f} mm, untrained {untrained:.2f} mm, "
          f"trained {trained:.2f} mm")
    assert identity > 2.0  # the pair is misaligned enough to tell
    assert untrained > ERROR_RATIO_BOUND * identity  # the bound is one untrained weights fail
    assert trained < ERROR_RATIO_BOUND * identity
