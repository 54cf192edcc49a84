"""Registration methods: each returns, per moving time point, a pull-back field in voxels of some grid.

- ``corx``: CoRX-NET on the preprocessed pair (any backend: in-process PyTorch, ONNX, Triton); the field lies
  on the network grid (the reference SPECT at the network spacing, cropped/padded to the network size).
- ``identity``: no registration (a zero field on the reference SPECT grid); the baseline.
- ``elastix`` / ``elastix-spect``: corx.registration.elastix (CT-driven / SPECT-driven), on the network grid.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ..errors import CorxError
from ..io.volume import Volume
from .backends import Backend
from .preprocess import PreparedPair, PreparedReference, PreprocessConfig, prepare_moving, prepare_reference
from .register import check_backend_shape

METHODS = ("corx", "identity", "elastix", "elastix-spect")


@dataclass(frozen=True)
class GridField:
    """A pull-back displacement field (3, X, Y, Z) in voxels of the grid ``affine``."""

    field: np.ndarray
    affine: np.ndarray
    prepared: PreparedPair | None = None  # the network input, when one was made


class Method(Protocol):
    """Registers a moving (CT, SPECT) pair to the fixed (reference) pair."""

    name: str

    def register(self, fixed_ct: Volume, moving_ct: Volume, fixed_spect: Volume,
                 moving_spect: Volume) -> GridField: ...


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


class NetworkMethod:
    """CoRX-NET through a backend."""

    name = "corx"

    def __init__(self, backend: Backend, config: PreprocessConfig) -> None:
        check_backend_shape(backend, config)
        self.backend, self.config = backend, config
        self.prepare = ReferenceCache(config)
        self.infer_s: list[float] = []  # wall time of each backend call (the network's share of registration)

    def register(self, fixed_ct: Volume, moving_ct: Volume, fixed_spect: Volume, moving_spect: Volume) -> GridField:
        prepared = self.prepare.pair(fixed_ct, moving_ct, fixed_spect, moving_spect)
        start = time.perf_counter()
        field = np.asarray(self.backend.infer(prepared.image), dtype=np.float32)
        self.infer_s.append(time.perf_counter() - start)
        if field.shape != (3, *prepared.image.shape[1:]):
            raise CorxError(f"the backend returned a field of shape {field.shape}, expected "
                            f"{(3, *prepared.image.shape[1:])}")
        return GridField(field, prepared.affine, prepared)


class IdentityMethod:
    """No registration; with ``prepare`` (for --refine) the zero field lies on the network grid."""

    name = "identity"

    def __init__(self, config: PreprocessConfig, prepare: bool = False) -> None:
        self.config = config
        self.prepare = ReferenceCache(config) if prepare else None

    def register(self, fixed_ct: Volume, moving_ct: Volume, fixed_spect: Volume, moving_spect: Volume) -> GridField:
        if self.prepare is not None:
            prepared = self.prepare.pair(fixed_ct, moving_ct, fixed_spect, moving_spect)
            return GridField(np.zeros((3, *prepared.image.shape[1:]), np.float32), prepared.affine, prepared)
        return GridField(np.zeros((3, *fixed_spect.data.shape), np.float32), fixed_spect.affine)


def elastix_function() -> Any:
    """corx.registration.elastix.elastix_register_pair, or a clear error while it does not exist."""
    try:
        from .elastix import elastix_register_pair
    except ImportError as exc:
        raise CorxError(f"--method elastix needs corx.registration.elastix (elastix_register_pair), which is not "
                        f"available in this installation ({exc}); use --method corx or identity") from exc
    return elastix_register_pair


class ElastixMethod:
    """Elastix (itk-elastix) through corx.registration.elastix; ``variant`` "ct" or "spect"."""

    def __init__(self, variant: str, config: PreprocessConfig, max_iterations: int = 1000) -> None:
        self.register_pair = elastix_function()
        self.variant, self.config, self.max_iterations = variant, config, max_iterations
        self.name = "elastix" if variant == "ct" else "elastix-spect"

    def register(self, fixed_ct: Volume, moving_ct: Volume, fixed_spect: Volume, moving_spect: Volume) -> GridField:
        reg = self.register_pair(fixed_ct, moving_ct, fixed_spect, moving_spect, config=self.config,
                                 variant=self.variant, max_iterations=self.max_iterations)
        return GridField(np.asarray(reg.field, dtype=np.float32), np.asarray(reg.affine, dtype=np.float64))
