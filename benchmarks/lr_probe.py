"""Is the paper's AdamW learning rate (0.01) stable for CoRX-NET? Short runs at several rates, printed side by side.

Trains the full-width network for a few iterations on phantom pairs (downsampled, 64^3 at 7.74 mm) with the
bundle's hybrid loss and prints the loss every few steps and the final field size for each learning rate.
Usage: python benchmarks/lr_probe.py [--steps 40] [--rates 1e-2,1e-3,1e-4]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from corx.registration.preprocess import PreprocessConfig, preprocess_pair
from corx_bundle.scripts.losses import HybridRegistrationLoss
from corx_bundle.scripts.network import build_network
from corx_bundle.scripts.phantom import generate_patient


def pairs(folder: Path, config: PreprocessConfig) -> list[torch.Tensor]:
    import json

    manifest = json.loads((folder / "patient.json").read_text())
    ref = next(t for t in manifest["timepoints"] if t["id"] == manifest["reference"])
    out = []
    for tp in manifest["timepoints"]:
        if tp["id"] != ref["id"]:
            prepared = preprocess_pair(folder / ref["ct"], folder / tp["ct"], folder / ref["spect"],
                                       folder / tp["spect"], config)
            out.append(torch.as_tensor(prepared.image)[None].float())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rates", default="1e-2,1e-3,1e-4")
    args = parser.parse_args()
    torch.set_num_threads(2)
    config = PreprocessConfig(spatial_size=(64, 64, 64), pixdim=(7.74, 7.74, 7.74))
    with tempfile.TemporaryDirectory() as tmp:
        data = pairs(generate_patient(Path(tmp), "internal", 0, seed=1, downsample=2), config)
    print(f"{len(data)} pairs of shape {tuple(data[0].shape)}; {args.steps} AdamW steps per rate")
    for lr in [float(r) for r in args.rates.split(",")]:
        torch.manual_seed(0)
        net = build_network("corx")
        loss_fn = HybridRegistrationLoss()
        opt = torch.optim.AdamW(net.parameters(), lr=lr)
        losses, t0 = [], time.perf_counter()
        for step in range(args.steps):
            x = data[step % len(data)]
            opt.zero_grad()
            loss = loss_fn(net(x), x)
            loss.backward()
            opt.step()
            losses.append(float(loss))
        with torch.no_grad():
            field = net(data[0])
        curve = " ".join(f"{np.mean(losses[i:i + 5]):+.4f}" for i in range(0, args.steps, 5))
        print(f"lr={lr:g}: loss per 5 steps {curve} | final max|u| {float(field.abs().max()):.2f} vox, "
              f"finite={bool(torch.isfinite(field).all())} | {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
