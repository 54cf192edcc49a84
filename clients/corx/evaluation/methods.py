"""The compared registration methods, one interface: ``field(prepared, pair) -> (field, info)`` on the network grid.

- ``identity``: zero field (no registration);
- ``elastix``: the paper's Elastix baseline (CT-driven B-spline, AMMI), see :mod:`corx.registration.elastix`;
- ``elastix-spect``: Elastix multi-metric on CT and SPECT (not in the paper);
- ``transmorph``, ``corx-nocs``, ``corx``: the bundle's networks (in-process PyTorch). Weights are read from
  bundle/models/transmorph/model.pt, bundle/models/corx_nocs/model.pt and bundle/models/model.pt; when a file is
  missing the network runs with freshly initialised weights (seeded), is reported as "untrained" and a warning
  says so (TransMorph's file is kept in git history: ``make weights`` restores it);
- ``<network>+refine<N>`` (e.g. ``corx+refine50``): the network's field, then N Adam steps of the hybrid loss on
  the pair (test-time instance optimisation, :func:`corx.registration.refine.refine_field`, as ``--refine N``);
- ``oracle`` (Python API only, tests): the phantom's true SPECT field, for reference pairs.

``seconds`` in ``info`` is the method's own work on one preprocessed pair (network forward; Elastix registration
plus the transformix field), not the preprocessing and warping every method shares.
"""

from __future__ import annotations

import re
import time
import warnings
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from corx_bundle.scripts.locations import bundle_root

from ..errors import CorxError
from ..registration.elastix import ElastixSettings, elastix_field
from ..registration.preprocess import PreparedPair
from .cache import file_digest
from .cohort import Pair
from .ground_truth import resample_field
from .metrics import NETWORK_VARIANTS, parameter_count

BUNDLE_MODELS = bundle_root() / "models"
METHOD_NAMES = ("identity", "elastix", "elastix-spect", "transmorph", "corx-nocs", "corx")
WEIGHTS: dict[str, Path] = {"corx": BUNDLE_MODELS / "model.pt",
                            "corx-nocs": BUNDLE_MODELS / "corx_nocs" / "model.pt",
                            "transmorph": BUNDLE_MODELS / "transmorph" / "model.pt"}
REFINE_SUFFIX = re.compile(r"^(?P<network>[a-z-]+)\+refine(?P<steps>[0-9]+)$")


class Method(Protocol):
    """A registration method as the benchmark sees it."""

    name: str
    status: str  # "trained", "untrained" (random weights) or "n/a"

    def settings(self) -> dict[str, Any]: ...

    def parameters(self) -> int | None: ...

    def field(self, prepared: PreparedPair, pair: Pair) -> tuple[np.ndarray, dict[str, Any]]: ...


class IdentityMethod:
    """No registration: the zero field."""

    name, status = "identity", "n/a"

    def settings(self) -> dict[str, Any]:
        return {}

    def parameters(self) -> int | None:
        return None

    def field(self, prepared: PreparedPair, pair: Pair) -> tuple[np.ndarray, dict[str, Any]]:
        return np.zeros((3, *prepared.moving_spect_bqml.shape), np.float32), {"seconds": 0.0}


class ElastixMethod:
    """Elastix B-spline: variant "ct" (paper) or "spect" (CT + SPECT multi-metric)."""

    status = "n/a"

    def __init__(self, variant: str = "ct", settings: ElastixSettings | None = None) -> None:
        self.variant = variant
        self.name = "elastix" if variant == "ct" else "elastix-spect"
        self.elastix = settings or ElastixSettings()

    def settings(self) -> dict[str, Any]:
        s = self.elastix.as_dict()
        s.pop("threads")  # does not change the result
        if self.variant == "ct":  # the metric weights only matter to the multi-metric variant
            s.pop("ct_weight")
            s.pop("spect_weight")
        return {"variant": self.variant, **s}

    def parameters(self) -> int | None:
        return None

    def field(self, prepared: PreparedPair, pair: Pair) -> tuple[np.ndarray, dict[str, Any]]:
        return elastix_field(prepared, self.variant, self.elastix)


class NetworkMethod:
    """A bundle network in-process (torch imported on first use); random weights when the file is missing."""

    def __init__(self, name: str, weights: Path | None = None, seed: int = 0, threads: int | None = None,
                 refine_steps: int = 0) -> None:
        if name not in NETWORK_VARIANTS:
            raise CorxError(f"unknown network method {name!r}")
        if refine_steps < 0:
            raise CorxError(f"refine steps must be >= 0, got {refine_steps}")
        self.name = f"{name}+refine{refine_steps}" if refine_steps else name
        self.network_name = name
        self.refine_steps = int(refine_steps)
        self.variant = NETWORK_VARIANTS[name]
        self.weights = Path(weights) if weights is not None else WEIGHTS[name]
        self.status = "trained" if self.weights.is_file() else "untrained"
        if self.status == "untrained":
            warnings.warn(f"{self.weights}: no weights; {name} runs freshly initialised (reported as untrained). "
                          "`make weights` restores the shipped weights kept in git history", stacklevel=2)
        self.seed = int(seed)
        self.threads = threads
        self._backend: Any = None

    def settings(self) -> dict[str, Any]:
        weights = file_digest(self.weights) if self.status == "trained" else f"untrained(seed={self.seed})"
        out: dict[str, Any] = {"variant": self.variant, "weights": weights}
        if self.refine_steps:
            from ..registration.refine import DEFAULT_LR, DEFAULT_STRIDE

            out["refine"] = {"steps": self.refine_steps, "lr": DEFAULT_LR, "stride": DEFAULT_STRIDE}
        return out

    def parameters(self) -> int | None:
        return parameter_count(self.network_name)

    def backend(self) -> Any:
        if self._backend is None:
            from ..registration.backends import TorchBackend

            trained = self.status == "trained"
            self._backend = TorchBackend(self.weights if trained else None, random_init=not trained,
                                         variant=self.variant, seed=self.seed, threads=self.threads)
        return self._backend

    def field(self, prepared: PreparedPair, pair: Pair) -> tuple[np.ndarray, dict[str, Any]]:
        backend = self.backend()
        t0 = time.perf_counter()
        u = np.asarray(backend.infer(prepared.image), np.float32)
        network_seconds = time.perf_counter() - t0
        if not self.refine_steps:
            return u, {"seconds": network_seconds}
        from ..registration.refine import refine_field

        refined = refine_field(prepared.image, u, self.refine_steps)
        total = time.perf_counter() - t0
        return refined.field, {"seconds": total, "network_seconds": network_seconds,
                               "refine_seconds": total - network_seconds, "refine_loss_before": refined.loss_before,
                               "refine_loss_after": refined.loss_after}


class OracleMethod:
    """The true SPECT field of a reference pair, resampled to the network grid (tests; an upper bound)."""

    name, status = "oracle", "n/a"

    def settings(self) -> dict[str, Any]:
        return {}

    def parameters(self) -> int | None:
        return None

    def field(self, prepared: PreparedPair, pair: Pair) -> tuple[np.ndarray, dict[str, Any]]:
        from ..geometry.warp import load_field

        if not pair.reference:
            raise CorxError(f"{pair.name}: the oracle needs a pair whose fixed image is the reference")
        u, affine = load_field(pair.patient_dir / "truth" / f"field_spect_{pair.moving_id}.nii.gz")
        u_net, _ = resample_field(u, affine, prepared.moving_spect_bqml.shape, prepared.affine)
        return u_net, {"seconds": 0.0}


def make_methods(names: list[str] | tuple[str, ...], elastix: ElastixSettings | None = None, seed: int = 0,
                 threads: int | None = None) -> list[Method]:
    """Method objects by name (METHOD_NAMES, plus 'oracle')."""
    out: list[Method] = []
    for name in names:
        if name == "identity":
            out.append(IdentityMethod())
        elif name in ("elastix", "elastix-spect"):
            out.append(ElastixMethod("ct" if name == "elastix" else "spect", elastix))
        elif name in NETWORK_VARIANTS:
            out.append(NetworkMethod(name, seed=seed, threads=threads))
        elif (match := REFINE_SUFFIX.match(name)) and match["network"] in NETWORK_VARIANTS:
            out.append(NetworkMethod(match["network"], seed=seed, threads=threads, refine_steps=int(match["steps"])))
        elif name == "oracle":
            out.append(OracleMethod())
        else:
            raise CorxError(f"unknown method {name!r} (choose from {', '.join(METHOD_NAMES)}, or a network "
                            "followed by +refineN, e.g. corx+refine50)")
    if len({m.name for m in out}) != len(out):
        raise CorxError(f"a method is listed twice: {', '.join(names)}")
    return out
