"""What the MLflow UI says about a search, in words: run names that mark the winner and the trials
ASHA stopped, and the markdown descriptions (MLflow's `mlflow.note.content`) of the parent run,
the winning trial, a failed or stopped trial, the experiment and the registered model.
Pure functions of the records: no MLflow here."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from autotrick.records import Outcome, SearchInfo, SearchResult, TrialRecord

BEST_MARK = " ★ best"


ML_VIEW = "?workflowType=machine_learning"  # else MLflow 3.17 may open the page in its GenAI view


@dataclass(frozen=True)
class Links:
    """Where the UI's pages are, as links inside its single-page app (relative: any host works)."""

    experiment_id: str
    run_ids: Mapping[int, str]        # trial number -> run id
    model: tuple[str, str, str] | None = None  # registered (name, version, alias)

    def run(self, number: int, name: str) -> str:
        run_id = self.run_ids.get(number)
        return f"[{name}](#/experiments/{self.experiment_id}/runs/{run_id}{ML_VIEW})" if run_id else name


def number_text(value: float | None) -> str:
    """A metric or parameter for reading: 4 significant digits."""
    return "-" if value is None else f"{value:.4g}"


def display_value(value: object) -> str:
    """A trick value for display: floats rounded, the rest as YAML writes it (true, sgd)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return number_text(value)
    return "off" if value is None else str(value)


def trial_name(record: TrialRecord, max_epochs: int, *, best: bool = False) -> str:
    """trial-007, with what sets it apart: (baseline), (stopped at 2/15), (diverged), ★ best."""
    name = f"trial-{record.number:03d}"
    if record.baseline:
        name += " (baseline)"
    if record.outcome is Outcome.ASHA_STOPPED:
        name += f" (stopped at {record.epochs}/{max_epochs})"
    elif record.outcome is Outcome.PATIENCE_STOPPED:
        name += f" (patience stop at {record.epochs}/{max_epochs})"
    elif record.outcome.failed:
        name += f" ({record.outcome.value})"
    return name + (BEST_MARK if best else "")


def changed_values(record: TrialRecord, baseline: Mapping[str, object]) -> dict[str, tuple[object, object]]:
    """The trick values where `record` differs from the baseline: {key: (its value, the baseline's)}."""
    return {key: (value, baseline.get(key)) for key, value in record.values.items() if baseline.get(key) != value}


def trial_note(record: TrialRecord, info: SearchInfo, comparable: str | None) -> str:
    """A trial's own description: why it ended, when that is not simply 'finished'."""
    metric = info.metric
    if record.outcome.failed:
        epoch = f" at epoch {record.epochs}" if record.epochs else ""
        return (f"**{record.outcome.value}**{epoch}: {record.reason or 'no reason reported'}\n\n"
                "The reason and traceback are in the artifact `error.txt`.")
    if record.outcome is Outcome.ASHA_STOPPED:
        at = record.metric_at(metric, record.epochs)
        at = record.metric if at is None else at
        note = (f"Stopped early by ASHA after {record.epochs} of {info.max_epochs} epochs ({metric} "
                f"{number_text(at)} then): not comparable with the finished trials' `final_{metric}`")
        return note + (f"; compare `{comparable}` instead." if comparable else ".")
    if record.outcome is Outcome.PATIENCE_STOPPED:
        return f"Stopped by its own early_stop trick after {record.epochs} of {info.max_epochs} epochs."
    return ""


def best_note(best: TrialRecord, result: SearchResult, links: Links) -> str:
    """The winning trial's description: its value, the gain, the tricks that made it."""
    info = result.info
    lines = [f"★ Best trial of search '{info.name}': {info.metric} {number_text(best.metric)}"
             + _gain_text(result, links, bold=False), ""]
    return "\n".join([*lines, *_tricks_table(best, result)])


def search_note(result: SearchResult, links: Links, *, running: bool = False) -> str:
    """The parent run's description, most important first (the UI shows its first lines): the
    winner and its gain, the trial counts, why the search stopped, the registered model, the
    winner's tricks against the baseline's, and what was searched."""
    info = result.info
    setup = (f"autotrick search **{info.name}**: {info.model} on {info.data}, space {info.space}, "
             f"{info.trials} trials of up to {info.max_epochs} epochs, {info.metric} ({info.mode}).")
    if running:
        return f"Running: the result appears here when the search ends. {setup}"
    best = result.best
    if best is None:
        lines = ["**No trial succeeded**: no winner, no recipe."]
    else:
        name = trial_name(best, info.max_epochs, best=True)
        lines = [f"**Winner: {links.run(best.number, name)}**: {info.metric} **{number_text(best.metric)}**"
                 + _gain_text(result, links) + "."]
    if result.confirmed:  # the verdict over seeds comes first: it says whether the winner is real
        lines = [*confirmation_note(result.confirmed, info.metric), "", *lines]
    lines += ["", f"**Trials**: {_counts(result)}. **Stopped because** {_why_stopped(result)}."]
    if links.model is not None:
        model, version, alias = links.model
        page = f"#/models/{model}/versions/{version}{ML_VIEW}"
        lines += ["", f"**Model**: registered as [{model} version {version}]({page}) (alias `@{alias}`)."]
    if best is not None:
        lines += ["", *_tricks_table(best, result)]
    lines += ["", setup]
    if best is not None and result.complete:
        lines.append("The recipe is the artifact `recipe.yaml` (re-run it with `autotrick train --recipe FILE`); "
                     "the plots are under `plots/`.")
    return "\n".join(lines)


def confirmation_note(confirmed: Mapping[str, object], metric: str) -> list[str]:
    """The verdict over seeds in words, then one table row per recipe (mean ± interval, gain ±
    interval over the baseline, Holm-corrected p)."""
    rows: list[dict[str, Any]] = list(confirmed.get("rows") or [])  # type: ignore[call-overload]
    head = "**Confirmed**" if confirmed.get("significant") else "**Not confirmed**"
    lines = [f"{head}: {confirmed.get('verdict', '')}.", "",
             f"| recipe | {metric} mean ± 95% | sd | gain over baseline ± 95% | p (Holm) |",
             "| --- | --- | --- | --- | --- |"]
    for row in rows:
        half = (row["high"] - row["low"]) / 2
        gain = (f"{row['gain']:+.4f} ± {(row['gain_high'] - row['gain_low']) / 2:.4f}"
                if row.get("gain") is not None else "-")
        p = f"{row['p_adjusted']:.2g}" if row.get("p_adjusted") is not None else "-"
        lines.append(f"| {row['name']} | {row['mean']:.4f} ± {half:.4f} | {row['sd']:.4f} | {gain} | {p} |")
    return lines


def model_note(best: TrialRecord, result: SearchResult) -> str:
    """The registered model's description: the recipe in short, and what it scored."""
    info = result.info
    lines = [f"{info.model} trained on {info.data} with the recipe of search '{info.name}', trial "
             f"{best.number}: {info.metric} {number_text(best.metric)}{_gain_text(result, None, bold=False)}.", "",
             *_tricks_table(best, result),
             "", "Input: float32 images (N, C, H, W), normalized with the data set's mean and std; "
             "output: one logit per class."]
    if result.confirmed:
        lines = [*confirmation_note(result.confirmed, info.metric)[:1], "", *lines]
    return "\n".join(lines)


def _gain_text(result: SearchResult, links: Links | None, *, bold: bool = True) -> str:
    baseline, gain, metric = result.baseline, result.gain, result.info.metric
    best = result.best
    if best is not None and best.baseline:
        return ": **the baseline won**; no trick beat it"
    if baseline is None:
        failed = next((r for r in result.records if r.baseline), None)
        if failed is None:
            return "; no gain computed: the baseline has not run"
        return (f"; no gain computed: the baseline ({failed.outcome.value}) has no {metric}"
                + (f" ({failed.reason})" if failed.reason else ""))
    max_epochs = result.info.max_epochs
    base = links.run(baseline.number, trial_name(baseline, max_epochs)) if links else f"trial {baseline.number}"
    gain_text = f"{gain:+.4f}" if abs(gain) < 1 else f"{gain:+.4g}"  # type: ignore[arg-type]
    return f", {f'**{gain_text}**' if bold else gain_text} over the baseline ({number_text(baseline.metric)}, {base})"


def _tricks_table(best: TrialRecord, result: SearchResult) -> list[str]:
    from autotrick.tricks import defaults

    baseline = result.baseline.values if result.baseline else defaults()
    changed = changed_values(best, baseline)
    if not changed:
        return ["Its tricks: none (every trick at the baseline's value)."]
    rows = [f"| `{key}` | {display_value(value)} | {display_value(base)} |" for key, (value, base) in changed.items()]
    return ["| trick | winner | baseline |", "| --- | --- | --- |", *rows]


def _counts(result: SearchResult) -> str:
    info, records = result.info, result.records
    finished = sum(1 for r in records if r.outcome is Outcome.FINISHED)
    parts = [f"{len(records)} of {info.trials} ran", f"{finished} finished all {info.max_epochs} epochs"]
    for outcome, words in ((Outcome.PATIENCE_STOPPED, "stopped by their early_stop trick"),
                           (Outcome.ASHA_STOPPED, "stopped early by ASHA")):
        if count := result.count(outcome):
            parts.append(f"{count} {words}")
    failed = [r for r in records if r.outcome.failed]
    kinds = ", ".join(f"{result.count(o)} {o.value}" for o in (Outcome.DIVERGED, Outcome.OOM, Outcome.FAILED)
                      if result.count(o))
    parts.append(f"{len(failed)} failed" + (f" ({kinds})" if failed else ""))
    return ", ".join(parts)


def _why_stopped(result: SearchResult) -> str:
    if result.interrupted:
        return (f"interrupted after {len(result.records)} of {result.info.trials} trials (resume it with "
                f"`autotrick search --name {result.info.name} --resume`)")
    if result.stop_reason:
        return f"it stopped early after {len(result.records)} trials: {result.stop_reason}"
    return f"all {result.info.trials} trials ran"
