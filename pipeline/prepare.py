"""Stage prepare: ingest the configured source, validate, split, write the prepared format."""

import sys
from pathlib import Path

from distillery.core.cli import StageContext, main_for
from distillery.data import load_source, save_prepared, size_advice, stratified_split, summarize
from distillery.core.files import write_json


def body(ctx: StageContext) -> str:
    cfg = ctx.params.data
    raw = load_source(cfg, cache_dir=Path.home() / ".cache" / "distillery")
    split_seed = cfg.split_seed if cfg.split_seed is not None else ctx.params.seed
    idx = stratified_split(raw.labels, cfg.val_fraction, cfg.test_fraction, split_seed, raw.classes)
    meta = save_prepared(raw, idx, ctx.layout.prepared, cfg.source, cfg.image_size)
    if advice := size_advice(raw.median_short_side, cfg.image_size):
        print(f"distillery prepare: warning: {advice}", file=sys.stderr)
    summary = summarize(raw, idx, meta)
    write_json(ctx.layout.prepared / "skipped.json", raw.skipped)
    write_json(ctx.layout.metrics / "data.json",
               {**{k: v for k, v in summary.items() if k != "skipped"}, "split_seed": split_seed})
    c = summary["counts"]
    return (f"{cfg.source}: {summary['num_classes']} classes, {meta['channels']}x{cfg.image_size}x{cfg.image_size}"
            + (f" (stored at {cfg.storage_size})" if cfg.storage_size else "") + ", "
            f"train/val/test = {c['train']}/{c['val']}/{c['test']}, skipped {summary['num_skipped']} file(s)")


if __name__ == "__main__":
    main_for("prepare", body)
