"""Stage sweep@<loss>: an Optuna study over λ (and τ for soft) on the val split.

Run an extra worker on the same study with `python pipeline/sweep.py --loss soft` in a
second shell: both stop once the study holds sweep.n_trials finished trials.
"""

import argparse

import mlflow

from distillery.cli import StageContext, main_for
from distillery.config import check_model_names
from distillery.data import load_prepared
from distillery.errors import TrainingError
from distillery.models import load_model
from distillery.runs import state_digest, write_history_csv, write_json
from distillery.sweep import TUNED, open_study, param_importance, run_study, study_name
from distillery.tracking import base_tags, setup_tracking, start_run
from distillery.trials import make_objective


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--loss", required=True, choices=["soft", "hard"], help="which distillation loss to tune")


def body(ctx: StageContext) -> str:
    p, layout, kind = ctx.params, ctx.layout, ctx.args.loss
    check_model_names(p)
    data = load_prepared(layout.prepared)
    teacher, _, _ = load_model(layout.models / "teacher.pt")
    setup_tracking(p.tracking, layout)
    space = getattr(p.distill, kind)
    fingerprint = {
        "epochs": p.sweep.epochs, "pruner": p.sweep.pruner, "seed": p.seed,
        "student": p.student.model_dump(), "train": p.train.model_dump(), "augment": p.augment.model_dump(),
        "loss_cfg": space.model_dump(), "teacher": state_digest(teacher),
        "data": data.fingerprint(),
    }
    out_dir = layout.sweeps / kind
    study = open_study(out_dir / "study.db", study_name(kind, fingerprint), p.sweep, p.seed)
    tags = base_tags(layout, p, f"sweep@{kind}", loss_type=kind, model_kind="sweep_trial")

    objective = make_objective(p, kind, data, teacher, tags)

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
