"""Start, watch and stop a real Triton Inference Server serving ``corxnet`` (``corx serve``).

On a CPU machine the server is the ``tritonserver`` binary shipped in the nvidia-pytriton wheel, which has only
the Python backend. Its backend directory is a private temporary copy (the wheel's ``libtriton_python.so`` and
the ``triton_python_backend_stub`` built for this Python version), never site-packages; the environment's
``bin`` comes first on PATH so that the stub finds this environment's packages (onnxruntime, numpy), and
``nvidia_pytriton.libs`` is on LD_LIBRARY_PATH for the copied stub's shared libraries. Only ``corxnet`` is loaded
(explicit model control), HTTP/gRPC bind 127.0.0.1 unless told otherwise, metrics are off, and the Python
backend's shared memory starts large enough for 32 MiB (128^3 x 4 channels) requests.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

from corx_bundle.scripts.locations import default_triton_repo

from ..errors import CorxError

MODEL_NAME = "corxnet"
REPO_DEFAULT = default_triton_repo()
SHM_DEFAULT_BYTES = 128 * 1024 * 1024  # one batch of four 32 MiB pairs and their fields fits without growing
SHM_GROWTH_BYTES = 64 * 1024 * 1024


def pytriton_dir() -> Path:
    """Folder of the Triton build inside the nvidia-pytriton wheel (bin/, backends/, python_backend_stubs/)."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise CorxError("nvidia-pytriton is not installed: pip install -e '.[serve]' (it ships tritonserver)")
    root = Path(next(iter(spec.submodule_search_locations))) / "tritonserver"
    if not (root / "bin" / "tritonserver").is_file():
        raise CorxError(f"{root}: no tritonserver binary in the nvidia-pytriton wheel")
    return root


def private_backends(root: Path, target: Path) -> Path:
    """Build ``target/python`` with the wheel's Python backend and the stub for this Python; returns ``target``."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise CorxError(f"{stub}: nvidia-pytriton has no Python backend stub for Python {version}")
    backend = target / "python"
    backend.mkdir(parents=True, exist_ok=True)
    for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
        (backend / name).symlink_to(root / "backends" / "python" / name)
    shutil.copy2(stub, backend / "triton_python_backend_stub")
    return target


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now (for tests and benchmarks)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _check_port(host: str, port: int, what: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server does: TIME_WAIT is no conflict
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise CorxError(f"{what} port {host}:{port} is not available ({exc.strerror}); "
                            f"choose another with --{what.lower()}-port") from exc


def check_repository(repo: Path, model: str = MODEL_NAME) -> None:
    """Refuse a repository without the model's config or without the exported ONNX model, saying how to fix it."""
    if not (repo / model / "config.pbtxt").is_file():
        raise CorxError(f"{repo / model / 'config.pbtxt'}: no Triton model config (is --repo a corx model "
                        "repository? `corx export --repo DIR ...` writes one)")
    onnx_path = repo / model / "1" / "model.onnx"
    if not onnx_path.is_file():
        raise CorxError(f"{onnx_path}: the ONNX model has not been exported yet; run `corx export --checkpoint "
                        f"bundle/models/model.pt --repo {repo}` (or --random_init for tests)")


class TritonServer:
    """One tritonserver process serving ``corxnet`` from ``repo``; use as a context manager or start()/stop()."""

    def __init__(self, repo: str | os.PathLike = REPO_DEFAULT, http_port: int = 8000, grpc_port: int = 8001,
                 host: str = "127.0.0.1", model: str = MODEL_NAME, log_path: str | os.PathLike | None = None,
                 metrics_port: int | None = None, verbose: int = 0, exit_timeout: int = 10,
                 shm_default_bytes: int = SHM_DEFAULT_BYTES, shm_growth_bytes: int = SHM_GROWTH_BYTES) -> None:
        self.repo = Path(repo).resolve()
        self.host, self.http_port, self.grpc_port = host, int(http_port), int(grpc_port)
        self.model, self.metrics_port, self.verbose = model, metrics_port, verbose
        self.exit_timeout = int(exit_timeout)  # in-flight requests and open client connections get this long
        self.log_path = Path(log_path) if log_path is not None else None
        self.shm_default_bytes, self.shm_growth_bytes = int(shm_default_bytes), int(shm_growth_bytes)
        self.process: subprocess.Popen | None = None
        self.returncode: int | None = None  # the server's exit code once stopped
        self._workdir: Path | None = None
        self._log_handle = None

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    def command(self, backend_dir: Path, root: Path) -> list[str]:
        """The tritonserver command line."""
        prefix = f"corx-{os.getpid()}-{uuid.uuid4().hex[:8]}-"  # unique shm names: several servers on one host
        cmd = [
            str(root / "bin" / "tritonserver"),
            f"--model-repository={self.repo}",
            f"--backend-directory={backend_dir}",
            "--model-control-mode=explicit", f"--load-model={self.model}",
            f"--http-address={self.host}", f"--http-port={self.http_port}",
            f"--grpc-address={self.host}", f"--grpc-port={self.grpc_port}",
            f"--backend-config=python,shm-default-byte-size={self.shm_default_bytes}",
            f"--backend-config=python,shm-growth-byte-size={self.shm_growth_bytes}",
            f"--backend-config=python,shm-region-prefix-name={prefix}",
            "--strict-readiness=true", "--exit-on-error=true", f"--exit-timeout-secs={self.exit_timeout}",
            "--pinned-memory-pool-byte-size=0", f"--log-verbose={self.verbose}",
        ]
        if self.metrics_port is None:
            cmd.append("--allow-metrics=false")
        else:
            cmd += [f"--metrics-address={self.host}", f"--metrics-port={self.metrics_port}"]
        return cmd

    def environment(self, root: Path) -> dict[str, str]:
        """PATH with this environment's bin first; LD_LIBRARY_PATH with the wheel's shared libraries."""
        env = dict(os.environ)
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        libs = root.parent.parent / "nvidia_pytriton.libs"
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in [str(libs), env.get("LD_LIBRARY_PATH", "")] if p)
        env.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
        return env

    def start(self, timeout: float = 300.0) -> TritonServer:
        """Launch the server and wait until ``corxnet`` is ready; raises CorxError with the log tail otherwise."""
        if self.process is not None:
            raise CorxError("this Triton server is already started")
        check_repository(self.repo, self.model)
        _check_port(self.host, self.http_port, "HTTP")
        _check_port(self.host, self.grpc_port, "GRPC")
        if self.metrics_port is not None:
            _check_port(self.host, self.metrics_port, "Metrics")
        root = pytriton_dir()
        self._workdir = Path(tempfile.mkdtemp(prefix="corx-triton-"))
        backend_dir = private_backends(root, self._workdir / "backends")
        if self.log_path is None:
            self.log_path = self._workdir / "tritonserver.log"
        if str(self.log_path) != "-":  # "-": the server logs to this process's stderr
            self._log_handle = open(self.log_path, "ab")  # noqa: SIM115 (closed in stop())
        self.process = subprocess.Popen(self.command(backend_dir, root), env=self.environment(root),
                                        stdout=self._log_handle or sys.stderr, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL,
                                        start_new_session=True)  # Ctrl-C reaches us; we stop it cleanly
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def log_tail(self, lines: int = 25) -> str:
        """Last lines of the server log (for error messages)."""
        if self.log_path is None or str(self.log_path) == "-" or not self.log_path.is_file():
            return "(see the server log above)" if str(self.log_path) == "-" else ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def is_ready(self) -> bool:
        """Server live and ``corxnet`` ready, asked through tritonclient's HTTP client (the health API)."""
        import tritonclient.http as httpclient
        from tritonclient.utils import InferenceServerException

        try:
            client = httpclient.InferenceServerClient(self.http_url, connection_timeout=2.0, network_timeout=2.0)
            try:
                return bool(client.is_server_ready() and client.is_model_ready(self.model))
            finally:
                client.close()
        except (InferenceServerException, OSError):  # not listening yet, or refusing while it starts
            return False

    def wait_ready(self, timeout: float = 300.0) -> None:
        """Poll the health endpoints until ready, the process exits, or ``timeout`` seconds pass."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                code = None if self.process is None else self.process.returncode
                raise CorxError(f"tritonserver exited (code {code}) before '{self.model}' was ready; "
                                f"log {self.log_path}:\n{self.log_tail()}")
            if self.is_ready():
                return
            time.sleep(0.25)
        raise CorxError(f"tritonserver: '{self.model}' not ready after {timeout:.0f} s; log {self.log_path}:\n"
                        f"{self.log_tail()}")

    def stop(self, timeout: float | None = None) -> int | None:
        """SIGTERM (graceful: in-flight requests finish), SIGKILL to its process group after ``timeout`` s
        (default: the server's exit timeout + 15 s)."""
        proc, code = self.process, self.returncode
        if proc is not None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(self.exit_timeout + 15.0 if timeout is None else timeout)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)  # the group we created: server and its stubs
                    proc.wait(10)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)  # a Python-backend stub can outlive a server that exited
            code = self.returncode = proc.returncode
        self.process = None
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            if self.log_path is not None and self._workdir in self.log_path.parents:
                self.log_path = None
            self._workdir = None
        return code

    def __enter__(self) -> TritonServer:
        return self if self.process is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _StopRequestedError(Exception):
    """Raised by the SIGTERM/SIGINT handler to leave the serving loop."""


@contextlib.contextmanager
def _stop_signals_raise() -> Iterator[None]:
    """SIGTERM and SIGINT stop the server, also where SIGINT was ignored (background jobs of a shell)."""
    received: list[int] = []

    def handler(signum: int, frame: FrameType | None) -> None:
        if not received:  # a second Ctrl-C must not interrupt the clean stop already under way
            received.append(signum)
            raise _StopRequestedError

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def run_server(repo: str | os.PathLike = REPO_DEFAULT, http_port: int = 8000, grpc_port: int = 8001,
               host: str = "127.0.0.1", timeout: float = 300.0, metrics_port: int | None = None,
               verbose: int = 0) -> int:
    """``corx serve``: start tritonserver, report the endpoints, block until Ctrl-C/SIGTERM, stop cleanly."""
    server = TritonServer(repo, http_port, grpc_port, host, log_path="-", metrics_port=metrics_port, verbose=verbose)
    check_repository(server.repo, server.model)
    print(f"starting tritonserver for '{MODEL_NAME}' from {server.repo} ...", file=sys.stderr, flush=True)
    with _stop_signals_raise():
        try:
            server.start(timeout)
            print(f"ready: HTTP {server.http_url}, gRPC {server.grpc_url}, model '{MODEL_NAME}'; Ctrl-C to stop",
                  file=sys.stderr, flush=True)
            while server.process is not None and server.process.poll() is None:
                time.sleep(0.5)
            raise CorxError("tritonserver stopped on its own (see its log above)")
        except (KeyboardInterrupt, _StopRequestedError):
            print("stopping tritonserver ...", file=sys.stderr, flush=True)
        finally:
            code = server.stop()
    print(f"tritonserver stopped (exit code {code})", file=sys.stderr, flush=True)
    return 0
