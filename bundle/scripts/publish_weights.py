"""Copy the best checkpoint of a training run into models/ as a plain state dict (what the bundle ships).

    python -m scripts.publish_weights runs/cpu_corx/models/model.pt models/model.pt --overwrite

Floating-point tensors of at least ``SMALL_TENSOR`` elements (the attention, MLP and convolution weights) are
stored as float16, the small ones (norms, biases, output heads: 7 % of CoRX-NET's parameters, 1.2 MiB) stay
float32: CoRX-NET is 19.9 MiB instead of 37, and the tracked tree must stay under 60 MiB. ``load_state_dict``
casts float16 back to the network's float32. Measured on a phantom pair, the field of the float32 weights moves
by 1.7e-3 of its maximum when every tensor is float16, 2.9e-5 when the small ones stay float32 (bf16 inference
itself: 2.3e-2); tests/test_shipped_weights.py checks 1e-3. ``--float32`` keeps every tensor float32.
``--dense-smoothing SIGMA`` stores the width (voxels) of the Gaussian smoothing of the dense field chosen for these
weights (``scripts.network.FieldSmoothing``; chosen on internal validation): every loader then runs it.
Prints the size and SHA-256 that go into large_files.yml. Refuses to replace an existing file unless --overwrite.
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import torch

from .atomic import atomic_path
from .checkpoints import network_state_dict
from .network import MAX_SMOOTHING_SIGMA

SMALL_TENSOR = 65536  # tensors with fewer elements stay float32 when storing half precision


def storage_dtype(tensor: torch.Tensor, half: bool = True) -> torch.dtype:
    """The dtype ``tensor`` is shipped in: float16 for large floating-point tensors when ``half``."""
    if half and tensor.is_floating_point() and tensor.numel() >= SMALL_TENSOR:
        return torch.float16
    return torch.float32 if tensor.is_floating_point() else tensor.dtype


SMOOTHING_KEY = "dense_smoothing.smoothing_sigma"


def publish(src: Path, dst: Path, half: bool = True, overwrite: bool = False,
            dense_smoothing: float | None = None) -> tuple[int, str]:
    """Write ``src``'s network weights to ``dst`` atomically, with ``dense_smoothing`` (voxels) stored when given;
    return (bytes, sha256)."""
    if dst.exists() and not overwrite:
        raise FileExistsError(f"{dst}: exists (pass --overwrite to replace it)")
    state = network_state_dict(torch.load(src, map_location="cpu", weights_only=True), src)
    if dense_smoothing is not None:
        if not 0.0 <= dense_smoothing <= MAX_SMOOTHING_SIGMA:
            raise ValueError(f"dense smoothing must be in [0, {MAX_SMOOTHING_SIGMA}] voxels, got {dense_smoothing}")
        state[SMOOTHING_KEY] = torch.tensor(float(dense_smoothing), dtype=torch.float32)
    state = {k: v.to(storage_dtype(v, half)) for k, v in state.items()}
    with atomic_path(dst) as tmp:
        torch.save(state, tmp)
    data = dst.read_bytes()
    return len(data), hashlib.sha256(data).hexdigest()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", type=Path, help="checkpoint written by training (state dict, or under 'model')")
    parser.add_argument("dst", type=Path, help="the shipped file, e.g. models/model.pt")
    parser.add_argument("--float32", action="store_true", help="keep every tensor float32")
    parser.add_argument("--dense-smoothing", type=float, default=None, metavar="SIGMA",
                        help="store this dense-field smoothing width (voxels) with the weights")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dst")
    args = parser.parse_args(argv)
    size, digest = publish(args.src, args.dst, not args.float32, args.overwrite, args.dense_smoothing)
    print(f"{args.dst}: {size / 2**20:.1f} MiB, sha256 {digest}")


if __name__ == "__main__":
    main()
