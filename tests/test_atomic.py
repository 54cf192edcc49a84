"""The one atomic-write helper: a finished block replaces the target, a failed one leaves it and no debris."""

from __future__ import annotations

from pathlib import Path

import pytest

from corx_bundle.scripts.atomic import atomic_path


def test_success_replaces_with_normal_permissions(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "model.onnx"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.endswith(".tmp.onnx") and tmp != target
        tmp.write_text("new")
    assert target.read_text() == "new"
    assert target.stat().st_mode & 0o044  # readable by group/others (mkstemp alone gives 0600)
    assert [p.name for p in target.parent.iterdir()] == ["model.onnx"]


def test_failure_keeps_the_old_file_and_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "config.pbtxt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half written")
        raise RuntimeError("check failed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["config.pbtxt"]
