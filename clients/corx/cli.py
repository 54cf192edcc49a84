"""The `corx` command line (python-fire). Each command delegates to a module with one job."""

from __future__ import annotations

import sys
from pathlib import Path

from .errors import USER_ERRORS


class Commands:
    """corx: voxel-based dosimetry from serial SPECT/CT (CoRX-NET registration).

    Run `corx COMMAND --help` for the options of a command.
    """

    def phantom(self, out: str, cohort: str = "internal", patients: int = 4, seed: int = 0,
                protocol: str | None = None, downsample: int = 1, overwrite: bool = False, workers: int = 1) -> None:
        """Generate a synthetic serial SPECT/CT cohort with ground truth into OUT.

        Args:
            out: output folder (one sub-folder per patient, plus cohort.json and datalist.json).
            cohort: 'internal' (128^3 SPECT at 3.87 mm; 4, 24, 48, 120 h) or 'external' (4.88 mm SPECT;
                0.5, 4, 24, 48 h).
            patients: number of patients (ignored with --protocol paper).
            seed: random seed; the same seed gives identical images.
            protocol: 'paper' reproduces the paper's set and pair counts (internal 22 sets, external 14).
            downsample: divide the matrices by this factor (same field of view) for quick runs.
            overwrite: replace existing patient folders.
            workers: patients generated at once, in separate processes (the same images as one at a time).
        """
        from corx_bundle.scripts.phantom import run_phantom

        run_phantom(out, cohort=cohort, patients=patients, seed=seed, protocol=protocol,
                    downsample=downsample, overwrite=overwrite, workers=workers)

    def montage(self, manifest: str, out: str, overwrite: bool = False) -> None:
        """Write a PNG montage (coronal CT, SPECT and fused, one column per time point) of a patient."""
        from .io.manifest import load_manifest
        from .report.montage import write_montage

        target = write_montage(load_manifest(manifest), Path(out), overwrite=overwrite)
        print(f"wrote {target}")

    def tia(self, manifest: str, out: str, overwrite: bool = False, radiobiology: str | None = None,
            dose: str = "dvk") -> None:
        """Time-integrated activity (and dose, BED) maps from SPECT images already aligned to the reference grid.

        Args:
            radiobiology: JSON file overriding the BED tissue parameters (layout of corx/data/radiobiology.json).
            dose: 'dvk' (177Lu kernel convolution, density-scaled) or 'led' (local deposition) as dose.nii.gz;
                the other is written as dose_led.nii.gz / dose_dvk.nii.gz.
        """
        from .dosimetry.command import run_tia

        run_tia(manifest, out, overwrite=overwrite, radiobiology=radiobiology, dose_mode=dose)

    def kernel(self, out: str, voxel_mm: float | str = 4.8, radius_mm: float = 25.0, overwrite: bool = False) -> None:
        """Write the 177Lu soft-tissue (water) dose voxel kernel, mGy/(MBq s), as NIfTI; print its values.

        Args:
            out: output .nii.gz (float32, affine diag(voxel size), source voxel at the centre, world origin).
            voxel_mm: voxel size in mm, one number or 'x,y,z' for the array axes.
            radius_mm: the kernel spans at least this distance from the source voxel along each axis (photons).
            overwrite: replace an existing OUT.
        """
        from .dosimetry.dose_kernel import write_kernel

        target, lines = write_kernel(out, voxel_mm, radius_mm=radius_mm, overwrite=overwrite)
        print("\n".join(lines))
        print(f"wrote {target}")

    def demo(self, out: str = "demo_out", seed: int = 7, method: str = "corx", overwrite: bool = False) -> None:
        """The main job on a generated phantom patient: phantom, then `corx pipeline` (report in OUT/results).

        Without trained weights (bundle/models/model.pt) CoRX-NET runs with freshly initialised weights and a
        loud warning (near-identity registration). --method identity skips the network (fast).
        """
        from .demo import run_demo

        run_demo(Path(out), seed=seed, method=method, overwrite=overwrite)

    def pipeline(self, manifest: str, out: str, method: str = "corx", server: str | None = None,
                 protocol: str = "http", refine: int = 0, checkpoint: str | None = None, random_init: bool = False,
                 point: str | None = None, overwrite: bool = False, radiobiology: str | None = None,
                 dose: str = "dvk", precision: str = "fp32", refine_coarsen: int = 2) -> None:
        """Register every time point to the reference, then TIA, dose, VOI table, figures and report.html in OUT.

        Args:
            method: 'corx' (CoRX-NET), 'identity' (no registration), 'elastix' or 'elastix-spect'.
            server: Triton server URL (host:port); default: in-process PyTorch (bundle/models/model.pt).
            protocol: 'http' or 'grpc' (with --server).
            refine: N gradient steps of test-time optimisation of each field (in-process only).
            refine_coarsen: evaluate the refinement loss on the pair averaged down by this factor (default 2:
                ~8x cheaper per step than 1; README "Pipeline speed" gives its measured effect).
            random_init: freshly initialised network weights (no trained model; near-identity registration).
            point: 'i,j,k' reference SPECT voxel for the profiles (default: the hottest tumour-like spot).
            radiobiology: JSON file overriding the BED tissue parameters (layout of corx/data/radiobiology.json).
            dose: 'dvk' (kernel convolution, default) or 'led' (local deposition) as dose.nii.gz; both in voi.csv.
            precision: in-process network arithmetic: 'fp32' (default) or 'bf16' (about 2x faster on CPUs with
                AVX-512/AMX bf16; refused on AVX2-only CPUs, where it is emulated and ~130x slower; fields differ
                by bf16 rounding, README "Pipeline speed").
        """
        from .pipeline.run import pipeline_command

        pipeline_command(manifest, out, method, server, protocol, refine, checkpoint, random_init, point, overwrite,
                         radiobiology, dose, precision, refine_coarsen)

    def export(self, checkpoint: str | None = None, random_init: bool = False, repo: str | None = None,
               spatial_size: int = 128, max_batch: int = 4, torchscript: bool = True, tensorrt: bool = False,
               variant: str = "corx", runtime: str = "onnxruntime") -> None:
        """Export CoRX-NET to the Triton repository: ONNX (checked against PyTorch), TorchScript, TensorRT.

        Args:
            checkpoint: trained weights (bundle/models/model.pt); or --random_init (tests, benchmarks only).
            repo: model repository (default triton_repo/); configs are written for --spatial_size.
            tensorrt: also build a TensorRT engine (needs an NVIDIA GPU and the tensorrt package).
            runtime: what the CPU model `corxnet` runs: 'onnxruntime' (float32, default), 'torchscript' (PyTorch,
                float32, channels-last: as fast as in-process) or 'torchscript-bf16' (the same under bfloat16
                autocast: fastest on AVX-512/AMX CPUs; on an AVX2-only CPU the server runs TorchScript float32 and
                logs why).
        """
        from .serving.commands import run_export

        run_export(checkpoint, random_init, repo, spatial_size, max_batch, torchscript, tensorrt, variant, runtime)

    def serve(self, repo: str | None = None, http_port: int = 8000, grpc_port: int = 8001,
              host: str = "127.0.0.1", timeout: float = 300.0, metrics_port: int | None = None) -> None:
        """Start a Triton server serving `corxnet` (ONNX model exported by `corx export`); Ctrl-C stops it."""
        from .serving.commands import run_serve

        run_serve(repo, http_port, grpc_port, host, timeout, metrics_port)

    def register(self, manifest: str, out: str, backend: str = "inprocess", url: str | None = None,
                 checkpoint: str | None = None, random_init: bool = False, spatial_size: int | None = None,
                 timeout: float = 300.0, model: str = "corxnet", overwrite: bool = False) -> None:
        """Register every time point to the reference with CoRX-NET; write warped CT/SPECT and fields to OUT.

        Args:
            backend: 'inprocess' (PyTorch, no server), 'onnx' (ONNX Runtime), 'http' or 'grpc' (Triton at --url).
            model: served model name ('corxnet'; 'corxnet_trt' or 'corxnet_ts' on an NGC GPU server).
        """
        from .serving.commands import run_register

        run_register(manifest, out, backend, url, checkpoint, random_init, spatial_size, timeout, model, overwrite)

    def benchmark(self, out: str, cohort: str = "internal-val",
                  methods: str = "identity,elastix,elastix-spect,transmorph,corx-nocs,corx", data: str | None = None,
                  limit: int | None = None, seed: int = 0, downsample: int | None = None,
                  elastix_iterations: int = 1000, elastix_grid_mm: float = 10.0, elastix_resolutions: int = 4,
                  elastix_spect_weight: float = 0.1, threads: int | None = None) -> None:
        """Compare registration methods on phantom pairs (paper Table 2 and 3 + ground truth) into OUT.

        Args:
            cohort: 'internal-val', 'external', or both comma-separated.
            methods: comma-separated: identity, elastix, elastix-spect, transmorph, corx-nocs, corx.
            data: the cohort folder (default OUT/data/<internal|external>[-ds<D>]); the paper protocol's
                validation patients are generated there if absent.
            limit: only the first K pairs (reference pairs first). Results are cached under OUT/cache.
        """
        from .evaluation.benchmark import parse_methods, run_benchmark
        from .registration.elastix import ElastixSettings

        elastix = ElastixSettings(max_iterations=elastix_iterations, grid_spacing_mm=elastix_grid_mm,
                                  resolutions=elastix_resolutions, spect_weight=elastix_spect_weight,
                                  threads=threads or 0)
        run_benchmark(parse_methods(cohort), parse_methods(methods), out, data=data, limit=limit, seed=seed,
                      downsample=downsample, elastix=elastix, threads=threads)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run a command; user errors print one line on stderr and exit with code 2."""
    import fire

    try:
        fire.Fire(Commands, command=argv, name="corx")
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
