"""Finding the checkpoint a training run resumes from; starting a run from earlier weights."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from .atomic import atomic_path

#: Submodules a warm start may find missing in older weights: they are new options that start neutral
#: (``scripts.network.AffineHead`` adds nothing until trained).
OPTIONAL_SUBMODULES = ("affine_head.",)

#: Buffers that describe how a network runs, which a warm start takes from the run's config, not from the weights
#: (``scripts.network.AffineHead.passes``, ``scripts.network.FieldSmoothing.smoothing_sigma``).
RUN_DECIDES = ("passes", "smoothing_sigma")


def latest_checkpoint(ckpt_dir: str | os.PathLike, pattern: str = "checkpoint_*.pt") -> str | None:
    """Newest file matching ``pattern`` in ``ckpt_dir`` (by modification time), or None if there is none."""
    candidates = sorted(Path(ckpt_dir).glob(pattern), key=lambda p: p.stat().st_mtime)
    return str(candidates[-1]) if candidates else None


def network_state_dict(obj: Any, path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The network's state dict from a raw state dict, {"model": ...} (MONAI/Ignite savers) or {"state_dict": ...}."""
    for key in ("model", "network", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path}: not a CoRX-NET checkpoint (expected a state dict, or one under 'model')")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _part_for(state: dict[str, torch.Tensor], wanted: set[str]) -> dict[str, torch.Tensor]:
    """``state`` itself, or, when it holds a whole network and ``wanted`` names a part of it (e.g. an
    :class:`~scripts.network.AffineHead` started from a CoRX-NET file), the entries under that part's prefix with
    the prefix removed."""
    if wanted & set(state):
        return state
    prefixes = {k[: len(k) - len(w)] for k in state for w in wanted if k.endswith("." + w)}
    for prefix in sorted(prefixes):
        part = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if len(wanted & set(part)) >= len(wanted) - len(RUN_DECIDES):
            return part
    return state


def warm_start(network: torch.nn.Module, path: str | os.PathLike, into: str | None = None) -> list[str]:
    """Load the weights in ``path`` into ``network`` (or into its submodule ``into``, e.g. ``"affine_head.0"`` for
    an affine head trained on its own) before training; float16-stored tensors are cast back. A file holding a
    whole network can start one of its parts trained alone (an affine head from a CoRX-NET with a head). Buffers in
    :data:`RUN_DECIDES` keep the values the run configured.

    Everything must match except submodules the weights predate (:data:`OPTIONAL_SUBMODULES`), which keep their
    neutral initialisation; returns the names of the parameters left so."""
    state = network_state_dict(torch.load(path, map_location="cpu", weights_only=True), path)
    target = network.get_submodule(into) if into else network
    state = _part_for(state, set(target.state_dict()))
    # the run's config, not the starting weights, decides how many passes an affine head iterates
    configured = {name: b.clone() for name, b in target.named_buffers() if name.split(".")[-1] in RUN_DECIDES}
    missing, unexpected = target.load_state_dict(state, strict=False)
    with torch.no_grad():
        for name, value in configured.items():
            target.get_buffer(name).copy_(value)
    new = [k for k in missing if k.startswith(OPTIONAL_SUBMODULES)]
    # weights saved before the diffeomorphic option carry no integration_steps buffer
    wrong = [k for k in missing if k not in new and k != "integration_steps"]
    if wrong or unexpected:
        raise ValueError(f"{path}: does not match the network being trained{f' ({into})' if into else ''} "
                         f"(missing {wrong[:3]}, unexpected {unexpected[:3]})")
    return new


def zero_submodule(network: torch.nn.Module, name: str) -> int:
    """Set every parameter of ``network``'s submodule ``name`` to zero (e.g. ``"heads"``, CoRX-NET's dense output
    convolutions, so that a network with an affine head starts from the affine alone); returns how many values."""
    params = list(network.get_submodule(name).parameters())
    if not params:
        raise ValueError(f"submodule {name!r} has no parameters to zero")
    with torch.no_grad():
        for p in params:
            p.zero_()
    return sum(p.numel() for p in params)


def start_from(
    network: torch.nn.Module,
    weights: str | os.PathLike | None = None,
    parts: dict[str, str] | None = None,
    zeroed: list[str] | tuple[str, ...] = (),
) -> None:
    """A training run's starting point, in order: the whole network's ``weights`` (:func:`warm_start`), then each
    submodule's own weights (``parts``: {submodule: path}), then the submodules in ``zeroed`` set to zero."""
    if weights:
        print("starting from the weights of", weights, "; new, untrained:", warm_start(network, weights))
    for into, path in (parts or {}).items():
        warm_start(network, path, into=into)
        print(f"{into} starts from the weights of {path}")
    for name in zeroed:
        print(f"{name} starts at zero ({zero_submodule(network, name)} values)")


def save_network(network: torch.nn.Module, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write ``network``'s state dict to ``path`` atomically (e.g. a run's starting point, to benchmark it as a
    candidate); refuses to replace an existing file unless ``overwrite``."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path}: exists (pass overwrite=True to replace it)")
    with atomic_path(path) as tmp:
        torch.save(network.state_dict(), tmp)
    print("network weights written to", path)
    return path


def has_submodule(path: str | os.PathLike, name: str) -> bool:
    """Whether the weights in ``path`` hold submodule ``name`` (e.g. ``"affine_head"``), so that a config builds the
    network the weights need; False when there is no file (the checkpoint loader then says so)."""
    state = _stored_state(path)
    return state is not None and any(k.startswith(name + ".") for k in state)


def stored_affine_passes(path: str | os.PathLike) -> int:
    """The passes of the affine head stored in the weights at ``path`` (1 when the file predates the option, has no
    head or does not exist), so that a run continuing those weights keeps running their head as it was trained."""
    return int(_stored_setting(path, "passes", "affine_head.0.passes", 1))


def stored_dense_smoothing(path: str | os.PathLike) -> float:
    """The dense-field smoothing width (voxels) stored in the weights at ``path`` (0 when the file predates the
    option or does not exist), so that a run continuing those weights trains the network as it is run."""
    return float(_stored_setting(path, "smoothing_sigma", "dense_smoothing.smoothing_sigma", 0.0))


def _stored_setting(path: str | os.PathLike, alone: str, within: str, default: float) -> float:
    """The buffer stored under ``alone`` (a part saved on its own) or ``within`` (in a whole network) in the weights
    at ``path``; ``default`` when there is neither, or no file."""
    stored = [float(v) for k, v in (_stored_state(path) or {}).items() if k == alone or k.endswith(within)]
    return stored[0] if stored else default


def _stored_state(path: str | os.PathLike) -> dict[str, torch.Tensor] | None:
    """The network state dict in ``path``, or None when there is no such file (configs probe weights to build the
    network they need; the checkpoint loader reports a missing file itself)."""
    if not Path(path).is_file():
        return None
    return network_state_dict(torch.load(path, map_location="cpu", weights_only=True), path)
