"""Ignite handlers the bundle's configs attach that MONAI does not have."""

from __future__ import annotations

import math
import time
from typing import Any

from ignite.engine import Engine, Events


class WallClockCosineLR:
    """Cosine learning-rate decay over a wall-clock budget, then stop: training that is done in ``budget_s``.

    At every iteration the learning rate is ``eta_min + (lr0 - eta_min) * (1 + cos(pi * f)) / 2`` with ``f`` the
    fraction of the budget used so far (``lr0`` = the optimizer's initial rate, ``eta_min = eta_min_ratio * lr0``);
    once ``f`` reaches 1 the trainer terminates (its COMPLETED handlers, e.g. the final checkpoint, still run),
    but never inside the first epoch: a run always ends with at least one validated checkpoint, however slow the
    machine (the rest of epoch 1 runs at ``eta_min``). For a GPU lent for minutes: the schedule anneals fully
    whatever the step time turns out to be.
    """

    def __init__(self, optimizer: Any, budget_s: float, eta_min_ratio: float = 0.05) -> None:
        if budget_s <= 0:
            raise ValueError(f"budget_s must be > 0, got {budget_s}")
        self.optimizer, self.budget_s, self.eta_min_ratio = optimizer, float(budget_s), float(eta_min_ratio)
        self.base_lrs = [group["lr"] for group in optimizer.param_groups]
        self.start: float | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.ITERATION_STARTED, self._step)

    def _started(self, engine: Engine) -> None:
        self.start = time.monotonic()

    def fraction(self) -> float:
        """Share of the budget used (0 before training starts)."""
        return 0.0 if self.start is None else (time.monotonic() - self.start) / self.budget_s

    def _step(self, engine: Engine) -> None:
        f = min(self.fraction(), 1.0)
        if f >= 1.0 and engine.state.epoch > 1:  # epoch 1 always completes (and is validated)
            engine.terminate()
            return
        scale = self.eta_min_ratio + (1.0 - self.eta_min_ratio) * 0.5 * (1.0 + math.cos(math.pi * f))
        for group, lr0 in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            group["lr"] = lr0 * scale
