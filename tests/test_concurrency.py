"""Concurrent array work: results in order, errors raised, no deadlock when nested; the fast resampling path."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from corx.errors import CorxError
from corx.geometry.resample import affine_resample
from corx.io import concurrency
from corx.io.concurrency import SideProcess, concurrently, side_process_wanted


def test_results_come_back_in_call_order_and_work_is_spread() -> None:
    names: list[str] = []

    def work(i: int) -> int:
        names.append(threading.current_thread().name)
        return i * i

    assert concurrently(*(lambda i=i: work(i) for i in range(6))) == [0, 1, 4, 9, 16, 25]
    if concurrency.worker_count() > 1:
        assert any(n.startswith(concurrency.THREAD_PREFIX) for n in names)


def test_the_first_error_is_raised() -> None:
    def bad() -> int:
        raise ValueError("broken input")

    with pytest.raises(ValueError, match="broken input"):
        concurrently(lambda: 1, bad, lambda: 3)


def test_nested_calls_run_serially_instead_of_deadlocking() -> None:
    inner = [lambda: concurrently(lambda: 1, lambda: 2) for _ in range(2 * concurrency.MAX_WORKERS)]
    assert concurrently(*inner) == [[1, 2]] * len(inner)


def test_corx_threads_sets_the_worker_count(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORX_THREADS", "1")
    assert concurrency.worker_count() == 1
    assert concurrently(lambda: threading.current_thread().name, lambda: threading.current_thread().name) == \
        [threading.current_thread().name] * 2


@pytest.mark.parametrize("mode", ["grid-constant", "nearest", "constant"])
def test_axis_aligned_resampling_equals_the_general_path(mode: str) -> None:
    rng = np.random.default_rng(0)
    data = ndimage.gaussian_filter(rng.random((20, 18, 16)), 1.0).astype(np.float32)
    mapping = np.array([[0.51, 0, 0, 1.3], [0, 0.77, 0, -2.1], [0, 0, 1.9, 0.4], [0, 0, 0, 1.0]])
    fast = affine_resample(data, mapping, (30, 25, 12), order=1, mode=mode, cval=-3.0)
    general = ndimage.affine_transform(data, mapping[:3, :3], offset=mapping[:3, 3], output_shape=(30, 25, 12),
                                       order=1, mode=mode, cval=-3.0)
    np.testing.assert_allclose(fast, general, rtol=0, atol=1e-5)
    oblique = mapping.copy()
    oblique[0, 1] = 0.05  # not axis-aligned: the general path
    np.testing.assert_allclose(affine_resample(data, oblique, (30, 25, 12), mode=mode),
                               ndimage.affine_transform(data, oblique[:3, :3], offset=oblique[:3, 3],
                                                        output_shape=(30, 25, 12), order=1, mode=mode), atol=1e-6)


@pytest.mark.parametrize("order", [1, 3])
@pytest.mark.parametrize("oblique", [False, True])
def test_fortran_ordered_input_resamples_to_the_same_values(order: int, oblique: bool) -> None:
    """NIfTI arrays are Fortran-ordered; interpolating resamplings read them through their transpose (faster,
    same values)."""
    rng = np.random.default_rng(1)
    data = ndimage.gaussian_filter(rng.random((21, 17, 13)), 1.0).astype(np.float32)
    mapping = np.array([[0.51, 0, 0, 1.3], [0, 0.77, 0, -2.1], [0, 0, 1.9, 0.4], [0, 0, 0, 1.0]])
    if oblique:
        mapping[0, 1], mapping[2, 0] = 0.05, -0.08
    fortran = np.asfortranarray(data)
    for mode in ("grid-constant", "nearest", "constant"):
        expected = affine_resample(data, mapping, (30, 25, 12), order=order, mode=mode, cval=-3.0)
        got = affine_resample(fortran, mapping, (30, 25, 12), order=order, mode=mode, cval=-3.0)
        assert got.flags.c_contiguous and got.shape == (30, 25, 12)
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)


def test_fortran_ordered_images_warp_to_the_same_values() -> None:
    """A displaced warp of a NIfTI's Fortran-ordered image samples a C-ordered copy: the same values."""
    from corx.geometry.displacement import warp_to_reference
    from corx.geometry.warp import warp_image

    rng = np.random.default_rng(2)
    data = ndimage.gaussian_filter(rng.random((21, 17, 13)), 1.0).astype(np.float32)
    affine = np.array([[2.0, 0, 0, -20.0], [0, 2.5, 0, -15.0], [0, 0, 3.0, 4.0], [0, 0, 0, 1.0]])
    ref_affine = np.diag([3.0, 3.0, 3.0, 1.0])
    ref_affine[:3, 3] = [-18.0, -12.0, 6.0]
    disp = rng.normal(0.0, 2.0, (3, 12, 11, 10)).astype(np.float32)
    for outside in (-5.0, None):
        expected = warp_to_reference(data, affine, (12, 11, 10), ref_affine, disp, outside=outside)
        got = warp_to_reference(np.asfortranarray(data), affine, (12, 11, 10), ref_affine, disp, outside=outside)
        np.testing.assert_array_equal(got, expected)
    u = rng.normal(0.0, 1.5, (3, *data.shape)).astype(np.float32)
    for order in (0, 1):
        np.testing.assert_array_equal(warp_image(np.asfortranarray(data), u, order), warp_image(data, u, order))


def test_side_process_runs_calls_elsewhere_with_their_results_and_errors(tmp_path: Path) -> None:
    from corx.io.imageio import save_image  # a corx function: the child imports corx by name, as the pipeline's does

    side = SideProcess(preload=("corx.io.imageio",))
    try:
        assert side.pid != os.getpid()
        data = np.arange(12, dtype=np.float32).reshape(3, 4)
        assert side.submit(np.sum, data, axis=1).result().tolist() == [6.0, 22.0, 38.0]
        written = side.submit(save_image, data[..., None], np.eye(4), tmp_path / "a.nii.gz").result()
        assert written == tmp_path / "a.nii.gz" and written.is_file()
        with pytest.raises(CorxError, match="already exists"):  # the child's CorxError comes back as one
            side.submit(save_image, data[..., None], np.eye(4), written).result()
    finally:
        side.close()


def test_side_process_output_and_death_do_not_confuse_the_answers() -> None:
    side = SideProcess()
    try:
        assert side.submit(print, "noise on stdout").result() is None  # goes to stderr, not into the answers
        assert side.submit(sorted, [3, 1, 2]).result() == [1, 2, 3]
        with pytest.raises(RuntimeError, match="ended unexpectedly"):
            side.submit(os._exit, 3).result()
    finally:
        side.close()


def test_side_process_works_from_a_script_without_a_main_guard(tmp_path: Path) -> None:
    """multiprocessing's spawn re-runs the caller's main script in the child; a plain interpreter does not."""
    script = tmp_path / "script.py"
    script.write_text("from corx.io.concurrency import SideProcess\nside = SideProcess()\n"
                      "print('answer', side.submit(sum, [1, 2, 3]).result())\nside.close()\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("answer 6") == 1


def test_the_side_process_can_be_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORX_THREADS", "2")
    monkeypatch.setenv("CORX_SIDE_PROCESS", "0")
    assert not side_process_wanted()
    monkeypatch.setenv("CORX_SIDE_PROCESS", "1")
    assert side_process_wanted()
    monkeypatch.setenv("CORX_THREADS", "1")
    assert not side_process_wanted()
