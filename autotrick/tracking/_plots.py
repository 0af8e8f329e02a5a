"""The search's plots, logged on its parent run under plots/.

Two kinds, each where it serves:
- Optuna's own `optuna.visualization` (plotly) for what Optuna already draws well and interactively:
  parallel coordinates, slice and parameter importances, in one HTML page (`interactive.html`,
  plotly.js embedded once, so it works offline; the MLflow UI shows HTML artifacts);
- matplotlib PNGs (previewed inline by the MLflow UI, readable in any file browser) where the
  search knows more than the Optuna study holds: the optimization history with the baseline, the
  trials ASHA stopped, the failures drawn apart and the winner labelled (Optuna's history knows
  only completed trials and their numbers), and the importance and each choice's spread.

Which trials they rest on: ASHA stops most trials after its grace epochs, so the study's COMPLETE
trials are few (4 of 20 in the quick search). Every plot but the history therefore rests on
`comparable_study`: an in-memory Optuna study with one trial per trial that did not fail, valued
at the common budget (the metric at the grace epoch, which all of them reached), and each says
how many trials that is. matplotlib's Figure is used directly (Agg, no pyplot state shared across
threads).
"""

from __future__ import annotations

import contextlib
import math
import warnings
from typing import TYPE_CHECKING, Any

from autotrick.errors import first_line
from autotrick.params import value_text
from autotrick.records import Outcome, SearchInfo, SearchResult, TrialRecord, better

if TYPE_CHECKING:
    import optuna
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


def _new_axes(title: str, xlabel: str, ylabel: str, size: tuple[float, float] = (7.5, 4.5)) -> Axes:
    from matplotlib.figure import Figure

    axes = Figure(figsize=size, layout="constrained").add_subplot()
    axes.set(title=title, xlabel=xlabel, ylabel=ylabel)
    axes.grid(alpha=0.3)
    return axes


def history_figure(records: list[TrialRecord], info: SearchInfo) -> Figure:
    """Each trial's metric by trial number, zoomed on the range between the baseline and the best:
    finished trials filled, trials ASHA stopped hollow (their value at the epoch they stopped),
    the best so far through the last trial, the winner labelled, failed trials in a strip below."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    metric, mode = info.metric, info.mode
    failed = sorted(r.number for r in records if r.outcome.failed)
    figure = Figure(figsize=(8.5, 5.6 if failed else 5.0), layout="constrained")
    grid = figure.add_gridspec(2 if failed else 1, 1, height_ratios=[7, 1] if failed else [1])
    axes = figure.add_subplot(grid[0])
    axes.grid(alpha=0.3)
    done = sorted((r for r in records if r.successful), key=lambda r: r.number)
    stopped = sorted((r for r in records if r.outcome is Outcome.ASHA_STOPPED and _finite(r.metric)),
                     key=lambda r: r.number)
    baseline = next((r for r in done if r.baseline), None)
    last = max((r.number for r in records), default=0)
    low, high = _zoom([r.metric for r in done], baseline.metric if baseline else None,  # type: ignore[misc]
                      [r.metric for r in stopped], mode)  # type: ignore[misc]
    _scatter_clipped(axes, done, low, high, filled=True, label=f"trained to its end ({len(done)})")
    _scatter_clipped(axes, stopped, low, high, filled=False,
                     label=f"stopped early by ASHA: value at its last epoch ({len(stopped)})")
    if done:
        numbers, best = [r.number for r in done], _best_so_far([r.metric for r in done], mode)  # type: ignore[misc]
        axes.step([*numbers, last], [*best, best[-1]], where="post", color="C1", label="best so far")
        winner = next(r for r in done if r.metric == best[-1])
        gain = f" ({winner.metric - baseline.metric:+.4f} vs baseline)" if baseline and not winner.baseline else ""  # type: ignore[operator]
        side = winner.number / max(last, 1)  # keep the label inside the axes at either end
        align = "left" if side < 0.25 else "right" if side > 0.75 else "center"
        axes.annotate(f"best: trial {winner.number}, {winner.metric:.4f}{gain}", (winner.number, winner.metric),
                      xytext=(0, 14), textcoords="offset points", ha=align, fontsize="small",
                      arrowprops={"arrowstyle": "-", "color": "C1"}, color="C1", weight="bold")
    if baseline is not None:
        axes.axhline(baseline.metric, color="grey", linestyle="--", linewidth=1,  # type: ignore[arg-type]
                     label=f"baseline (trial {baseline.number}): {baseline.metric:.4f}")
    axes.set_ylim(low, high)
    axes.set_xlim(-0.6, last + 0.6)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set(title=f"{info.name}: {metric} of each trial ({mode}imize), {len(records)} trials", ylabel=metric)
    handles, labels = axes.get_legend_handles_labels()
    if any(not low <= r.metric <= high for r in [*done, *stopped]):  # type: ignore[operator]
        handles.append(axes.scatter([], [], marker="v", facecolors="none", edgecolors="C0"))
        labels.append("below the range shown (on the edge)")
    figure.legend(handles, labels, loc="outside lower center", ncols=3, fontsize="small", frameon=False)
    if failed:
        strip = figure.add_subplot(grid[1], sharex=axes)
        strip.plot(failed, [0] * len(failed), "x", color="C3", markersize=8)
        strip.set_yticks([0], ["failed"])
        strip.tick_params(axis="y", length=0, labelcolor="C3")
        strip.grid(alpha=0.3, axis="x")
        strip.set_xlabel(f"trial number ({len(failed)} failed: no value)")
    else:
        axes.set_xlabel("trial number")
    return figure


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def _zoom(finished: list[float], baseline: float | None, stopped: list[float], mode: str) -> tuple[float, float]:
    """The y range that matters: the baseline, the best, and the better three quarters of the
    finished trials; anything worse is drawn on the edge."""
    values = sorted(finished or stopped or [0.0, 1.0], reverse=mode == "max")
    kept = values[:max(1, math.ceil(len(values) * 0.75))] + ([baseline] if baseline is not None else [])
    low, high = min(kept), max(kept)
    pad = max((high - low) * 0.2, abs(high) * 0.002, 1e-3)
    return low - pad, high + pad * 1.6  # room above for the winner's label


def _scatter_clipped(axes: Axes, records: list[TrialRecord], low: float, high: float, *, filled: bool,
                     label: str) -> None:
    """Points inside the range as they are; points outside on its edge as triangles."""
    if not records:
        return
    style: dict[str, Any] = {"color": "C0"} if filled else {"facecolors": "none", "edgecolors": "C0"}
    inside = [r for r in records if low <= r.metric <= high]  # type: ignore[operator]
    axes.scatter([r.number for r in inside], [r.metric for r in inside], zorder=3, label=label, **style)  # type: ignore[arg-type]
    below = [r.number for r in records if r.metric < low]  # type: ignore[operator]
    if below:
        axes.scatter(below, [low] * len(below), marker="v", zorder=3, clip_on=False, **style)
    above = [r.number for r in records if r.metric > high]  # type: ignore[operator]
    if above:
        axes.scatter(above, [high] * len(above), marker="^", zorder=3, clip_on=False, **style)


def _best_so_far(values: list[float], mode: str) -> list[float]:
    best: list[float] = []
    for value in values:
        best.append(value if not best or better(value, best[-1], mode) else best[-1])
    return best


def comparable_study(result: SearchResult, comparable_metric: str | None) -> optuna.Study | None:
    """The trials that did not fail as one in-memory Optuna study, each valued at the common budget
    (`comparable_metric`, the metric at ASHA's grace epoch; without one, the successful trials at
    their final value), with the parameters its real trial drew. None without the search's study."""
    import optuna

    real = {trial.number: trial for trial in result.study.get_trials(deepcopy=False)} if result.study else {}
    if not real:
        return None
    info = result.info
    target = comparable_metric or f"final_{info.metric}"
    study = optuna.create_study(direction="maximize" if info.mode == "max" else "minimize")
    with warnings.catch_warnings():  # set_metric_names is "experimental" since Optuna 3.2
        warnings.simplefilter("ignore")
        study.set_metric_names([target])
    for record in result.records:
        value = record.metric_at(info.metric, info.grace_epochs) if comparable_metric else (
            record.metric if record.successful else None)
        trial = real.get(record.number)
        if trial is None or not _finite(value) or record.outcome.failed:
            continue
        study.add_trial(optuna.trial.create_trial(
            params=trial.params, distributions=trial.distributions, value=value,
            user_attrs={"autotrick trial": record.number, "outcome": record.outcome.value}))
    return study if study.trials else None


def importance_evaluator() -> optuna.importance.BaseImportanceEvaluator:
    """fANOVA, seeded: the PNG and the interactive page agree, run after run (Optuna's default
    evaluator changed between versions, and fANOVA's random forest is unseeded by default)."""
    import optuna.importance

    return optuna.importance.FanovaImportanceEvaluator(seed=0)


def param_importances(study: optuna.Study | None) -> dict[str, float] | str:
    """Each parameter's importance over the study's trials, or why there is none."""
    if study is None:
        return "skipped: no Optuna study"
    from optuna.importance import get_param_importances

    if len(study.trials) < 2:
        return f"skipped: {len(study.trials)} trial(s), importance needs at least 2"
    try:
        with warnings.catch_warnings():  # "few trials per regime": expected in a short search
            warnings.simplefilter("ignore")
            return get_param_importances(study, evaluator=importance_evaluator())
    except Exception as exc:  # e.g. no parameter shared by every trial
        return f"skipped: {first_line(exc)}"


def importance_figure(importances: dict[str, float], target: str, trials: int) -> Figure:
    ranked = sorted(importances.items(), key=lambda item: item[1])  # barh draws bottom-up
    height = 1.8 + 0.35 * len(ranked)
    axes = _new_axes(f"Importance of each trick parameter for {target}\n(Optuna's fANOVA over {trials} trials)",
                     "importance (normalized: the bars sum to 1)", "", size=(8, height))
    axes.barh([name for name, _ in ranked], [value for _, value in ranked], color="C0")
    return axes.figure  # type: ignore[return-value]


def categorical_params(study: optuna.Study | None) -> list[str]:
    """Parameters drawn from a list of choices that took at least two values in the study."""
    from optuna.distributions import CategoricalDistribution

    if study is None:
        return []
    seen: dict[str, set[str]] = {}
    for trial in study.trials:
        for name, distribution in trial.distributions.items():
            if isinstance(distribution, CategoricalDistribution):
                seen.setdefault(name, set()).add(str(trial.params[name]))
    return sorted(name for name, values in seen.items() if len(values) >= 2)


def choice_figure(study: optuna.Study, name: str, target: str) -> Figure:
    """The target of each trial, and its mean, for every choice of one parameter."""
    by_choice: dict[str, list[float]] = {}
    for trial in study.trials:
        if name in trial.params and trial.value is not None:
            by_choice.setdefault(value_text(trial.params[name]), []).append(trial.value)
    choices = sorted(by_choice)
    trials = sum(len(v) for v in by_choice.values())
    axes = _new_axes(f"{target} by {name}\n({trials} trials: every one that reached it)", name, target,
                     size=(max(4.8, 1.6 + 1.3 * len(choices)), 4.5))
    for x, choice in enumerate(choices):
        values = by_choice[choice]
        axes.scatter([x + offset for offset in _spread(len(values))], values, color="C0", alpha=0.6,
                     zorder=3, label="trial" if x == 0 else None)
        mean = sum(values) / len(values)
        axes.hlines(mean, x - 0.3, x + 0.3, color="C1", linewidth=2.5, zorder=4,
                    label="mean" if x == 0 else "_nolegend_")  # matplotlib's label for no legend entry
    axes.set_xticks(range(len(choices)), [f"{c}\n(n={len(by_choice[c])})" for c in choices])
    axes.legend(loc="best", fontsize="small")
    return axes.figure  # type: ignore[return-value]


def _spread(n: int) -> list[float]:
    """Offsets that keep a choice's points apart, the same on every run (no random jitter)."""
    return [0.0] if n == 1 else [-0.15 + 0.3 * i / (n - 1) for i in range(n)]


def interactive_html(study: optuna.Study, target: str) -> str:
    """Optuna's parallel-coordinates, slice and importance plots of the study, on one page."""
    from optuna.visualization import plot_parallel_coordinate, plot_param_importances, plot_slice

    title = f"{target}, {len(study.trials)} trials"
    figures = []
    with warnings.catch_warnings():  # Optuna's experimental-feature and few-trials warnings
        warnings.simplefilter("ignore")
        figures.append(plot_parallel_coordinate(study, target_name=target))
        figures.append(plot_slice(study, target_name=target))
        if len(study.trials) >= 2:
            # without a parameter shared by every trial there is no importance: the page goes without
            with contextlib.suppress(Exception):
                figures.append(plot_param_importances(study, evaluator=importance_evaluator(), target_name=target))
    parts = []
    for i, figure in enumerate(figures):
        figure.update_layout(title=f"{figure.layout.title.text or ''} ({title})")
        parts.append(figure.to_html(full_html=False, include_plotlyjs=i == 0))  # plotly.js once
    return ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>autotrick: interactive plots</title></head>"
            f"<body style='font-family:sans-serif'>{''.join(parts)}</body></html>")
