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

    from distillery.training.augment import Normalizer
    from distillery.training.models import split_heads

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
