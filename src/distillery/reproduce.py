"""Does a rerun elsewhere say what the committed report says? `make reproduce`.

Clones the project (its committed HEAD) into a fresh folder, runs `make repro` there (venv included),
optionally under environment variables that move PyTorch onto another floating-point path, as another
CPU would (`--float-path other`: ATen's scalar kernels, MKL at SSE4.2, oneDNN at SSE4.1), and compares
the rerun's reports/effects.json with the committed one, side by side, per comparison:

* the verdicts, which should be equal (the report gives each one's probability of holding);
* Δ: the two runs' means should differ by no more than a two-run Welch test allows at α = 0.01,
  |Δ₁ − Δ₂| ≤ t(1 − α/2, df) · √(s₁²/n₁ + s₂²/n₂), with s the SD of the per-seed test differences;
* whether the two intervals overlap.

The output goes to reports/reproduced.md (and .json); `--effects PATH` compares an existing run's
effects.json without running anything.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from scipy import stats as _st

OTHER_FLOAT_PATH = {"ATEN_CPU_CAPABILITY": "default", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2",
                    "ONEDNN_MAX_CPU_ISA": "SSE41"}


def welch_bound(s1: float, n1: int, s2: float, n2: int, alpha: float = 0.01) -> float:
    """The largest |Δ₁ − Δ₂| a two-sided Welch test at alpha accepts as one true Δ measured twice."""
    v1, v2 = s1 ** 2 / n1, s2 ** 2 / n2
    if v1 + v2 == 0:
        return 0.0
    df = (v1 + v2) ** 2 / (v1 ** 2 / (n1 - 1) + v2 ** 2 / (n2 - 1))
    return float(_st.t.ppf(1 - alpha / 2, df)) * math.sqrt(v1 + v2)


def compare_effects(committed: dict[str, Any], rerun: dict[str, Any], alpha: float = 0.01) -> list[dict[str, Any]]:
    """One row per comparison the two effects.json files share."""
    rows = []
    for name, a in committed["comparisons"].items():
        b = rerun["comparisons"].get(name)
        if b is None:
            continue
        pa, pb = a.get("precision") or {}, b.get("precision") or {}
        row = {"comparison": name, "role": a.get("role", "family"), "verdict_committed": a["verdict"],
               "verdict_rerun": b["verdict"], "same_verdict": a["verdict"] == b["verdict"],
               "diff_committed": a["diff"], "diff_rerun": b["diff"], "ci_committed": [a["low"], a["high"]],
               "ci_rerun": [b["low"], b["high"]]}
        if pa.get("seeds_run", 0) >= 2 and pb.get("seeds_run", 0) >= 2:
            bound = welch_bound(pa["sd_test"], pa["seeds_run"], pb["sd_test"], pb["seeds_run"], alpha)
            row.update(welch_bound=bound, diff_within=abs(a["diff"] - b["diff"]) <= bound)
        if None not in (a["low"], a["high"], b["low"], b["high"]):
            row["intervals_overlap"] = a["low"] <= b["high"] and b["low"] <= a["high"]
        rows.append(row)
    return rows


def _ci(ci: list[float | None]) -> str:
    return "–" if None in ci else f"[{ci[0]:+.1f}, {ci[1]:+.1f}]"


def render(rows: list[dict[str, Any]], committed_machine: str, rerun_machine: str, note: str) -> str:
    same = all(r["same_verdict"] for r in rows)
    primary = [r for r in rows if r["role"] == "primary"]
    lines = ["# Reproduced: the committed report against a fresh clone's rerun", "", note, "",
             f"- committed run: {committed_machine}", f"- rerun: {rerun_machine}", "",
             f"**Verdicts: {'all the same' if same else 'not all the same'}**"
             + (f"; primary {primary[0]['comparison']}: {'same' if primary[0]['same_verdict'] else 'DIFFERENT'}"
                if primary else "") + ".", "",
             "| comparison | role | committed Δ, CI | rerun Δ, CI | |ΔΔ| vs Welch bound (α 0.01) | intervals overlap | "
             "committed verdict | rerun verdict |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        within = (f"{abs(r['diff_committed'] - r['diff_rerun']):.2f} ≤ {r['welch_bound']:.2f}" if r.get("diff_within")
                  else f"{abs(r['diff_committed'] - r['diff_rerun']):.2f} > {r['welch_bound']:.2f}"
                  if "welch_bound" in r else "–")
        lines.append(f"| {r['comparison']} | {r['role']} | {r['diff_committed']:+.2f} {_ci(r['ci_committed'])} | "
                     f"{r['diff_rerun']:+.2f} {_ci(r['ci_rerun'])} | {within} | "
                     f"{'yes' if r.get('intervals_overlap') else 'no'} | {r['verdict_committed']} | "
                     f"{r['verdict_rerun']} |")
    return "\n".join(lines) + "\n"


def machine_line(report_md: Path) -> str:
    for line in report_md.read_text().splitlines():
        if line.startswith("Machine: "):
            return line[len("Machine: "):].rstrip(".")
    return "not recorded"


def rerun(source: Path, workdir: Path, env: dict[str, str]) -> tuple[Path, float]:
    """A fresh clone of source's HEAD in workdir/clone, `make repro` there; (clone, seconds)."""
    clone = workdir / "clone"
    subprocess.run(["git", "clone", "-q", str(source), str(clone)], check=True)
    start = time.time()
    subprocess.run(["make", "repro"], cwd=clone, env={**os.environ, **env}, check=True)
    return clone, time.time() - start


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--effects", type=Path, help="compare this effects.json instead of running a fresh clone")
    ap.add_argument("--float-path", choices=["same", "other"], default="other",
                    help="other: run the clone on another floating-point path, as another CPU would (default)")
    ap.add_argument("--workdir", type=Path, help="where the clone goes (default: a new temporary folder)")
    ap.add_argument("--out", type=Path, default=Path("reports/reproduced.md"))
    args = ap.parse_args(argv)
    root = Path.cwd()
    committed = json.loads((root / "reports" / "effects.json").read_text())
    env = OTHER_FLOAT_PATH if args.float_path == "other" else {}
    if args.effects is not None:
        effects, where, seconds = args.effects, args.effects.parent / "report.md", None
    else:
        clone, seconds = rerun(root, Path(args.workdir or tempfile.mkdtemp(prefix="distillery-reproduce-")), env)
        effects, where = clone / "reports" / "effects.json", clone / "reports" / "report.md"
    rows = compare_effects(committed, json.loads(effects.read_text()))
    env_text = " ".join(f"{k}={v}" for k, v in env.items()) or "the default floating-point path"
    note = (f"Rerun: `make repro` on a fresh clone under {env_text}"
            + (f", {seconds / 60:.1f} min including the venv" if seconds else "") + f", {platform.node() or 'this host'}."
            if args.effects is None else f"Rerun: the run that wrote {args.effects} (`--effects`; not run here).")
    text = render(rows, machine_line(root / "reports" / "report.md"),
                  machine_line(where) if where.exists() else "not recorded", note)
    args.out.write_text(text)
    args.out.with_suffix(".json").write_text(json.dumps({"env": env, "seconds": seconds, "rows": rows}, indent=2) + "\n")
    print(text)
    return 0 if all(r["same_verdict"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
