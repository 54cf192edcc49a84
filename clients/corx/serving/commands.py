"""The `corx export`, `corx serve` and `corx register` commands: argument handling around the modules."""

from __future__ import annotations

from pathlib import Path

from ..errors import CorxError


def as_bool(value: object, name: str) -> bool:
    """A boolean flag; accepts the strings fire passes through for `--flag false` / `--flag no`."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise CorxError(f"--{name}: expected true or false, got {value!r}")


def run_export(checkpoint: str | None, random_init: bool, repo: str | None, spatial_size: int, max_batch: int,
               torchscript: bool, tensorrt: bool, variant: str, runtime: str = "onnxruntime") -> None:
    """Export into the Triton repository; bundle errors become one-line CorxErrors."""
    from corx_bundle.scripts.export import REPO_DEFAULT, ExportError, export_repository

    random_init, torchscript = as_bool(random_init, "random_init"), as_bool(torchscript, "torchscript")
    tensorrt = as_bool(tensorrt, "tensorrt")
    try:
        report = export_repository(repo or REPO_DEFAULT, checkpoint=checkpoint, random_init=random_init,
                                   spatial_size=spatial_size, max_batch=max_batch, torchscript=torchscript,
                                   tensorrt=tensorrt, variant=variant, runtime=runtime)
    except (ExportError, ValueError) as exc:
        raise CorxError(str(exc)) from exc
    print(report.summary())
    if random_init:
        print("warning: exported FRESHLY INITIALISED weights (random_init): for tests and benchmarks only")


def run_serve(repo: str | None, http_port: int, grpc_port: int, host: str, timeout: float,
              metrics_port: int | None) -> None:
    """Serve until Ctrl-C/SIGTERM."""
    from .server import REPO_DEFAULT, run_server

    run_server(Path(repo) if repo else REPO_DEFAULT, http_port, grpc_port, host, timeout, metrics_port)


def run_register(manifest: str, out: str, backend: str, url: str | None, checkpoint: str | None,
                 random_init: bool, spatial_size: int | None, timeout: float, model: str, overwrite: bool) -> None:
    """Register a patient with the chosen backend."""
    from ..registration.backends import make_backend
    from ..registration.preprocess import PreprocessConfig
    from ..registration.register import register_manifest

    random_init, overwrite = as_bool(random_init, "random_init"), as_bool(overwrite, "overwrite")
    if backend not in ("inprocess",) and (checkpoint or random_init):
        raise CorxError("--checkpoint/--random_init apply to --backend inprocess only (a server has its own model)")
    served = {"model": model} if backend in ("http", "grpc") else {}
    engine = make_backend(backend, url=url, checkpoint=checkpoint, random_init=random_init, timeout=timeout,
                          **served)
    try:
        size = spatial_size or (engine.input_shape[1] if engine.input_shape else None)
        config = PreprocessConfig(spatial_size=(int(size),) * 3) if size else PreprocessConfig()
        target = register_manifest(manifest, out, backend=engine, config=config, overwrite=overwrite)
    finally:
        engine.close()
    print(f"wrote {target}")
