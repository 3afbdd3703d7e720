"""The codebase stays one a newcomer reads in an afternoon: functions fit a screen, stage scripts are thin,
and there is one training loop (no one-run twin of a many-run function)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_FUNCTION_LINES = 60
MAX_STAGE_BODY_LINES = 40


def functions(folder: str):
    for path in sorted((ROOT / folder).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield path.relative_to(ROOT), node


def test_no_function_is_longer_than_a_screen():
    long = [f"{path}:{n.lineno} {n.name} ({n.end_lineno - n.lineno + 1} lines)"
            for folder in ("src", "pipeline") for path, n in functions(folder)
            if n.end_lineno - n.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, "split these into functions a reader takes in at once:\n" + "\n".join(long)


def test_stage_scripts_are_thin():
    bodies = {str(path): n.end_lineno - n.lineno + 1 for path, n in functions("pipeline") if n.name == "body"}
    assert len(bodies) == len(list((ROOT / "pipeline").glob("*.py"))), bodies  # every stage script has one
    fat = {path: lines for path, lines in bodies.items() if lines > MAX_STAGE_BODY_LINES}
    assert not fat, f"stage bodies over {MAX_STAGE_BODY_LINES} lines: move the logic into the library: {fat}"


def test_one_training_loop_and_no_one_run_twins():
    names = {n.name for folder in ("src", "pipeline") for _, n in functions(folder)}
    # fit / fit_group, tracked_fit / tracked_fit_group, make_objective / make_batch_objective
    public = {n for n in names if not n.startswith("_")}
    twins = sorted(n for n in public if any(n.endswith(s) and n[:-len(s)] in public for s in ("_group", "_batch"))
                   or (n.startswith("make_batch_") and n.replace("make_batch_", "make_") in public))
    assert not twins, f"one-run/many-run twins: {twins} (a run alone is a group of one)"
    loops = [f"{path}:{n.lineno}" for path, n in functions("src") if n.name == "fit"]
    assert [where.split(":")[0] for where in loops] == ["src/distillery/training/loop.py"], loops
