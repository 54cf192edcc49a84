"""The report figures: one overlay figure reused for every time point draws what a fresh figure would."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from corx.report.figures import FigureData, overlay_figures


def _figure_data(shape: tuple[int, int, int] = (20, 18, 16)) -> FigureData:
    rng = np.random.default_rng(3)
    ids = ["4h", "24h", "48h"]

    def volumes(scale: float, offset: float = 0.0) -> dict[str, np.ndarray]:
        # each time point its own intensity range, so a stale display scale would show in the pixels
        return {t: (offset + scale * (i + 1) * rng.random(shape)).astype(np.float32) for i, t in enumerate(ids)}

    affine = np.diag([3.0, -3.5, 4.0, 1.0])
    return FigureData(
        patient_id="P", method="test", reference="4h", ids=ids, hours=[4.0, 24.0, 48.0], affine=affine,
        point=(10, 9, 8), ct_before=volumes(600.0, -500.0), ct_after=volumes(600.0, -500.0),
        spect_before=volumes(1e4), spect_after=volumes(1e4), disp_mm={t: np.zeros((3, *shape), np.float32)
                                                                       for t in ids},
        jacobian={t: np.ones(shape, np.float32) for t in ids}, tia=rng.random(shape).astype(np.float32),
        rmse=rng.random(shape).astype(np.float32), rule=np.ones(shape, np.uint8))


def _pixels(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGBA"))


def test_a_reused_overlay_figure_draws_the_same_pixels_as_a_fresh_one(tmp_path: Path) -> None:
    d = _figure_data()
    together = overlay_figures(d, {t: tmp_path / "together" / f"{t}.png" for t in ("24h", "48h")})
    alone = [overlay_figures(d, {t: tmp_path / "alone" / f"{t}.png"})[0] for t in ("24h", "48h")]
    assert [p.name for p in together] == ["24h.png", "48h.png"]
    for reused, fresh in zip(together, alone, strict=True):
        np.testing.assert_array_equal(_pixels(reused), _pixels(fresh))
    assert not np.array_equal(_pixels(together[0]), _pixels(together[1]))  # the second is not the first again


def test_no_moving_time_point_draws_no_overlay(tmp_path: Path) -> None:
    assert overlay_figures(_figure_data(), {}) == []
    assert not any(tmp_path.iterdir())
