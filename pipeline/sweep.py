"""Stage sweep@<loss>: an Optuna study over λ (and τ for soft) on the val split.

Run an extra worker on the same study with `python pipeline/sweep.py --loss soft` in a
second shell: both stop once the study holds sweep.n_trials finished trials.
"""

import argparse

import mlflow
import optuna

from distillery.cli import StageContext, main_for
from distillery.config import check_model_names
from distillery.data import load_prepared
from distillery.errors import TrainingError
from distillery.models import load_model
from distillery.recipes import make_loss, student_recipe, student_spec
from distillery.runs import write_history_csv, write_json
from distillery.sweep import (
    TUNED,
    file_digest,
    heartbeat,
    open_study,
    param_importance,
    run_study,
    study_name,
    suggest_loss_params,
)
from distillery.tracking import EpochLogger, base_tags, setup_tracking, start_run
from distillery.train import fit


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--loss", required=True, choices=["soft", "hard"], help="which distillation loss to tune")


def body(ctx: StageContext) -> str:
    p, layout, kind = ctx.params, ctx.layout, ctx.args.loss
    check_model_names(p)
    data = load_prepared(layout.prepared)
    teacher_path = layout.models / "teacher.pt"
    teacher, _, _ = load_model(teacher_path)
    setup_tracking(p.tracking, layout)
    space = getattr(p.distill, kind)
    spec = student_spec(p, data, distilled=True)
    fingerprint = {
        "epochs": p.sweep.epochs, "pruner": p.sweep.pruner, "seed": p.seed,
        "student": p.student.model_dump(), "train": p.train.model_dump(), "augment": p.augment.model_dump(),
        "loss_cfg": space.model_dump(), "teacher": file_digest(teacher_path),
        "data": file_digest(layout.prepared / "train_y.npy") + file_digest(layout.prepared / "meta.json"),
    }
    out_dir = layout.sweeps / kind
    study = open_study(out_dir / "study.db", study_name(kind, fingerprint), p.sweep, p.seed)
    tags = base_tags(layout, p, f"sweep@{kind}", loss_type=kind, model_kind="sweep_trial")

    def objective(trial: optuna.Trial) -> float:
        hp = suggest_loss_params(trial, space)
        for key, value in hp.items():
            trial.set_user_attr(key, value)
        loss = make_loss(p, kind, hp["alpha"], hp.get("tau", 1.0))
        net = spec.build(p.seed)  # every trial starts from the same weights: only λ/τ differ

        def prune_check(record: dict) -> None:
            heartbeat(trial)
            trial.report(record["val_acc"], record["epoch"])
            if trial.should_prune():
                reason = (f"{p.sweep.pruner} pruner: val_acc {record['val_acc']:.4f} at epoch {record['epoch']} "
                          "below the other trials")
                trial.set_user_attr("prune_reason", reason)
                mlflow.set_tag("prune_reason", reason)
                mlflow.set_tag("trial_state", "PRUNED")
                raise optuna.TrialPruned(reason)

        with start_run(f"{kind}-trial-{trial.number}", {**tags, "trial_number": str(trial.number)},
                       {"loss": kind, **hp, "epochs": p.sweep.epochs}, nested=True):
            try:
                recipe = student_recipe(p, loss, p.sweep.epochs, p.seed, hp.get("lr"), hp.get("weight_decay"))
                history = fit(net, data, recipe, teacher=teacher,
                              callbacks=[EpochLogger(), prune_check], desc=f"{kind} trial {trial.number}")
            except TrainingError as exc:
                trial.set_user_attr("prune_reason", f"failed: {exc}")
                mlflow.set_tag("trial_state", "PRUNED")
                mlflow.set_tag("prune_reason", f"failed: {exc}")
                raise optuna.TrialPruned(f"training failed: {exc}") from None
            mlflow.set_tag("trial_state", "COMPLETE")
        return history[-1]["val_acc"]

    with start_run(f"sweep-{kind}", {**tags, "model_kind": "sweep"},
                   {"loss": kind, "sweep": p.sweep.model_dump(), "study_name": study.study_name}):
        result = run_study(study, objective, p.sweep.n_trials, lock_path=out_dir / "study.lock")
        if not result.best:
            raise TrainingError(f"sweep@{kind}: no trial completed; see the prune reasons in MLflow")
        mlflow.log_metrics({"best_val_acc": result.best["val_acc"], "n_trials": len(result.trials)})
    write_json(out_dir / "best.json", {"loss": kind, **result.best})
    write_json(out_dir / "importance.json", param_importance(study))
    write_history_csv(out_dir / "trials.csv", result.trials)
    hp = ", ".join(f"{k}={result.best[k]:.3g}" for k in TUNED if k in result.best)
    return f"{kind}: best {hp} (val {result.best['val_acc']:.4f}) over {len(result.trials)} trials"


if __name__ == "__main__":
    main_for("sweep", body, add_args)
