"""The one-call GPU training script, dry-run at toy size on the CPU: it generates data, trains with the bundle's
configs under a wall-clock budget and hands back float16 weights in pieces that join into a loadable state dict."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_training_script_runs_at_toy_size_and_returns_joinable_weights(tmp_path: Path) -> None:
    from corx_bundle.scripts.export import load_network
    from corx_bundle.scripts.train_gpu import ARCHIVE, PIECE_BYTES

    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, "OMP_NUM_THREADS": "2"}
    cmd = ["bash", str(ROOT / "bundle" / "scripts" / "train_gpu.sh"), "--tiny", "--minutes", "0.25",
           "--data", str(tmp_path / "data"), "--runs", str(tmp_path / "runs")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    pieces = sorted(out.glob(f"{ARCHIVE}.part-*"))
    assert pieces and all(p.stat().st_size <= PIECE_BYTES for p in pieces)
    data = b"".join(p.read_bytes() for p in pieces)  # what JOIN.txt does with cat
    expected = (out / "SHA256SUMS").read_text().split()[0]
    assert hashlib.sha256(data).hexdigest() == expected
    assert "cat" in (out / "JOIN.txt").read_text()
    archive = tmp_path / ARCHIVE
    archive.write_bytes(data)
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path / "joined", filter="data")
    joined = tmp_path / "joined"
    summary = json.loads((joined / "summary.json").read_text())
    assert set(summary["variants"]) == {"corx"} and summary["device"] == "cpu"
    weights = joined / "corx" / "model.pt"
    state = torch.load(weights, weights_only=True)
    from corx_bundle.scripts.publish_weights import SMALL_TENSOR

    floats = [v for v in state.values() if v.is_floating_point()]  # stored as publish_weights ships them
    assert floats and all(v.dtype == (torch.float16 if v.numel() >= SMALL_TENSOR else torch.float32) for v in floats)
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == summary["variants"]["corx"]["sha256"]
    net = load_network(weights, variant="corx", embed_dim=12)  # strict: the tiny network's every tensor
    assert all(bool(p.isfinite().all()) for p in net.parameters())
    assert any((joined / "corx" / "tensorboard").glob("events.out.tfevents.*"))
