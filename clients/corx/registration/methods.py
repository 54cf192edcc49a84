"""Registration methods, one interface for the pipeline and the evaluation: ``register(pair) -> GridField``.

A method receives a :class:`PairInput` (the fixed and moving CT/SPECT; the network input made on first use and
shared by every pair of the patient) and returns a pull-back field in voxels of some grid:

- ``corx``: CoRX-NET on the preprocessed pair (any backend: in-process PyTorch, ONNX, Triton); the field lies
  on the network grid (the reference SPECT at the network spacing, cropped/padded to the network size).
- ``identity``: no registration, a zero field on the fixed SPECT grid (no preprocessing needed).
- ``elastix`` / ``elastix-spect``: itk-elastix (CT-driven / SPECT-driven), on the network grid.
- ``<method>+refine<N>``: :class:`RefinedMethod`, the method's field then N gradient steps of the hybrid loss on the
  pair (test-time instance optimisation, :func:`corx.registration.refine.refine_field`).

``info["seconds"]`` is the method's own work on one pair (network forward; Elastix registration and the
transformix field; plus refinement), not the preprocessing and warping every method shares;
``info["network_seconds"]`` is the network's share where there is one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..errors import CorxError
from ..geometry.displacement import resample_field
from ..io.volume import Volume
from .backends import Backend
from .elastix import ElastixSettings, elastix_field, require_itk
from .preprocess import PreparedPair, PreparedReference, PreprocessConfig, prepare_moving, prepare_reference
from .refine import DEFAULT_COARSEN, DEFAULT_LR, DEFAULT_STRIDE, refine_field

METHODS = ("corx", "identity", "elastix", "elastix-spect")


@dataclass(frozen=True)
class GridField:
    """A pull-back displacement field (3, X, Y, Z) in voxels of the grid ``affine``, and how it was made."""

    field: np.ndarray
    affine: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)


class ReferenceCache:
    """The prepared fixed channels of the last reference seen: every pair of a patient shares them."""

    def __init__(self, config: PreprocessConfig) -> None:
        self.config = config
        self._fixed: tuple[Volume, Volume] | None = None  # held, so identity comparison stays valid
        self._reference: PreparedReference | None = None

    def pair(self, fixed_ct: Volume, moving_ct: Volume, fixed_spect: Volume, moving_spect: Volume) -> PreparedPair:
        """The network input of one pair; the fixed half is prepared once per (fixed CT, fixed SPECT) object."""
        same = self._fixed is not None and self._fixed[0] is fixed_ct and self._fixed[1] is fixed_spect
        if self._reference is None or not same:
            self._reference = prepare_reference(fixed_ct, fixed_spect, self.config)
            self._fixed = (fixed_ct, fixed_spect)
        return prepare_moving(self._reference, moving_ct, moving_spect)


class PairInput:
    """One moving (CT, SPECT) pair and the fixed pair it is registered to.

    Built from volumes (the pipeline: the network input is made on first use, through a shared
    :class:`ReferenceCache`) or from an already preprocessed pair (the evaluation). ``truth_field``: the phantom's
    true SPECT field file of this pair, where one is known (the oracle reads it).
    """

    def __init__(self, fixed_spect_grid: tuple[tuple[int, ...], np.ndarray], prepare: Callable[[], PreparedPair],
                 truth_field: Path | None = None) -> None:
        self.fixed_spect_grid = fixed_spect_grid
        self._prepare = prepare
        self.truth_field = truth_field

    @classmethod
    def from_volumes(cls, fixed_ct: Volume, moving_ct: Volume, fixed_spect: Volume, moving_spect: Volume,
                     cache: ReferenceCache) -> PairInput:
        grid = (tuple(int(s) for s in fixed_spect.data.shape), np.asarray(fixed_spect.affine, np.float64))
        return cls(grid, lambda: cache.pair(fixed_ct, moving_ct, fixed_spect, moving_spect))

    @classmethod
    def from_prepared(cls, prepared: PreparedPair, truth_field: Path | None = None) -> PairInput:
        """A preprocessed pair; its fixed SPECT grid is the network grid."""
        return cls((tuple(prepared.moving_spect_bqml.shape), prepared.affine), lambda: prepared, truth_field)

    @cached_property
    def prepared(self) -> PreparedPair:
        """The network input (4, X, Y, Z) and its grid."""
        return self._prepare()

    def on_network_grid(self, gf: GridField) -> np.ndarray:
        """``gf``'s field on the network grid (resampled through world mm when it lies on another grid)."""
        prepared = self.prepared
        if not np.any(gf.field):  # zero on any grid
            return np.zeros((3, *prepared.moving_spect_bqml.shape), np.float32)
        u, _ = resample_field(gf.field, gf.affine, tuple(prepared.moving_spect_bqml.shape), prepared.affine)
        return u


class Method(Protocol):
    """Registers a moving (CT, SPECT) pair to the fixed (reference) pair."""

    name: str
    status: str  # "trained", "untrained" (random weights) or "n/a"

    def settings(self) -> dict[str, Any]: ...

    def parameters(self) -> int | None: ...

    def register(self, pair: PairInput) -> GridField: ...


class IdentityMethod:
    """No registration: the zero field on the fixed SPECT grid."""

    name, status = "identity", "n/a"

    def settings(self) -> dict[str, Any]:
        return {}

    def parameters(self) -> int | None:
        return None

    def register(self, pair: PairInput) -> GridField:
        shape, affine = pair.fixed_spect_grid
        return GridField(np.zeros((3, *shape), np.float32), affine, {"seconds": 0.0})


class NetworkMethod:
    """A registration network through a backend: ``backend`` given, or made by ``make_backend`` on first use."""

    def __init__(self, backend: Backend | None = None, name: str = "corx", *, status: str = "trained",
                 make_backend: Callable[[], Backend] | None = None, settings: dict[str, Any] | None = None,
                 parameters: Callable[[], int | None] | None = None) -> None:
        if (backend is None) == (make_backend is None):
            raise ValueError("NetworkMethod: give either a backend or make_backend")
        self._backend, self._make_backend = backend, make_backend
        self.name, self.status = name, status
        self._settings = dict(settings or {})
        self._parameters = parameters

    def settings(self) -> dict[str, Any]:
        return dict(self._settings)

    def parameters(self) -> int | None:
        return self._parameters() if self._parameters is not None else None

    def backend(self) -> Backend:
        if self._backend is None:
            assert self._make_backend is not None
            self._backend = self._make_backend()
        return self._backend

    def register(self, pair: PairInput) -> GridField:
        prepared = pair.prepared
        backend = self.backend()
        start = time.perf_counter()
        u = np.asarray(backend.infer(prepared.image), dtype=np.float32)
        seconds = time.perf_counter() - start
        if u.shape != (3, *prepared.image.shape[1:]):
            raise CorxError(f"the backend returned a field of shape {u.shape}, expected "
                            f"{(3, *prepared.image.shape[1:])}")
        return GridField(u, prepared.affine, {"seconds": seconds, "network_seconds": seconds})


class ElastixMethod:
    """Elastix B-spline on the network grid: variant "ct" (paper) or "spect" (CT + SPECT multi-metric)."""

    status = "n/a"

    def __init__(self, variant: str = "ct", settings: ElastixSettings | None = None) -> None:
        if variant not in ("ct", "spect"):
            raise CorxError(f"unknown Elastix variant {variant!r} (choose from ct, spect)")
        require_itk()
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

    def register(self, pair: PairInput) -> GridField:
        prepared = pair.prepared
        u, info = elastix_field(prepared, self.variant, self.elastix)
        return GridField(np.asarray(u, np.float32), prepared.affine, info)


@dataclass(frozen=True)
class RefineOptions:
    """Test-time refinement: ``steps`` gradient steps (the first moves a control point at most ``lr`` network
    voxels), the loss evaluated on the pair averaged down by ``coarsen`` per axis."""

    steps: int
    lr: float | None = None  # None: corx.registration.refine.DEFAULT_LR
    coarsen: int = DEFAULT_COARSEN

    def __post_init__(self) -> None:
        if not isinstance(self.steps, int) or isinstance(self.steps, bool) or self.steps < 1:
            raise CorxError(f"refine steps must be an integer >= 1, got {self.steps!r}")
        if not isinstance(self.coarsen, int) or isinstance(self.coarsen, bool) or self.coarsen < 1:
            raise CorxError(f"refine coarsening must be an integer >= 1, got {self.coarsen!r}")

    @property
    def learning_rate(self) -> float:
        """``lr``, or the default of :mod:`corx.registration.refine` when it is None."""
        return DEFAULT_LR if self.lr is None else float(self.lr)


def refine_grid_field(pair: PairInput, gf: GridField, options: RefineOptions) -> GridField:
    """``gf`` (moved onto the network grid) refined on the pair; ``info`` gains ``refine_*`` (seconds, steps,
    coarsen, loss_before, loss_after) and its ``seconds`` include the refinement."""
    start = time.perf_counter()
    prepared = pair.prepared
    r = refine_field(prepared.image, pair.on_network_grid(gf), options.steps, options.learning_rate,
                     coarsen=options.coarsen)
    seconds = time.perf_counter() - start
    info = {**gf.info, "seconds": gf.info.get("seconds", 0.0) + seconds, "refine_seconds": seconds,
            "refine_steps": r.steps, "refine_coarsen": options.coarsen, "refine_loss_before": r.loss_before,
            "refine_loss_after": r.loss_after}
    return GridField(r.field, prepared.affine, info)


class RefinedMethod:
    """Another method's field, refined on the pair (``<name>+refine<N>``)."""

    def __init__(self, base: Method, options: RefineOptions) -> None:
        self.base, self.options = base, options
        self.name = f"{base.name}+refine{options.steps}"
        self.status = base.status

    def settings(self) -> dict[str, Any]:
        refine = {"steps": self.options.steps, "lr": self.options.learning_rate, "stride": DEFAULT_STRIDE,
                  "coarsen": self.options.coarsen}
        return {**self.base.settings(), "refine": refine}

    def parameters(self) -> int | None:
        return self.base.parameters()

    def register(self, pair: PairInput) -> GridField:
        return refine_grid_field(pair, self.base.register(pair), self.options)
