"""Profiles: a whole recipe set at once. `python -m distillery.profiles NAME [key=value ...]`.

A profile (profiles/<name>.yaml) lists only what it changes from the schema's defaults. Applying it
rewrites params.yaml in place: every key gets the default or the profile's value (so switching
profiles leaves nothing of the previous one behind), then the `key=value` overrides; params.yaml's
comments and order survive. The result is validated before anything is written. `dvc repro` then
reruns what the change touches, and `git diff params.yaml` shows what the profile did.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path
from typing import Any

import yaml

from .core.config import Params, parse_params
from .core.errors import ConfigError, DistilleryError
from .core.paths import Layout


def profiles_dir(home: Path) -> Path:
    return home / "profiles"


def available(home: Path) -> list[str]:
    return sorted(p.stem for p in profiles_dir(home).glob("*.yaml"))


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return out


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    node = tree
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`key.sub=value` strings, each value read as YAML (numbers, lists, null, true)."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not key=value (e.g. data.path=/my/photos)")
        key, raw = item.split("=", 1)
        _set_dotted(out, key.strip(), yaml.safe_load(raw) if raw.strip() else None)
    return out


def profile_values(home: Path, name: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The full params tree a profile gives: schema defaults, then the profile, then `overrides`."""
    path = profiles_dir(home) / f"{name}.yaml"
    if not path.exists():
        raise ConfigError(f"no profile '{name}' ({path} does not exist); available: {', '.join(available(home))}")
    try:
        changes = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}".replace("\n", " ")) from None
    tree = _merge(_merge(Params().model_dump(mode="json"), changes), overrides or {})
    try:
        parse_params(tree)
    except ConfigError as exc:
        raise ConfigError(f"profile '{name}': {exc}") from None
    return tree


def _assign(doc: Any, tree: dict[str, Any]) -> None:
    """Write `tree`'s values into the round-trip document, keeping its comments where keys exist."""
    for key, value in tree.items():
        if isinstance(value, dict) and key in doc and isinstance(doc[key], dict) and value:
            _assign(doc[key], value)
        elif key in doc and isinstance(doc[key], list) and isinstance(value, list):
            if list(doc[key]) != value:
                doc[key][:] = value  # in place: a flow-style list stays on one line
        elif key not in doc or doc[key] != value:
            doc[key] = value


def apply_profile(params_path: Path, home: Path, name: str, overrides: dict[str, Any] | None = None) -> Params:
    from ruamel.yaml import YAML

    tree = profile_values(home, name, overrides)
    rt = YAML()
    rt.preserve_quotes = True
    rt.width = 120
    rt.representer.add_representer(type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", "null"))
    doc = rt.load(params_path.read_text()) if params_path.exists() else {}
    _assign(doc, tree)
    buf = io.StringIO()
    rt.dump(doc, buf)
    text = buf.getvalue()
    params = parse_params(yaml.safe_load(text))  # what DVC and the stages will read
    tmp = params_path.with_name(params_path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(params_path)
    return params


def main(argv: list[str] | None = None) -> int:
    layout = Layout.from_env()
    parser = argparse.ArgumentParser(prog="python -m distillery.profiles",
                                     description="set params.yaml to a profile (profiles/<name>.yaml) plus overrides")
    parser.add_argument("name", help=f"one of: {', '.join(available(layout.root))}")
    parser.add_argument("overrides", nargs="*", help="key=value pairs applied after the profile (data.path=/my/photos)")
    args = parser.parse_args(argv)
    try:
        apply_profile(layout.params, layout.root, args.name, parse_overrides(args.overrides))
    except DistilleryError as exc:
        print(f"distillery profile: error: {exc}", file=sys.stderr)
        return 2
    print(f"distillery profile: params.yaml set to '{args.name}'"
          + (f" with {' '.join(args.overrides)}" if args.overrides else "") + "; run `make repro` (or `dvc repro`)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
