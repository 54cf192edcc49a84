"""The TorchScript cache of the inference network: same field as the MONAI-built network, keyed, and MONAI-free."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from corx.registration.backends import TorchBackend  # noqa: E402
from corx_bundle.scripts.export import load_network, save_checkpoint  # noqa: E402
from corx_bundle.scripts.scripted import cache_dir, cache_key, load_inference_network  # noqa: E402

EMBED = 12


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    return save_checkpoint(load_network(None, random_init=True, embed_dim=EMBED, seed=3), tmp_path / "w.pt")


def _pair(size: int = 32) -> np.ndarray:
    return np.random.default_rng(0).random((4, size, size, size), dtype=np.float32)


def test_cached_network_gives_the_built_networks_field(checkpoint: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORX_CACHE_DIR", str(tmp_path / "cache"))
    pair = _pair()
    first = TorchBackend(checkpoint, embed_dim=EMBED)
    second = TorchBackend(checkpoint, embed_dim=EMBED)
    monkeypatch.setenv("CORX_CACHE_DIR", "off")
    built = TorchBackend(checkpoint, embed_dim=EMBED)
    assert (first.loaded_from, second.loaded_from, built.loaded_from) == ("built, cached", "torchscript cache",
                                                                          "built")
    assert isinstance(second.net, torch.jit.ScriptModule) and not isinstance(built.net, torch.jit.ScriptModule)
    reference = built.infer(pair)
    assert np.abs(reference).max() > 0
    np.testing.assert_allclose(second.infer(pair), reference, rtol=0, atol=1e-6 * np.abs(reference).max())
    np.testing.assert_array_equal(first.infer(pair), second.infer(pair))
    assert len(list((tmp_path / "cache" / "torchscript").glob("corx-*.pt"))) == 1
    eager, how = load_inference_network(checkpoint, scripted=False, embed_dim=EMBED)  # what bf16 autocast runs
    assert how == "built" and not isinstance(eager, torch.jit.ScriptModule)


def test_key_changes_with_weights_and_options(checkpoint: Path, tmp_path: Path) -> None:
    other = save_checkpoint(load_network(None, random_init=True, embed_dim=EMBED, seed=4), tmp_path / "w2.pt")
    key = cache_key(checkpoint, "corx", True, {"embed_dim": EMBED})
    assert key == cache_key(checkpoint, "corx", True, {"embed_dim": EMBED})
    assert len({key, cache_key(other, "corx", True, {"embed_dim": EMBED}),
                cache_key(checkpoint, "corx", False, {"embed_dim": EMBED}),
                cache_key(checkpoint, "corx_nocs", True, {"embed_dim": EMBED}),
                cache_key(checkpoint, "corx", True, {"embed_dim": 24})}) == 5


def test_damaged_entry_is_rebuilt(checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORX_CACHE_DIR", str(tmp_path / "cache"))
    TorchBackend(checkpoint, embed_dim=EMBED)
    (entry,) = (tmp_path / "cache" / "torchscript").glob("corx-*.pt")
    entry.write_bytes(b"not a torchscript archive")
    again = TorchBackend(checkpoint, embed_dim=EMBED)
    assert again.loaded_from == "built, cached" and entry.stat().st_size > 1000


def test_cache_dir_follows_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORX_CACHE_DIR", "off")
    assert cache_dir() is None
    monkeypatch.delenv("CORX_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_dir() == tmp_path / "corx" / "torchscript"


def test_cached_load_does_not_import_monai(checkpoint: Path, tmp_path: Path) -> None:
    """The point of the cache: a process that loads from it never imports MONAI."""
    env = {"CORX_CACHE_DIR": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin"}
    code = ("import sys; from corx.registration.backends import TorchBackend; "
            f"b = TorchBackend({str(checkpoint)!r}, embed_dim={EMBED}); "
            "print(b.loaded_from, 'monai' in sys.modules)")
    runs = [subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
            for _ in range(2)]
    assert [r.stdout.strip() for r in runs] == ["built, cached True", "torchscript cache False"]
