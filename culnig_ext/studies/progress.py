"""The run's overall progress line: stage k/n, items done in the stage, items/s and the estimated time left, drawn
above the stage's own bar while ``run_pipeline`` runs.

``RunProgress(plan, rates, enabled=...)`` is a context manager; ``with progress.stage("score"): ...`` marks a
stage. Every counting bar of the stages (``culnig_ext._utils.progress.bar``) reports its items to it, so it knows
how far the current stage is. The time left is the current stage's remaining items plus every later stage's, each
at the seconds per item of its kind (``plan.Rates``): the warm-up's until a stage of that kind has run, then the
rate measured so far. The line is drawn only when ``enabled`` (progress on) and the stream is a terminal; it is
always tracked, so ``line()`` is the same text either way. Log messages during the run are written above the bars
(tqdm's logging redirect).
"""
from __future__ import annotations

import contextlib
import logging
import sys
import time
from typing import Any, Callable, Iterator, TextIO

from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from culnig_ext._utils.progress import listening
from culnig_ext.reporting.summary import duration
from culnig_ext.studies.plan import EVAL, SCORE, Rates, RunPlan

REFRESH_S = 0.5


class RunProgress:
    """The overall line of one run (module docstring)."""

    def __init__(self, plan: RunPlan, rates: Rates | None = None, *, enabled: bool = True,
                 stream: TextIO | None = None, clock: Callable[[], float] = time.perf_counter) -> None:
        self.plan = plan
        self.rates = rates
        self.stream = stream if stream is not None else sys.stderr
        isatty = getattr(self.stream, "isatty", None)
        self.shown = bool(enabled and callable(isatty) and isatty())
        self.clock = clock
        self.current: int | None = None
        self.done = 0  # items of the current stage
        self.stage_start = clock()
        self.start = clock()
        self.measured: dict[str, list[float]] = {SCORE: [0.0, 0.0], EVAL: [0.0, 0.0]}  # kind: [seconds, items]
        self._bar: Any = None
        self._last_draw = 0.0
        self._stack: contextlib.ExitStack | None = None

    # ------------------------------------------------------------------------------------------- the numbers
    def rate(self, kind: str) -> float:
        """Seconds per item of ``kind``: measured in this run once some items of it have run, else the warm-up's."""
        seconds, items = self.measured.get(kind, (0.0, 0.0))
        if self.current is not None and self.plan.stages[self.current].kind == kind:
            seconds, items = seconds + self.clock() - self.stage_start, items + self.done
        if items >= 1:
            return seconds / items
        return self.rates.of(kind) if self.rates is not None else 0.0

    def remaining(self) -> float | None:
        """Estimated seconds left (None before any rate is known)."""
        if self.rates is None and not any(items for _, items in self.measured.values()):
            return None
        at = self.current if self.current is not None else 0
        stage = self.plan.stages[at]
        left = max(0, stage.units - self.done) * self.rate(stage.kind)
        return left + sum(s.units * self.rate(s.kind) for s in self.plan.stages[at + 1:])

    def line(self) -> str:
        """``stage 3/6 identify | 40/96 items | 2.1 items/s | elapsed 1 min 2 s | ETA 4 min 10 s``."""
        if self.current is None:
            return f"culnig run: starting ({len(self.plan.stages)} stages)"
        stage = self.plan.stages[self.current]
        parts = [f"stage {self.current + 1}/{len(self.plan.stages)} {stage.title}"]
        if stage.units:
            parts.append(f"{min(self.done, stage.units)}/{stage.units} items")
            elapsed = self.clock() - self.stage_start
            if self.done and elapsed > 0:
                parts.append(f"{self.done / elapsed:.1f} items/s")
        parts.append(f"elapsed {duration(self.clock() - self.start)}")
        left = self.remaining()
        if left is not None:
            parts.append(f"ETA {duration(left)}")
        return "culnig run: " + " | ".join(parts)

    # ------------------------------------------------------------------------------------------- the events
    def advance(self, n: int) -> None:
        """``n`` more items of the current stage went through the model."""
        self.done += n
        self.draw()

    @contextlib.contextmanager
    def stage(self, key: str) -> Iterator[None]:
        """The body runs stage ``key`` of the plan."""
        self.current = self.plan.index(key)
        self.done, self.stage_start = 0, self.clock()
        self.draw(force=True)
        try:
            yield
        finally:
            kind = self.plan.stages[self.current].kind
            if kind in self.measured and self.done:
                self.measured[kind][0] += self.clock() - self.stage_start
                self.measured[kind][1] += self.done
            self.done = 0
            if self.current + 1 < len(self.plan.stages):
                self.current += 1  # until the next stage begins, count as its start
                self.stage_start = self.clock()
            self.draw(force=True)

    def draw(self, force: bool = False) -> None:
        if self._bar is None:
            return
        now = self.clock()
        if force or now - self._last_draw >= REFRESH_S:
            self._last_draw = now
            self._bar.set_description_str(self.line(), refresh=True)

    def __enter__(self) -> "RunProgress":
        self._stack = contextlib.ExitStack()
        self.start = self.clock()
        self._stack.enter_context(listening(self.advance))
        if self.shown:
            # position 0: the stages' own bars take the next free line, below this one
            self._bar = self._stack.enter_context(tqdm(total=None, position=0, bar_format="{desc}", leave=False,
                                                       file=self.stream, dynamic_ncols=True))
            self._stack.enter_context(logging_redirect_tqdm(loggers=[logging.getLogger("culnig")]))
            self.draw(force=True)
        return self

    def __exit__(self, *exc: Any) -> None:
        stack, self._stack, self._bar = self._stack, None, None
        if stack is not None:
            stack.close()
