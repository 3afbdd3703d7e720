"""Stage report: reports/report.md, reports/effects.json and reports/figures/*.png."""

from distillery.cli import StageContext, main_for
from distillery.report import build_report


def body(ctx: StageContext) -> str:
    md = build_report(ctx.layout.root, ctx.layout.reports, ctx.params.report, ctx.params.seed)
    return f"wrote {md.relative_to(ctx.layout.root)}"


if __name__ == "__main__":
    main_for("report", body)
