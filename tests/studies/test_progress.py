"""The plan of a run (stages and the items each passes), the overall progress line (stage k/n, items/s, the time left)
and the bars' listener, against numbers worked out here."""
from __future__ import annotations

import io
from types import SimpleNamespace

import pytest

from culnig_ext._utils.progress import bar, listening
from culnig_ext.studies.config import RunConfig
from culnig_ext.studies.plan import EVAL, NONE, SCORE, Rates, RunPlan, Stage, changed_sizes, plan_run
from culnig_ext.studies.progress import RunProgress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_every_bar_reports_to_the_listener_shown_or_not():
    heard = []
    with listening(heard.append):
        for disable in (True, False):
            b = bar(total=5, disable=disable, file=io.StringIO())
            b.update(2)
            b.update(3)
            b.close()
    quiet = bar(total=2, disable=True)
    quiet.update(2)  # no listener: nothing heard
    assert heard == [2, 3, 2, 3]


def plan4() -> RunPlan:
    stages = [Stage("format", "choose the format", "", 10, EVAL), Stage("score", "score", "", 100, SCORE),
              Stage("evaluate", "inhibit and evaluate", "", 50, EVAL), Stage("report", "report", "")]
    return RunPlan(stages, "quick", ["original", "ours"], {"cultural test": 25})


def test_the_time_left_uses_the_warm_up_then_the_measured_rate():
    clock, stream = Clock(), Terminal()
    progress = RunProgress(plan4(), Rates(score=0.5, eval=0.2), stream=stream, clock=clock)
    # 10 x 0.2 + 100 x 0.5 + 50 x 0.2 = 62 s before anything ran
    assert progress.remaining() == pytest.approx(62.0)
    with progress:
        with progress.stage("format"):
            clock.now += 4.0
            progress.advance(10)  # measured: 0.4 s per evaluated item
        with progress.stage("score"):
            clock.now += 8.0
            progress.advance(20)  # measured: 0.4 s per scored item
            # 80 scored items left at 0.4 s + 50 evaluated at 0.4 s (the format stage's rate, not the warm-up's)
            assert progress.remaining() == pytest.approx(80 * 0.4 + 50 * 0.4)
            line = progress.line()
    assert line == "culnig run: stage 2/4 score | 20/100 items | 2.5 items/s | elapsed 12 s | ETA 52 s"
    assert "stage 2/4 score" in stream.getvalue()  # drawn on the terminal
    assert progress.measured == {SCORE: [8.0, 20.0], EVAL: [4.0, 10.0]}


def test_nothing_is_drawn_off_a_terminal_or_without_progress():
    for stream, enabled in ((io.StringIO(), True), (Terminal(), False)):
        clock = Clock()
        progress = RunProgress(plan4(), Rates(score=1.0, eval=1.0), stream=stream, clock=clock, enabled=enabled)
        with progress:
            with progress.stage("score"):
                clock.now += 1.0
                progress.advance(1)
        assert stream.getvalue() == "" and not progress.shown
        assert progress.measured[SCORE] == [1.0, 1.0]  # tracked all the same


def items(n: int, group: str = "US") -> list:
    return [SimpleNamespace(group=group)] * n


def test_the_plan_counts_the_items_of_every_stage():
    data = SimpleNamespace(neur=items(30), crc=items(20), general_contrast=items(6), test=items(40), crc_test=items(12),
                           general_eval=items(8), groups=[f"g{i}" for i in range(8)])
    cfg = RunConfig(n_random=3, n_random_paper=1, kinship_groups=2, format="auto", format_probe_max=16)
    plan = plan_run(cfg, data)
    assert [s.key for s in plan.stages] == ["format", "score", "identify", "evaluate", "kinship", "report"]
    units = {s.key: (s.units, s.kind) for s in plan.stages}
    assert units["format"] == (16, EVAL)  # at most format_probe_max of the 30 scoring items
    assert units["score"] == (30 + 30 + 20 + 6, SCORE)  # cultural, control, CountryRC, contrast
    assert units["identify"] == (30, SCORE)  # the instance view scores the cultural items once more
    assert units["evaluate"] == ((2 + 3 + 1) * (40 + 12 + 8), EVAL)  # original, ours, 3 + 1 random sets
    assert units["kinship"] == (2 * 10, EVAL)  # 2 groups' sets, each on their 2/8 of the 40 test items
    assert units["report"] == (0, NONE)
    assert plan.estimate(Rates(score=1.0, eval=0.5)) == pytest.approx(16 * 0.5 + 86 + 30 + 360 * 0.5 + 20 * 0.5)
    lines = plan.lines()
    assert lines[0] == "plan: as configured study, 6 stages" and lines[1].startswith("  1/6 choose the format")
    no_extras = plan_run(RunConfig(format="cloze", kinship=False, instance_view=False), data)
    assert [s.key for s in no_extras.stages] == ["score", "identify", "evaluate", "report"]


def test_changed_sizes_name_the_flags():
    assert changed_sizes(RunConfig(full=True)) == []
    assert changed_sizes(RunConfig(full=True, n_random=2, kinship_groups=3)) == ["--random 2", "--kinship-groups 3"]
    assert changed_sizes(RunConfig()) == []  # no preset resolved (the API): nothing to compare with


def test_the_size_section_gives_each_sets_power_and_its_research_size_scaling():
    from culnig_ext.stats.rows import AccuracyRow
    from culnig_ext.studies.plan import size_section

    rows = [AccuracyRow("Cultural test", 0.4, 0.35, [0.4], 0.2, 96, mde=0.12),
            AccuracyRow("General knowledge", 0.5, 0.5, [0.5], 0.5, 64, cultural=False, mde=0.15),
            AccuracyRow("No random sets", 0.5, 0.5, [], None, 96)]
    plan = RunPlan([], "quick", [], {}, {"scoring items": 96, "random sets": 3}, ["--random 3"], test_cap=96)
    text = size_section(plan, rows)
    assert "This was the **quick** study" in text and "Sizes changed by options: `--random 3`." in text
    assert "| scoring items | 96 | 400 |" in text and "| random sets | 3 | 10 |" in text
    # capped at 96: scaled to the research size's 300 items, 12 x sqrt(96/300) = 6.79; the 64-item set was not
    # cut by the cap, so it keeps its size and its MDE
    assert "| Cultural test | 96 | 12.00 | 6.79 (300 items) |" in text
    assert "| General knowledge | 64 | 15.00 | 15.00 (64 items) |" in text
    assert "No random sets" not in text
    full = size_section(RunPlan([], "full", [], {}, {}, test_cap=300), rows)
    assert "| Cultural test | 96 | 12.00 |" in full and "research size |" not in full.split("Power")[1]


def test_a_busy_machine_gets_one_thread_unless_told_otherwise():
    from culnig_ext.studies.plan import cpu_threads

    assert cpu_threads(None, load=5.2, cores=2, env={})[0] == 1  # load at or above the cores: one thread
    assert "load average 5.2 on 2 CPUs" in cpu_threads(None, load=5.2, cores=2, env={})[1]
    assert cpu_threads(None, load=1.9, cores=2, env={}) == (None, None)  # not busy: torch's default
    assert cpu_threads(None, load=9.0, cores=2, env={"OMP_NUM_THREADS": "2"}) == (None, None)  # the user's choice
    assert cpu_threads(3, load=9.0, cores=2, env={"OMP_NUM_THREADS": "2"})[0] == 3  # --threads wins
    assert cpu_threads(None, load=None, cores=None, env={}) == (None, None)  # no load average (Windows)
