"""Issue 20's experiments, on the val split only: what makes the teacher teach.

One factor at a time from the default (the committed run's recipe, λ and τ, 30 epochs, the teacher as
the pipeline trains it), each cell trained over seeds exactly as a final run (fused, seed = init and
view seed) and scored on val with the inference rule. Factors:

  schedule   student.epochs 30 / 90 / 270 (none and soft)
  teacher    as now | plain (no label smoothing, no mixing), nols (no smoothing), nomix (no mixing) | cross-fitted (K teachers, each scores only
             the training images of the fold it did not train on) | fake (its logits are the smoothed
             labels: the null, a distillation token trained on labels again)
  matching   function matching: Mixup/CutMix α 0.8 on the students' views, the teacher scoring the mixed
             views (none and soft, so the recipe change is on both sides)

    python benchmarks/teacher_factors.py --project /path/to/a/project/with/prepared/data \
        --best sweeps --seeds 1 2 3 4 5 --cells base_none base_soft ... --out benchmarks/results/teacher_factors

Each cell appends its per-seed val accuracy, val predictions and its wall time to --out (a cell already
there is skipped: the script resumes). The test split is never loaded. Cross-fitted and fake teachers
need each view's image indices: `IndexedTeacher` re-derives them from the view stream's seeds (the same
`step_seeds`/randperm the loop uses) and checks them against the pixels it is given.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from distillery.core.config import load_params
from distillery.core.files import Best
from distillery.data import load_prepared
from distillery.data.datasets import Split
from distillery.evaluation.evaluate import head_outputs
from distillery.evaluation.teacher_views import teacher_on_views
from distillery.training.fusion import chunks
from distillery.training.loop import Member, fit
from distillery.recipe.losses import smoothed_one_hot
from distillery.recipe.models import load_model
from distillery.recipe.arm_runs import arm_run, teacher_run
from distillery.training.fusion import fused_group_size
from distillery.recipe.views import step_seeds

# cell: arm, student epochs, teacher kind, mixing override (None: the recipe's)
CELLS = {
    "base_none": ("none", 30, None, None), "base_control": ("control", 30, None, None),
    "base_soft": ("soft", 30, "real", None), "base_hard": ("hard", 30, "real", None),
    "plain_soft": ("soft", 30, "plain", None), "plain_hard": ("hard", 30, "plain", None),
    "nols_soft": ("soft", 30, "nols", None), "nomix_soft": ("soft", 30, "nomix", None),
    "crossfit_soft": ("soft", 30, "crossfit", None), "crossfit_hard": ("hard", 30, "crossfit", None),
    "fake_soft": ("soft", 30, "fake", None),
    "mix_none": ("none", 30, None, 0.8), "mix_soft": ("soft", 30, "real", 0.8),
    "mixplain_soft": ("soft", 30, "plain", 0.8),
    "e90_none": ("none", 90, None, None), "e90_soft": ("soft", 90, "real", None),
    "e90_control": ("control", 90, None, None), "e90plain_soft": ("soft", 90, "plain", None),
    "e90fake_soft": ("soft", 90, "fake", None), "e90_hard": ("hard", 90, "real", None),
    "e270_none": ("none", 270, None, None), "e270_soft": ("soft", 270, "real", None),
}


RECIPES = {"plain": {"label_smoothing": 0.0, "mixing": 0.0}, "nols": {"label_smoothing": 0.0},
           "nomix": {"mixing": 0.0}}


class IndexedTeacher(nn.Module):
    """A teacher that knows which training images each batch holds, from the view stream's seeds.

    The loop asks a teacher for one batch per view per step, views in member order; `expect` says
    which view seeds (members) to expect and from which epoch. Cross-fitted: the logits of image i
    come from the teacher that did not train on i's fold. Fake: the smoothed one-hot label."""

    def __init__(self, teachers: list[nn.Module], fold_of: torch.Tensor | None, y: torch.Tensor, x_raw: torch.Tensor,
                 normalize, num_classes: int, smoothing: float):
        super().__init__()
        self.teachers = nn.ModuleList(teachers)
        self.fold_of, self.y, self.x_raw, self.normalize = fold_of, y, x_raw, normalize
        self.num_classes, self.smoothing = num_classes, smoothing
        # only the fake and cross-fitted teachers use the indices (and only they train without mixing, which
        # blends two images into a view and leaves the check nothing to match)
        self.checked = 0 if fold_of is not None and len(teachers) > 1 or not teachers else 3

    def expect(self, view_seeds: list[int], batch_size: int, start_epoch: int = 0) -> None:
        self.view_seeds, self.batch_size, self.start = list(view_seeds), batch_size, start_epoch
        self.steps = max(1, len(self.y) // batch_size)
        self.calls, self.perms = 0, {}

    def _indices(self) -> torch.Tensor:
        v = len(self.view_seeds)
        member, global_step = self.calls % v, self.calls // v
        epoch, step = self.start + global_step // self.steps, global_step % self.steps
        self.calls += 1
        key = (member, epoch)
        if key not in self.perms:
            epoch_seed, _ = step_seeds(self.view_seeds[member], epoch, self.steps)
            self.perms = {key: torch.randperm(len(self.y), generator=torch.Generator().manual_seed(epoch_seed))}
        return self.perms[key][step * self.batch_size:(step + 1) * self.batch_size]

    def _check(self, x: torch.Tensor, idx: torch.Tensor) -> None:
        """The views are shifted copies of the images at `idx`: they correlate with them far more than with others."""
        raw = self.normalize(self.x_raw[idx]).flatten(1)
        flat = x.flatten(1)

        def corr(a, b):
            a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
            return ((a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + 1e-8)).mean().item()
        same, other = corr(flat, raw), corr(flat, raw.roll(1, 0))
        if not same > other + 0.15:
            raise RuntimeError(f"IndexedTeacher lost track of the views (corr {same:.2f} vs {other:.2f})")
        self.checked += 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idx = self._indices()
        if self.checked < 3:
            self._check(x, idx)
        if not len(self.teachers):  # fake: the labels, smoothed as the students' labels are
            return smoothed_one_hot(self.y[idx], self.num_classes, self.smoothing).clamp_min(1e-6).log()
        if self.fold_of is None:
            return self.teachers[0](x)
        z = torch.stack([t(x) for t in self.teachers])  # (K, B, C)
        return z[self.fold_of[idx], torch.arange(len(idx))]


def subset(data, keep: np.ndarray):
    tr = data.splits["train"]
    return replace(data, splits={**data.splits, "train": Split(tr.x[keep], tr.y[keep])})


def train_teachers(p, data, kind: str, out: Path, folds: int) -> tuple[list[nn.Module], np.ndarray | None, float]:
    """A teacher without label smoothing and/or mixing, or `folds` cross-fitted teachers of the current recipe."""
    t0 = time.perf_counter()
    if kind in RECIPES:
        p = p.model_copy(update={"teacher": p.teacher.model_copy(update=RECIPES[kind])})
        net, run = teacher_run(p, data)
        fit([Member(net, run.recipe, f"{kind} teacher")], data, progress=False)[0].result()
        return [net.eval()], None, time.perf_counter() - t0
    rng = np.random.default_rng(p.seed)
    fold_of = np.empty(len(data.splits["train"].y), dtype=np.int64)
    for c in np.unique(data.splits["train"].y):  # stratified folds
        members = rng.permutation(np.flatnonzero(data.splits["train"].y == c))
        fold_of[members] = np.arange(len(members)) % folds
    nets = []
    for k in range(folds):
        net, run = teacher_run(p, subset(data, np.flatnonzero(fold_of != k)))
        fit([Member(net, run.recipe, f"cross-fit teacher {k}")], subset(data, np.flatnonzero(fold_of != k)),
            progress=False)[0].result()
        nets.append(net.eval())
    return nets, fold_of, time.perf_counter() - t0


def teacher_for(kind, p, data, project: Path, out: Path, folds: int, cache: dict):
    if kind in cache:
        return cache[kind]
    from distillery.recipe.augment import Normalizer
    norm = Normalizer(data.mean, data.std, torch.device("cpu"), data.image_size)
    tr = data.splits["train"]
    y, x_raw = torch.as_tensor(np.asarray(tr.y)), torch.as_tensor(np.asarray(tr.x))
    cost = 0.0
    if kind == "real":
        nets, fold_of = [load_model(project / "models" / "teacher.pt")[0].eval()], None
    elif kind == "fake":
        nets, fold_of = [], None
    else:
        nets, fold_of, cost = train_teachers(p, data, kind, out, folds)
    fold = torch.as_tensor(fold_of) if fold_of is not None else None
    teacher = IndexedTeacher(nets, fold, y, x_raw, norm, data.num_classes, p.train.label_smoothing)
    val = data.splits["val"]
    val_acc = None
    if nets:
        with torch.no_grad():
            zs = [n(norm(torch.as_tensor(val.x))) for n in nets]
        val_acc = float((torch.stack(zs).mean(0).argmax(1).numpy() == val.y).mean())
    cache[kind] = (teacher, cost, val_acc)
    return cache[kind]


def views_summary(teacher: IndexedTeacher, p, data, mixing: float, tau: float) -> dict[str, float]:
    """What the teacher gives on one epoch of the students' views (seed 1's): disagreement, TV at τ."""
    from distillery.training.loop import group_batch_size
    from distillery.training.distributed import Ranks
    b = group_batch_size(len(data.splits["train"].y), mixing, Ranks(), "views", p.train.batch_size)
    teacher.expect([1], b)
    z, target = teacher_on_views(teacher, data, p.augment, p.train, mixing, view_seed=1)
    pt = torch.softmax(torch.as_tensor(z) / tau, 1)
    pl = torch.softmax(torch.as_tensor(np.log(np.clip(target, 1e-6, None))) / tau, 1)
    return {"disagree": float((z.argmax(1) != target.argmax(1)).mean()),
            "true_prob": float(torch.softmax(torch.as_tensor(z), 1)[np.arange(len(z)), target.argmax(1)].mean()),
            "tv_at_tau": float(0.5 * (pt - pl).abs().sum(1).mean())}


def run_cell(name, p, data, best_dir: Path, project: Path, seeds: list[int], out: Path, folds: int, tcache: dict):
    arm, epochs, tkind, mixing = CELLS[name]
    hp = dict(Best.load(best_dir / arm / "best.json").hparams)
    if arm in ("none", "control") or not hp:
        hp = {**Best.load(best_dir / "none" / "best.json").hparams, **hp}
    if arm == "hard" and "alpha" not in hp or arm == "soft" and "tau" not in hp:
        raise SystemExit(f"{best_dir / arm / 'best.json'} lacks the arm's λ/τ")
    if mixing is not None:
        hp["mixing"] = mixing
    pc = p.model_copy(update={"student": p.student.model_copy(update={"epochs": epochs})})
    teacher, tcost, tval = teacher_for(tkind, p, data, project, out, folds, tcache) if tkind else (None, 0.0, None)
    t0 = time.perf_counter()
    plans = [arm_run(pc, arm, data, hp, s, f"{name}-seed{s}") for s in seeds]
    k = fused_group_size(pc, data, arm, len(plans))
    rows = []
    for group in chunks(plans, k):
        members = [Member(r.spec.build(r.seed), r.recipe, r.name) for r in group]
        if teacher is not None:
            from distillery.training.loop import group_batch_size
            from distillery.training.distributed import Ranks
            teacher.expect([r.recipe.view_seed for r in group],
                           group_batch_size(len(data.splits["train"].y), hp["mixing"], Ranks(), name, p.train.batch_size))
        fit(members, data, teacher=teacher, progress=False, desc=name)
        for r, m in zip(group, members):
            if m.outcome is not None:
                raise m.outcome
            pred = head_outputs(m.net, data, "val", p.train)[0]["avg"]
            rows.append({"seed": r.seed, "val_acc": float((pred == data.splits["val"].y).mean()),
                         "train_loss_last": m.history[-1].get("train_loss"), "pred": pred.tolist()})
    seconds = time.perf_counter() - t0
    summary = {"cell": name, "arm": arm, "epochs": epochs, "teacher": tkind, "mixing": hp["mixing"],
               "hparams": hp, "seconds": seconds, "teacher_seconds": tcost, "teacher_val_acc": tval, "runs": rows}
    if teacher is not None:
        summary["views"] = views_summary(teacher, p, data, hp["mixing"], hp.get("tau", 1.0))
    with open(out / "cells.jsonl", "a") as f:
        f.write(json.dumps(summary) + "\n")
    accs = [r["val_acc"] for r in rows]
    print(f"{name}: val {100 * np.mean(accs):.2f} ± {100 * np.std(accs, ddof=1):.2f} over {len(accs)} seeds, "
          f"{seconds:.0f} s (+ teacher {tcost:.0f} s)", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--project", type=Path, required=True, help="a project whose prepare and teacher stages ran")
    ap.add_argument("--params", type=Path, default=None, help="default: <project>/params.yaml")
    ap.add_argument("--best", type=Path, required=True, help="sweeps/ folder with <arm>/best.json (the base recipe, λ, τ)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    ap.add_argument("--cells", nargs="+", choices=list(CELLS), default=[])
    ap.add_argument("--summarize", action="store_true", help="print the table of what --out holds, train nothing")
    ap.add_argument("--folds", type=int, default=4, help="cross-fitted teachers")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/teacher_factors"))
    a = ap.parse_args()
    if a.summarize:
        print(summarize(a.out, a.project))
        return
    p = load_params(a.params or a.project / "params.yaml")
    data = load_prepared(a.project / "data" / "prepared")  # train and val: the test split is not loaded
    a.out.mkdir(parents=True, exist_ok=True)
    done = set()
    if (a.out / "cells.jsonl").exists():
        for line in (a.out / "cells.jsonl").read_text().splitlines():
            c = json.loads(line)
            if [r["seed"] for r in c["runs"]] == a.seeds:
                done.add(c["cell"])
    tcache: dict = {}
    for name in a.cells:
        if name in done:
            print(f"{name}: done already")
            continue
        run_cell(name, p, data, a.best, a.project, a.seeds, a.out, a.folds, tcache)


def load_cells(out: Path) -> dict[str, dict]:
    """cells.jsonl, the runs of one cell over several invocations (seed sets) merged by seed."""
    cells: dict[str, dict] = {}
    for line in (out / "cells.jsonl").read_text().splitlines():
        c = json.loads(line)
        if c["cell"] in cells:
            known = {r["seed"] for r in cells[c["cell"]]["runs"]}
            cells[c["cell"]]["runs"] += [r for r in c["runs"] if r["seed"] not in known]
            cells[c["cell"]]["seconds"] += c["seconds"]
        else:
            cells[c["cell"]] = c
    return cells


def paired(a: dict, b: dict) -> tuple[float, float, int]:
    """Mean and SE (points) of the per-seed difference a − b over the seeds both have."""
    va, vb = ({r["seed"]: r["val_acc"] for r in c["runs"]} for c in (a, b))
    d = np.array([va[s] - vb[s] for s in sorted(set(va) & set(vb))]) * 100
    se = d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else float("nan")
    return float(d.mean()), float(se), len(d)


def summarize(out: Path, project: Path) -> str:
    """A markdown table: each cell's val accuracy, its gap to its reference cells, the share of the
    transferable val images it gets right, what its teacher gives on the views, and its cost."""
    cells = load_cells(out)
    data = load_prepared(project / "data" / "prepared")
    y = data.splits["val"].y
    teacher = load_model(project / "models" / "teacher.pt")[0].eval()
    from distillery.recipe.augment import Normalizer
    norm = Normalizer(data.mean, data.std, torch.device("cpu"), data.image_size)
    with torch.no_grad():
        t_right = teacher(norm(torch.as_tensor(np.asarray(data.splits["val"].x)))).argmax(1).numpy() == y
    base_wrong = np.mean([np.array(r["pred"]) != y for r in cells["base_none"]["runs"]], axis=0) > 0.5
    transferable = t_right & base_wrong
    lines = [f"Transferable val images (the teacher right, base_none wrong in most seeds): {int(transferable.sum())}.", "",
             "| cell | arm | epochs | teacher | mixing | seeds | val acc | − none (same epochs, mixing) | − the real "
             "teacher's cell (same arm, epochs, mixing) | transferable right | teacher disagrees on views | "
             "TV at τ (hard: τ = 1) | cost (s) |",
             "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, c in cells.items():
        acc = np.array([r["val_acc"] for r in c["runs"]]) * 100
        ref = next((n for n, o in cells.items() if o["arm"] == "none" and o["epochs"] == c["epochs"]
                    and o["mixing"] == c["mixing"]), None)
        vs_none = "–" if ref in (None, name) else "{:+.2f} ± {:.2f}".format(*paired(c, cells[ref])[:2])
        base = next((n for n, o in cells.items() if o["arm"] == c["arm"] and o["teacher"] == "real"
                     and o["epochs"] == c["epochs"] and o["mixing"] == c["mixing"]), None)
        vs_soft = ("{:+.2f} ± {:.2f}".format(*paired(c, cells[base])[:2])
                   if c["arm"] in ("soft", "hard") and base not in (None, name) else "–")
        tr = np.mean([(np.array(r["pred"])[transferable] == y[transferable]).mean() for r in c["runs"]]) * 100
        v = c.get("views") or {}
        lines.append(f"| {name} | {c['arm']} | {c['epochs']} | {c['teacher'] or '–'} | {c['mixing']:g} | {len(acc)} | "
                     f"{acc.mean():.2f} ± {acc.std(ddof=1):.2f} | {vs_none} | {vs_soft} | {tr:.0f}% | "
                     f"{100 * v['disagree']:.1f}% | {100 * v['tv_at_tau']:.1f}% | " if v else
                     f"| {name} | {c['arm']} | {c['epochs']} | {c['teacher'] or '–'} | {c['mixing']:g} | {len(acc)} | "
                     f"{acc.mean():.2f} ± {acc.std(ddof=1):.2f} | {vs_none} | {vs_soft} | {tr:.0f}% | – | – | ")
        lines[-1] += f"{c['seconds'] + (c.get('teacher_seconds') or 0):.0f} |"
    return "\n".join(lines)


if __name__ == "__main__":
    main()
