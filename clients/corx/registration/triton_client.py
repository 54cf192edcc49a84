"""Thin Triton client for ``corxnet``: validated pairs in, displacement fields out (HTTP or gRPC, no torch).

Binary tensors over HTTP (gRPC is binary anyway); system shared memory when the server is on this host (on by
default for loopback addresses, falling back to the wire if the server cannot map it); per-call timeouts; a few
retries with a clear :class:`~corx.errors.CorxError` when the server is down, the model is not ready, or the
server refuses the input. One instance holds one connection: use one per thread.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
import warnings
from typing import Any

import numpy as np

from ..errors import CorxError
from .backends import displacement_from_output, parse_integration_steps

LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")
# connection-level failures and a model going away (server shutting down or restarting): retried, then reported
_TRANSIENT = ("unavailable", "failed to connect", "connection refused", "connection reset", "connection closed",
              "socket closed", "broken pipe", "not ready", "connect failed", "unknown model", "no available versions",
              "server is shutting down", "exiting")


def _is_transient(exc: BaseException) -> bool:
    """Connection-level failures (server down or restarting) that are worth a retry; timeouts are not."""
    if isinstance(exc, TimeoutError):
        return False
    if isinstance(exc, (ConnectionError, OSError)):
        return True
    text = f"{getattr(exc, 'status', lambda: '')()} {exc}".lower()
    return any(t.lower() in text for t in _TRANSIENT)


def _is_timeout(exc: BaseException) -> bool:
    text = f"{getattr(exc, 'status', lambda: '')()} {exc}".lower()
    return isinstance(exc, TimeoutError) or "deadline" in text or "timed out" in text or "timeout" in text


class TritonBackend:
    """Run CoRX-NET on a Triton server: ``infer(pair) -> field``.

    Args:
        url: ``host:port`` of the server's HTTP (protocol "http") or gRPC (protocol "grpc") endpoint.
        shared_memory: pass tensors through POSIX shared memory; ``None`` = when the host is a loopback address.
        timeout: seconds one inference may take (CPU at 128^3: several seconds a pair, more when queued).
        retries: extra attempts after a connection failure (not after a refusal or a timeout).
    """

    def __init__(self, url: str = "127.0.0.1:8000", protocol: str = "http", model: str = "corxnet",
                 shared_memory: bool | None = None, timeout: float = 300.0, connect_timeout: float = 10.0,
                 retries: int = 2, retry_delay: float = 1.0) -> None:
        if protocol not in ("http", "grpc"):
            raise CorxError(f"protocol must be 'http' or 'grpc', got {protocol!r}")
        self.url, self.protocol, self.model = url, protocol, model
        host = url.rsplit(":", 1)[0]
        self.want_shm = host in LOOPBACK if shared_memory is None else bool(shared_memory)
        self._shm_required = shared_memory is True
        self.timeout, self.connect_timeout = float(timeout), float(connect_timeout)
        self.retries, self.retry_delay = int(retries), float(retry_delay)
        self._client: Any = None
        self._shm: dict[str, tuple[Any, str, int]] = {}  # role -> (handle, region name, bytes)
        self.input_name = self.output_name = ""
        self.input_shape: tuple[int, ...] = ()
        self.integration_steps = 0
        self.output_shape: tuple[int, ...] = ()
        self.max_batch_size = 0

    # -- connection ---------------------------------------------------------------------------------------------
    def _module(self) -> Any:
        try:
            if self.protocol == "http":
                import tritonclient.http as module
            else:
                import tritonclient.grpc as module
        except ImportError as exc:
            raise CorxError(f"tritonclient[{self.protocol}] is not installed: pip install -e '.[serve]'") from exc
        return module

    def _new_client(self) -> Any:
        module = self._module()
        if self.protocol == "http":
            return module.InferenceServerClient(self.url, connection_timeout=self.connect_timeout,
                                                network_timeout=self.timeout)
        return module.InferenceServerClient(self.url)

    def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        if self.protocol == "grpc":
            kwargs.setdefault("client_timeout", self.connect_timeout)
        return getattr(self._client, name)(*args, **kwargs)

    def connect(self) -> TritonBackend:
        """Open the connection, wait (with retries) for the model to be ready, read its config."""
        if self._client is not None:
            return self
        last: BaseException | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.retry_delay)
            try:
                self._client = self._client or self._new_client()
                if not self._call("is_server_live"):
                    last = CorxError("server not live")
                    continue
                if not self._call("is_model_ready", self.model):
                    last = CorxError(f"model '{self.model}' is not ready")
                    continue
                self._read_config()
                return self
            except CorxError:
                raise
            except Exception as exc:  # tritonclient/gevent/grpc raise many types
                last = exc
                if not _is_transient(exc) and not _is_timeout(exc):
                    break
        self.close()
        if isinstance(last, CorxError) and "not ready" in str(last):
            raise CorxError(f"Triton at {self.url} ({self.protocol}) is up but model '{self.model}' is not ready "
                            f"(still loading, or failed to load: see the server log)")
        raise CorxError(f"Triton server at {self.url} ({self.protocol}) is not reachable after "
                        f"{self.retries + 1} attempts ({last}); start it with `corx serve`")

    def _read_config(self) -> None:
        if self.protocol == "http":
            config = self._client.get_model_config(self.model)
        else:
            config = self._call("get_model_config", self.model, as_json=True)["config"]
        (inp,), (out,) = config["input"], config["output"]
        if inp.get("data_type") != "TYPE_FP32" or out.get("data_type") != "TYPE_FP32":
            raise CorxError(f"model '{self.model}' on {self.url} does not take/return FP32 tensors")
        self.input_name, self.output_name = inp["name"], out["name"]
        self.input_shape = tuple(int(d) for d in inp["dims"])
        self.output_shape = tuple(int(d) for d in out["dims"])
        self.max_batch_size = int(config.get("max_batch_size", 0))
        steps = config.get("parameters", {}).get("integration_steps", {}).get("string_value")
        self.integration_steps = parse_integration_steps(steps, f"model '{self.model}' on {self.url}")

    def close(self) -> None:
        """Unregister and free the shared-memory regions, close the connection."""
        if self._shm:
            from tritonclient.utils import shared_memory as shm

            for handle, name, _ in self._shm.values():
                if self._client is not None:
                    with contextlib.suppress(Exception):  # the server may be gone already
                        self._call("unregister_system_shared_memory", name)
                with contextlib.suppress(Exception):
                    shm.destroy_shared_memory_region(handle)
            self._shm.clear()
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close()
            self._client = None

    def __enter__(self) -> TritonBackend:
        return self.connect()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- validation ---------------------------------------------------------------------------------------------
    def validate(self, pair: np.ndarray) -> np.ndarray:
        """Check dtype, shape, batch size and values against the served model; returns a (B, 4, ...) array."""
        arr = np.asarray(pair)
        if arr.dtype != np.float32:
            raise CorxError(f"pair must be float32, got {arr.dtype} (the model's input '{self.input_name}' is FP32)")
        batch = arr[None] if arr.ndim == len(self.input_shape) else arr
        if batch.ndim != len(self.input_shape) + 1 or tuple(batch.shape[1:]) != self.input_shape:
            expected = "x".join(map(str, self.input_shape))
            raise CorxError(f"pair has shape {arr.shape}; model '{self.model}' expects {expected} "
                            f"(or a batch of them): preprocess to the served size")
        if self.max_batch_size and batch.shape[0] > self.max_batch_size:
            raise CorxError(f"batch of {batch.shape[0]} pairs exceeds the model's max_batch_size "
                            f"{self.max_batch_size}: send fewer at a time")
        if not np.isfinite(batch).all():
            raise CorxError("pair contains NaN or infinite values")
        if batch.min() < -1e-3 or batch.max() > 1 + 1e-3:
            raise CorxError(f"pair values must lie in [0, 1] (got {batch.min():.3g}..{batch.max():.3g}): "
                            "preprocess with corx.registration.preprocess.preprocess_pair")
        return np.ascontiguousarray(batch)

    # -- shared memory ------------------------------------------------------------------------------------------
    def _region(self, role: str, nbytes: int) -> tuple[Any, str]:
        """A registered system shared-memory region of at least ``nbytes`` for ``role`` ("in"/"out")."""
        from tritonclient.utils import shared_memory as shm

        if role in self._shm and self._shm[role][2] >= nbytes:
            return self._shm[role][0], self._shm[role][1]
        if role in self._shm:
            handle, name, _ = self._shm.pop(role)
            self._call("unregister_system_shared_memory", name)
            shm.destroy_shared_memory_region(handle)
        name = f"corx_{os.getpid()}_{uuid.uuid4().hex[:12]}_{role}"
        handle = shm.create_shared_memory_region(name, f"/{name}", nbytes)
        try:
            self._call("register_system_shared_memory", name, f"/{name}", nbytes)
        except Exception:
            shm.destroy_shared_memory_region(handle)
            raise
        self._shm[role] = (handle, name, nbytes)
        return handle, name

    def _infer_once(self, batch: np.ndarray) -> np.ndarray:
        module = self._module()
        out_shape = (batch.shape[0], *self.output_shape)
        out_bytes = int(np.prod(out_shape)) * 4
        inp = module.InferInput(self.input_name, list(batch.shape), "FP32")
        if self.protocol == "http":
            out = module.InferRequestedOutput(self.output_name, binary_data=True)
        else:
            out = module.InferRequestedOutput(self.output_name)
        use_shm = self.want_shm
        if use_shm:
            try:
                in_handle, in_name = self._region("in", batch.nbytes)
                out_handle, out_name = self._region("out", out_bytes)
            except Exception as exc:
                if self._shm_required or _is_transient(exc):
                    raise
                warnings.warn(f"system shared memory unavailable on {self.url} ({exc}); sending tensors inline",
                              stacklevel=3)
                self.want_shm = use_shm = False
        if use_shm:
            from tritonclient.utils import shared_memory as shm

            shm.set_shared_memory_region(in_handle, [batch])
            inp.set_shared_memory(in_name, batch.nbytes)
            out.set_shared_memory(out_name, out_bytes)
        elif self.protocol == "http":
            inp.set_data_from_numpy(batch, binary_data=True)
        else:
            inp.set_data_from_numpy(batch)
        kwargs = {"client_timeout": self.timeout} if self.protocol == "grpc" else {}
        result = self._client.infer(self.model, [inp], outputs=[out], **kwargs)
        if use_shm:
            return np.array(shm.get_contents_as_numpy(out_handle, np.float32, out_shape), copy=True)
        return np.asarray(result.as_numpy(self.output_name), dtype=np.float32)

    # -- inference ----------------------------------------------------------------------------------------------
    def infer(self, pair: np.ndarray) -> np.ndarray:
        """Field(s) for one pair (4, X, Y, Z) -> (3, X, Y, Z), or a batch (B, 4, ...) -> (B, 3, ...)."""
        self.connect()
        batch = self.validate(pair)
        last: BaseException | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.retry_delay)
            try:
                if self._client is None:
                    self.connect()
                field = displacement_from_output(self._infer_once(batch), self.integration_steps)
                return field[0] if np.asarray(pair).ndim == len(self.input_shape) else field
            except CorxError:
                raise
            except Exception as exc:
                last = exc
                if _is_timeout(exc):
                    self.close()
                    raise CorxError(f"no answer from Triton at {self.url} within {self.timeout:.0f} s "
                                    f"(server overloaded or stuck; raise --timeout)") from exc
                if not _is_transient(exc):
                    raise CorxError(f"Triton at {self.url} refused the request: {exc}") from exc
                self.close()  # reconnect (and re-register shared memory) on the next attempt
        raise CorxError(f"Triton server at {self.url} ({self.protocol}) failed during inference after "
                        f"{self.retries + 1} attempts ({last}); is the server still running?")
