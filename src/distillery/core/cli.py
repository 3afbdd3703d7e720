"""What every pipeline entry script shares: argument parsing, config loading, clean errors."""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from dataclasses import dataclass
from typing import Callable

from .config import Params, load_params
from .errors import DistilleryError
from .paths import Layout


class _OneLineParser(argparse.ArgumentParser):
    """Bad command-line arguments end like bad params: one line, exit code 2."""

    def error(self, message: str) -> None:
        self.exit(2, f"{self.prog}: error: {message}\n")


@dataclass
class StageContext:
    name: str
    layout: Layout
    params: Params
    args: argparse.Namespace


def debug_enabled() -> bool:
    return os.environ.get("DISTILLERY_DEBUG", "") not in ("", "0", "false")


def run_stage(name: str, body: Callable[[StageContext], str], add_args: Callable[[argparse.ArgumentParser], None] | None = None,
              argv: list[str] | None = None) -> int:
    """Run a stage body; print its one-line summary, or one error line (traceback with --debug)."""
    parser = _OneLineParser(prog=f"pipeline/{name}.py", description=f"distillery stage: {name}")
    parser.add_argument("--params", default=None, help="params file (default: params.yaml at the project root)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks (same as DISTILLERY_DEBUG=1)")
    if add_args:
        add_args(parser)
    args = parser.parse_args(argv)
    debug = args.debug or debug_enabled()
    started = time.perf_counter()
    try:
        layout = Layout.from_env()
        params = load_params(args.params or layout.params)
        summary = body(StageContext(name, layout, params, args))
    except DistilleryError as exc:
        if debug:
            traceback.print_exc()
        print(f"distillery {name}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"distillery {name}: interrupted; rerun to resume from the last checkpoint", file=sys.stderr)
        return 130
    print(f"distillery {name}: {summary} ({time.perf_counter() - started:.1f} s)")
    return 0


def main_for(name: str, body: Callable[[StageContext], str],
             add_args: Callable[[argparse.ArgumentParser], None] | None = None) -> None:
    sys.exit(run_stage(name, body, add_args))
