"""Copy the best checkpoint of a training run into models/ as a plain state dict (what the bundle ships).

    python -m scripts.publish_weights runs/cpu_corx/models/model.pt models/model.pt
    python -m scripts.publish_weights runs/cpu_transmorph/models/model.pt models/transmorph/model.pt --half

``--half`` stores floating-point tensors as float16 (TransMorph's 20.8 M parameters are 83 MB in float32, over
the model zoo's 50 MB per file); ``load_state_dict`` casts them back to the network's float32 on loading.
Prints the size and SHA-256 that go into large_files.yml. Refuses to replace an existing file unless --overwrite.
"""

from __future__ import annotations

import argparse
import hashlib
import os
from pathlib import Path

import torch

from .export import _state_dict


def publish(src: Path, dst: Path, half: bool = False, overwrite: bool = False) -> tuple[int, str]:
    """Write ``src``'s network weights to ``dst`` atomically; return (bytes, sha256)."""
    if dst.exists() and not overwrite:
        raise FileExistsError(f"{dst}: exists (pass --overwrite to replace it)")
    state = _state_dict(torch.load(src, map_location="cpu", weights_only=True), src)
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    torch.save(state, tmp)
    tmp.replace(dst)
    data = dst.read_bytes()
    return len(data), hashlib.sha256(data).hexdigest()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", type=Path, help="checkpoint written by training (state dict, or under 'model')")
    parser.add_argument("dst", type=Path, help="the shipped file, e.g. models/model.pt")
    parser.add_argument("--half", action="store_true", help="store floating-point tensors as float16")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dst")
    args = parser.parse_args(argv)
    size, digest = publish(args.src, args.dst, args.half, args.overwrite)
    print(f"{args.dst}: {size / 2**20:.1f} MiB, sha256 {digest}")


if __name__ == "__main__":
    main()
