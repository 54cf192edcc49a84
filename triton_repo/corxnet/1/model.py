"""Triton Python-backend model ``corxnet``: CoRX-NET ``pair`` (B, 4, D, H, W) -> ``field`` (B, 3, D, H, W).

Runs ``model.onnx`` (written by ``corx export``) with ONNX Runtime, or, with the parameter ``runtime`` set to
``torchscript``, the TorchScript export with PyTorch in float32 and channels-last memory (the in-process network's
path: faster than ONNX Runtime on CPU), or with ``torchscript-bf16`` the same under bfloat16 autocast (the fastest
on CPUs with AVX512-BF16/AMX; the field differs from float32 by bf16 rounding). On a GPU instance (KIND_GPU), when the
TensorRT engine named by the ``tensorrt_engine`` parameter exists and ``tensorrt`` and ``torch`` (CUDA buffers)
import, it runs the engine instead; otherwise ONNX Runtime with the CUDA provider when available. Requests queued
by the dynamic batcher are concatenated along the batch axis and answered in order. Triton itself refuses inputs
whose name, shape or dtype differ from config.pbtxt before they reach this code.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils


class _OnnxRunner:
    """ONNX Runtime session (CUDA provider on a GPU instance when onnxruntime-gpu is installed)."""

    def __init__(self, path: str, threads: int, gpu: int | None) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers: list = ["CPUExecutionProvider"]
        if gpu is not None and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": gpu}))
        self.session = ort.InferenceSession(path, opts, providers=providers)
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        self.description = f"ONNX Runtime ({self.session.get_providers()[0]}) on {os.path.basename(path)}"

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run([self.output_name], {self.input_name: batch})[0]


class _TorchScriptRunner:
    """The TorchScript export on CPU with PyTorch: channels-last weights and inputs, float32 or bfloat16 autocast.

    Where ``corx_bundle`` is importable (a corx installation), glibc keeps freed memory for reuse as in-process
    (``corx_bundle.scripts.allocator``: about 2x faster per 128^3 float32 pair); elsewhere glibc's defaults stay.
    """

    def __init__(self, path: str, threads: int, bf16: bool) -> None:
        import torch

        try:
            from corx_bundle.scripts.allocator import keep_freed_memory
        except ImportError:  # the model repository deployed without corx
            kept = False
        else:
            kept = keep_freed_memory()
        if threads:
            torch.set_num_threads(threads)
        self.torch, self.bf16 = torch, bf16
        legacy = not bf16 and _use_legacy_executor(torch)
        self.model = torch.jit.load(path, map_location="cpu").eval()
        self.model.to(memory_format=torch.channels_last_3d)
        self.description = (f"PyTorch {torch.__version__} {'bf16' if bf16 else 'fp32'} channels-last on "
                            f"{os.path.basename(path)}" + (", freed memory kept" if kept else "")
                            + (", legacy graph executor" if legacy else ""))

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        torch = self.torch
        x = torch.from_numpy(np.ascontiguousarray(batch)).contiguous(memory_format=torch.channels_last_3d)
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            field = self.model(x)
        return field.float().contiguous().numpy()


def _use_legacy_executor(torch: Any) -> bool:
    """TorchScript's legacy graph executor for this stub process (it serves this model only): in float32 the
    first 128^3 call takes 5.5 s instead of 7.7 s and the peak memory 1.9 instead of 3.3 GiB, same field
    (measured in-process, corx_bundle.scripts.scripted). It does not apply bf16 autocast, so only for float32."""
    try:
        torch._C._jit_set_profiling_executor(False)
        torch._C._jit_set_profiling_mode(False)
    except AttributeError:  # a later torch without the switches: its default executor
        return False
    return True


def _cpu_runs_bf16() -> bool:
    """Whether oneDNN runs bfloat16 convolutions on this CPU (AVX-512 or AMX); not on AVX2-only CPUs."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # private op gone in a later torch: judge by the vector ISA
        return torch.backends.cpu.get_cpu_capability() not in ("DEFAULT", "AVX2", "NO AVX")


class _TensorRTRunner:
    """A serialized TensorRT engine on one GPU, with torch CUDA tensors as I/O buffers."""

    def __init__(self, path: str, gpu: int, input_name: str, output_name: str) -> None:
        import tensorrt as trt
        import torch

        self.torch = torch
        self.device = torch.device("cuda", gpu)
        torch.cuda.set_device(self.device)
        with open(path, "rb") as handle:
            self.engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(handle.read())
        if self.engine is None:
            raise RuntimeError(f"{path}: not a TensorRT engine for this GPU/TensorRT version (rebuild it)")
        self.context = self.engine.create_execution_context()
        self.input_name, self.output_name = input_name, output_name
        self.description = f"TensorRT engine {os.path.basename(path)} on cuda:{gpu}"

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        torch = self.torch
        x = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device)
        y = torch.empty((x.shape[0], 3, *x.shape[2:]), device=self.device, dtype=torch.float32)
        self.context.set_input_shape(self.input_name, tuple(x.shape))
        self.context.set_tensor_address(self.input_name, x.data_ptr())
        self.context.set_tensor_address(self.output_name, y.data_ptr())
        stream = torch.cuda.current_stream(self.device)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        stream.synchronize()
        return y.cpu().numpy()


class TritonPythonModel:
    """Triton's entry points: initialize, execute (one call per dynamic batch), finalize."""

    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        model_dir = os.path.join(args["model_repository"])
        version_dir = os.path.join(model_dir, args["model_version"])
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]
        self.logger = pb_utils.Logger
        gpu = int(args["model_instance_device_id"]) if args["model_instance_kind"] == "GPU" else None

        onnx_path = os.path.join(version_dir, params.get("onnx_model", "model.onnx"))
        engine_path = os.path.normpath(os.path.join(model_dir, params.get("tensorrt_engine", "")))
        self.runner = None
        if gpu is not None and params.get("tensorrt_engine") and os.path.isfile(engine_path):
            try:
                self.runner = _TensorRTRunner(engine_path, gpu, self.input_name, self.output_name)
            except (ImportError, RuntimeError) as exc:
                self.logger.log_warn(f"corxnet: TensorRT engine not used ({exc}); falling back to ONNX Runtime")
        runtime = params.get("runtime", "onnxruntime") or "onnxruntime"
        threads = int(params.get("intra_op_threads", "0") or 0)
        if self.runner is None and runtime in ("torchscript", "torchscript-bf16"):
            ts_path = os.path.normpath(os.path.join(model_dir, params.get("torchscript_model", "")))
            if not os.path.isfile(ts_path):
                raise pb_utils.TritonModelException(
                    f"{ts_path}: TorchScript model missing; export it with `corx export --checkpoint MODEL.pt`")
            bf16 = runtime == "torchscript-bf16"
            if bf16 and not _cpu_runs_bf16():  # oneDNN emulates bf16 on AVX2-only CPUs: ~130x slower than fp32
                self.logger.log_warn("corxnet: runtime torchscript-bf16 not used: this CPU has no AVX-512/AMX "
                                     "bfloat16 support (bf16 is emulated, ~130x slower); falling back to "
                                     "TorchScript float32")
                bf16 = False
            self.runner = _TorchScriptRunner(ts_path, threads, bf16)
        elif runtime not in ("onnxruntime", "torchscript", "torchscript-bf16"):
            raise pb_utils.TritonModelException(f"corxnet: unknown runtime {runtime!r} in config.pbtxt")
        if self.runner is None:
            if not os.path.isfile(onnx_path):
                raise pb_utils.TritonModelException(
                    f"{onnx_path}: ONNX model missing; export it with `corx export --checkpoint MODEL.pt`")
            self.runner = _OnnxRunner(onnx_path, threads, gpu)
        self.logger.log_info(f"corxnet: {self.runner.description}")

    def execute(self, requests: list) -> list:
        arrays, errors = [], []
        for request in requests:
            pair = pb_utils.get_input_tensor_by_name(request, self.input_name).as_numpy()
            ok = np.isfinite(pair).all()
            errors.append(None if ok else f"input '{self.input_name}' contains NaN or infinite values")
            arrays.append(pair if ok else None)
        good = [a for a in arrays if a is not None]
        try:
            fields = self.runner(np.concatenate(good) if len(good) > 1 else good[0]) if good else None
        except Exception as exc:  # report to every client of this batch rather than crash the stub
            message = f"corxnet inference failed: {type(exc).__name__}: {exc}"
            return [pb_utils.InferenceResponse(error=pb_utils.TritonError(message)) for _ in requests]
        responses, start = [], 0
        for pair, error in zip(arrays, errors, strict=True):
            if pair is None:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(error)))
                continue
            out = np.ascontiguousarray(fields[start : start + pair.shape[0]], dtype=np.float32)
            start += pair.shape[0]
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(self.output_name, out)]))
        return responses

    def finalize(self) -> None:
        self.runner = None
