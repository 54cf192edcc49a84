"""Where the network runs: the same ``infer(pair) -> field`` interface in-process or on a Triton server.

- ``TorchBackend``: eager PyTorch in this process (fp32, or bf16 autocast on CPU); torch and the bundle are
  imported only when it is created. The default backend: needs no server.
- ``OnnxRuntimeBackend``: the exported ONNX model with ONNX Runtime in this process (no torch).
- ``TritonBackend`` (corx.registration.triton_client): a Triton server over HTTP or gRPC.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from corx_bundle.scripts.locations import default_checkpoint, default_triton_repo

from ..errors import CorxError

DEFAULT_CHECKPOINT = default_checkpoint()
BACKENDS = ("inprocess", "onnx", "http", "grpc")


def bf16_refusal(device: str) -> str | None:
    """Why bf16 must not run on ``device`` here (a sentence: the CPU would emulate it), or None when it may."""
    if not str(device).startswith("cpu"):
        return None
    import torch

    from corx_bundle.scripts.inferers import BF16_EMULATION_NOTE, cpu_runs_bf16

    if cpu_runs_bf16():
        return None
    return (f"this CPU ({torch.backends.cpu.get_cpu_capability()}) has no AVX-512/AMX bfloat16 support: "
            f"{BF16_EMULATION_NOTE}; use precision fp32")


class Backend(Protocol):
    """Runs CoRX-NET: (4, X, Y, Z) or (B, 4, X, Y, Z) float32 in [0, 1] -> displacement field (3, ...) or
    (B, 3, ...) in voxels. A network that outputs a velocity field (``integration_steps`` > 0) is integrated by
    the backend, so callers always get a displacement."""

    #: per-pair input shape the backend requires (4, X, Y, Z), or () when any size works
    input_shape: tuple[int, ...]

    def infer(self, pair: np.ndarray) -> np.ndarray: ...

    def close(self) -> None: ...


def displacement_from_output(output: np.ndarray, steps: int) -> np.ndarray:
    """The network output as a displacement field: itself, or (``steps`` > 0) its scaling-and-squaring integral
    (numpy twin of the bundle's ``DVF2DDF`` integration: ``corx_bundle.scripts.fieldops.integrate_velocity``)."""
    out = np.asarray(output, dtype=np.float32)
    if steps <= 0:
        return out
    from corx_bundle.scripts.fieldops import integrate_velocity

    return integrate_velocity(out, steps)


def parse_integration_steps(value: object, where: str) -> int:
    """The ``integration_steps`` a served model declares (absent: 0); CorxError naming ``where`` otherwise."""
    if value in (None, ""):
        return 0
    try:
        steps = int(str(value))
    except ValueError:
        steps = -1
    if not 0 <= steps <= 12:
        raise CorxError(f"{where}: integration_steps must be an integer in [0, 12], got {value!r}")
    return steps


def _as_batch(pair: np.ndarray) -> tuple[np.ndarray, bool]:
    arr = np.asarray(pair)
    if arr.dtype != np.float32:
        raise CorxError(f"pair must be float32, got {arr.dtype}")
    if arr.ndim == 4 and arr.shape[0] == 4:
        return arr[None], True
    if arr.ndim == 5 and arr.shape[1] == 4:
        return arr, False
    raise CorxError(f"pair must be (4, X, Y, Z) or (B, 4, X, Y, Z), got shape {arr.shape}")


def inprocess_checkpoint(checkpoint: str | os.PathLike | None, random_init: bool) -> str | os.PathLike | None:
    """The weights in-process CoRX-NET will load (None with ``random_init``); CorxError when PyTorch or the
    weights are missing. Cheap: nothing is imported."""
    if importlib.util.find_spec("torch") is None:
        raise CorxError("in-process CoRX-NET needs PyTorch, which this installation lacks: "
                        "pip install 'corx[net]', or register through a Triton server (--server HOST:PORT), "
                        "or --method identity")
    if checkpoint is None and not random_init:
        if not DEFAULT_CHECKPOINT.is_file():
            raise CorxError(f"no trained weights at {DEFAULT_CHECKPOINT}: pass --checkpoint PATH, or "
                            "--random_init for freshly initialised weights (tests only)")
        return DEFAULT_CHECKPOINT
    return checkpoint


class BackgroundBackend:
    """A backend made on its own thread, so that importing PyTorch and MONAI and reading the weights (seconds)
    overlaps with the caller's work (the pipeline reads and resamples the reference meanwhile). The first
    :meth:`infer` waits for it; an error while making it is raised there."""

    def __init__(self, make: Callable[[], Backend], input_shape: tuple[int, ...] = ()) -> None:
        self.input_shape = input_shape
        self._made: Future[Backend] = Future()
        self._thread = threading.Thread(target=self._make, args=(make,), name="corx-load-network", daemon=True)
        self._thread.start()

    def _make(self, make: Callable[[], Backend]) -> None:
        try:
            self._made.set_result(make())
        except BaseException as exc:  # handed to the caller of infer()
            self._made.set_exception(exc)

    @property
    def backend(self) -> Backend:
        """The backend, once made (waits)."""
        return self._made.result()

    def infer(self, pair: np.ndarray) -> np.ndarray:
        return self.backend.infer(pair)

    def close(self) -> None:
        self._thread.join()
        if self._made.exception() is None:
            self._made.result().close()


class TorchBackend:
    """CoRX-NET in this process with PyTorch (lazy import); ``precision`` "fp32" or "bf16" (autocast).

    ``channels_last`` (default) keeps weights and input in NDHWC memory: same field, faster on CPU. In float32 a
    checkpoint's network comes from the TorchScript cache once it has been built there (no MONAI import, and the
    legacy graph executor's smaller, faster first forward; the same field: ``corx_bundle.scripts.scripted``);
    ``loaded_from`` says how it was loaded. bfloat16 autocast runs the MONAI-built module.
    """

    def __init__(self, checkpoint: str | os.PathLike | None = None, random_init: bool = False,
                 variant: str = "corx", precision: str = "fp32", device: str = "cpu", threads: int | None = None,
                 seed: int = 0, channels_last: bool = True, **overrides: Any) -> None:
        if precision not in ("fp32", "bf16"):
            raise CorxError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
        checkpoint = inprocess_checkpoint(checkpoint, random_init)
        import torch

        from corx_bundle.scripts.allocator import keep_freed_memory
        from corx_bundle.scripts.scripted import legacy_executor, load_inference_network, output_integration_steps

        if precision == "bf16" and (refusal := bf16_refusal(device)):
            raise CorxError(f"bf16 refused: {refusal}")
        if threads:
            torch.set_num_threads(int(threads))
        # freed tensors stay in the heap for the next layer instead of being page-faulted in again: about 2x faster
        # per 128^3 pair on CPU, same field (bundle/scripts/allocator.py; CORX_MALLOC=default turns it off)
        self.keeps_freed_memory = keep_freed_memory()
        self.torch = torch
        self.device = torch.device(device)
        self.precision = precision
        net, self.loaded_from = load_inference_network(checkpoint, random_init=random_init, variant=variant,
                                                       seed=seed, channels_last=channels_last,
                                                       scripted=precision == "fp32", **overrides)
        self.net = net.to(self.device)
        self._executor = legacy_executor if isinstance(net, torch.jit.ScriptModule) else contextlib.nullcontext
        self.integration_steps = output_integration_steps(self.net)
        self.memory_format = torch.channels_last_3d if channels_last else torch.contiguous_format
        self.input_shape: tuple[int, ...] = ()

    def infer(self, pair: np.ndarray) -> np.ndarray:
        batch, single = _as_batch(pair)
        torch = self.torch
        x = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device).contiguous(memory_format=self.memory_format)
        with torch.inference_mode():
            with self._executor(), torch.autocast(self.device.type, dtype=torch.bfloat16,
                                                  enabled=self.precision == "bf16"):
                field = self.net(x)
            field = field.float().contiguous()
            if self.integration_steps:
                from corx_bundle.scripts.inferers import displacement_from_output  # imports MONAI (DVF2DDF)

                field = displacement_from_output(field, self.integration_steps)
        out = field.cpu().contiguous().numpy()
        return out[0] if single else out

    def close(self) -> None:
        self.net = None


class OnnxRuntimeBackend:
    """The exported ONNX model in this process with ONNX Runtime (CPU); no torch."""

    def __init__(self, onnx_path: str | os.PathLike, threads: int = 0) -> None:
        path = Path(onnx_path)
        if not path.is_file():
            raise CorxError(f"{path}: ONNX model not found; export it with `corx export --checkpoint MODEL.pt`")
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise CorxError("onnxruntime is not installed: pip install -e '.[serve]'") from exc
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(threads)
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        inp = self.session.get_inputs()[0]
        self.input_name, self.output_name = inp.name, self.session.get_outputs()[0].name
        meta = self.session.get_modelmeta().custom_metadata_map
        self.integration_steps = parse_integration_steps(meta.get("integration_steps"), str(path))
        self.input_shape = tuple(int(d) for d in inp.shape[1:]) if all(isinstance(d, int) for d in inp.shape[1:]) \
            else ()

    def infer(self, pair: np.ndarray) -> np.ndarray:
        batch, single = _as_batch(pair)
        if self.input_shape and tuple(batch.shape[1:]) != self.input_shape:
            raise CorxError(f"pair has shape {batch.shape[1:]}; the ONNX model expects {self.input_shape}")
        (out,) = self.session.run([self.output_name], {self.input_name: np.ascontiguousarray(batch)})
        out = displacement_from_output(out, self.integration_steps)
        return out[0] if single else out

    def close(self) -> None:
        self.session = None


def make_backend(kind: str = "inprocess", url: str | None = None, checkpoint: str | None = None,
                 random_init: bool = False, onnx: str | None = None, timeout: float = 300.0,
                 shared_memory: bool | None = None, **kwargs: Any) -> Backend:
    """Backend by name: "inprocess" (PyTorch), "onnx" (ONNX Runtime), "http" or "grpc" (Triton)."""
    if kind == "inprocess":
        return TorchBackend(checkpoint, random_init=random_init, **kwargs)
    if kind == "onnx":
        return OnnxRuntimeBackend(onnx or default_triton_repo() / "corxnet" / "1" / "model.onnx", **kwargs)
    if kind in ("http", "grpc"):
        from .triton_client import TritonBackend

        default = "127.0.0.1:8000" if kind == "http" else "127.0.0.1:8001"
        return TritonBackend(url or default, protocol=kind, timeout=timeout, shared_memory=shared_memory,
                             **kwargs).connect()
    raise CorxError(f"unknown backend {kind!r} (choose from {', '.join(BACKENDS)})")
