"""Stage report: reports/report.md, reports/effects.json and reports/figures/*.png (no torch)."""

from distillery.core.cli import StageContext, main_for
from distillery.reporting.report import build_report


def body(ctx: StageContext) -> str:
    md = build_report(ctx.layout, ctx.params)
    return f"wrote {md.relative_to(ctx.layout.root)}"


if __name__ == "__main__":
    main_for("report", body)
