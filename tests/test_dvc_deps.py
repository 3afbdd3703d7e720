"""Every project file a stage's script imports must be covered by its DVC `deps`: DVC reruns a stage only
when a dep changes, so an imported (even lazily) library module missing from `deps` leaves stale results.
Checked statically with ast + PyYAML (importing dvc or torch would be slow and need a git repo)."""

from __future__ import annotations

import ast
import itertools
import posixpath
import re
import shlex
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
VAR = re.compile(r"\$\{\s*([^}\s]+)\s*\}")


def _lookup(ctx, dotted: str):
    for key in dotted.split("."):
        ctx = ctx[int(key)] if isinstance(ctx, list) else ctx[key]
    return ctx


def _subst(text: str, ctx: dict) -> str:
    def one(m):  # an unknown ${...} stays as written rather than breaking the whole check
        try:
            return str(_lookup(ctx, m.group(1)))
        except (KeyError, IndexError, TypeError, ValueError):
            return m.group(0)
    return VAR.sub(one, text)


def _values(value, ctx: dict):
    """A matrix/foreach value is written inline or as `${name}`, a key of params.yaml (or of vars)."""
    m = VAR.fullmatch(value.strip()) if isinstance(value, str) else None
    return _lookup(ctx, m.group(1)) if m else value


def stage_entries(root: Path) -> dict[str, tuple[str, list[str]]]:
    """Expanded stages, named as DVC does (`sweep@soft`, `m@soft-0`) -> (cmd, deps)."""
    spec = yaml.safe_load((root / "dvc.yaml").read_text()) or {}
    params = root / "params.yaml"
    ctx = dict(yaml.safe_load(params.read_text()) or {}) if params.is_file() else {}
    for var in spec.get("vars") or []:
        ctx.update(var if isinstance(var, dict) else {})  # inline vars only; vars files are not read
    out = {}
    for name, stage in (spec.get("stages") or {}).items():
        if "matrix" in stage:
            axes = {k: _values(v, ctx) for k, v in stage["matrix"].items()}
            items = [(f"{name}@{'-'.join(map(str, combo))}", {"item": dict(zip(axes, combo))})
                     for combo in itertools.product(*axes.values())]
        elif "foreach" in stage:
            each, stage = _values(stage["foreach"], ctx), stage["do"]
            pairs = each.items() if isinstance(each, dict) else enumerate(each)
            # DVC names dict entries by key, list items by value (by index when they are dicts/lists)
            items = [(f"{name}@{key if isinstance(each, dict) or isinstance(item, (dict, list)) else item}",
                      {"item": item, "key": key}) for key, item in pairs]
        else:
            items = [(name, {})]
        cmd = stage.get("cmd", "")
        cmd = "\n".join(cmd) if isinstance(cmd, list) else cmd
        deps = [d if isinstance(d, str) else next(iter(d)) for d in stage.get("deps") or []]  # `- path: {opts}`
        for stage_name, local in items:
            full = {**ctx, **local}
            out[stage_name] = (_subst(cmd, full), [_subst(d, full) for d in deps])
    return out


def _locate(base: Path, parts: list[str]):
    """(files run by importing `parts` from `base`: each package __init__.py on the way and the module,
    the package folder or None); None when `base` has no such module."""
    files, path = set(), base
    for part in parts[:-1]:
        path = path / part
        files |= {p for p in [path / "__init__.py"] if p.is_file()}  # a folder without one: namespace package
    if parts and (path / f"{parts[-1]}.py").is_file():
        return files | {path / f"{parts[-1]}.py"}, None
    path = path / parts[-1] if parts else path
    return (files | {p for p in [path / "__init__.py"] if p.is_file()}, path) if path.is_dir() else None


def _locate_abs(root: Path, parts: list[str], script_dir: Path | None = None):
    # sys.path of `python pipeline/x.py`: the script's folder, the installed src/ layout; then the repo itself
    bases = [script_dir] if script_dir else []
    return next(filter(None, (_locate(b, parts) for b in [*bases, root / "src", root])), None)


def _entry_scripts(root: Path, cmd: str) -> set[Path]:
    """Files run by `python path.py` or `python -m pkg.mod` (a stage may chain several commands)."""
    tokens, found = shlex.split(cmd.replace("\n", " ; ")), set()
    for i, tok in enumerate(tokens):
        if re.fullmatch(r"python[\d.]*", posixpath.basename(tok)):
            rest = [t for t in tokens[i + 1:] if t == "-m" or not t.startswith("-")][:2]  # skip -u, -O, ...
            if rest[:1] == ["-m"] and len(rest) > 1 and (hit := _locate_abs(root, rest[1].split("."))):
                found |= hit[0] | ({hit[1] / "__main__.py"} if hit[1] else set())
            elif rest and rest[0].endswith(".py"):
                found.add(root / rest[0])
    return found


def import_closure(root: Path, script: Path | str) -> set[str]:
    """Repo-relative paths of `script` and every project file it imports, transitively. An import of a
    project package that resolves to no file is returned as `? module (in file)`: a renamed module must
    not make the check pass silently (it is also an ImportError at run time)."""
    script = root / script if isinstance(script, str) else script
    seen, todo, broken = set(), [script], set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)  # a missing entry script stays in: it must still be a dep
        if not path.is_file():
            continue
        rel = path.relative_to(root).as_posix()
        for node in ast.walk(ast.parse(path.read_text(), rel)):  # walk: imports inside functions run too
            wanted = []  # (module name for messages, resolution, is a project import)
            if isinstance(node, ast.Import):
                wanted = [(a.name, _locate_abs(root, a.name.split("."), script.parent),
                           _locate_abs(root, a.name.split(".")[:1], script.parent)) for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                parts = node.module.split(".") if node.module else []
                if node.level:  # relative: against the importing file's package folder
                    mod = _locate(path.parents[node.level - 1], parts)
                else:
                    mod = _locate_abs(root, parts, script.parent)
                mod_name = "." * node.level + (node.module or "")
                wanted = [(mod_name, mod, node.level or _locate_abs(root, parts[:1], script.parent))]
                if mod and mod[1] is not None:  # `from pkg import name`: name may be a submodule; a folder
                    no_init = not (mod[1] / "__init__.py").is_file()  # without __init__ has nothing else
                    wanted += [(f"{mod_name}.{a.name}", _locate(mod[1], [a.name]), no_init)
                               for a in node.names if a.name != "*"]
            for name, hit, project in wanted:
                if hit:
                    todo += hit[0]
                elif project:
                    broken.add(f"? {name} (in {rel})")
    return {p.relative_to(root).as_posix() for p in seen} | broken


def uncovered(root: Path) -> dict[str, list[str]]:
    """Stage -> imported project files (entry scripts included) that no dep equals or contains."""
    out = {}
    for stage, (cmd, deps) in stage_entries(root).items():
        norm = [posixpath.normpath(d).rstrip("/") for d in deps]
        files = set().union(*(import_closure(root, s) for s in _entry_scripts(root, cmd)))
        missing = sorted(f for f in files if f.startswith("?")
                         or not any(d == "." or f == d or f.startswith(d + "/") for d in norm))
        if missing:
            out[stage] = missing
    return out


def test_every_imported_project_file_is_a_dep():
    if missing := uncovered(ROOT):
        pytest.fail("dvc.yaml deps miss files the stage's script imports (the stage would keep stale results):\n"
                    + "\n".join(f"  {stage}: {f}" for stage, files in missing.items() for f in files), pytrace=False)


def _mini_repo(root: Path, deps: list[str]) -> None:
    stage = {"matrix": {"arm": "${arms}"}, "cmd": "python pipeline/s.py --arm ${item.arm}", "deps": deps}
    files = {
        "params.yaml": "arms: [none, soft]\n",
        "dvc.yaml": yaml.safe_dump({"stages": {"s": stage}}),
        "pipeline/s.py": "import json\nfrom distillery.a import f\n",
        "src/distillery/__init__.py": "",
        "src/distillery/a.py": "def f():\n    from .b import g  # lazy: runs only when f is called\n    return g()\n",
        "src/distillery/b.py": "def g():\n    return 1\n",
    }
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


def test_checker_reports_lazily_imported_module(tmp_path):
    _mini_repo(tmp_path, ["pipeline/s.py", "src/distillery/__init__.py", "src/distillery/a.py"])
    assert import_closure(tmp_path, "pipeline/s.py") == {
        "pipeline/s.py", "src/distillery/__init__.py", "src/distillery/a.py", "src/distillery/b.py"}
    assert uncovered(tmp_path) == {"s@none": ["src/distillery/b.py"], "s@soft": ["src/distillery/b.py"]}


def test_folder_dep_covers_package_and_script_must_be_a_dep(tmp_path):
    _mini_repo(tmp_path, ["pipeline/s.py", "src/distillery"])
    assert uncovered(tmp_path) == {}
    _mini_repo(tmp_path, ["./pipeline/", "src/distillery/"])  # normalised, trailing slash allowed
    assert uncovered(tmp_path) == {}
    _mini_repo(tmp_path, ["src/distillery"])
    assert uncovered(tmp_path) == {"s@none": ["pipeline/s.py"], "s@soft": ["pipeline/s.py"]}


def test_renamed_module_is_reported(tmp_path):
    _mini_repo(tmp_path, ["pipeline/s.py", "src/distillery"])
    (tmp_path / "src/distillery/b.py").unlink()
    assert uncovered(tmp_path)["s@none"] == ["? .b (in src/distillery/a.py)"]


def test_matrix_and_foreach_expansion(tmp_path):
    stages = {
        "m": {"matrix": {"loss": ["soft", "hard"], "seed": [0, 1]},
              "cmd": "python pipeline/t.py --loss ${item.loss} --seed ${item.seed}",
              "deps": ["sweeps/${item.loss}/best.json", {"pipeline/t.py": {"hash": "md5"}}], "params": ["x"]},
        "f": {"foreach": {"a": {"n": 1}, "b": {"n": 2}}, "do": {"cmd": "echo ${key} ${item.n}", "deps": ["d/${key}"]}},
        "g": {"foreach": ["x", "y"], "do": {"cmd": "echo ${item}"}},
    }
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}))
    got = stage_entries(tmp_path)
    assert sorted(got) == ["f@a", "f@b", "g@x", "g@y", "m@hard-0", "m@hard-1", "m@soft-0", "m@soft-1"]
    assert got["m@hard-1"] == ("python pipeline/t.py --loss hard --seed 1", ["sweeps/hard/best.json", "pipeline/t.py"])
    assert got["f@b"] == ("echo b 2", ["d/b"]) and got["g@y"] == ("echo y", [])


@pytest.mark.slow
def test_the_report_stage_never_imports_torch():
    """The report reads files only; importing torch there would cost ~10 s and hide a design leak."""
    import subprocess
    import sys

    code = ("import runpy, sys; sys.argv = ['report.py', '--help']\n"
            "try:\n    runpy.run_path('pipeline/report.py', run_name='__main__')\nexcept SystemExit:\n    pass\n"
            "print('torch' in sys.modules, 'timm' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == "False False", out.stdout + out.stderr
