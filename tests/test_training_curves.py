"""The curve plot reads every validation series (the truth-based field errors included) from TensorBoard logs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def test_curves_plot_and_summarise_every_validation_tag(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from torch.utils.tensorboard import SummaryWriter

    from corx_bundle.scripts.training_curves import VALIDATION_TAGS, main

    run = tmp_path / "cpu_corx"
    writer = SummaryWriter(str(run / "tensorboard"))
    for it in range(1, 31):
        writer.add_scalar("train_loss", -0.01 * it, it)
    for epoch in (1, 2, 3):
        for k, tag in enumerate(VALIDATION_TAGS):
            writer.add_scalar(tag, epoch + 0.1 * k, epoch)
    writer.close()
    out, summary = tmp_path / "curves.png", tmp_path / "curves.json"
    main([str(run), "--out", str(out), "--summary", str(summary), "--smooth", "5"])
    assert out.stat().st_size > 10_000
    series = json.loads(summary.read_text())["cpu_corx"]
    assert "val_field_error_mm" in series and "val_kidney_field_error_mm" in series
    assert series["val_field_error_mm"] == [[e, pytest.approx(e + 0.1 * VALIDATION_TAGS.index("val_field_error_mm"))]
                                            for e in (1, 2, 3)]
