"""The report's account of what each arm took from the teacher (metrics/transfer.json, evaluate stage)."""

from __future__ import annotations

from typing import Any

import numpy as np


def _share(x: float | None, n: float | None = None) -> str:
    if x is None:
        return "–"
    return f"{100 * x:.1f}" + (f" ({n:.0f})" if n is not None else "")


def transfer_lines(transfer: dict[str, Any], classes: list[str], arms: list[str]) -> list[str]:
    """Fidelity per arm on train and test, the transferable images, and the class they agree on least."""
    splits = transfer.get("splits") or {}
    if not {"train", "test"} <= set(splits):
        return []
    train, test = splits["train"]["arms"], splits["test"]["arms"]
    ref = transfer.get("reference")
    shown = [a for a in arms if a in test]
    lines = ["### What each arm took from it", "",
             f"Agreement: top-1 agreement with the teacher (the teacher is right on "
             f"{100 * splits['train']['teacher_acc']:.1f}% of train and {100 * splits['test']['teacher_acc']:.1f}% of "
             "test images, so agreement is mostly accuracy). KL: KL(teacher ‖ arm) at τ = 1, nats. "
             + (f"Transferable: the images the teacher gets right and `{ref}` (trained on labels only) gets wrong in "
                f"most of its seeds; `{ref}`'s own share there is the floor, and a distilled arm above `control` "
                "(and `soft` above `fake`, the same loss on the labels) on them learned what only the teacher could "
                "teach. " if ref else "")
             + "Means over seeds; (n) = images.", "",
             "| arm | agreement, train | agreement, test | KL, test | transferable right, train (n) | "
             "transferable right, test (n) | copies the teacher's test errors (n) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for arm in shown:
        tr, te = train[arm], test[arm]
        lines.append(f"| {arm} | {_share(tr['agreement'])} | {_share(te['agreement'])} | {te['kl_from_teacher']:.3f} | "
                     f"{_share(tr['transferable_right'], tr['n_transferable'])} | "
                     f"{_share(te['transferable_right'], te['n_transferable'])} | "
                     f"{_share(te['copies_teacher_errors'], te['n_teacher_wrong'])} |")
    by_class = np.array([[np.nan if v is None else v for v in test[a]["agreement_by_class"]] for a in shown])
    if by_class.size and np.isfinite(by_class).any():
        worst = int(np.nanargmin(np.nanmean(by_class, axis=0)))
        name = classes[worst] if worst < len(classes) else str(worst)
        lines += ["", f"Lowest test agreement by class: `{name}` ("
                  + ", ".join(f"{a} {_share(float(by_class[i, worst]))}" for i, a in enumerate(shown)) + ")."]
    return lines
