"""The real `dvc repro` on a tiny configuration, in a temporary copy of the repository (pipeline_runs.py),
then what a user does next: read its results, edit params and rerun, cut its lock short, run ablations."""

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, run_ok, set_dotted
from pipeline_runs import ARMS, MAKE_REPRO, STAGES, TINY, comparable_outputs, lock_without_timings, ran, reference_run

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]  # the module fixture runs the whole pipeline


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """A copy of the project with its own git history and tiny params, reproduced once, uninterrupted."""
    return reference_run(tmp_path_factory)


def edited(dest, dotted, value):
    """Write one params change; return a function that restores the file."""
    path = dest / "params.yaml"
    original = path.read_text()
    raw = yaml.safe_load(original)
    set_dotted(raw, dotted, value)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return lambda: path.write_text(original)


def test_every_stage_ran_and_wrote_its_outputs(repo):
    dest, log = repo.dest, repo.log
    assert ran(log) == set(STAGES)
    for rel in ("models/teacher.pt", "models/none/seed_1.pt", "models/control/seed_2.pt", "models/soft/seed_1.pt",
                "models/hard/seed_2.pt", "sweeps/soft/best.json", "sweeps/control/trials.csv",
                "metrics/history/soft/seed_2.csv", "metrics/final/control.json", "reports/report.md",
                "reports/effects.json", "reports/figures/effects.png", "reports/figures/delta_val.png",
                "reports/figures/sweeps.png", "dvc.lock", "metrics/seed_plan.json", "models/extra/soft/seed_3.pt",
                "metrics/val_predictions/hard.csv", "metrics/history/extra/none/seed_3.csv"):
        assert (dest / rel).exists(), rel
    effects = json.loads((dest / "reports/effects.json").read_text())
    assert effects["n_seeds"] == {arm: 3 for arm in ARMS}  # the pilot's two and the planned third
    assert effects["comparisons"]["soft-none"]["precision"]["seeds_run"] == 3


def test_metrics_and_verdicts_are_real(repo):
    dest = repo.dest
    ev = json.loads((dest / "metrics/evaluation.json").read_text())
    assert set(ev) == {"teacher", *ARMS}
    for arm in ("control", "soft", "hard"):
        for head in ("cls", "dist", "avg"):
            assert 0.0 <= ev[arm][f"test_acc_{head}"] <= 1.0 and f"test_acc_{head}_std" in ev[arm]
        assert ev[arm]["n_seeds"] == 3  # the pilot's two and the one the plan added
    effects = json.loads((dest / "reports/effects.json").read_text())
    assert set(effects["comparisons"]) == {"soft-none", "soft-control", "hard-none", "hard-control", "soft-fake"}
    for c in effects["comparisons"].values():
        assert c["n_seeds"] == 3 and c["verdict"] and 0.0 <= c["p_holm"] <= 1.0
    best = json.loads((dest / "sweeps/soft/best.json").read_text())
    assert 0.1 <= best["hparams"]["alpha"] <= 0.9 and 1.0 <= best["hparams"]["tau"] <= 8.0
    transfer = json.loads((dest / "metrics/transfer.json").read_text())
    signal = transfer["teacher_signal"]
    assert signal["arm"] == "soft" and signal["n"] > 0 and 0.0 <= signal["tv_to_target"] <= 1.0
    assert 0.0 < signal["true_class_prob"] <= 1.0 and 0.0 <= signal["nontarget_entropy"] <= 1.0
    assert transfer["reference"] == "none"
    for split in ("train", "test"):
        assert set(transfer["splits"][split]["arms"]) == set(ARMS)
        own = transfer["splits"][split]["arms"]["none"]["transferable_right"]
        assert own is None or own < 0.5  # the reference's own share on images it gets wrong in most seeds
    report = (dest / "reports/report.md").read_text()
    for words in ("same recipe", "Holm", "identical for every arm", "control", "Machine:", "KL normalisation",
                  "What the teacher passes on", "Transferable", "Did the students finish learning?"):
        assert words in report, words


def test_mlflow_has_every_run_with_the_same_keys_for_trials_and_finals(repo):
    dest = repo.dest
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{dest / 'mlflow.db'}")
    exp = client.get_experiment_by_name("distillery")
    runs = client.search_runs([exp.experiment_id], max_results=500)
    by_name = {r.info.run_name: r for r in runs}
    assert {"teacher", *(f"{a}-seed{s}" for a in ARMS for s in (1, 2)), *(f"sweep-{a}" for a in ARMS)} <= set(by_name)
    for arm in ARMS:  # control trains at none's recipe (sweep.recipe: shared): no trial of its own
        parent = by_name[f"sweep-{arm}"]
        children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
        assert len(children) == (0 if arm == "control" else 2)
        assert not children or set(children[0].data.params) == set(by_name[f"{arm}-seed1"].data.params)
    assert by_name["sweep-control"].data.tags["recipe_from"] == "none"
    curve = client.get_metric_history(by_name["soft-seed1"].info.run_id, "val_acc")
    assert [m.step for m in curve] == [1, 2, 3]
    tags = by_name["hard-seed2"].data.tags
    assert tags["dvc_stage"] == "final_kd@hard" and tags["arm"] == "hard" and len(tags["git_commit"]) == 40
    # one dvc repro: every final run, pilot and extra seeds of every arm, nests under one finished parent
    # (another module's rerun of this project at other params makes its own group: grouped by params hash)
    finals = [r for r in runs if r.data.tags.get("model_kind") == "final"]
    groups: dict = {}
    for r in finals:
        groups.setdefault(r.data.tags["params_hash"], set()).add(r.data.tags.get("mlflow.parentRunId"))
    assert len(finals) >= len(ARMS) * 3 and all(len(g) == 1 and None not in g for g in groups.values()), groups
    for (parent_id,) in groups.values():
        parent = client.get_run(parent_id)
        assert parent.data.tags["model_kind"] == "repro" and parent.info.status == "FINISHED"


def test_mlflow_has_test_metrics_one_summary_and_each_arms_pick_registered(repo):
    dest = repo.dest
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{dest / 'mlflow.db'}")
    exp = client.get_experiment_by_name("distillery")
    runs = client.search_runs([exp.experiment_id], max_results=500, order_by=["attributes.start_time DESC"])
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"  # the UI's model-training mode
    ev = json.loads((dest / "metrics/evaluation.json").read_text())
    finals = [r for r in runs if r.data.tags.get("model_kind") == "final"]
    assert len(finals) == len(ARMS) * 3
    for r in finals:  # what mlflow ui sorts final runs by: the test accuracy of the inference rule
        seed = ev[r.data.tags["arm"]]["per_seed"][r.data.tags["seed"]]
        assert r.data.metrics["test_acc"] == pytest.approx(seed["test_acc_avg"])
        assert r.data.metrics["test_teacher_agreement"] == pytest.approx(seed["teacher_agreement"])
    summary = next(r for r in runs if r.data.tags.get("model_kind") == "summary")
    effects = json.loads((dest / "reports/effects.json").read_text())
    for name, c in effects["comparisons"].items():
        assert summary.data.metrics[f"{name}.delta"] == pytest.approx(c["diff"])
        assert summary.data.tags[f"verdict.{name}"] == c["verdict"]
        assert summary.data.tags.get(f"sized.{name}") == (None if c["sized"] is None else str(c["sized"]).lower())
    linked = {m.model_id for m in client.get_run(summary.info.run_id).inputs.model_inputs}
    assert linked == {client.get_run(r.info.run_id).outputs.model_outputs[0].model_id for r in finals}
    listed = {a.path for a in client.list_artifacts(summary.info.run_id)}
    assert {"report.md", "headline.json", "effects.json", "figures"} <= listed
    for arm in ARMS:  # the registered pick is the best seed by val objective, never by test
        per_seed = {}
        for rel in (f"metrics/final/{arm}.json", f"metrics/final/extra/{arm}.json"):
            per_seed.update(json.loads((dest / rel).read_text())["per_seed"])
        best = min(per_seed, key=lambda s: (-per_seed[s]["objective"], int(s)))
        version = client.get_model_version_by_alias(f"distillery-{arm}", "current")
        assert version.tags["seed"] == best, arm
        picked = next(r for r in finals if r.data.tags["arm"] == arm and r.data.tags["seed"] == best)
        assert version.run_id == picked.info.run_id, arm  # the registry points back at the run that trained it
    from distillery.data import load_prepared

    digests = load_prepared(dest / "data/prepared").split_digests
    for r in finals:  # MLflow 3's Models and Dataset columns: one logged model with its test metrics, two splits
        (output,) = client.get_run(r.info.run_id).outputs.model_outputs
        model = client.get_logged_model(output.model_id)
        assert model.source_run_id == r.info.run_id and "test_acc" in {m.key for m in model.metrics}
    for r in runs:
        if r.data.tags.get("model_kind") in ("final", "sweep_trial", "teacher"):
            logged = client.get_run(r.info.run_id).inputs.dataset_inputs
            inputs = {i.dataset.name: i.dataset.digest for i in logged}
            assert inputs == {"prepared/train": digests["train"], "prepared/val": digests["val"]}, r.info.run_name
        if r.data.tags.get("model_kind"):
            assert r.data.tags.get("mlflow.note.content") and r.data.tags.get("mlflow.source.name"), r.info.run_name


def _served_probabilities(dest, uri, images, env):
    """Load `uri` with mlflow.pyfunc in a fresh process (no distillery import) and predict `images`."""
    import numpy as np

    np.save(dest.parent / "served_x.npy", images)
    code = ("import sys, json, numpy as np, mlflow.pyfunc; m = mlflow.pyfunc.load_model(sys.argv[1]); "
            "p = m.predict(np.load(sys.argv[2])); np.save(sys.argv[3], p); "
            "print(json.dumps(sorted(k for k in sys.modules if k.startswith('distillery'))))")
    out = dest.parent / "served_p.npy"
    proc = subprocess.run(["python", "-c", code, uri, str(dest.parent / "served_x.npy"), str(out)], cwd=dest.parent,
                          env={**env, "MLFLOW_TRACKING_URI": f"sqlite:///{dest / 'mlflow.db'}"}, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return np.load(out), json.loads(proc.stdout.strip().splitlines()[-1])


def test_a_registered_model_predicts_like_evaluate_in_a_fresh_process(repo):
    dest = repo.dest
    import numpy as np
    import pandas as pd

    from distillery.data import load_prepared

    test = load_prepared(dest / "data/prepared", splits=("test",)).splits["test"]
    probs, imported = _served_probabilities(dest, "models:/distillery-soft@current", np.array(test.x), repo.env)
    assert not [m for m in imported if m.startswith("distillery.training")], imported
    assert probs.shape == (len(test.y), 10) and np.allclose(probs.sum(1), 1, atol=1e-5)
    from mlflow.tracking import MlflowClient

    seed = MlflowClient(tracking_uri=f"sqlite:///{dest / 'mlflow.db'}").get_model_version_by_alias(
        "distillery-soft", "current").tags["seed"]
    evaluated = pd.read_csv(dest / "metrics/test_predictions.csv")[f"soft_s{seed}_avg"].to_numpy()
    assert (probs.argmax(1) == evaluated).mean() >= 0.99  # the preprocessing travelled with the model


def test_predict_reads_a_folder_of_mixed_images(repo, tmp_path):
    dest = repo.dest
    import numpy as np
    from PIL import Image

    from distillery.data import load_prepared

    x = np.array(load_prepared(dest / "data/prepared", splits=("val",)).splits["val"].x[:2])
    folder = tmp_path / "mixed"
    (folder / "sub").mkdir(parents=True)
    Image.fromarray(x[0, 0]).save(folder / "gray.png")  # the stored pixels themselves
    Image.fromarray(x[1, 0]).convert("RGB").resize((45, 30)).save(folder / "sub" / "wide.jpg")
    Image.fromarray(x[1, 0]).convert("RGBA").save(folder / "alpha.png")
    Image.fromarray(x[0, 0]).convert("P").save(folder / "palette.gif")
    (folder / "broken.png").write_bytes(b"not an image")
    (folder / "notes.txt").write_text("ignored")
    proc = subprocess.run(["python", "-m", "distillery.predict", "--model", "models:/distillery-none@current",
                           str(folder)], cwd=dest, env={**repo.env, "MLFLOW_TRACKING_URI": f"sqlite:///{dest / 'mlflow.db'}"},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert [Path(line.split("\t")[0]).name for line in lines] == ["alpha.png", "gray.png", "palette.gif", "wide.jpg"]
    for line in lines:
        probs = [float(v) for v in re.findall(r" (\d\.\d{3})", line.split("\t")[1])]
        assert len(probs) == 3 and probs == sorted(probs, reverse=True) and sum(probs) <= 1.001
    assert "broken.png" in proc.stderr
    bad = subprocess.run(["python", "-m", "distillery.predict", "--model", "models:/no-such-model@current",
                          str(folder)], cwd=dest, env={**repo.env, "MLFLOW_TRACKING_URI": f"sqlite:///{dest / 'mlflow.db'}"},
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "no-such-model" in bad.stderr


def test_the_real_studies_spent_the_same_budget(repo):
    """Read back what each arm's sweep stage actually did: its Optuna study and its MLflow parent run."""
    dest = repo.dest
    import optuna
    from mlflow.tracking import MlflowClient

    spent = {}
    for arm in ARMS:
        best = json.loads((dest / f"sweeps/{arm}/best.json").read_text())
        study = optuna.load_study(study_name=best["study_name"], storage=f"sqlite:///{dest}/sweeps/{arm}/study.db")
        finished = [t for t in study.trials if t.state.is_finished() and t.state.name != "FAIL"]
        assert len(finished) == (0 if arm == "control" else TINY["sweep.n_trials"]), arm
        for t in finished:  # a completed trial ran the full final budget; a pruned one stopped at a rung
            last = max(t.intermediate_values)
            assert last == TINY["student.epochs"] if t.state.name == "COMPLETE" else last >= TINY["sweep.prune_from_epoch"]
        spent[arm] = (type(study.pruner).__name__, type(study.sampler).__name__)
    assert len(set(spent.values())) == 1, spent
    client = MlflowClient(tracking_uri=f"sqlite:///{dest / 'mlflow.db'}")
    exp = client.get_experiment_by_name("distillery")
    budgets = {r.info.run_name: tuple(sorted((k, v) for k, v in r.data.params.items() if k.startswith("budget.")))
               for r in client.search_runs([exp.experiment_id], max_results=500) if r.info.run_name.startswith("sweep-")}
    assert set(budgets) == {f"sweep-{a}" for a in ARMS} and len(set(budgets.values())) == 1, budgets
    assert ("budget.epochs_per_trial", str(TINY["student.epochs"])) in budgets["sweep-none"]


def test_the_teacher_runs_once_per_view_stream(repo):
    """A distilled run replays the teacher's logits when a run of an earlier stage had the same views (view
    seed and Mixup/CutMix alpha): hard's trials after soft's, hard's finals after soft's; it computes them
    otherwise. Runs of one stage train fused (train.fuse: auto), one group here: runs of a group that share
    a view stream share one live teacher forward, which is what fills the cache."""
    dest = repo.dest
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{dest / 'mlflow.db'}")
    exp = client.get_experiment_by_name("distillery")
    runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id], max_results=500)}
    groups = [[f"{arm}-trial-{n}" for n in range(TINY["sweep.n_trials"])] for arm in ("soft", "hard")]
    groups += [[f"{arm}-seed{s}" for s in TINY["final.seeds"]] for arm in ("soft", "hard")]
    groups += [[f"{arm}-seed3"] for arm in ("soft", "hard")]  # the seed the plan added: extra_kd@soft, @hard
    seen, streams = set(), set()
    for group in groups:  # the order DVC runs them in: soft's sweep, hard's sweep, soft's finals, hard's finals
        in_group = set()
        for name in group:
            run = runs[name]
            sizes = {m.value for m in client.get_metric_history(run.info.run_id, "group_size")}
            assert sizes == {len(group)}, (name, sizes)  # trained as one fused group
            stream = (run.data.params["view_seed"], float(run.data.params["mixing"]))
            cached = [m.value for m in client.get_metric_history(run.info.run_id, "teacher_from_cache")]
            assert cached == [1.0 if stream in seen else 0.0] * TINY["student.epochs"], (name, stream, seen)
            in_group.add(stream)
        seen |= in_group
        streams |= in_group
    on_disk = list((dest / "cache/teacher").glob("*/epoch_*.npy"))
    assert len(on_disk) == len(streams) * TINY["student.epochs"]


def test_second_repro_reruns_nothing(repo):
    dest, env = repo.dest, repo.env
    assert ran(run_ok(["dvc", "repro"], dest, env)) == set()


def test_report_setting_reruns_only_the_report(repo):
    dest, env = repo.dest, repo.env
    restore = edited(dest, "report.dpi", 80)
    assert ran(run_ok(["dvc", "repro"], dest, env)) == {"report"}
    restore()
    run_ok(["dvc", "repro"], dest, env)


# The seed plan joins every arm's pilot, so any final stage's change may change it. That is the upper
# bound could_rerun gives; a real rerun skips extra@<arm> when its own plan (metrics/seed_plan/<arm>.json)
# came out byte-identical.
PLANNED = ("seed_plan", "extra@none", "extra@control", "extra_kd@soft", "extra_kd@hard", "extra_kd@fake")


def could_rerun(dest, env, dotted, value):
    """Every stage `dvc repro` could rerun after one params change: the changed stages and all that
    depend on them (--dry --force-downstream, an upper bound: a real rerun skips a stage whose inputs came
    out unchanged). Dry, because the real rerun of the reproduced pipeline is what the kill test does."""
    restore = edited(dest, dotted, value)
    try:
        return ran(run_ok(["dvc", "repro", "--dry", "--force-downstream"], dest, env))
    finally:
        restore()


def test_one_arms_search_range_reruns_only_that_branch_and_the_joins(repo):
    assert could_rerun(repo.dest, repo.env, "distill.hard.alpha", {"low": 0.2, "high": 0.8, "log": False}) == {
        "sweep_kd@hard", "final_kd@hard", *PLANNED, "evaluate", "report"}


def test_a_teacher_setting_leaves_the_no_teacher_arms_alone(repo):
    assert could_rerun(repo.dest, repo.env, "teacher.lr", 1e-3) == {
        "teacher", "sweep_kd@soft", "sweep_kd@hard", "final_kd@soft", "final_kd@hard", *PLANNED, "evaluate", "report",
        "sweep_kd@fake", "final_kd@fake"}  # the fake arm never reads the teacher, but its stage group depends on it


def test_a_student_setting_reruns_every_arm_but_not_the_teacher(repo):
    assert could_rerun(repo.dest, repo.env, "student.depth", 3) == set(STAGES) - {"prepare", "teacher"}


def test_a_lock_cut_short_anywhere_is_recovered_without_an_epoch(repo, tmp_path, record_property):
    """What a kill inside DVC's in-place rewrite of dvc.lock leaves (a prefix of the new lock), made without
    timing luck. Every byte of the evaluate entry: the repair, then DVC's own status, never raises (no dead
    end). Then `make repro` after cuts of every kind the repair meets (refused as YAML, read but torn: the
    `hash: md` cut inside evaluate's first dep and one inside an md5, and read as a shorter lock between two
    entries): every result file equals the uninterrupted run's, no epoch is trained, the lock comes back whole."""
    from distillery.core.dvc_state import cut_kind, declared_shapes
    from distillery.core.lock_cuts import judge_cuts, scratch_copy, without_entry

    dest, whole = repo.dest, (repo.dest / "dvc.lock").read_bytes()
    entry = whole.index(b"\n  evaluate:\n") + 1
    entry_end = re.compile(rb"^  [^ \n]", re.M).search(whole, entry + 1)
    scratch = scratch_copy(dest, tmp_path / "scratch")
    judged = judge_cuts(whole, range(entry, entry_end.start() if entry_end else len(whole)), scratch,
                        without_entry(whole, "report"), declared_shapes(scratch))
    assert judged.dead == [] and sum(judged.table.values()) > 1000, (judged.dead[:3], judged.table)

    def inside(marker: bytes, keep: int) -> int:
        return whole.index(marker, entry) + keep

    # the last training stage's entry: the cut drops it and the stages after it, so one training stage must
    # restore its finished runs
    last_training = max(m.start() for m in re.finditer(rb"^  (extra|final|sweep|teacher)[^:\n]*:$", whole, re.M))
    cuts = {"read, between two entries": last_training, "torn: hash: md": inside(b"hash: md5", len(b"hash: md")),
            "torn: inside an md5": inside(b"md5: ", len(b"md5: ") + 9)}
    for offset in range(len(whole) - 1, 0, -1):  # a cut DVC refuses, as near the end as it comes
        (tmp_path / "cut.lock").write_bytes(whole[:offset])
        if cut_kind(tmp_path / "cut.lock") in ("yaml", "schema"):
            cuts["refused by DVC"] = offset
            break
    for name, expected in {"read, between two entries": "read", "torn: hash: md": "torn",
                           "torn: inside an md5": "torn"}.items():  # what DVC's loader alone makes of them
        (tmp_path / "cut.lock").write_bytes(whole[:cuts[name]])
        assert cut_kind(tmp_path / "cut.lock") == expected, name

    readme = (ROOT / "README.md").read_text() + (ROOT / "docs/reliability.md").read_text()  # the full table
    (dest / "dvc.lock").write_bytes(whole[:cuts["refused by DVC"]])  # what a bare `dvc repro` says is a row there
    bare = subprocess.run(["dvc", "repro"], cwd=dest, env=repo.env, capture_output=True, text=True)
    said = next(line for line in (bare.stdout + bare.stderr).splitlines() if "dvc.lock" in line)
    assert bare.returncode != 0 and ran(bare.stdout) == set(), bare.stdout
    assert f"`{said.strip().rstrip('.')}`" in readme and "`make repair`" in readme, said

    rows = []  # a rerun of evaluate times it afresh: the cut that may cause one comes last
    for name in ("refused by DVC", "torn: hash: md", "torn: inside an md5", "read, between two entries"):
        offset = cuts[name]
        epochs = tmp_path / f"epochs-{offset}.log"
        (dest / "dvc.lock").write_bytes(whole[:offset])
        log = run_ok(MAKE_REPRO, dest, {**repo.env, "DISTILLERY_EPOCH_LOG": str(epochs)})
        repaired = [line for line in log.splitlines() if line.startswith("distillery repair:")]
        rows.append(f"   | {name} | byte {offset} of {len(whole)} | reran {sorted(ran(log))} | "
                    f"{repaired[0][:70] if repaired else 'nothing to repair'}")
        assert not epochs.exists(), (name, epochs.read_text())
        assert comparable_outputs(dest) == repo.snapshot, name
        assert lock_without_timings((dest / "dvc.lock").read_bytes()) == lock_without_timings(whole), name
        if name.startswith("read"):
            assert repaired == [], (name, log)
        else:
            assert len(repaired) == 1 and "dvc.lock.torn" in repaired[0], (name, log)
            assert (dest / "dvc.lock.torn").read_bytes() == whole[:offset]
    record_property("shown_in_summary", "\n".join([
        f"dvc.lock cut at each of {sum(judged.table.values()) // 2} bytes of evaluate's entry: "
        f"{judged.distinct} distinct repaired locks, 0 dead ends",
        "dvc.lock cut short (kind | where | stages rerun | repair):", *rows]))


def test_a_typo_anywhere_in_params_stops_dvc_repro_in_one_line(repo):
    """A key no stage lists still reaches the schema: the report stage tracks the whole params file."""
    dest, env = repo.dest, repo.env
    path = dest / "params.yaml"
    original = path.read_text()
    try:
        for typo, named in ((original + "definitely_not_a_key: 1\n", "unknown key 'definitely_not_a_key'"),
                            (original.replace("experiment: distillery", "experimnt: distillery"),
                             "did you mean 'tracking.experiment'?")):
            path.write_text(typo)
            proc = subprocess.run(["dvc", "repro"], cwd=dest, env=env, capture_output=True, text=True)
            out = proc.stdout + proc.stderr
            ours = [line for line in out.splitlines() if line.startswith("distillery ")]
            assert proc.returncode != 0 and ran(out) == {"report"}, out[-2000:]
            assert len(ours) == 1 and ours[0].startswith("distillery report: error:") and named in ours[0], out
            assert "Traceback" not in out
    finally:
        path.write_text(original)
        run_ok(["dvc", "repro"], dest, env)  # DVC removed the failed stage's outputs: put them back


def test_dvc_exp_show_fits_a_screen_and_dvc_plots_render(repo, tmp_path):
    """Two ablations as a DVC user runs them; the headline cells fit `dvc exp show` at 200 columns.

    `--only-changed` hides cells equal in every experiment, so the two thresholds are chosen to change every
    primary comparison's verdict: at 1000 points its interval lies inside ±δ, at 0.001 it does not. The
    secondaries stay "not tested" behind the tiny run's closed gate in all three, so `--keep` shows them too.
    """
    dest, env = repo.dest, {**repo.env, "COLUMNS": "200"}
    original = (dest / "params.yaml").read_text()
    try:
        run_ok(["git", "add", "-A"], dest, env)
        run_ok(["git", "commit", "-qm", "results"], dest, env)
        for value in ("0.001", "1000"):
            run_ok(["dvc", "exp", "run", "-S", f"report.min_effect={value}"], dest, env)
        names = ("soft-none", "soft-control", "hard-none", "hard-control", "soft-fake")
        table = run_ok(["dvc", "exp", "show", "--only-changed", "--keep", "|".join(names), "--no-pager"], dest, env)
        assert max(len(line) for line in table.splitlines()) <= 200, table
        for name in names:
            assert name in table, table
        assert re.search(r"[+-]\d+\.\d\d±\d+\.\d\d (gain|loss|inconclusive|\|Δ\|<)", table), table
        run_ok(["dvc", "plots", "show", "-o", str(tmp_path / "plots")], dest, env)
        html = (tmp_path / "plots" / "index.html").read_text()
        assert "effects.png" in html and "learning_curves.png" in html and "val_acc" in html
    finally:
        (dest / "params.yaml").write_text(original)
        run_ok(["dvc", "repro"], dest, env)


def test_the_primary_comparison_leads_and_the_reproduce_check_compares_runs(repo):
    """report.primary comes first with role primary at the full alpha; `python -m distillery.reproduce
    --effects` accepts the run against itself and flags a perturbed copy whose Δ moved past the Welch bound."""
    dest = repo.dest
    effects = json.loads((dest / "reports/effects.json").read_text())
    assert effects["primary"] == "soft-control"  # effects.json sorts its keys; headline.json keeps the order
    first = effects["comparisons"]["soft-control"]
    assert first["role"] == "primary" and first["level"] == pytest.approx(0.95)
    assert {c["role"] for name, c in effects["comparisons"].items() if name != "soft-control"} == {"secondary"}
    headline = json.loads((dest / "reports/headline.json").read_text())
    assert list(headline)[0] == "soft-control"
    for name, c in effects["comparisons"].items():  # "*": unsized, the half-width above report.target_halfwidth
        assert headline[name].endswith("*") == ((c["high"] - c["low"]) / 2 > 1.0) == (c["sized"] is False), name
    report = (dest / "reports/report.md").read_text()
    assert "**Primary comparison**" in report and "P(same verdict on a rerun)" in report
    same = subprocess.run(["python", "-m", "distillery.reproduce", "--effects", "reports/effects.json", "--out",
                           str(dest.parent / "same.md")], cwd=dest, env=repo.env, capture_output=True, text=True)
    assert same.returncode == 0, same.stderr
    assert "Verdicts: all the same" in (dest.parent / "same.md").read_text()
    moved = json.loads((dest / "reports/effects.json").read_text())
    c = moved["comparisons"]["soft-control"]
    shift = 10 * (c["precision"]["sd_test"] + 1.0)
    c.update(diff=c["diff"] + shift, low=c["low"] + shift, high=c["high"] + shift, verdict="helped by more than 1 point")
    (dest.parent / "moved.json").write_text(json.dumps(moved))
    out = subprocess.run(["python", "-m", "distillery.reproduce", "--effects", str(dest.parent / "moved.json"), "--out",
                          str(dest.parent / "moved.md")], cwd=dest, env=repo.env, capture_output=True, text=True)
    table = (dest.parent / "moved.md").read_text()
    row = next(line for line in table.splitlines() if line.startswith("| soft-control"))
    assert " > " in row and "| no |" in row  # Δ past the Welch bound, intervals apart
    assert out.returncode == (0 if first["verdict"] == "helped by more than 1 point" else 1)


def test_a_study_starts_cold_where_the_committed_trials_ran_under_other_conditions(repo):
    """The tiny run trains 3 epochs: the committed warm-start trials (30 epochs, the default) do not apply."""
    assert re.search(r"sweep: none: .*cold start: .*none\.csv not used \(its trials ran under other [a-z_, ]*epochs",
                     repo.log), repo.log[-3000:]
