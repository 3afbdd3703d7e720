"""What evaluate publishes to MLflow: which seed is registered, which metrics a final run gets, and a
served model that predicts what evaluation predicted."""

import json

import numpy as np
import pytest
import torch

from distillery.core.paths import Layout
from distillery.evaluation.publish import pick_seed, seed_test_metrics, val_objectives
from distillery.serving import ServedClassifier


def test_pick_is_the_best_val_objective_and_ties_go_to_the_lowest_seed():
    assert pick_seed({1: 0.90, 2: 0.93, 3: 0.91}, [1, 2, 3]) == 2
    assert pick_seed({1: 0.93, 2: 0.93, 3: 0.91}, [3, 2, 1]) == 1
    assert pick_seed({1: 0.90, 2: 0.99}, [1]) == 1  # only the seeds that have a logged model compete


def test_val_objectives_read_pilot_and_extra_seeds(tmp_path):
    layout = Layout(tmp_path)
    for extra, seeds in ((False, {"1": 0.9, "2": 0.8}), (True, {"3": 0.95})):
        path = layout.final_metrics("soft", extra)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"per_seed": {s: {"objective": v} for s, v in seeds.items()}}))
    assert val_objectives(layout, "soft") == {1: 0.9, 2: 0.8, 3: 0.95}


def test_final_runs_get_the_test_metrics_under_names_users_sort_by():
    evaluation = {"soft": {"per_seed": {"2": {"test_acc_avg": 0.9, "test_acc_cls": 0.8, "test_acc_dist": 0.85,
                                              "teacher_agreement": 0.95}}}}
    assert seed_test_metrics(evaluation, "soft", 2) == {"test_acc": 0.9, "test_acc_cls": 0.8, "test_acc_dist": 0.85,
                                                       "test_teacher_agreement": 0.95}
    assert seed_test_metrics({"none": {"per_seed": {"1": {"test_acc_avg": 0.7}}}}, "none", 1) == {"test_acc": 0.7}


@pytest.mark.parametrize("name", ["vit_tiny_patch16_224", "deit_tiny_distilled_patch16_224"])
def test_served_model_is_the_evaluation_view_and_the_averaged_heads(name):
    import timm

    from distillery.recipe.augment import Normalizer
    from distillery.recipe.models import split_heads

    torch.manual_seed(0)
    net = timm.create_model(name, img_size=8, patch_size=4, embed_dim=16, depth=1, num_heads=2, in_chans=1,
                            num_classes=3).eval()
    mean, std = [0.3], [0.2]
    x = torch.randint(0, 256, (5, 1, 12, 12), dtype=torch.uint8)  # stored larger than the model's 8 px
    with torch.no_grad():
        z_c, z_d = split_heads(net, Normalizer(mean, std, torch.device("cpu"), size=8)(x))
    expected = (z_c if z_d is None else (z_c + z_d) / 2).softmax(-1)
    served = ServedClassifier(net, mean, std, 8)(x)
    assert torch.allclose(served, expected, atol=1e-6)
    assert np.allclose(served.sum(-1).numpy(), 1.0, atol=1e-6)


def test_a_final_model_is_a_logged_model_of_its_run_with_its_metrics_and_datasets(tmp_path, monkeypatch):
    """MLflow 3's view (issue 34): the run lists the model, the model its test metrics, the registry version
    points back to the run, the dataset inputs carry the split digests, and pyfunc loads it."""
    import mlflow

    from distillery.core.tracking import log_dataset_inputs
    from distillery.data.datasets import Prepared, Split
    from distillery.evaluation.publish import log_served_model, register
    from distillery.recipe.models import save_model, vit_spec

    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = mlflow.set_experiment("distillery")
    rng = np.random.default_rng(0)
    splits = {s: Split(rng.integers(0, 256, (n, 1, 8, 8), dtype=np.uint8), rng.integers(0, 3, n))
              for s, n in (("train", 12), ("val", 6))}
    data = Prepared(splits, ["a", "b", "c"], [0.5], [0.25])

    class Student:  # what vit_spec reads of student_cfg
        patch_size, embed_dim, depth, num_heads = 4, 16, 1, 2

    spec = vit_spec("student", "deit_tiny_distilled_patch16_224", 8, 1, 3, Student, 0.0)
    save_model(tmp_path / "soft-seed1.pt", spec.build(0), spec)
    run_id = mlflow.MlflowClient().create_run(experiment.experiment_id, run_name="soft-seed1").info.run_id
    log_dataset_inputs(run_id, data)
    model_id = log_served_model(run_id, tmp_path / "soft-seed1.pt", data, "soft", 1, experiment.experiment_id)
    uri = f"models:/{model_id}"
    client = mlflow.MlflowClient()
    client.log_metric(run_id, "test_acc", 0.75, model_id=model_id)  # what publish logs on the run and its model
    run = client.get_run(run_id)
    (output,) = run.outputs.model_outputs
    model = client.get_logged_model(output.model_id)
    assert uri == f"models:/{model.model_id}" and model.source_run_id == run_id and model.status == "READY"
    assert [(m.key, m.value) for m in model.metrics] == [("test_acc", 0.75)]
    assert "width 16, depth 1, 2 heads" in model.tags["architecture"]
    inputs = {i.dataset.name: (i.dataset.digest, [t.value for t in i.tags]) for i in run.inputs.dataset_inputs}
    assert inputs == {f"prepared/{s}": (data.split_digests[s], [s]) for s in ("train", "val")}
    version = register(client, "distillery-soft", uri, tags={})
    assert client.get_model_version("distillery-soft", version).run_id == run_id
    probs = mlflow.pyfunc.load_model("models:/distillery-soft@current").predict(splits["val"].x)
    assert probs.shape == (6, 3) and np.allclose(probs.sum(-1), 1.0, atol=1e-5)


def test_split_digests_change_with_the_split_and_only_then():
    from distillery.data.datasets import Prepared, Split

    x, y = np.arange(64, dtype=np.uint8).reshape(4, 1, 4, 4), np.array([0, 1, 0, 1])
    one = Prepared({"train": Split(x, y), "val": Split(x[:2], y[:2])}, ["a", "b"], [0.5], [0.2])
    same = Prepared({"train": Split(x.copy(), y.copy()), "val": Split(x[:2], y[:2])}, ["a", "b"], [0.5], [0.2])
    other = Prepared({"train": Split(x[::-1], y[::-1]), "val": Split(x[:2], y[:2])}, ["a", "b"], [0.5], [0.2])
    assert one.split_digests == same.split_digests
    assert other.split_digests["train"] != one.split_digests["train"]
    assert other.split_digests["val"] == one.split_digests["val"]


def test_the_dataset_digest_of_a_prepared_split_changes_with_data_split_seed(tmp_path):
    from distillery.data import load_prepared
    from distillery.data.datasets import load_digits_source, save_prepared, stratified_split

    raw = load_digits_source(8)
    digests = []
    for split_seed in (1204, 1204, 7):
        out = tmp_path / f"prepared-{split_seed}-{len(digests)}"
        save_prepared(raw, stratified_split(raw.labels, 0.15, 0.2, split_seed), out, "digits")
        digests.append(load_prepared(out).split_digests)
    assert digests[0] == digests[1]  # the same split prepared twice: the same datasets
    assert digests[2]["train"] != digests[0]["train"] and digests[2]["val"] != digests[0]["val"]
