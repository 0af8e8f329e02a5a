"""An ablation in MLflow, on the run it ablates (a search's parent run, or the run a recipe came
from): the table as CSV and markdown, a bar chart of each trick's change when removed and when
added alone (with the 95% intervals), the minimal recipe, and the table under the run's description."""

from __future__ import annotations

from typing import TYPE_CHECKING

from autotrick.tracking._store import TAG_NOTE, open_client, resolve_tracking_uri

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from autotrick.ablate import Ablation

_MAX_NOTE_CHARS = 7900  # MLflow refuses tag values over 8000 characters
ABLATION_HEADING = "**Ablation**"


def ablation_figure(ablation: Ablation) -> Figure:
    from matplotlib.figure import Figure

    rows = ablation.rows
    figure = Figure(figsize=(7, 1.2 + 0.5 * len(rows)))
    axes = figure.subplots()
    positions = list(range(len(rows)))
    for offset, attribute, label in ((-0.2, "removed", "removed from the recipe"),
                                     (0.2, "added", "added alone to the baseline")):
        changes = [getattr(row, attribute) for row in rows]
        means = [c.mean if c else 0.0 for c in changes]
        errors = [(c.high - c.low) / 2 if c else 0.0 for c in changes]
        axes.barh([p + offset for p in positions], means, height=0.4, xerr=errors, label=label, capsize=3)
    axes.set_yticks(positions, [f"{row.group.name} = {row.group.shown}" for row in rows])
    axes.invert_yaxis()
    axes.axvline(0, color="black", linewidth=0.8)
    better = "higher" if ablation.mode == "max" else "lower"
    axes.set_xlabel(f"change in {ablation.metric} (> 0: better, i.e. {better}), mean ± 95% over "
                    f"{ablation.seeds} paired seeds")
    axes.legend(loc="best", fontsize="small")
    figure.tight_layout()
    return figure


def log_ablation(ablation: Ablation, run_id: str, *, tracking_uri: str | None, minimal_yaml: str) -> None:
    """The ablation's files and chart on `run_id`, and its table appended to the run's description
    (an earlier ablation's table replaced)."""
    client = open_client(resolve_tracking_uri(tracking_uri))
    client.log_text(run_id, ablation.csv(), "ablation/ablation.csv")
    client.log_text(run_id, ablation.markdown(), "ablation/ablation.md")
    client.log_text(run_id, minimal_yaml, "ablation/minimal.recipe.yaml")
    client.log_figure(run_id, ablation_figure(ablation), "ablation/ablation.png", save_kwargs={"dpi": 110})
    note = client.get_run(run_id).data.tags.get(TAG_NOTE, "")
    note = note.split("\n\n" + ABLATION_HEADING)[0]
    section = (f"{ABLATION_HEADING} over {ablation.seeds} paired seeds (change > 0: better; Holm-corrected "
               f"paired t-tests):\n\n{ablation.markdown()}")
    client.set_tag(run_id, TAG_NOTE, (note + "\n\n" + section)[:_MAX_NOTE_CHARS])
