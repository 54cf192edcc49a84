"""Export + a real Triton server on loopback: served fields equal in-process PyTorch; concurrency; failures.

A small CoRX-NET (embed_dim 12) at 64^3 is exported into a temporary copy of the model repository (configs
written for 64^3); the committed triton_repo/ configs are for 128^3 and are checked against the generator.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from corx.errors import CorxError

pytestmark = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("tritonclient", "onnxruntime", "pytriton", "torch")),
    reason="needs the serve and net extras (tritonclient, onnxruntime, nvidia-pytriton, torch)",
)

ROOT = Path(__file__).resolve().parents[1]
SIZE = 64
EMBED = 12
STEPS = 5
FIELD_TOL = 1e-3  # voxels


def _pair(seed: int, batch: int | None = None) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (4, SIZE, SIZE, SIZE) if batch is None else (batch, 4, SIZE, SIZE, SIZE)
    return rng.random(shape, dtype=np.float32)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Checkpoint of a small network whose field is O(1) voxels, exported (ONNX + TorchScript) at 64^3.

    It outputs a stationary velocity field (``integration_steps`` 5): the served model returns the raw output and
    the clients integrate it in numpy, the in-process reference in torch (MONAI ``DVF2DDF``); every comparison
    with the reference below therefore also checks that the two integrations agree.
    """
    import torch

    from corx_bundle.scripts.export import export_repository, save_checkpoint
    from corx_bundle.scripts.network import build_network

    tmp = tmp_path_factory.mktemp("serving")
    torch.manual_seed(0)
    net = build_network("corx", embed_dim=EMBED, integration_steps=STEPS)
    for head in net.heads:  # the initial head gives |u| ~ 1e-4: make differences visible
        torch.nn.init.normal_(head.weight, std=0.02)
    checkpoint = save_checkpoint(net, tmp / "model.pt")
    report = export_repository(tmp / "repo", checkpoint=checkpoint, spatial_size=SIZE, max_batch=4,
                               torchscript=True, embed_dim=EMBED)
    return {"repo": tmp / "repo", "checkpoint": checkpoint, "report": report}


@pytest.fixture(scope="module")
def reference(exported: dict):
    from corx.registration.backends import TorchBackend

    backend = TorchBackend(exported["checkpoint"], embed_dim=EMBED)
    cache: dict[int, np.ndarray] = {}

    def field(seed: int) -> np.ndarray:
        if seed not in cache:
            cache[seed] = backend.infer(_pair(seed))
        return cache[seed]

    return field


@pytest.fixture(scope="module")
def server(exported: dict):
    from corx.serving.server import TritonServer, free_port

    with TritonServer(exported["repo"], free_port(), free_port(), exit_timeout=2) as srv:
        yield srv


def test_export_is_checked_and_writes_configs_for_its_size(exported: dict) -> None:
    from corx_bundle.scripts.export import read_config, render_configs

    report = exported["report"]
    assert report.max_abs_field > 0.05  # a real field, so the comparison below means something
    assert report.max_abs_diff["onnx"] <= FIELD_TOL
    assert report.max_abs_diff["torchscript"] <= 1e-4
    repo = exported["repo"]
    assert (repo / "corxnet" / "1" / "model.onnx").is_file() and (repo / "corxnet_ts" / "1" / "model.pt").is_file()
    assert list(read_config(repo / "corxnet" / "config.pbtxt").input[0].dims) == [4, 64, 64, 64]
    for name in ("corxnet", "corxnet_trt", "corxnet_ts"):  # the clients integrate the velocity output
        assert read_config(repo / name / "config.pbtxt").parameters["integration_steps"].string_value == str(STEPS)
    # the tracked configs are exactly what the generator writes for 128^3
    for name, text in render_configs((128, 128, 128)).items():
        assert (ROOT / "triton_repo" / name / "config.pbtxt").read_text() == text, name
    assert 'platform: "tensorrt_plan"' in render_configs()["corxnet_trt"]


def test_onnx_runtime_backend_integrates_like_in_process(exported: dict, reference) -> None:
    from corx.registration.backends import OnnxRuntimeBackend

    backend = OnnxRuntimeBackend(exported["repo"] / "corxnet" / "1" / "model.onnx")
    assert backend.integration_steps == STEPS  # read from the ONNX model's metadata
    field = backend.infer(_pair(3))
    assert float(np.abs(field - reference(3)).max()) <= FIELD_TOL


def test_checkpoint_is_required_unless_random_init_is_explicit() -> None:
    from corx_bundle.scripts.export import load_network

    with pytest.raises(FileNotFoundError, match="--random_init"):
        load_network(None)
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_network("/nonexistent/model.pt")


def test_tensorrt_export_fails_clearly_without_gpu(tmp_path: Path) -> None:
    from corx_bundle.scripts.export import tensorrt_unavailable

    if tensorrt_unavailable() is None:
        pytest.skip("a GPU and tensorrt are present: the engine build is exercised on the GPU server")
    proc = subprocess.run([str(Path(sys.executable).parent / "corx"), "export", "--random_init", "--tensorrt",
                           "--repo", str(tmp_path / "repo"), "--spatial_size", "32"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "error: TensorRT engine not built:" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "repo" / "corxnet" / "1" / "model.onnx").exists()


@pytest.mark.slow
@pytest.mark.parametrize(("protocol", "shm"), [("http", False), ("http", True), ("grpc", False), ("grpc", True)])
def test_served_field_equals_in_process(server, reference, protocol: str, shm: bool) -> None:
    from corx.registration.triton_client import TritonBackend

    url = server.http_url if protocol == "http" else server.grpc_url
    with TritonBackend(url, protocol=protocol, shared_memory=shm, timeout=60) as client:
        assert client.input_shape == (4, SIZE, SIZE, SIZE) and client.max_batch_size == 4
        field = client.infer(_pair(0))
        assert field.shape == (3, SIZE, SIZE, SIZE) and field.dtype == np.float32
        np.testing.assert_allclose(field, reference(0), atol=FIELD_TOL, rtol=0)
        batch = client.infer(np.stack([_pair(0), _pair(1)]))  # a batch in one request
        np.testing.assert_allclose(batch[1], reference(1), atol=FIELD_TOL, rtol=0)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_eight_concurrent_clients_all_succeed(server, reference) -> None:
    from corx.registration.triton_client import TritonBackend

    seeds = (0, 1)
    expected = {s: reference(s) for s in seeds}
    errors: list[BaseException] = []
    done: list[int] = []

    def work(k: int) -> None:
        protocol = "http" if k % 2 == 0 else "grpc"
        url = server.http_url if protocol == "http" else server.grpc_url
        try:
            with TritonBackend(url, protocol=protocol, shared_memory=k % 4 < 2, timeout=120) as client:
                for s in seeds:
                    np.testing.assert_allclose(client.infer(_pair(s)), expected[s], atol=FIELD_TOL, rtol=0)
                    done.append(k)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(170)
    assert not errors, errors[0]
    assert len(done) == 8 * len(seeds)


@pytest.mark.slow
def test_wrong_shape_or_dtype_is_refused_by_client_and_server(server) -> None:
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    from corx.registration.triton_client import TritonBackend

    with TritonBackend(server.http_url, timeout=60) as client:
        with pytest.raises(CorxError, match="must be float32, got float64"):
            client.infer(_pair(0).astype(np.float64))
        with pytest.raises(CorxError, match=r"expects 4x64x64x64"):
            client.infer(np.zeros((4, 32, 32, 32), np.float32))
        with pytest.raises(CorxError, match="exceeds the model's max_batch_size 4"):
            client.infer(np.zeros((5, 4, SIZE, SIZE, SIZE), np.float32))
        with pytest.raises(CorxError, match=r"must lie in \[0, 1\]"):
            client.infer(_pair(0) * 300.0)

    # the server refuses them too, before they reach the model
    raw = httpclient.InferenceServerClient(server.http_url)
    try:
        for array, datatype, pattern in ((np.zeros((1, 4, 32, 32, 32), np.float32), "FP32", "unexpected shape"),
                                         (np.zeros((1, 4, SIZE, SIZE, SIZE), np.float64), "FP64", "FP64")):
            inp = httpclient.InferInput("pair", list(array.shape), datatype)
            inp.set_data_from_numpy(array, binary_data=True)
            with pytest.raises(InferenceServerException, match=pattern):
                raw.infer("corxnet", [inp])
        bad = np.full((1, 4, SIZE, SIZE, SIZE), np.nan, np.float32)
        inp = httpclient.InferInput("pair", list(bad.shape), "FP32")
        inp.set_data_from_numpy(bad, binary_data=True)
        with pytest.raises(InferenceServerException, match="NaN"):
            raw.infer("corxnet", [inp])
    finally:
        raw.close()


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_server_stopped_mid_run_gives_a_clear_error(exported: dict, protocol: str) -> None:
    from corx.registration.triton_client import TritonBackend
    from corx.serving.server import TritonServer, free_port

    srv = TritonServer(exported["repo"], free_port(), free_port(), exit_timeout=1).start()
    url = srv.http_url if protocol == "http" else srv.grpc_url
    outcome: dict[str, object] = {}

    def loop() -> None:
        try:
            with TritonBackend(url, protocol=protocol, timeout=30, retries=2, retry_delay=0.5) as client:
                for i in range(200):
                    client.infer(_pair(i % 2))
                    outcome["n"] = i + 1
        except BaseException as exc:
            outcome["error"] = exc
            outcome["when"] = time.monotonic()

    thread = threading.Thread(target=loop)
    thread.start()
    deadline = time.monotonic() + 60
    while "n" not in outcome and "error" not in outcome and time.monotonic() < deadline:
        time.sleep(0.1)
    stopped = time.monotonic()
    srv.stop()
    thread.join(60)
    assert not thread.is_alive(), "the client hangs after the server stopped"
    error = outcome.get("error")
    assert isinstance(error, CorxError), repr(error)
    assert "Triton" in str(error) and url in str(error)
    assert float(outcome["when"]) - stopped < 45  # type: ignore[arg-type]


def test_unreachable_server_and_unexported_model_give_clear_errors(tmp_path: Path) -> None:
    from corx.registration.triton_client import TritonBackend
    from corx.serving.server import TritonServer, free_port

    port = free_port()
    start = time.monotonic()
    with pytest.raises(CorxError, match=rf"Triton server at 127.0.0.1:{port} \(http\) is not reachable"):
        TritonBackend(f"127.0.0.1:{port}", retries=1, retry_delay=0.1).connect()
    with pytest.raises(CorxError, match="is not reachable"):
        TritonBackend(f"127.0.0.1:{port}", protocol="grpc", retries=1, retry_delay=0.1).connect()
    assert time.monotonic() - start < 30

    from corx_bundle.scripts.export import write_repository

    write_repository(tmp_path / "repo", (SIZE,) * 3)
    with pytest.raises(CorxError, match="has not been exported yet; run `corx export"):
        TritonServer(tmp_path / "repo", free_port(), free_port()).start()


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_cli_serve_starts_and_stops_cleanly_on_sigterm(exported: dict) -> None:
    from corx.serving.server import free_port

    http, grpc = free_port(), free_port()
    proc = subprocess.Popen([str(Path(sys.executable).parent / "corx"), "serve", "--repo", str(exported["repo"]),
                             "--http_port", str(http), "--grpc_port", str(grpc)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:
        for line in proc.stderr:  # type: ignore[union-attr]
            lines.append(line)
            if line.startswith("ready: HTTP 127.0.0.1"):
                ready.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert ready.wait(90), "".join(lines[-20:])
        from corx.registration.triton_client import TritonBackend

        with TritonBackend(f"127.0.0.1:{grpc}", protocol="grpc", retries=0) as client:
            assert client.input_shape == (4, SIZE, SIZE, SIZE)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        reader.join(10)
    err = "".join(lines)
    assert proc.returncode == 0, err
    assert "tritonserver stopped (exit code 0)" in err


@pytest.mark.slow
def test_register_pair_served_equals_in_process(server, exported: dict, tmp_path: Path) -> None:
    from corx.io.volume import Volume
    from corx.registration.backends import TorchBackend
    from corx.registration.preprocess import PreprocessConfig
    from corx.registration.register import register_pair
    from corx.registration.triton_client import TritonBackend

    rng = np.random.default_rng(3)
    from scipy import ndimage

    spect_aff = np.diag([4.0, 4.0, 4.0, 1.0])
    ct_aff = np.diag([2.0, 2.0, 4.0, 1.0])
    images = {}
    for k, role in enumerate(("fixed", "moving")):
        images[f"{role}_ct"] = Volume(ndimage.gaussian_filter(rng.random((100, 100, 50)), 2) * 2000 - 1000, ct_aff)
        spect = ndimage.gaussian_filter(rng.random((50, 50, 50)), 2) ** 2 * 1e5 * (k + 1)
        images[f"{role}_spect"] = Volume(spect.astype(np.float32), spect_aff)
    cfg = PreprocessConfig(spatial_size=(SIZE,) * 3, pixdim=(4.0,) * 3)
    args = [images[k] for k in ("fixed_ct", "moving_ct", "fixed_spect", "moving_spect")]
    local = register_pair(*args, backend=TorchBackend(exported["checkpoint"], embed_dim=EMBED), config=cfg)
    with TritonBackend(server.grpc_url, protocol="grpc", timeout=60) as client:
        served = register_pair(*args, backend=client, config=cfg)
    np.testing.assert_allclose(served.field, local.field, atol=FIELD_TOL, rtol=0)
    np.testing.assert_allclose(served.affine, local.affine)
    assert served.warped_spect.shape == (SIZE,) * 3 and served.warped_spect.max() > 1e4  # still Bq/mL
    np.testing.assert_allclose(served.warped_spect, local.warped_spect, atol=1e-3 * local.warped_spect.max())
    np.testing.assert_allclose(served.warped_ct, local.warped_ct, atol=1.0)
    with TritonBackend(server.http_url) as client, \
            pytest.raises(CorxError, match=r"the model expects pairs of shape \(4, 64, 64, 64\)"):
        register_pair(*args, backend=client, config=PreprocessConfig())


def test_in_process_default_needs_weights_or_explicit_random_init(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import corx.registration.backends
    from corx.registration.backends import TorchBackend

    monkeypatch.setattr(corx.registration.backends, "DEFAULT_CHECKPOINT", tmp_path / "missing" / "model.pt")  # absent
    with pytest.raises(CorxError, match="no trained weights"):
        TorchBackend()
    assert os.environ.get("CORX_NEVER_SET") is None  # the random-init path is opt-in only


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("runtime", ["torchscript", "torchscript-bf16"])
def test_torchscript_runtimes_serve_the_in_process_field(exported: dict, tmp_path: Path, runtime: str) -> None:
    """torchscript: the in-process float32 field. torchscript-bf16 on an AVX-512/AMX CPU: the in-process bf16
    field; on an AVX2-only CPU, where bf16 is emulated (~130x slower), TorchScript float32, said in the log."""
    import shutil

    from corx.registration.backends import TorchBackend
    from corx.registration.triton_client import TritonBackend
    from corx.serving.server import TritonServer, free_port
    from corx_bundle.scripts.export import read_config, write_repository
    from corx_bundle.scripts.inferers import cpu_runs_bf16

    repo = tmp_path / "repo"
    shutil.copytree(exported["repo"], repo)
    write_repository(repo, (SIZE,) * 3, runtime=runtime)
    config = (repo / "corxnet" / "config.pbtxt").read_text()
    assert f'string_value: "{runtime}"' in config
    assert read_config(repo / "corxnet" / "config.pbtxt").parameters["integration_steps"].string_value == \
        str(STEPS)  # kept on re-render
    pair = _pair(5)
    exact = TorchBackend(exported["checkpoint"], embed_dim=EMBED).infer(pair)
    with (TritonServer(repo, free_port(), free_port(), exit_timeout=2) as srv,
          TritonBackend(srv.http_url, timeout=120) as client):
        served = client.infer(pair)
        log = srv.log_tail(400)
    scale = float(np.abs(exact).max())
    if runtime == "torchscript-bf16" and not cpu_runs_bf16():
        assert "runtime torchscript-bf16 not used: this CPU has no AVX-512/AMX bfloat16 support" in log, log
    if runtime == "torchscript" or not cpu_runs_bf16():
        assert "corxnet: PyTorch" in log and "fp32 channels-last" in log, log
        assert platform.libc_ver()[0] != "glibc" or "freed memory kept" in log, log  # corx_bundle's allocator
        assert "legacy graph executor" in log, log  # as the in-process TorchScript cache runs it
        assert float(np.abs(served - exact).max()) <= 1e-5 * scale  # TorchScript float32, as in-process
        return
    local_bf16 = TorchBackend(exported["checkpoint"], embed_dim=EMBED, precision="bf16").infer(pair)
    assert "corxnet: PyTorch" in log and "bf16 channels-last" in log, log
    assert float(np.abs(served - local_bf16).max()) <= 0.02 * scale
    assert float(np.abs(served - exact).max()) <= 0.05 * scale
    assert float(np.abs(served - exact).max()) > 1e-6  # bf16 really ran (float32 ONNX would match exactly)


def test_unknown_runtime_is_refused() -> None:
    from corx_bundle.scripts.export import render_configs

    with pytest.raises(ValueError, match="unknown runtime 'int8'"):
        render_configs(runtime="int8")
