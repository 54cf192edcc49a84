"""Model-zoo checks of the bundle: verify_net_in_out and TorchScript export with ckpt_export."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from corx_bundle.scripts.network import build_network

BUNDLE = Path(__file__).resolve().parents[1] / "bundle"


def monai_bundle(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="2", PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, "-m", "monai.bundle", *args], cwd=BUNDLE, capture_output=True,
                          text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_bundle_files_exist() -> None:
    for name in ("LICENSE", "configs/metadata.json", "configs/train.json", "configs/evaluate.json",
                 "configs/inference.json", "configs/multi_gpu_train.json", "configs/logging.conf",
                 "docs/README.md", "large_files.yml"):
        assert (BUNDLE / name).is_file(), name


def test_verify_net_in_out() -> None:
    proc = monai_bundle("verify_net_in_out", "network_def", "--meta_file", "configs/metadata.json",
                        "--config_file", "configs/train.json", "--n", "2")
    assert "data shape of network is verified with no error" in (proc.stdout + proc.stderr)


@pytest.mark.slow
def test_ckpt_export_to_torchscript_matches_eager(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = build_network("corx").eval()
    with torch.no_grad():  # make the head non-trivial so the comparison means something
        for p in net.parameters():
            if p.ndim == 5 and p.shape[0] == 3:
                p.normal_(0, 1e-2)
    torch.save(net.state_dict(), tmp_path / "model.pt")
    monai_bundle("ckpt_export", "network_def", "--filepath", str(tmp_path / "model.ts"), "--ckpt_file",
                 str(tmp_path / "model.pt"), "--meta_file", "configs/metadata.json", "--config_file",
                 "configs/train.json")
    scripted = torch.jit.load(str(tmp_path / "model.ts"))
    x = torch.rand(1, 4, 64, 64, 64)
    with torch.no_grad():
        expected, got = net(x), scripted(x)
    assert expected.abs().max() > 1e-3
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
