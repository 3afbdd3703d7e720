"""The epoch budget (student.epochs: auto): the ladder's stopping rule, the resolved params, the schema."""

import json

import pytest

from distillery.core.budget import EpochBudget, Rung, budget_line, centre, ladder_state, resolve_epochs
from distillery.core.config import ChoiceSpec, RangeSpec, parse_params
from distillery.core.errors import ConfigError
from distillery.core.paths import Layout


def rung(epochs: int, *accs: float) -> Rung:
    return Rung(epochs=epochs, per_seed={str(1000 + i): a for i, a in enumerate(accs)}, seconds=1.0)


PLANNED = [30, 60, 120]


def test_ladder_trains_the_next_rung_while_each_longer_schedule_pays():
    assert ladder_state([], PLANNED, 1.0)[0] == 30
    assert ladder_state([rung(30, 0.90, 0.92)], PLANNED, 1.0) == (60, None, "ladder")
    # +2.0 points (0.91 -> 0.93): keep climbing
    assert ladder_state([rung(30, 0.90, 0.92), rung(60, 0.92, 0.94)], PLANNED, 1.0) == (120, None, "ladder")


def test_ladder_stops_at_the_first_rung_the_next_beats_by_less_than_min_gain():
    # 60 gains +0.5 points over 30 (< 1.0): 30 is the budget, 120 is never trained
    assert ladder_state([rung(30, 0.90, 0.92), rung(60, 0.905, 0.925)], PLANNED, 1.0) == (None, 30, "ladder")
    # 60 gains +2, 120 gains +0.9: 60
    rungs = [rung(30, 0.90), rung(60, 0.92), rung(120, 0.929)]
    assert ladder_state(rungs, PLANNED, 1.0) == (None, 60, "ladder")
    # a longer schedule that loses is not taken either
    assert ladder_state([rung(30, 0.93), rung(60, 0.91)], PLANNED, 1.0) == (None, 30, "ladder")


def test_ladder_still_gaining_at_the_last_rung_takes_it_and_says_so():
    rungs = [rung(30, 0.80), rung(60, 0.85), rung(120, 0.90)]
    assert ladder_state(rungs, PLANNED, 1.0) == (None, 120, "ladder-capped")
    line = budget_line(EpochBudget(epochs=120, rule="ladder-capped", arm="none", min_gain=1.0, rungs=rungs))
    assert "120 epochs for every arm" in line and "may not have finished learning" in line
    assert "30 → 80.0 %, 60 → 85.0 %, 120 → 90.0 %" in line


def test_min_gain_is_in_points_of_the_seed_mean():
    rungs = [rung(30, 0.90, 0.80), rung(60, 0.865, 0.865)]  # means 0.85 -> 0.865: +1.5 points
    assert ladder_state(rungs, PLANNED, 1.4)[0] == 120
    assert ladder_state(rungs, PLANNED, 1.6) == (None, 30, "ladder")
    assert rungs[0].sd == pytest.approx(0.0707107, rel=1e-5)
    line = budget_line(EpochBudget(epochs=30, rule="ladder", arm="none", min_gain=1.6, rungs=rungs))
    assert "30 → 85.0 ± 7.1 %, 60 → 86.5 ± 0.0 %" in line  # the seed mean ± SD, in points


def test_centre_of_a_search_range():
    assert centre(RangeSpec(low=1e-3, high=4e-3, log=True)) == pytest.approx(2e-3)
    assert centre(RangeSpec(low=0.0, high=0.1)) == pytest.approx(0.05)
    assert centre(RangeSpec(low=0.3, high=0.3)) == 0.3
    assert centre(ChoiceSpec(choices=[0.8, 0.0, 0.2])) == 0.2
    assert centre(ChoiceSpec(choices=[0.0, 1.0])) == 0.0


def test_fixed_budget_resolves_without_a_file(tmp_path):
    p = parse_params({"student": {"epochs": 40}})
    assert resolve_epochs(p, Layout(tmp_path)) is p


def test_auto_resolves_to_the_budget_stage_choice_and_only_that(tmp_path):
    layout = Layout(tmp_path)
    p = parse_params({"student": {"epochs": "auto"}})
    with pytest.raises(ConfigError, match=r"needs .*budget\.json.*dvc repro budget"):
        resolve_epochs(p, layout)
    layout.metrics.mkdir()
    EpochBudget(epochs=60, rule="ladder", arm="none", min_gain=1.0,
                rungs=[rung(30, 0.9), rung(60, 0.95), rung(120, 0.955)]).save(layout.budget)
    q = resolve_epochs(p, layout)
    assert q.student.epochs == 60 and p.student.epochs == "auto"
    assert q.model_dump(exclude={"student"}) == p.model_dump(exclude={"student"})
    layout.budget.write_text(json.dumps({"epochs": 60}))
    with pytest.raises(ConfigError, match="not a budget this version wrote"):
        resolve_epochs(p, layout)


@pytest.mark.parametrize("raw, expected", [
    ({"student": {"epochs": "long"}}, "student.epochs='long' is invalid; allowed: an epoch count >= 1, or auto"),
    ({"student": {"epochs": 0}}, "student.epochs=0 is invalid"),
    ({"budget": {"rungs": [60, 30]}}, "budget.rungs: [60, 30]; allowed: epoch counts >= 1 in increasing order"),
    ({"budget": {"rungs": [30]}}, "budget.rungs=[30] is invalid"),
    ({"budget": {"seeds": 0}}, "budget.seeds=0 is invalid"),
    ({"budget": {"min_gain": -1}}, "budget.min_gain=-1 is invalid"),
    ({"student": {"epochs": "auto"}, "budget": {"rungs": [10, 20]}},
     "sweep.prune_from_epoch=12 is after the last epoch (budget.rungs[0]=10)"),
    ({"student": {"epochs": "auto"}, "budget": {"rungs": [2, 20]}, "sweep": {"pruner": "none"}},
     "sweep.objective_epochs=3 exceeds budget.rungs[0]=2"),
])
def test_bad_budget_settings_are_one_line_naming_the_key(raw, expected):
    with pytest.raises(ConfigError) as info:
        parse_params(raw)
    assert expected in str(info.value) and "\n" not in str(info.value)
