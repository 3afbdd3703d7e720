"""Stage budget: the epoch budget every arm trains at (metrics/budget.json).

student.epochs an int: that number, nothing trained. student.epochs: auto: the budget ladder trains the
recipe arm (sweep.recipe_arm) at the centre of search.* for budget.rungs in turn and keeps the first rung
the next one beats by less than budget.min_gain points of val (tuning/budget_ladder.py). Every later stage
reads the file, so every arm's trials and final seeds train at the same budget.
"""

from distillery.core.budget import LADDER_COLUMNS, EpochBudget, budget_line
from distillery.core.cli import StageContext, main_for
from distillery.core.files import write_csv


def body(ctx: StageContext) -> str:
    p, layout = ctx.params, ctx.layout
    if p.student.epochs != "auto":
        budget = EpochBudget(epochs=p.student.epochs, rule="fixed")
        write_csv(layout.budget_runs / "ladder.csv", [], LADDER_COLUMNS)
    else:
        from distillery.core.tracking import setup_tracking
        from distillery.data import load_prepared
        from distillery.recipe.models import check_model_names
        from distillery.tuning.budget_ladder import run_ladder

        check_model_names(p)
        setup_tracking(p.tracking, layout)
        budget = run_ladder(p, layout, load_prepared(layout.prepared))
    budget.save(layout.budget)
    return budget_line(budget)


if __name__ == "__main__":
    main_for("budget", body)
