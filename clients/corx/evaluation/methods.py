"""The compared registration methods, by name: :mod:`corx.registration.methods` objects with the bundle's weights.

- ``identity``: zero field (no registration);
- ``elastix``: the paper's Elastix baseline (CT-driven B-spline, AMMI), see :mod:`corx.registration.elastix`;
- ``elastix-spect``: Elastix multi-metric on CT and SPECT (not in the paper);
- ``transmorph``, ``corx-nocs``, ``corx``: the bundle's networks (in-process PyTorch). Weights are read from
  bundle/models/transmorph/model.pt, bundle/models/corx_nocs/model.pt and bundle/models/model.pt; when a file is
  missing the network runs with freshly initialised weights (seeded), is reported as "untrained" and a warning
  says so (TransMorph's file is kept in git history: ``make weights`` restores it);
- ``<network>+refine<N>`` (e.g. ``corx+refine50``): the network's field, then N gradient steps of the hybrid loss on
  the pair (test-time instance optimisation, :func:`corx.registration.refine.refine_field`, as ``--refine N``);
- ``<network>@<tag>=<weights>`` (e.g. ``corx@affine=bundle/runs/cpu_affine/models/model.pt``): the network with
  other weights (a training candidate), reported as ``<network>@<tag>`` beside the shipped one;
- ``oracle`` (Python API only, tests): the phantom's true SPECT field, for reference pairs.

``seconds`` in ``info`` is the method's own work on one preprocessed pair (network forward; Elastix registration
plus the transformix field), not the preprocessing and warping every method shares.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

from corx_bundle.scripts.locations import bundle_root

from ..errors import CorxError
from ..geometry.displacement import resample_field
from ..registration.elastix import ElastixSettings
from ..registration.methods import (
    ElastixMethod,
    GridField,
    IdentityMethod,
    Method,
    NetworkMethod,
    PairInput,
    RefinedMethod,
    RefineOptions,
)
from .cache import file_digest
from .metrics import NETWORK_VARIANTS, parameter_count

BUNDLE_MODELS = bundle_root() / "models"
METHOD_NAMES = ("identity", "elastix", "elastix-spect", "transmorph", "corx-nocs", "corx")
WEIGHTS: dict[str, Path] = {"corx": BUNDLE_MODELS / "model.pt",
                            "corx-nocs": BUNDLE_MODELS / "corx_nocs" / "model.pt",
                            "transmorph": BUNDLE_MODELS / "transmorph" / "model.pt"}
REFINE_SUFFIX = re.compile(r"^(?P<network>[a-z-]+)\+refine(?P<steps>[0-9]+)$")
CANDIDATE = re.compile(r"^(?P<network>[a-z-]+)@(?P<tag>[A-Za-z0-9_.-]+)=(?P<weights>.+)$")


def bundle_network(name: str, weights: Path | None = None, seed: int = 0, threads: int | None = None,
                   label: str | None = None) -> Method:
    """A bundle network in-process (torch imported on first use); random weights when the file is missing.
    ``label`` names the method in the results (default ``name``; e.g. a candidate's weights beside the shipped)."""
    if name not in NETWORK_VARIANTS:
        raise CorxError(f"unknown network method {name!r}")
    variant = NETWORK_VARIANTS[name]
    path = Path(weights) if weights is not None else WEIGHTS[name]
    trained = path.is_file()
    if not trained:
        warnings.warn(f"{path}: no weights; {name} runs freshly initialised (reported as untrained). "
                      "`make weights` restores the shipped weights kept in git history", stacklevel=2)

    def backend() -> Any:
        from ..registration.backends import TorchBackend

        return TorchBackend(path if trained else None, random_init=not trained, variant=variant, seed=int(seed),
                            threads=threads)

    def parameters() -> int | None:
        from corx_bundle.scripts.checkpoints import has_submodule

        return parameter_count(name, affine_head=trained and has_submodule(path, "affine_head"))

    described = file_digest(path) if trained else f"untrained(seed={int(seed)})"
    return NetworkMethod(name=label or name, status="trained" if trained else "untrained", make_backend=backend,
                         settings={"variant": variant, "weights": described}, parameters=parameters)


class OracleMethod:
    """The true SPECT field of a reference pair, resampled to the network grid (tests; an upper bound)."""

    name, status = "oracle", "n/a"

    def settings(self) -> dict[str, Any]:
        return {}

    def parameters(self) -> int | None:
        return None

    def register(self, pair: PairInput) -> GridField:
        from ..geometry.warp import load_field

        if pair.truth_field is None:
            raise CorxError("the oracle needs a phantom pair whose fixed image is the reference (a true field)")
        u, affine = load_field(pair.truth_field)
        prepared = pair.prepared
        u_net, _ = resample_field(u, affine, prepared.moving_spect_bqml.shape, prepared.affine)
        return GridField(u_net, prepared.affine, {"seconds": 0.0})


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
            out.append(bundle_network(name, seed=seed, threads=threads))
        elif (match := REFINE_SUFFIX.match(name)) and match["network"] in NETWORK_VARIANTS:
            base = bundle_network(match["network"], seed=seed, threads=threads)
            out.append(RefinedMethod(base, RefineOptions(int(match["steps"]))))
        elif (match := CANDIDATE.match(name)) and match["network"] in NETWORK_VARIANTS:
            weights = Path(match["weights"])
            if not weights.is_file():
                raise CorxError(f"{weights}: no such weights file (method {name!r})")
            out.append(bundle_network(match["network"], weights, seed=seed, threads=threads,
                                      label=f"{match['network']}@{match['tag']}"))
        elif name == "oracle":
            out.append(OracleMethod())
        else:
            raise CorxError(f"unknown method {name!r} (choose from {', '.join(METHOD_NAMES)}, or a network "
                            "followed by +refineN, e.g. corx+refine50, or NETWORK@TAG=WEIGHTS for other weights)")
    if len({m.name for m in out}) != len(out):
        raise CorxError(f"a method is listed twice: {', '.join(names)}")
    return out
