"""The MLflow side of evaluate: test metrics onto each final run, each seed's model as an MLflow Model,
and each arm's pick registered.

A model file finds its run by the SHA-256 the final stage tagged it with (runs.py), so a rerun, a
resumed run or a DVC experiment all point at the run that trained these exact weights. The pick is
the seed with the best val objective (metrics/final: never the test split), registered as
`<tracking.experiment>-<arm>` with the alias `current`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..core.files import read_json
from ..core.paths import Layout
from ..core.processes import this_process
from ..core.tracking import MODEL_SHA_TAG, PROCESS_TAG, file_sha256

ALIAS = "current"
TEST_METRICS = {"test_acc_avg": "test_acc", "test_acc_cls": "test_acc_cls", "test_acc_dist": "test_acc_dist",
                "teacher_agreement": "test_teacher_agreement"}


def run_of_model(client: Any, experiment_id: str, path: Path) -> str | None:
    """The newest run that trained exactly these weights; None when this store never saw them."""
    runs = client.search_runs([experiment_id], filter_string=f"tags.{MODEL_SHA_TAG} = '{file_sha256(path)}'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0].info.run_id if runs else None


def val_objectives(layout: Layout, arm: str) -> dict[int, float]:
    """Per seed, the val objective the final (and extra) stage recorded: what the pick is made on."""
    out: dict[int, float] = {}
    for extra in (False, True):
        path = layout.final_metrics(arm, extra)
        if path.exists():
            out.update({int(s): float(r["objective"]) for s, r in read_json(path)["per_seed"].items()})
    return out


def pick_seed(objectives: dict[int, float], seeds: list[int]) -> int:
    """The best val objective among `seeds`; a tie goes to the lowest seed."""
    scored = [(-objectives.get(s, -np.inf), s) for s in seeds]
    return min(scored)[1]


def seed_test_metrics(evaluation: dict[str, Any], arm: str, seed: int) -> dict[str, float]:
    per_seed = evaluation[arm].get("per_seed", {}).get(str(seed), {})
    return {name: float(per_seed[key]) for key, name in TEST_METRICS.items() if key in per_seed}


@dataclass
class Published:
    runs: int
    models: int
    missing: int
    registered: dict[str, str]  # arm -> "name@alias (seed s)"

    def line(self, uri: str) -> str:
        parts = [f"mlflow: test metrics on {self.runs} final run(s), {self.models} MLflow Model(s)"]
        if self.registered:
            parts.append("registered " + ", ".join(self.registered.values()))
        if self.missing:
            parts.append(f"{self.missing} model file(s) have no run in {uri} (trained against another store)")
        return "; ".join(parts)


def served_model(path: Path, data: Any) -> tuple[Any, dict[str, Any], np.ndarray]:
    """The checkpoint as a ServedClassifier, its model card and an input example (the first val image)."""
    from ..serving import ServedClassifier, model_card
    from ..recipe.models import load_model

    net, spec, _ = load_model(path, expect_classes=data.num_classes, expect_chans=data.channels)
    served = ServedClassifier(net, data.mean, data.std, data.image_size)
    card = model_card(data.classes, data.channels, data.storage_size, data.image_size, data.mean, data.std,
                      architecture=architecture_of(spec, net), timm_model=spec.name, timm_kwargs=spec.kwargs)
    return served, card, np.array(data.splits["val"].x[:1])


def architecture_of(spec: Any, net: Any) -> str:
    """What the model is, not only the timm name it was built from (a 16-px, 4-block student is no DeiT-Tiny)."""
    from ..recipe.models import count_params

    k = spec.kwargs
    size = (f", {k['img_size']} px, patch {k['patch_size']}, width {k['embed_dim']}, depth {k['depth']}, "
            f"{k['num_heads']} heads" if "embed_dim" in k else "")
    return f"{spec.name}{size}, {count_params(net) / 1e6:.2f} M parameters"


def log_served_model(run_id: str, path: Path, data: Any, arm: str, seed: int, experiment_id: str) -> str:
    """The checkpoint as an MLflow 3 logged model of its run (the run's Models column and "Logged models";
    signature, input example, model card), without reopening the run; its model id (models:/<id>, which the
    registry resolves back to this run)."""
    import logging
    import tempfile

    import mlflow
    import mlflow.pytorch
    from mlflow.entities import LoggedModelOutput
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    served, card, example = served_model(path, data)
    signature = ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, *example.shape[1:]))]),
                               outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, data.num_classes))]))
    logging.getLogger("mlflow.pytorch").setLevel(logging.ERROR)  # a pickle warning per model: said once, in the docs
    client = mlflow.MlflowClient()
    model = client.create_logged_model(experiment_id, name=f"{arm}-seed{seed}", source_run_id=run_id,
                                       tags={"arm": arm, "seed": str(seed), "architecture": card["architecture"],
                                             PROCESS_TAG: this_process()},  # a kill before READY: tracking.py fails it
                                       model_type="image classifier")
    with tempfile.TemporaryDirectory() as tmp:
        # pickle, not pt2: torch.export would fix the batch size at the input example's
        mlflow.pytorch.save_model(served, f"{tmp}/model", signature=signature, input_example=example,
                                  metadata={**card, "arm": arm, "seed": seed}, pip_requirements=_requirements(),
                                  serialization_format="pickle")
        client.log_model_artifacts(model.model_id, f"{tmp}/model")
    client.finalize_logged_model(model.model_id, "READY")
    client.log_outputs(run_id, [LoggedModelOutput(model.model_id, 0)])
    return model.model_id


def _requirements() -> list[str]:
    """What loading needs: torch and timm at the versions that wrote it (no inference of the environment)."""
    import timm
    import torch

    return [f"torch=={torch.__version__.split('+')[0]}", f"timm=={timm.__version__}", "distillery"]


def register(client: Any, name: str, model_uri: str, tags: dict[str, str]) -> str:
    import mlflow

    version = mlflow.register_model(model_uri, name, tags=tags)
    client.set_registered_model_alias(name, ALIAS, version.version)
    return version.version


def publish(layout: Layout, params: Any, data: Any, models: dict[str, list[tuple[int, Path]]],
            evaluation: dict[str, Any]) -> str:
    """Test metrics and MLflow Models onto the runs that trained the models; each arm's pick registered."""
    import mlflow
    from mlflow.tracking.fluent import _get_experiment_id

    from ..core.tracking import git_commit, setup_tracking

    uri = setup_tracking(params.tracking, layout)
    client, experiment_id = mlflow.MlflowClient(), _get_experiment_id()
    done = Published(0, 0, 0, {})
    for arm, entries in models.items():
        uris: dict[int, str] = {}
        for seed, path in entries:
            run_id = run_of_model(client, experiment_id, path)
            if run_id is None:
                done.missing += 1
                continue
            model_id = None
            if params.tracking.log_models:
                model_id = log_served_model(run_id, path, data, arm, seed, experiment_id)
                uris[seed] = f"models:/{model_id}"
                done.models += 1
            for name, value in seed_test_metrics(evaluation, arm, seed).items():  # on the run, and on its model
                client.log_metric(run_id, name, value, model_id=model_id)
            done.runs += 1
        if uris:
            seed = pick_seed(val_objectives(layout, arm), sorted(uris))
            name = f"{params.tracking.experiment}-{arm}"
            version = register(client, name, uris[seed], tags={"seed": str(seed), "picked_by": "val objective",
                                                                  "git_commit": git_commit(layout.root)})
            done.registered[arm] = f"{name}@{ALIAS} (v{version}, seed {seed})"
    return done.line(uri)
