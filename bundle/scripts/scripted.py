"""The inference network from a TorchScript cache: CoRX-NET without importing MONAI (about 3 s per process).

Building the network imports MONAI (its Swin blocks), which takes ~2.8 s of a ~3.1 s load on a 2-core CPU;
``torch.jit.load`` of the same network scripted takes ~0.15 s. The first load of a checkpoint builds the network
with MONAI, scripts it and stores the script under :func:`cache_dir`; later loads read the script. The field is
the same (TorchScript runs the same kernels; ``tests/test_scripted.py`` compares them). The cache key covers
everything the script depends on: the checkpoint's bytes, the variant and its options, the network's source, and
the torch and MONAI versions. Set ``CORX_CACHE_DIR`` to choose the folder, or to ``off`` to always build it.
This module imports neither MONAI nor the network at import time.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import warnings
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from .atomic import atomic_path

CACHE_ENV = "CORX_CACHE_DIR"
_NETWORK_SOURCES = ("network.py",)  # the scripted code besides MONAI's (covered by its version)


def output_integration_steps(model: torch.nn.Module) -> int:
    """Scaling-and-squaring steps the network's output needs (0: it is already a displacement field)."""
    steps = getattr(model, "integration_steps", None)
    return int(steps) if steps is not None else 0


@contextlib.contextmanager
def legacy_executor() -> Iterator[None]:
    """Run TorchScript with the legacy graph executor (optimised on the first call, no profiling calls).

    Measured on a 128^3 CoRX-NET forward (2 threads, fp32), three calls and the peak RSS: eager 6.5 / 3.4 / 3.4 s,
    2.6 GiB; the default profiling executor 7.7 / 5.0 / 3.4 s, 3.3 GiB; legacy 5.5 / 3.4 / 3.5 s, 1.9 GiB; the
    field equal to eager's bit for bit. Not for bfloat16 autocast, which it does not apply (4.2 s, float32 out).
    The two global switches are restored on exit.
    """
    executor = torch._C._jit_set_profiling_executor(False)
    mode = torch._C._jit_set_profiling_mode(False)
    try:
        yield
    finally:
        torch._C._jit_set_profiling_executor(executor)
        torch._C._jit_set_profiling_mode(mode)


def cache_dir() -> Path | None:
    """Where scripted networks are kept: ``$CORX_CACHE_DIR``, else ``$XDG_CACHE_HOME/corx`` or ``~/.cache/corx``
    (sub-folder ``torchscript``); None when ``CORX_CACHE_DIR`` is ``off``."""
    value = os.environ.get(CACHE_ENV, "").strip()
    if value.lower() in ("off", "0", "none", "false"):
        return None
    root = Path(value) if value else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "corx"
    return root / "torchscript"


def cache_key(checkpoint: str | os.PathLike, variant: str, channels_last: bool, overrides: dict[str, Any]) -> str:
    """SHA-256 over the checkpoint's bytes and everything else the scripted network depends on."""
    digest = hashlib.sha256()
    with open(checkpoint, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 22), b""):
            digest.update(block)
    here = Path(__file__).parent
    for name in _NETWORK_SOURCES:
        digest.update((here / name).read_bytes())
    try:
        monai_version = metadata.version("monai")
    except metadata.PackageNotFoundError:
        monai_version = "none"
    settings = {"variant": variant, "channels_last": channels_last, "overrides": overrides,
                "torch": torch.__version__, "monai": monai_version}
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def cached_script_path(checkpoint: str | os.PathLike, variant: str = "corx", channels_last: bool = True,
                       **overrides: Any) -> Path | None:
    """Where the scripted network of ``checkpoint`` is (or would be) cached; None when the cache is off."""
    folder = cache_dir()
    if folder is None:
        return None
    return folder / f"{variant}-{cache_key(checkpoint, variant, channels_last, overrides)[:24]}.pt"


def _build(checkpoint: str | os.PathLike | None, random_init: bool, variant: str, seed: int, channels_last: bool,
           overrides: dict[str, Any]) -> torch.nn.Module:
    from .export import load_network  # imports MONAI
    from .network import to_channels_last

    net = load_network(checkpoint, random_init=random_init, variant=variant, seed=seed, **overrides)
    return to_channels_last(net) if channels_last else net


def script_network(net: torch.nn.Module) -> torch.jit.ScriptModule:
    """``torch.jit.script`` without its deprecation warnings (sizes stay dynamic)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated upstream; it is still how the libtorch format is made
        return torch.jit.script(net)


def load_script(path: str | os.PathLike) -> torch.jit.ScriptModule:
    """``torch.jit.load`` onto the CPU, in eval mode, without its deprecation warnings."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # as above
        return torch.jit.load(str(path), map_location="cpu").eval()


def load_inference_network(checkpoint: str | os.PathLike | None, random_init: bool = False, variant: str = "corx",
                           seed: int = 0, channels_last: bool = True, scripted: bool = True,
                           **overrides: Any) -> tuple[torch.nn.Module, str]:
    """The network in eval mode and how it was loaded: ``"torchscript cache"`` (read from the cache), ``"built,
    cached"`` (built with MONAI, scripted and stored) or ``"built"`` (not ``scripted``, freshly initialised
    weights, or the cache off or not writable: the MONAI-built module). Weights are the checkpoint's
    (``weights_only`` load) or, with ``random_init``, seeded. Call a scripted network under
    :func:`legacy_executor`."""
    target = (None if random_init or checkpoint is None or not scripted
              else cached_script_path(checkpoint, variant, channels_last, **overrides))
    if target is None:
        return _build(checkpoint, random_init, variant, seed, channels_last, overrides).eval(), "built"
    if target.is_file():
        try:
            scripted = load_script(target)
        except (RuntimeError, OSError, ValueError):
            target.unlink(missing_ok=True)  # a damaged entry is rebuilt below
        else:
            if channels_last:
                scripted.to(memory_format=torch.channels_last_3d)
            return scripted, "torchscript cache"
    net = _build(checkpoint, random_init, variant, seed, channels_last, overrides).eval()
    scripted = script_network(net)
    try:
        with atomic_path(target) as tmp:
            scripted.save(str(tmp))
    except OSError:
        return net, "built"
    return scripted, "built, cached"
