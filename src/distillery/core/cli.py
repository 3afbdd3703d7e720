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
from .dvc_state import keep_good_lock
from .errors import DistilleryError
from .processes import share_cores
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


def _world() -> tuple[int, int]:
    """(rank, world size) under torchrun; (0, 1) in a single process. training.distributed.Ranks reads the
    same variables, but importing it imports torch, which core (and the report stage) never does."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def _launch(name: str, nproc: int, argv: list[str] | None) -> int:
    """Run this stage's script again in `nproc` processes on this host (torchrun's launcher, standalone
    rendezvous, no restarts); return 0, or 2 after one line naming the first process that failed."""
    import logging
    import uuid

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)  # the failing rank says why itself
    share_cores(os.environ, nproc)  # torchrun would give each process 1 thread (with a warning)
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=str(uuid.uuid4()),
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0)
    args = sys.argv[1:] if argv is None else argv
    print(f"distillery {name}: launching {nproc} processes (final.nproc, torchrun, DistributedDataParallel)",
          flush=True)
    try:
        elastic_launch(config, sys.executable)(os.path.abspath(sys.argv[0]), *args)
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        print(f"distillery {name}: error: process {rank} of the {nproc} launched by final.nproc={nproc} failed "
              f"(exit code {failure.exitcode}); its error is above", file=sys.stderr)
        return 2
    return 0


def run_stage(name: str, body: Callable[[StageContext], str], add_args: Callable[[argparse.ArgumentParser], None] | None = None,
              argv: list[str] | None = None, nproc: Callable[[Params], int] | None = None) -> int:
    """Run a stage body; print its one-line summary, or one error line (traceback with --debug).

    `nproc(params)` > 1 (the final stage's final.nproc): the body runs in that many processes under torchrun;
    rank 0 prints the summary, and an error line names the rank that raised it."""
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
        if _world()[0] == 0:
            keep_good_lock(layout.root)  # DVC wrote dvc.lock whole before this stage: what a kill mid-rewrite needs
        params = load_params(args.params or layout.params)
        processes = nproc(params) if nproc is not None else 1
        if processes > 1 and "WORLD_SIZE" not in os.environ:
            return _launch(name, processes, argv)
        summary = body(StageContext(name, layout, params, args))
    except DistilleryError as exc:
        if debug:
            traceback.print_exc()
        rank, world = _world()
        print(f"distillery {name}: error{f' (rank {rank} of {world})' if world > 1 else ''}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"distillery {name}: interrupted; rerun to resume from the last checkpoint", file=sys.stderr)
        return 130
    if _world()[0] == 0:
        print(f"distillery {name}: {summary} ({time.perf_counter() - started:.1f} s)")
    return 0


def main_for(name: str, body: Callable[[StageContext], str],
             add_args: Callable[[argparse.ArgumentParser], None] | None = None,
             nproc: Callable[[Params], int] | None = None) -> None:
    sys.exit(run_stage(name, body, add_args, nproc=nproc))
