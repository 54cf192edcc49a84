"""The `corx` command line (python-fire). Each command delegates to a module with one job."""

from __future__ import annotations

import sys
from pathlib import Path

from .errors import CorxError

# errors that mean "bad input" rather than "bug": printed as one line, exit code 2
USER_ERRORS = (CorxError, ValueError, FileNotFoundError, FileExistsError, NotADirectoryError)


class Commands:
    """corx: voxel-based dosimetry from serial SPECT/CT (CoRX-NET registration).

    Run `corx COMMAND --help` for the options of a command.
    """

    def phantom(self, out: str, cohort: str = "internal", patients: int = 4, seed: int = 0,
                protocol: str | None = None, downsample: int = 1, overwrite: bool = False) -> None:
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
        """
        from corx_bundle.scripts.phantom import run_phantom

        run_phantom(out, cohort=cohort, patients=patients, seed=seed, protocol=protocol,
                    downsample=downsample, overwrite=overwrite)

    def montage(self, manifest: str, out: str, overwrite: bool = False) -> None:
        """Write a PNG montage (coronal CT, SPECT and fused, one column per time point) of a patient."""
        from .manifest import load_manifest
        from .montage import write_montage

        target = write_montage(load_manifest(manifest), Path(out), overwrite=overwrite)
        print(f"wrote {target}")

    def tia(self, manifest: str, out: str, overwrite: bool = False) -> None:
        """Time-integrated activity (and dose) maps from SPECT images already aligned to the reference grid."""
        from .tia_command import run_tia

        run_tia(manifest, out, overwrite=overwrite)

    def demo(self, out: str = "demo_out", seed: int = 7, overwrite: bool = False) -> None:
        """The main job on a generated phantom patient (today: phantom + montage)."""
        from .demo import run_demo

        run_demo(Path(out), seed=seed, overwrite=overwrite)


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
