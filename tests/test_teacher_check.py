"""The report's weak-teacher check: the decision against hand-computed values, and the line report.md gets."""

import json
import math

import numpy as np
import pandas as pd
import pytest

from distillery.core.config import Params
from distillery.core.files import Best
from distillery.reporting import report
from distillery.reporting.inputs import ReportInputs
from distillery.reporting.stats import Comparison
from distillery.reporting.teacher_check import check_teacher, labels_in_disguise, signal_lines, teacher_check_lines

RATIO = 0.75


def _accs(**arms):
    """arm -> list of per-seed accuracies  ->  arm -> {seed: acc}, seeds from 1."""
    return {arm: {s: a for s, a in enumerate(v, start=1)} for arm, v in arms.items()}


def test_issue_example_is_weak():
    # teacher 71% vs plain ViT 66% (mean of 65/66/67): errors 0.29 vs 0.34, ratio 0.29/0.34 = 0.8529 > 0.75
    c = check_teacher(0.71, _accs(none=[0.65, 0.66, 0.67], control=[0.60, 0.60, 0.60], soft=[0.7] * 3), RATIO)
    assert c.student_arm == "none" and c.n_seeds == 3
    assert c.teacher_val_error == pytest.approx(0.29)
    assert c.student_val_error == pytest.approx(0.34)
    assert c.student_val_acc_mean == pytest.approx(0.66)
    assert c.student_val_acc_std == pytest.approx(0.01)
    assert c.error_ratio == pytest.approx(0.852941, abs=1e-6)
    assert c.threshold == RATIO and c.weak


def test_digits_like_teacher_is_not_weak():
    # teacher 97.5% vs plain ViT 91.5%: 0.025 / 0.085 = 0.2941 <= 0.75
    c = check_teacher(0.975, _accs(none=[0.915], hard=[0.9]), RATIO)
    assert c.error_ratio == pytest.approx(0.294118, abs=1e-6)
    assert not c.weak
    assert c.n_seeds == 1 and c.student_val_acc_std is None


def test_falls_back_to_control_without_none():
    c = check_teacher(0.71, _accs(control=[0.66, 0.66], soft=[0.7, 0.7]), RATIO)
    assert c.student_arm == "control" and c.weak
    assert c.error_ratio == pytest.approx(0.29 / 0.34)
    # none present but with no final seed (empty history): control stands in as well
    assert check_teacher(0.71, {"none": {}, **_accs(control=[0.66], soft=[0.7])}, RATIO).student_arm == "control"


def test_skipped_without_distilled_arm_or_reference():
    assert check_teacher(0.71, _accs(none=[0.66], control=[0.66]), RATIO) is None  # nobody learns from the teacher
    assert check_teacher(0.71, _accs(soft=[0.7], hard=[0.7]), RATIO) is None  # nothing to compare with
    assert check_teacher(0.71, {}, RATIO) is None


def test_threshold_is_strict_and_tolerant_of_float_rounding():
    # 3 vs 4 errors out of 269 images, as float32 would store them: exactly at 0.75 -> not weak
    t, s = float(np.float32(266 / 269)), float(np.float32(265 / 269))
    c = check_teacher(t, _accs(none=[s], soft=[s]), RATIO)
    assert c.error_ratio == pytest.approx(0.75, abs=1e-5) and not c.weak
    # one error more for the teacher: 4 vs 4 -> weak
    assert check_teacher(s, _accs(none=[s], soft=[s]), RATIO).weak
    # 0.80 vs 0.85 with ratio 0.75 is the float-unfriendly 0.15 / 0.2: still exactly the threshold, not weak
    assert not check_teacher(0.85, _accs(none=[0.8], soft=[0.8]), RATIO).weak


def test_edge_cases_of_zero_errors():
    perfect_teacher = check_teacher(1.0, _accs(none=[0.9], soft=[0.9]), RATIO)
    assert perfect_teacher.error_ratio == 0.0 and not perfect_teacher.weak
    both_perfect = check_teacher(1.0, _accs(none=[1.0, 1.0], soft=[1.0]), RATIO)
    assert both_perfect.error_ratio is None and not both_perfect.weak
    perfect_student = check_teacher(0.99, _accs(none=[1.0, 1.0], soft=[1.0]), RATIO)
    assert perfect_student.error_ratio == math.inf and perfect_student.weak
    assert perfect_student.as_dict()["error_ratio"] is None  # JSON has no infinity
    json.dumps(perfect_student.as_dict(), allow_nan=False)
    worse_teacher = check_teacher(0.6, _accs(none=[0.8], soft=[0.8]), RATIO)
    assert worse_teacher.error_ratio == pytest.approx(2.0) and worse_teacher.weak
    at_one = check_teacher(0.8, _accs(none=[0.8], soft=[0.8]), 1.0)  # equal errors at the loosest threshold
    assert at_one.error_ratio == pytest.approx(1.0) and not at_one.weak


def test_lines_weak_and_passed():
    weak = "\n".join(teacher_check_lines(check_teacher(0.71, _accs(none=[0.65, 0.66, 0.67], soft=[0.7]), RATIO)))
    assert weak.startswith("**Weak teacher.** The teacher's val accuracy (71.0%) is not clearly above the plain "
                           "ViT's (66.0% ± 1.0 over 3 seeds): it removes only 15% of the plain ViT's val errors "
                           "(threshold: 25%, `report.weak_teacher_ratio` = 0.75).")
    assert "`teacher.pretrained`" in weak
    ok = "\n".join(teacher_check_lines(check_teacher(0.975, _accs(none=[0.915], soft=[0.9]), RATIO)))
    assert "Weak teacher" not in ok
    assert ok.startswith("Teacher check passed: the teacher's val accuracy (97.5%) is clearly above the plain ViT's "
                         "(91.5% over 1 seed): it removes 71% of the plain ViT's val errors")
    assert teacher_check_lines(None) == []


def test_lines_edge_wordings():
    control = "\n".join(teacher_check_lines(check_teacher(0.71, _accs(control=[0.66], soft=[0.7]), RATIO)))
    assert "the `control` arm's (66.0%" in control and "`none` did not run" in control
    worse = "\n".join(teacher_check_lines(check_teacher(0.6, _accs(none=[0.8], soft=[0.8]), RATIO)))
    assert "**Weak teacher.**" in worse and "removes none" in worse and "2.00× as many" in worse
    student0 = "\n".join(teacher_check_lines(check_teacher(0.99, _accs(none=[1.0], soft=[1.0]), RATIO)))
    assert "**Weak teacher.**" in student0 and "makes no val errors and the teacher does" in student0
    both0 = "\n".join(teacher_check_lines(check_teacher(1.0, _accs(none=[1.0], soft=[1.0]), RATIO)))
    assert both0.startswith("**Teacher check: undecided.**") and "Weak teacher" not in both0
    # a share that rounds to the threshold keeps a decimal: 1 - 0.7549 = 24.5%, not "25%"
    near = "\n".join(teacher_check_lines(check_teacher(1 - 0.7549 * 0.2, _accs(none=[0.8], soft=[0.8]), RATIO)))
    assert "removes only 24.5%" in near


# ---------------------------------------------------------------------------- the whole report's markdown

def _inputs(teacher_val_acc: float, arms=("none", "control", "soft", "hard")) -> ReportInputs:
    """The smallest ReportInputs render_markdown reads: three seeds per arm, plain ViT at 66% val accuracy."""
    params = Params()
    seeds = [1, 2, 3]
    hist = {arm: {s: [{"epoch": 1.0, "val_acc": 0.5}, {"epoch": 2.0, "val_acc": a}] for s, a in zip(seeds, accs)}
            for arm, accs in {"none": [0.65, 0.66, 0.67], "control": [0.6] * 3, "soft": [0.7] * 3,
                              "hard": [0.7] * 3}.items() if arm in arms}
    hp = {"lr": 1e-3, "weight_decay": 0.05, "mixing": 0.0, "drop_path": 0.1}
    return ReportInputs(
        params=params, arms=list(arms),
        data_summary={"source": "synthetic", "num_classes": 10, "channels": 1, "image_size": 16,
                      "counts": {"train": 100, "val": 50, "test": 50}},
        skipped=[], classes=[str(i) for i in range(10)],
        teacher={"val_acc": teacher_val_acc}, evaluation={}, throughput={"images_per_s": {}},
        predictions=pd.DataFrame(), token_cosine={}, histories=hist,
        best={arm: Best(arm=arm, study_name=arm, trial=0, objective=0.6, hparams=hp, n_trials=5, n_complete=5,
                        n_pruned=0, epochs=2) for arm in arms},
        trials={}, importance={},
        finals={arm: {"per_seed": {str(s): {"objective": 0.6 + 0.01 * s} for s in seeds}} for arm in arms},
    )


COMPS = [Comparison("soft", "none", 1.0, -1.0, 3.0, 0.9875, 0.3, 0.6, 3, "inconclusive")]


def test_report_markdown_names_a_weak_teacher_next_to_the_verdicts():
    md = report.render_markdown(_inputs(0.71), COMPS, [])
    assert ("**Weak teacher.** The teacher's val accuracy (71.0%) is not clearly above the plain ViT's (66.0% ± 1.0"
            in md)
    headline = md.split("## Headline")[1].split("\n## ")[0]
    assert "**Weak teacher.**" in headline  # in the verdicts' section, right after their table
    assert headline.index("**inconclusive**") < headline.index("**Weak teacher.**")
    assert "Teacher check passed" not in md


def test_report_markdown_passes_a_strong_teacher():
    md = report.render_markdown(_inputs(0.975), COMPS, [])
    assert "Weak teacher" not in md
    assert "Teacher check passed: the teacher's val accuracy (97.5%)" in md


def test_report_markdown_skips_the_check_without_a_distilled_arm():
    md = report.render_markdown(_inputs(0.71, arms=("none", "control")), [], [])
    assert "Weak teacher" not in md and "Teacher check" not in md
    assert report.teacher_check_of(_inputs(0.71, arms=("none", "control"))) is None


def test_effects_json_record():
    rec = report.teacher_check_of(_inputs(0.71)).as_dict()
    assert rec["weak"] is True and rec["student_arm"] == "none" and rec["threshold"] == RATIO
    assert rec["error_ratio"] == pytest.approx(0.852941, abs=1e-6)
    json.dumps(rec, allow_nan=False)


# ---------------------------------------------------------------------------- labels in disguise
SIGNAL = {"arm": "soft", "n": 1152, "tau": 4.4, "disagreement": 0.10, "true_class_prob": 0.86,
          "label_true_class_prob": 0.91, "nontarget_entropy": 0.93, "kl_to_target": 0.004, "tv_to_target": 0.02}


def test_only_the_hard_arm_is_judged_on_the_signal_alone():
    # hard gets the argmax: disagreeing on 10% of views is a signal at 0.05, not at 0.2
    assert labels_in_disguise(SIGNAL, ["none", "control", "soft", "hard"], 0.05) == []
    assert labels_in_disguise(SIGNAL, ["soft", "hard"], 0.2) == ["hard"]
    assert labels_in_disguise(SIGNAL, ["soft", "hard"], 0.10) == []  # exactly at the threshold is a signal
    # soft is never called labels in disguise from a distance at its τ (TV 0.02 here)
    assert labels_in_disguise(SIGNAL, ["soft"], 0.5) == []
    assert labels_in_disguise(None, ["hard"], 0.05) == [] and signal_lines(None, ["hard"], 0.05) == []


def test_the_report_names_labels_in_disguise_with_the_measured_numbers():
    text = "\n".join(signal_lines({**SIGNAL, "disagreement": 0.01}, ["none", "soft", "hard"], 0.05))
    assert "**Labels in disguise** for `hard`: the teacher's argmax is the label on 99.0% of the views" in text
    assert "disagrees with the label on 1.0%" in text and "gives the true class 0.86" in text
    assert "2.0% of the mass (total variation, KL 0.004 nats)" in text
    assert "Labels in disguise" not in "\n".join(signal_lines(SIGNAL, ["none", "soft", "hard"], 0.05))


def test_the_report_shows_what_each_arm_took_from_the_teacher():
    arm = {"agreement": 0.9, "kl_from_teacher": 0.25, "n_transferable": 20.0, "transferable_right": 0.35,
           "n_teacher_wrong": 9.0, "copies_teacher_errors": 0.2, "n_seeds": 3,
           "agreement_by_class": [0.95] * 9 + [0.6]}
    split = {"teacher_acc": 0.97, "arms": {a: arm for a in ("none", "control", "soft", "hard")}}
    inputs = _inputs(0.975)
    inputs.transfer = {"teacher_signal": SIGNAL, "reference": "none", "splits": {"train": split, "test": split}}
    md = report.render_markdown(inputs, COMPS, [])
    section = md.split("## What the teacher passes on")[1].split("\n## ")[0]
    assert "| soft | 90.0 | 90.0 | 0.250 | 35.0 (20) | 35.0 (20) | 20.0 (9) |" in section
    assert "Lowest test agreement by class: `9` (none 60.0, control 60.0, soft 60.0, hard 60.0)." in section
    assert "**Labels in disguise**" not in section  # the hard arm's teacher disagrees on 10% of views
    assert "## What the teacher passes on" not in report.render_markdown(_inputs(0.975), COMPS, [])
