"""The diffeomorphic option: a network that outputs a stationary velocity field, integrated by scaling and squaring
(MONAI ``DVF2DDF`` in the bundle, its numpy twin in the clients), and how checkpoints say which output they give."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from corx_bundle.scripts.fieldops import integrate_velocity, jacobian_determinant


def smooth_velocity(shape: tuple[int, int, int], amplitude: float, seed: int = 0) -> np.ndarray:
    """A smooth random field (sum of 3 Gaussian bumps per channel), max |v| = amplitude voxels."""
    rng = np.random.default_rng(seed)
    p = np.indices(shape, dtype=np.float64)
    v = np.zeros((3, *shape))
    for c in range(3):
        for _ in range(3):
            centre = rng.uniform(0.3, 0.7, 3) * np.array(shape)
            r2 = sum((p[a] - centre[a]) ** 2 for a in range(3)) / (0.12 * min(shape)) ** 2
            v[c] += rng.normal() * np.exp(-0.5 * r2)
    return (v * amplitude / np.abs(v).max()).astype(np.float32)


def test_numpy_integration_matches_monai_dvf2ddf() -> None:
    from corx_bundle.scripts.inferers import displacement_from_output

    v = smooth_velocity((24, 20, 28), amplitude=4.0)
    ours = integrate_velocity(v, 7)
    monai = displacement_from_output(torch.from_numpy(v)[None], 7)[0].numpy()
    assert float(np.abs(ours - v).max()) > 0.1  # integration changes a 4-voxel field noticeably
    assert float(np.abs(ours - monai).max()) < 1e-4
    np.testing.assert_array_equal(integrate_velocity(v, 0), v)  # 0 steps: the output is the displacement
    batch = integrate_velocity(np.stack([v, -v]), 3)
    np.testing.assert_allclose(batch[0], integrate_velocity(v, 3), atol=1e-6)


def test_integrated_field_does_not_fold_where_the_velocity_would() -> None:
    v = smooth_velocity((32, 32, 32), amplitude=9.0, seed=3)
    assert (jacobian_determinant(v) <= 0).mean() > 0.001  # used as a displacement, this field folds
    u = integrate_velocity(v, 7)
    assert float(jacobian_determinant(u).min()) > 0  # its exponential does not


def test_integration_steps_travel_with_the_weights(tmp_path: Path) -> None:
    from corx_bundle.scripts.export import load_network, save_checkpoint
    from corx_bundle.scripts.inferers import FieldInferer
    from corx_bundle.scripts.network import build_network, output_integration_steps

    torch.manual_seed(0)
    net = build_network("corx", embed_dim=12, integration_steps=6)
    for head in net.heads:
        torch.nn.init.normal_(head.weight, std=0.05)
    ckpt = save_checkpoint(net, tmp_path / "svf.pt")
    loaded = load_network(ckpt, variant="corx", embed_dim=12)  # built with 0 steps, the weights say 6
    assert output_integration_steps(loaded) == 6
    x = torch.rand(1, 4, 32, 32, 32)
    with torch.no_grad():
        raw = loaded(x)
        field = FieldInferer()(x, loaded)
    expected = integrate_velocity(raw[0].numpy(), 6)
    assert float((raw - field).abs().max()) > 1e-3  # the inferer integrated
    assert float(np.abs(field[0].numpy() - expected).max()) < 1e-4
    # weights saved before the option have no integration_steps: they load as a displacement network
    old = {k: v for k, v in net.state_dict().items() if k != "integration_steps"}
    torch.save(old, tmp_path / "old.pt")
    assert output_integration_steps(load_network(tmp_path / "old.pt", variant="corx", embed_dim=12)) == 0
    with pytest.raises(ValueError, match="integration_steps"):
        build_network("corx", embed_dim=12, integration_steps=13)
