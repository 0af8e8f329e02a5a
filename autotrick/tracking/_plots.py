"""The search's plots: the optimization history, each parameter's importance, the metric by each
choice. matplotlib's Figure directly (Agg, and no pyplot state shared across threads)."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

from autotrick.errors import first_line
from autotrick.params import value_text
from autotrick.records import Outcome, TrialRecord, better

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


def history_figure(records: list[TrialRecord], metric: str, mode: str) -> Figure:
    """The metric of every trial by trial number, the best so far, and where trials failed."""
    axes = _new_axes(f"Optimization history: {metric} per trial ({mode})", "trial number", metric)
    done = sorted((r for r in records if r.successful), key=lambda r: r.number)
    numbers, values = [r.number for r in done], [r.metric for r in done]
    axes.scatter(numbers, values, color="C0", zorder=3, label="finished trial")
    axes.step(numbers, _best_so_far(values, mode), where="post", color="C1", label="best so far")  # type: ignore[arg-type]
    baseline = next((r.metric for r in done if r.baseline), None)
    if baseline is not None:
        axes.axhline(baseline, color="grey", linestyle="--", linewidth=1, label="baseline")
    stopped = [r for r in records if r.outcome is Outcome.ASHA_STOPPED and r.metric is not None]
    if stopped:
        axes.scatter([r.number for r in stopped], [r.metric for r in stopped], facecolors="none",
                     edgecolors="C0", label="stopped early by ASHA")
    failed = [r.number for r in records if r.outcome.failed]
    if failed:  # no metric: marked along the bottom edge
        axes.plot(failed, [0.02] * len(failed), "x", color="C3", transform=axes.get_xaxis_transform(),
                  label="diverged / failed")
    axes.legend(loc="best", fontsize="small")
    return axes.figure


def _best_so_far(values: list[float], mode: str) -> list[float]:
    best: list[float] = []
    for value in values:
        best.append(value if not best or better(value, best[-1], mode) else best[-1])
    return best


def param_importances(study: optuna.Study | None) -> dict[str, float] | str:
    """Each parameter's importance from the study's completed trials, or why there is none."""
    if study is None:
        return "skipped: no Optuna study"
    from optuna.importance import get_param_importances
    from optuna.trial import TrialState

    completed = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    if completed < 2:
        return f"skipped: {completed} completed trial(s), importance needs at least 2"
    try:
        with warnings.catch_warnings():  # "few trials per regime": expected in a short search
            warnings.simplefilter("ignore")
            return get_param_importances(study)
    except Exception as exc:  # e.g. no parameter shared by every completed trial
        return f"skipped: {first_line(exc)}"


def importance_figure(importances: dict[str, float], metric: str) -> Figure:
    ranked = sorted(importances.items(), key=lambda item: item[1])  # barh draws bottom-up
    height = 1.5 + 0.35 * len(ranked)
    axes = _new_axes(f"Importance of each trick parameter for {metric}",
                     "importance (Optuna, from the completed trials, normalized)", "",
                     size=(7.5, height))
    axes.barh([name for name, _ in ranked], [value for _, value in ranked], color="C0")
    return axes.figure


def categorical_params(records: list[TrialRecord], study: optuna.Study | None) -> list[str]:
    """Parameters drawn from a list of choices (per the study, or named/boolean values) that
    took at least two values among the successful trials."""
    drawn_from_choices = _categorical_in_study(study) if study is not None else set()
    found = []
    for name in sorted({name for r in records for name in r.values}):
        values = [r.values[name] for r in records if r.successful and name in r.values]
        named = all(v is None or isinstance(v, str | bool) for v in values)
        if len(set(map(value_text, values))) >= 2 and (named or name in drawn_from_choices):
            found.append(name)
    return found


def _categorical_in_study(study: optuna.Study) -> set[str]:
    from optuna.distributions import CategoricalDistribution

    return {name for trial in study.get_trials(deepcopy=False)
            for name, distribution in trial.distributions.items()
            if isinstance(distribution, CategoricalDistribution)}


def choice_figure(records: list[TrialRecord], name: str, metric: str) -> Figure:
    """The metric of each trial, and its mean, for every choice of one parameter."""
    by_choice: dict[str, list[float]] = {}
    for r in records:
        if r.successful and name in r.values:
            by_choice.setdefault(value_text(r.values[name]), []).append(r.metric)  # type: ignore[arg-type]
    choices = sorted(by_choice)
    axes = _new_axes(f"{metric} by {name}: each trial and the mean", name, metric,
                     size=(1.6 + 1.3 * len(choices), 4.5))
    for x, choice in enumerate(choices):
        values = by_choice[choice]
        axes.scatter([x + offset for offset in _spread(len(values))], values, color="C0", alpha=0.6,
                     zorder=3, label="trial" if x == 0 else None)
        mean = sum(values) / len(values)
        axes.hlines(mean, x - 0.3, x + 0.3, color="C1", linewidth=2.5, zorder=4,
                    label="mean" if x == 0 else None)
    axes.set_xticks(range(len(choices)), [f"{c}\n(n={len(by_choice[c])})" for c in choices])
    axes.legend(loc="best", fontsize="small")
    return axes.figure


def _spread(n: int) -> list[float]:
    """Offsets that keep a choice's points apart, the same on every run (no random jitter)."""
    return [0.0] if n == 1 else [-0.15 + 0.3 * i / (n - 1) for i in range(n)]

