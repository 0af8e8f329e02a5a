"""A multi-objective search's Pareto front in MLflow, on the search's parent run: the scatter of
the finished trials over the first two objectives with the front drawn through its points, the
baseline marked and the hypervolume in the title (plots/pareto_front.png); the hypervolume as the
metric `pareto_hypervolume`; the front's trials and values as pareto_front.json."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from autotrick.records import SearchResult, TrialRecord
from autotrick.tracking._store import open_client, resolve_tracking_uri

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def front_figure(result: SearchResult, front: list[TrialRecord], hypervolume: float) -> Figure:
    from matplotlib.figure import Figure

    from autotrick.objectives import DIRECTIONS

    x_name, y_name = result.info.objectives[:2]
    axes = Figure(figsize=(7.5, 5.0), layout="constrained").add_subplot()
    axes.grid(alpha=0.3)
    done = [r for r in result.records if r.successful and r.objective_values((x_name, y_name))]
    points = {r.number: r.objective_values((x_name, y_name)) for r in done}
    others = [r for r in done if r not in front and not r.baseline]
    axes.scatter([points[r.number][0] for r in others], [points[r.number][1] for r in others],  # type: ignore[index]
                 color="0.6", label=f"other finished trials ({len(others)})")
    xs, ys = zip(*(points[r.number] for r in front), strict=True) if front else ((), ())
    axes.plot(xs, ys, "o-", color="C1", drawstyle="steps-post", label=f"Pareto front ({len(front)})")
    for record in front:
        axes.annotate(f"#{record.number}", points[record.number], textcoords="offset points", xytext=(4, 4),  # type: ignore[arg-type]
                      fontsize=8)
    baseline = result.baseline
    if baseline is not None and baseline.number in points:
        axes.scatter(*points[baseline.number], marker="*", s=180, color="C0", zorder=3, label="baseline")  # type: ignore[misc]
    arrow = {"max": "higher is better", "min": "lower is better"}
    axes.set_xlabel(f"{x_name} ({arrow[DIRECTIONS[x_name]]})")
    axes.set_ylabel(f"{y_name} ({arrow[DIRECTIONS[y_name]]})")
    axes.set_title(f"search '{result.info.name}': Pareto front, hypervolume {hypervolume:.4g}")
    axes.legend(fontsize=8)
    return axes.figure  # type: ignore[return-value]


def log_front(parent_run_id: str, result: SearchResult, front: list[TrialRecord], hypervolume: float,
              tracking_uri: str | None = None) -> None:
    client = open_client(resolve_tracking_uri(tracking_uri))
    names = result.info.objectives
    client.log_figure(parent_run_id, front_figure(result, front, hypervolume), "plots/pareto_front.png",
                      save_kwargs={"dpi": 110})
    client.log_metric(parent_run_id, "pareto_hypervolume", hypervolume)
    client.log_metric(parent_run_id, "pareto_front_size", len(front))
    rows = [{"trial": r.number, **dict(zip(names, r.objective_values(names) or [], strict=True))} for r in front]
    client.log_text(parent_run_id, json.dumps({"objectives": list(names), "front": rows}, indent=2),
                    "pareto_front.json")
