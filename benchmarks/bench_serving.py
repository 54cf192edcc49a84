"""CoRX-NET inference at 128^3 on CPU: Triton (HTTP, gRPC, shared memory) versus in-process (eager, bf16, ORT).

Exports a freshly initialised CoRX-NET (timing only: weights do not change the cost) to ONNX and TorchScript in a
temporary model repository (or uses --repo DIR if it already holds corxnet/1/model.onnx). Served modes ending in
"@ts" go to a server whose corxnet runs the TorchScript model in float32 (runtime torchscript), "@bf16" to one
running it in bf16 (runtime torchscript-bf16); the others to one running ONNX Runtime. In-process "bf16" is
channels-last (the default), "bf16-contiguous" is not. Each mode runs in its own worker process (all loaded and
warmed up first, then driven in interleaved rounds so that a drifting CPU speed affects every mode alike):
--requests timed pairs per mode, one at a time. Prints latency p50/p95, throughput (pairs/s) and peak memory
(worker RSS; for Triton also the server and its Python-backend stub).

    python benchmarks/bench_serving.py [--requests 3] [--size 128] [--repo DIR] [--modes eager,bf16,onnx,...]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

IN_PROCESS = ("eager", "bf16", "bf16-contiguous", "onnx")
SERVED = ("http", "grpc", "http+shm", "grpc+shm", "grpc+shm@ts", "http@bf16", "grpc+shm@bf16")
RUNTIME_OF_KIND = {"onnx": "onnxruntime", "ts": "torchscript", "bf16": "torchscript-bf16"}  # server kinds


def _backend(mode: str, repo: str, url: str):
    from corx.registration.backends import OnnxRuntimeBackend, TorchBackend
    from corx.registration.triton_client import TritonBackend

    if mode in ("eager", "bf16", "bf16-contiguous"):
        return TorchBackend(random_init=True, precision="fp32" if mode == "eager" else "bf16",
                            channels_last=mode != "bf16-contiguous")
    if mode == "onnx":
        return OnnxRuntimeBackend(Path(repo) / "corxnet" / "1" / "model.onnx")
    transport = mode.split("@")[0]
    protocol, shm = transport.split("+")[0], transport.endswith("+shm")
    return TritonBackend(url, protocol=protocol, shared_memory=shm, timeout=600).connect()


def worker(mode: str, size: int, repo: str, url: str) -> None:
    """Serve timing requests on stdin: "run" -> one timed pair, "quit" -> peak RSS (MiB); JSON lines out."""
    backend = _backend(mode, repo, url)
    pair = np.random.default_rng(0).random((4, size, size, size), dtype=np.float32)
    backend.infer(pair)  # warm-up (first-call allocations, connection, shared-memory registration)
    print(json.dumps({"ready": mode}), flush=True)
    for line in sys.stdin:
        if line.strip() != "run":
            break
        start, cpu = time.perf_counter(), time.process_time()
        backend.infer(pair)
        print(json.dumps({"latency": time.perf_counter() - start, "cpu": time.process_time() - cpu}), flush=True)
    backend.close()
    print(json.dumps({"rss_mib": _peak_rss_mib(os.getpid(), children=False)}), flush=True)


class Worker:
    """One mode in its own process, driven line by line (so modes can be interleaved)."""

    def __init__(self, mode: str, args: argparse.Namespace, repo: Path, url: str = "") -> None:
        self.mode = mode
        cmd = [sys.executable, __file__, "--worker", mode, "--size", str(args.size), "--repo", str(repo),
               "--url", url]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.latencies: list[float] = []
        self.cpu: list[float] = []  # CPU seconds per pair: this worker, plus the server's for Triton modes
        self.rss_mib = float("nan")
        self._read("ready")

    def _read(self, key: str) -> float:
        line = self.proc.stdout.readline()  # type: ignore[union-attr]
        if not line:
            raise RuntimeError(f"worker {self.mode} died (exit code {self.proc.wait()})")
        self.last = json.loads(line)
        return self.last[key]

    def run(self, server_pid: int | None = None) -> None:
        before = _cpu_seconds(server_pid) if server_pid else 0.0
        self.proc.stdin.write("run\n")  # type: ignore[union-attr]
        self.proc.stdin.flush()  # type: ignore[union-attr]
        self.latencies.append(self._read("latency"))
        server = _cpu_seconds(server_pid) - before if server_pid else 0.0
        self.cpu.append(self.last["cpu"] + server)

    def quit(self) -> None:
        self.proc.stdin.write("quit\n")  # type: ignore[union-attr]
        self.proc.stdin.flush()  # type: ignore[union-attr]
        self.rss_mib = self._read("rss_mib")
        self.proc.wait(60)


def _peak_rss_mib(pid: int, children: bool = True) -> float:
    """VmHWM (peak RSS) of ``pid`` plus that of its child processes (the Python-backend stub), in MiB.

    (Not getrusage's ru_maxrss: Linux carries it over fork + exec from the parent.)
    """
    total = 0.0
    for p in _tree(pid) if children else [pid]:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1]) / 1024
        except OSError:
            pass
    return total


def _tree(pid: int) -> list[int]:
    pids = [pid]
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            pids += [int(c) for c in (task / "children").read_text().split()]
    except OSError:
        pass
    return pids


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its children (tritonserver and its Python-backend stub)."""
    total = 0.0
    for p in _tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            pass
    return total


def _export(repo: Path, size: int) -> None:
    from corx_bundle.scripts.export import export_repository

    start = time.perf_counter()
    report = export_repository(repo, random_init=True, spatial_size=size, torchscript=True)
    print(f"exported ONNX and TorchScript in {time.perf_counter() - start:.0f} s (max |ORT - eager| "
          f"{report.max_abs_diff['onnx']:.1e} voxels)", flush=True)


def _server_kind(mode: str) -> str:
    """Which server a served mode goes to: "onnx", "ts" or "bf16" (the suffix after "@")."""
    return mode.split("@")[1] if "@" in mode else "onnx"


def _runtime_repo(repo: Path, target: Path, size: int, runtime: str) -> Path:
    """A copy of ``repo`` whose corxnet runs ``runtime``."""
    import shutil

    from corx_bundle.scripts.export import write_repository

    shutil.copytree(repo, target)
    write_repository(target, (size,) * 3, runtime=runtime)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--requests", type=int, default=3)
    parser.add_argument("--repo", default="")
    parser.add_argument("--modes", default=",".join(IN_PROCESS + SERVED))
    parser.add_argument("--worker", default="")
    parser.add_argument("--url", default="")
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.size, args.repo, args.url)
        return

    modes = [m for m in args.modes.split(",") if m in IN_PROCESS + SERVED]

    from corx.registration.backends import bf16_refusal

    if refusal := bf16_refusal("cpu"):  # emulated bf16 would take minutes per pair: leave it out, say so
        print(f"bf16 modes left out: {refusal}")
        modes = [m for m in modes if "bf16" not in m]
    with tempfile.TemporaryDirectory(prefix="corx-bench-") as tmp, contextlib.ExitStack() as stack:
        repo = Path(args.repo) if args.repo else Path(tmp) / "repo"
        if not (repo / "corxnet" / "1" / "model.onnx").is_file():
            _export(repo, args.size)
        servers: dict[str, Any] = {}  # server kind -> TritonServer
        for kind in {_server_kind(m) for m in modes if m in SERVED}:
            from corx.serving.server import TritonServer, free_port

            served_repo = (repo if kind == "onnx" else
                           _runtime_repo(repo, Path(tmp) / f"repo_{kind}", args.size, RUNTIME_OF_KIND[kind]))
            servers[kind] = stack.enter_context(TritonServer(served_repo, free_port(), free_port(), exit_timeout=2))

        def server_of(mode: str) -> Any:
            return servers.get(_server_kind(mode)) if mode in SERVED else None

        workers = []
        for mode in modes:
            print(f"starting {mode} (load + warm-up) ...", flush=True)
            server = server_of(mode)
            url = "" if server is None else server.grpc_url if mode.startswith("grpc") else server.http_url
            workers.append(Worker(mode, args, repo, url))
        for r in range(args.requests):  # interleaved, so that a drifting CPU speed affects every mode alike
            print(f"round {r + 1}/{args.requests}", flush=True)
            for w in workers:
                server = server_of(w.mode)
                w.run(server.process.pid if server and server.process else None)
        for w in workers:
            w.quit()
        server_mib = {kind: _peak_rss_mib(s.process.pid) if s.process else float("nan")
                      for kind, s in servers.items()}

    print(f"\nCoRX-NET, one pair {args.size}^3 (4 x {args.size}^3 float32 in, 3 x {args.size}^3 out), "
          f"{args.requests} requests per mode after a warm-up, modes interleaved, one request at a time, CPU")
    print(f"{'mode':<22}{'p50 s':>8}{'p95 s':>8}{'pairs/s':>9}{'CPU s/pair':>12}{'client MiB':>12}"
          f"{'server MiB':>12}")
    for w in workers:
        lat = np.array(w.latencies)
        label = w.mode if w.mode in IN_PROCESS else f"triton {w.mode}"
        srv = f"{server_mib[_server_kind(w.mode)]:>12.0f}" if w.mode in SERVED else f"{'-':>12}"
        print(f"{label:<22}{np.percentile(lat, 50):>8.2f}{np.percentile(lat, 95):>8.2f}"
              f"{len(lat) / lat.sum():>9.3f}{np.median(w.cpu):>12.1f}{w.rss_mib:>12.0f}{srv}")
    print("pairs/s: one client, sequential requests. CPU s/pair: median user+system CPU seconds of the client "
          "process plus, for Triton, tritonserver and its stub (less sensitive than wall time to other load on the "
          "machine). server MiB: peak RSS of tritonserver + stub over the Triton modes it served (@ts / @bf16: the "
          "servers running the TorchScript model in float32 / bf16; others: ONNX Runtime float32).")


if __name__ == "__main__":
    main()
