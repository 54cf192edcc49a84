"""Named pipeline steps: wall and CPU time of each, a tqdm progress bar, and errors that say which step failed."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

from ..errors import USER_ERRORS, CorxError


class StepError(CorxError):
    """A step failed; the message names the step and the file it was working on."""


class Steps:
    """Runs the pipeline's steps in the order of a plan (their names), timing each and advancing a progress bar.

    The plan gives the progress bar its total; running a step that is not the next one planned is a bug
    (RuntimeError), so the plan and the code that runs the steps cannot drift apart.
    """

    def __init__(self, plan: Sequence[str], progress: bool = True) -> None:
        self.plan: tuple[str, ...] = tuple(plan)
        if len(set(self.plan)) != len(self.plan):
            raise ValueError(f"step names must be unique, got {list(self.plan)}")
        self.done: list[str] = []
        self.timings: dict[str, float] = {}
        self.cpu_timings: dict[str, float] = {}  # CPU seconds of this process (all its threads) during each step
        self.current: str | None = None
        self._bar: Any = None
        if progress:
            from tqdm import tqdm

            self._bar = tqdm(total=self.total, desc="corx pipeline", unit="step", file=sys.stderr, leave=True,
                             bar_format="{desc:<32}|{bar:24}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}]")

    @property
    def total(self) -> int:
        """Number of planned steps."""
        return len(self.plan)

    @property
    def remaining(self) -> tuple[str, ...]:
        """The planned steps not run yet, in order."""
        return self.plan[len(self.done):]

    @contextlib.contextmanager
    def step(self, name: str, file: object = None) -> Iterator[None]:
        """Time the block as step ``name`` (the next planned one). Bad input (:data:`USER_ERRORS`) is re-raised as
        StepError naming the step and ``file``; anything else is a bug: it propagates unchanged, with a note naming
        the step."""
        expected = self.remaining[0] if self.remaining else None
        if name != expected:
            raise RuntimeError(f"step {name!r} is not the next planned step ({expected!r}; plan {list(self.plan)})")
        self.done.append(name)
        self.current = name
        if self._bar is not None:
            self._bar.set_description_str(name[:32])
        t0, cpu0 = time.perf_counter(), time.process_time()
        try:
            yield
        except KeyboardInterrupt:
            raise
        except StepError:
            raise
        except USER_ERRORS as exc:
            where = f" ({file})" if file is not None else ""
            detail = str(exc) if isinstance(exc, CorxError) else f"{type(exc).__name__}: {exc}"
            raise StepError(f"step '{name}' failed{where}: {detail}") from exc
        except Exception as exc:
            if hasattr(exc, "add_note"):  # Python >= 3.11
                exc.add_note(f"corx pipeline: in step '{name}'" + (f" ({file})" if file is not None else ""))
            raise
        finally:
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - t0
            self.cpu_timings[name] = self.cpu_timings.get(name, 0.0) + time.process_time() - cpu0
        if self._bar is not None:
            self._bar.update(1)

    def close(self) -> None:
        """Close the progress bar."""
        if self._bar is not None:
            self._bar.set_description_str("done" if self.current else "")
            self._bar.close()
            self._bar = None
