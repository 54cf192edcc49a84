"""Export CoRX-NET into the Triton model repository: ONNX, TorchScript and (GPU only) a TensorRT engine.

Layout written under ``repo`` (triton_repo/ by default; configs and model.py are tracked, model files are not):

    corxnet/config.pbtxt, corxnet/1/model.py, corxnet/1/model.onnx     Python backend (CPU server): ONNX Runtime,
                                                                       or the TorchScript model (runtime)
    corxnet_trt/config.pbtxt, corxnet_trt/1/model.plan                 tensorrt_plan (NGC Triton on a GPU)
    corxnet_ts/config.pbtxt, corxnet_ts/1/model.pt                     pytorch_libtorch (NGC Triton), TorchScript

The network takes ``pair`` (B, 4, D, H, W) and returns ``field`` (B, 3, D, H, W) in voxels; no warp is exported.
Every export is checked against eager PyTorch on a random pair (ONNX: max abs field difference <= 1e-3 voxels).
Weights come from a checkpoint (``torch.load(..., weights_only=True)``) or, only when asked for explicitly,
from a fresh initialisation (tests, benchmarks).
"""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .atomic import atomic_path
from .checkpoints import network_state_dict
from .locations import TRITON_TEMPLATE, default_triton_repo, triton_template_dir
from .network import build_network, output_integration_steps
from .scripted import load_script, script_network

REPO_DEFAULT = default_triton_repo()
MODEL_NAME = "corxnet"
TRT_MODEL_NAME = "corxnet_trt"
TS_MODEL_NAME = "corxnet_ts"
INPUT_NAME, OUTPUT_NAME = "pair", "field"
#: what the CPU model ``corxnet`` runs in Triton's Python backend
RUNTIMES = {
    "onnxruntime": "the ONNX model with ONNX Runtime, float32",
    "torchscript": "the TorchScript model with PyTorch, float32, channels-last (faster than ONNX Runtime on CPU)",
    "torchscript-bf16": "the TorchScript model with PyTorch, bfloat16 autocast, channels-last (AVX512-BF16 CPUs)",
}
ONNX_TOLERANCE = 1e-3  # voxels
#: model-config parameter / ONNX metadata key: scaling-and-squaring steps the client applies to the output
STEPS_PARAMETER = "integration_steps"
OPSET = 17
OPSET_GRID_SAMPLE = 20  # 3-D GridSample (the affine head's warp of the moving images) needs opset 20


class ExportError(RuntimeError):
    """An export step could not run here (missing GPU/TensorRT) or its check failed."""


@dataclass
class ExportReport:
    """What was written, and the measured differences to eager PyTorch (voxels)."""

    repo: Path
    spatial_size: tuple[int, int, int]
    files: list[Path] = field(default_factory=list)
    max_abs_diff: dict[str, float] = field(default_factory=dict)
    max_abs_field: float = 0.0
    skipped: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        lines = [f"exported CoRX-NET at {'x'.join(map(str, self.spatial_size))} into {self.repo}"]
        lines += [f"  wrote {p}" for p in self.files]
        lines += [f"  {fmt}: max |field - eager| = {d:.2e} voxels (max |field| {self.max_abs_field:.2e})"
                  for fmt, d in self.max_abs_diff.items()]
        lines += [f"  skipped {fmt}: {why}" for fmt, why in self.skipped.items()]
        return "\n".join(lines)


def load_network(checkpoint: str | Path | None = None, random_init: bool = False, variant: str = "corx",
                 seed: int = 0, **overrides: Any) -> torch.nn.Module:
    """CoRX-NET in eval mode from ``checkpoint``, or freshly initialised (``random_init=True``, tests only)."""
    if checkpoint is None and not random_init:
        raise FileNotFoundError("no checkpoint given: pass --checkpoint bundle/models/model.pt (trained weights) "
                                "or --random_init for freshly initialised weights (tests and benchmarks only)")
    if checkpoint is not None and random_init:
        raise ValueError("give either a checkpoint or random_init, not both")
    state = None
    if checkpoint is not None:
        path = Path(checkpoint)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: checkpoint not found (train the bundle, or pass --random_init)")
        state = network_state_dict(torch.load(path, map_location="cpu", weights_only=True), path)
        # the checkpoint says whether the network has the affine head (scripts.network.AffineHead)
        overrides = {"affine_head": any(k.startswith("affine_head.") for k in state), **overrides}
    torch.manual_seed(seed)
    net = build_network(variant, **overrides)
    if state is not None:
        missing, unexpected = net.load_state_dict(state, strict=False)
        # weights saved before the diffeomorphic option carry no integration_steps: they output displacements
        missing = [k for k in missing if k != "integration_steps"]
        if missing or unexpected:
            raise ValueError(f"{path}: does not match the '{variant}' network (missing {missing[:3]}..., "
                             f"unexpected {unexpected[:3]}...); check --variant and the overrides")
    return net.eval()


def _example(spatial: Sequence[int], batch: int = 1, seed: int = 1) -> torch.Tensor:
    return torch.rand((batch, 4, *spatial), generator=torch.Generator().manual_seed(seed))


def onnx_opset(net: torch.nn.Module) -> int:
    """The ONNX opset ``net`` exports with: 17, or 20 when it warps the moving images (affine head)."""
    return OPSET_GRID_SAMPLE if len(getattr(net, "affine_head", ())) else OPSET


def export_onnx(net: torch.nn.Module, target: Path, spatial: Sequence[int], check_batch: int = 2,
                threads: int = 0) -> float:
    """Trace ``net`` to ONNX (opset 17, 20 with an affine head; dynamic batch axis), check it in ONNX Runtime;
    returns max abs diff."""
    import onnx
    import onnxruntime as ort

    with atomic_path(target) as tmp:  # kept only when the check below passes
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer warnings: spatial sizes are frozen, as intended
            torch.onnx.export(net, (_example(spatial),), str(tmp), opset_version=onnx_opset(net), dynamo=False,
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
        model = onnx.load(str(tmp))
        onnx.helper.set_model_props(model, {STEPS_PARAMETER: str(output_integration_steps(net))})
        onnx.save(model, str(tmp))
        onnx.checker.check_model(str(tmp))
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        session = ort.InferenceSession(str(tmp), opts, providers=["CPUExecutionProvider"])
        x = _example(spatial, batch=check_batch)
        (out,) = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})
        with torch.no_grad():
            ref = net(x).numpy()
        diff = float(np.abs(out - ref).max())
        if not np.isfinite(diff) or diff > ONNX_TOLERANCE:
            raise ExportError(f"{target}: ONNX Runtime differs from PyTorch by {diff:.3g} voxels "
                              f"(> {ONNX_TOLERANCE}); the export is not kept")
    return diff


def export_torchscript(net: torch.nn.Module, target: Path, spatial: Sequence[int]) -> float:
    """``torch.jit.script`` the network (sizes stay dynamic), reload and check it; returns max abs diff."""
    with atomic_path(target) as tmp:  # kept only when the check below passes
        script_network(net).save(str(tmp))
        loaded = load_script(tmp)
        x = _example(spatial)
        with torch.no_grad():
            diff = float((loaded(x) - net(x)).abs().max())
        if not np.isfinite(diff) or diff > 1e-4:
            raise ExportError(f"{target}: TorchScript differs from eager by {diff:.3g} voxels")
    return diff


def tensorrt_unavailable() -> str | None:
    """Why a TensorRT engine cannot be built here (None when tensorrt and a CUDA GPU are both present)."""
    import importlib.util

    if importlib.util.find_spec("tensorrt") is None:
        return "the tensorrt Python package is not installed (pip install -e '.[tensorrt]' on a GPU machine)"
    if not torch.cuda.is_available():
        return "no CUDA GPU is visible to PyTorch: a TensorRT engine can only be built on an NVIDIA GPU"
    return None


def build_tensorrt_engine(onnx_path: Path, target: Path, spatial: Sequence[int], max_batch: int,
                          workspace_gib: float = 8.0) -> float:
    """Build a TensorRT engine (batch 1..max_batch) from the ONNX model; check it; returns max abs diff.

    Needs an NVIDIA GPU and the tensorrt package; raises :class:`ExportError` saying which is missing.
    The engine is specific to the GPU model and TensorRT version it was built with.
    """
    reason = tensorrt_unavailable()
    if reason:
        raise ExportError(f"TensorRT engine not built: {reason}")
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):  # TensorRT >= 10; only mode in 11
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"{onnx_path}: TensorRT could not parse the ONNX model: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    profile = builder.create_optimization_profile()
    dims = tuple(int(s) for s in spatial)
    profile.set_shape(INPUT_NAME, (1, 4, *dims), (1, 4, *dims), (max_batch, 4, *dims))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(f"{onnx_path}: TensorRT failed to build an engine (see the log above)")
    with atomic_path(target) as tmp:
        tmp.write_bytes(bytes(serialized))
    return _check_tensorrt(target, onnx_path, spatial)


def _check_tensorrt(plan: Path, onnx_path: Path, spatial: Sequence[int]) -> float:
    """Run the engine on a random pair (torch CUDA buffers) and compare with ONNX Runtime on the CPU."""
    import onnxruntime as ort
    import tensorrt as trt

    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(plan.read_bytes())
    context = engine.create_execution_context()
    x = _example(spatial)
    x_gpu = x.cuda().contiguous()
    y_gpu = torch.empty((1, 3, *spatial), device="cuda", dtype=torch.float32)
    context.set_input_shape(INPUT_NAME, tuple(x_gpu.shape))
    context.set_tensor_address(INPUT_NAME, x_gpu.data_ptr())
    context.set_tensor_address(OUTPUT_NAME, y_gpu.data_ptr())
    stream = torch.cuda.current_stream()
    if not context.execute_async_v3(stream.cuda_stream):
        raise ExportError(f"{plan}: the TensorRT engine failed to run")
    stream.synchronize()
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (ref,) = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})
    return float(np.abs(y_gpu.cpu().numpy() - ref).max())


def _model_config(name: str, max_batch: int, io_names: tuple[str, str], spatial: Sequence[int], queue_delay_us: int,
                  kind: str, instances: int, parameters: dict[str, str], warmup_count: int) -> Any:
    """One Triton ``ModelConfig`` message (tritonclient's model_config.proto): fp32 input (4, *spatial), output
    (3, *spatial), dynamic batching, one instance group, string parameters and a zero-input warm-up."""
    from tritonclient.grpc import model_config_pb2 as mc

    config = mc.ModelConfig(name=name, max_batch_size=max_batch)
    dims = [int(v) for v in spatial]
    config.input.add(name=io_names[0], data_type=mc.TYPE_FP32, dims=[4, *dims])
    config.output.add(name=io_names[1], data_type=mc.TYPE_FP32, dims=[3, *dims])
    preferred = sorted({b for b in (2, max_batch) if 1 < b <= max_batch})
    config.dynamic_batching.preferred_batch_size.extend(preferred)
    config.dynamic_batching.max_queue_delay_microseconds = int(queue_delay_us)
    config.instance_group.add(count=int(instances), kind=getattr(mc.ModelInstanceGroup, kind))
    for key, value in parameters.items():
        config.parameters[key].string_value = value
    warm = config.model_warmup.add(name="zeros_batch1", batch_size=1, count=warmup_count)
    warm.inputs[io_names[0]].data_type = mc.TYPE_FP32
    warm.inputs[io_names[0]].dims.extend([4, *dims])
    warm.inputs[io_names[0]].zero_data = True
    return config


def render_configs(spatial: Sequence[int] = (128, 128, 128), max_batch: int = 4,
                   cpu_instances: int = 1, gpu_instances: int = 1, queue_delay_us: int = 2000,
                   intra_op_threads: int = 0, runtime: str = "onnxruntime",
                   integration_steps: int = 0) -> dict[str, str]:
    """config.pbtxt text of the three models, keyed by model name (the tracked files are these at 128^3).

    Each is a ``ModelConfig`` protobuf message written with ``google.protobuf.text_format`` (so Triton's own
    schema checks every field name and type), after a comment header. ``runtime`` picks what the CPU model
    ``corxnet`` runs (see RUNTIMES); a GPU instance with a TensorRT engine runs the engine whatever it says.
    ``integration_steps`` (the network's own, see scripts.network) is written as a parameter of every model: the
    clients read it and integrate a velocity output themselves (the served network stays tensor-to-tensor).
    """
    from google.protobuf import text_format

    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r} (choose from {', '.join(RUNTIMES)})")
    steps = {STEPS_PARAMETER: str(int(integration_steps))}
    common = {"max_batch": max_batch, "spatial": spatial, "queue_delay_us": queue_delay_us}

    def text(what: str, config: Any, backend: str = "", platform: str = "") -> str:
        config.backend, config.platform = backend, platform
        head = (f"# {config.name}: CoRX-NET, {what}.\n# Generated by bundle/scripts/export.py (render_configs) "
                "from Triton's ModelConfig message; regenerate rather than edit.\n")
        return head + text_format.MessageToString(config)

    cpu_params = {"runtime": runtime, "onnx_model": "model.onnx",
                  "torchscript_model": f"../{TS_MODEL_NAME}/1/model.pt",
                  "tensorrt_engine": f"../{TRT_MODEL_NAME}/1/model.plan", "intra_op_threads": str(intra_op_threads),
                  **steps}
    # TorchScript's profiling executor optimises the graph on the second call: warm up twice
    cpu = _model_config(MODEL_NAME, io_names=(INPUT_NAME, OUTPUT_NAME), kind="KIND_CPU", instances=cpu_instances,
                        parameters=cpu_params, warmup_count=2 if runtime.startswith("torchscript") else 1, **common)
    trt = _model_config(TRT_MODEL_NAME, io_names=(INPUT_NAME, OUTPUT_NAME), kind="KIND_GPU", instances=gpu_instances,
                        parameters=steps, warmup_count=1, **common)
    ts = _model_config(TS_MODEL_NAME, io_names=("INPUT__0", "OUTPUT__0"), kind="KIND_GPU", instances=gpu_instances,
                       parameters=steps, warmup_count=1, **common)
    return {
        MODEL_NAME: text(f"Python backend running {RUNTIMES[runtime]} (TensorRT engine on a GPU instance when one was "
                         "exported and tensorrt is importable)", cpu, backend="python"),
        TRT_MODEL_NAME: text("TensorRT engine for NGC Triton on a GPU (not loaded by the CPU server)", trt,
                             platform="tensorrt_plan"),
        TS_MODEL_NAME: text("TorchScript for NGC Triton's PyTorch backend on a GPU (not loaded by the CPU server)", ts,
                            backend="pytorch"),
    }


def read_config(path: Path) -> Any:
    """A config.pbtxt parsed into Triton's ``ModelConfig`` message (comments ignored)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    return text_format.Parse(Path(path).read_text(), mc.ModelConfig())


def configured_integration_steps(repo: Path) -> int:
    """The ``integration_steps`` parameter of ``repo``'s CPU model config (0 when there is no config yet)."""
    config = Path(repo) / MODEL_NAME / "config.pbtxt"
    if not config.is_file():
        return 0
    params = read_config(config).parameters
    return int(params[STEPS_PARAMETER].string_value) if STEPS_PARAMETER in params else 0


def write_repository(repo: Path, spatial: Sequence[int], max_batch: int = 4, **config_kw: Any) -> list[Path]:
    """Write the three config.pbtxt files (and model.py, when ``repo`` is not triton_repo/ itself).

    Without ``integration_steps`` the value already configured in ``repo`` is kept, so that re-rendering the
    configs (another runtime, batch size) never turns a served velocity output into a "displacement".
    """
    repo = Path(repo)
    config_kw.setdefault("integration_steps", configured_integration_steps(repo))
    written = []
    for name, text in render_configs(spatial, max_batch, **config_kw).items():
        target = repo / name / "config.pbtxt"
        if not target.is_file() or target.read_text() != text:
            with atomic_path(target) as tmp:
                tmp.write_text(text)
            written.append(target)
        (repo / name / "1").mkdir(parents=True, exist_ok=True)
    model_py = repo / MODEL_NAME / "1" / "model.py"
    source = triton_template_dir() / TRITON_TEMPLATE
    if model_py.resolve() != source.resolve():
        shutil.copyfile(source, model_py)
        written.append(model_py)
    return written


def export_repository(repo: str | Path = REPO_DEFAULT, checkpoint: str | Path | None = None,
                      random_init: bool = False, spatial_size: int | Sequence[int] = 128, max_batch: int = 4,
                      torchscript: bool = True, tensorrt: bool = False, variant: str = "corx",
                      seed: int = 0, runtime: str = "onnxruntime", **overrides: Any) -> ExportReport:
    """Export ONNX (always), TorchScript and, optionally, a TensorRT engine into ``repo`` with configs.

    Raises :class:`ExportError` before exporting anything when ``tensorrt`` is asked for where it cannot run.
    """
    spatial = (spatial_size,) * 3 if isinstance(spatial_size, int) else tuple(int(s) for s in spatial_size)
    if len(spatial) != 3 or min(spatial) < 1:
        raise ValueError(f"spatial_size must be one or three positive ints, got {spatial_size}")
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r} (choose from {', '.join(RUNTIMES)})")
    if runtime.startswith("torchscript") and not torchscript:
        raise ExportError(f"runtime {runtime} serves the TorchScript export: do not turn --torchscript off")
    if tensorrt and (reason := tensorrt_unavailable()):
        raise ExportError(f"TensorRT engine not built: {reason}; export without --tensorrt here, and build the "
                          "engine on the GPU server (corx export --tensorrt)")
    repo = Path(repo)
    net = load_network(checkpoint, random_init=random_init, variant=variant, seed=seed, **overrides)
    report = ExportReport(repo=repo, spatial_size=spatial)  # type: ignore[arg-type]
    steps = output_integration_steps(net)
    report.files += write_repository(repo, spatial, max_batch, runtime=runtime, integration_steps=steps)
    with torch.no_grad():
        report.max_abs_field = float(net(_example(spatial)).abs().max())

    onnx_path = repo / MODEL_NAME / "1" / "model.onnx"
    report.max_abs_diff["onnx"] = export_onnx(net, onnx_path, spatial)
    report.files.append(onnx_path)
    if torchscript:
        ts_path = repo / TS_MODEL_NAME / "1" / "model.pt"
        report.max_abs_diff["torchscript"] = export_torchscript(net, ts_path, spatial)
        report.files.append(ts_path)
    if tensorrt:
        plan = repo / TRT_MODEL_NAME / "1" / "model.plan"
        report.max_abs_diff["tensorrt"] = build_tensorrt_engine(onnx_path, plan, spatial, max_batch)
        report.files.append(plan)
    return report


def save_checkpoint(net: torch.nn.Module, target: str | Path) -> Path:
    """Write ``{"model": state_dict}`` (the layout the bundle's CheckpointLoader reads) atomically."""
    target = Path(target)
    with atomic_path(target) as tmp:
        torch.save({"model": net.state_dict()}, tmp)
    return target
