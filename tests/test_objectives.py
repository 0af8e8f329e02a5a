"""Searches over several objectives: the objectives' vocabulary and measurements, the Pareto front
and its hypervolume, and a real multi-objective search (Ray, Optuna, MLflow) that returns a
non-dominated front with one recipe per point."""

from __future__ import annotations

from pathlib import Path

import mlflow
import optuna
import pytest
from torch import nn

from autotrick.cli import main
from autotrick.commands import SearchRequest, run_search_command
from autotrick.errors import ConfigError
from autotrick.objectives import dominates, hypervolume_2d, measure, pareto_front, parse_objectives
from autotrick.recipe import read_recipe_file
from autotrick.records import Outcome, SearchInfo, SearchResult, TrialRecord


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exited:
        main(args)
    out, err = capsys.readouterr()
    return int(exited.value.code or 0), out, err


# --- the vocabulary ------------------------------------------------------------------------------

def test_objectives_parse_with_their_directions() -> None:
    parsed = parse_objectives("val_accuracy, latency_ms,params")
    assert [(o.name, o.mode) for o in parsed] == [("val_accuracy", "max"), ("latency_ms", "min"), ("params", "min")]


@pytest.mark.parametrize(("text", "message"), [
    ("val_accuracy,speed", "unknown objective 'speed'"),
    ("val_accuracy", "expected two or more different objectives"),
    ("val_accuracy,val_accuracy", "expected two or more different objectives"),
    ("latency_ms,val_accuracy", "expected val_accuracy or val_loss first"),
])
def test_bad_objectives_are_refused(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_objectives(text)


def test_unknown_objective_exits_2_before_anything_starts(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(["search", "--space", "deploy", "--objectives", "val_accuracy,speed"], capsys)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert "--objectives val_accuracy,speed: unknown objective 'speed'; expected" in err
    assert list(tmp_path.iterdir()) == []


def test_a_model_is_measured_for_params_size_flops_and_latency() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    found = measure(model, ["params", "size_mb", "flops", "latency_ms"], input_shape=(1, 8, 8))
    assert found["params"] == 64 * 10 + 10
    assert found["size_mb"] == pytest.approx((64 * 10 + 10) * 4 / 1e6)
    assert found["flops"] == 2 * 64 * 10  # torch's flop counter: a multiply and an add per weight
    assert 0 < found["latency_ms"] < 100


def test_int8_accuracy_is_measured_in_onnx_runtime() -> None:
    pytest.importorskip("onnxruntime")
    from autotrick.trainer import TrainConfig, run_trial

    kept: list[nn.Module] = []
    result = run_trial({}, TrainConfig(epochs=6, batch_size=64), on_trained=kept.append)
    found = measure(kept[0], ["int8_accuracy"], input_shape=(1, 8, 8), data="digits")
    assert abs(found["int8_accuracy"] - result.val_accuracy) <= 0.02


# --- the front ---------------------------------------------------------------------------------

def test_dominance_and_2d_hypervolume_follow_their_definitions() -> None:
    assert dominates([0.9, 1.0], [0.8, 2.0], ["max", "min"])
    assert not dominates([0.9, 3.0], [0.8, 2.0], ["max", "min"])
    assert not dominates([0.9, 1.0], [0.9, 1.0], ["max", "min"])
    # two points maximizing x and minimizing y, reference (0, 10)
    area = hypervolume_2d([(0.9, 1.0), (0.5, 0.0)], (0.0, 10.0), ("max", "min"))
    assert area == pytest.approx(0.9 * 9 + 0.5 * 1)  # the union: 0.9 x [1, 10] plus 0.5 x [0, 1]
    assert hypervolume_2d([(0.9, 1.0), (0.5, 2.0)], (0.0, 10.0), ("max", "min")) == pytest.approx(0.9 * 9)


def _record(number: int, accuracy: float, params: float, outcome: Outcome = Outcome.FINISHED) -> TrialRecord:
    return TrialRecord(number=number, values={}, outcome=outcome, metric=accuracy, epochs=2,
                       history=[{"epoch": 2, "val_accuracy": accuracy, "seconds": 1.0}],
                       measurements={"params": params}, baseline=number == 0)


def test_the_front_holds_exactly_the_non_dominated_finished_trials() -> None:
    records = [_record(0, 0.95, 100), _record(1, 0.97, 120), _record(2, 0.90, 50), _record(3, 0.90, 130),
               _record(4, 0.96, 50), _record(5, 0.99, 10, Outcome.DIVERGED)]
    records[5].metric = None
    info = SearchInfo(name="s", space="x", model="cnn", data="digits", metric="val_accuracy", mode="max",
                      trials=6, max_epochs=2, batch_size=64, seed=0, device="cpu",
                      objectives=("val_accuracy", "params"))
    result = SearchResult(info=info, records=records, interrupted=False)
    assert [r.number for r in pareto_front(result)] == [1, 4]
    # Optuna's own front over the same values agrees
    study = optuna.create_study(directions=["maximize", "minimize"])
    for r in records:
        trial = study.ask()
        if r.successful:
            study.tell(trial, r.objective_values(info.objectives))
        else:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
    result.study = study
    assert [r.number for r in pareto_front(result)] == [1, 4]


# --- a real search -------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_multi_objective_search_returns_a_non_dominated_front_with_a_recipe_per_point(
        ray_address: str, workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    uri = f"sqlite:///{workdir}/mlflow.db"
    # max_epochs = grace epochs: ASHA stops none, so every trial is measured and may be on the front
    code = run_search_command(SearchRequest(space="deploy", trials=6, max_epochs=2, name="front", tracking_uri=uri,
                                            objectives="val_accuracy,params,train_seconds"))
    out = capsys.readouterr().out
    assert code == 0, out
    assert "Pareto front:" in out and "front recipes written to front.pareto" in out
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(
        str(workdir / ".autotrick" / "front" / "optuna.journal")))
    study = optuna.load_study(study_name="front", storage=storage)
    assert len(study.directions) == 3
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) >= 2
    modes = ["max", "min", "min"]
    front_files = sorted((workdir / "front.pareto").glob("*.recipe.yaml"))
    front_numbers = {int(p.name[6:10]) for p in front_files}
    assert front_numbers == {t.number for t in study.best_trials}
    for path in front_files:  # no recipe on the front is worse in every objective than another trial
        recipe = read_recipe_file(path)
        values = list(recipe.provenance["objectives"].values())
        assert list(recipe.provenance["objectives"]) == ["val_accuracy", "params", "train_seconds"]
        assert not any(dominates(t.values, values, modes) for t in done)
    for trial in done:  # and every trial off the front is beaten by one on it
        if trial.number not in front_numbers:
            assert any(dominates(study.trials[n].values, trial.values, modes) for n in front_numbers)
    client = mlflow.MlflowClient(uri)
    parent = client.search_runs([client.get_experiment_by_name("front").experiment_id],
                                "tags.`autotrick.role` = 'parent'")[0]
    assert parent.data.metrics["pareto_hypervolume"] > 0
    assert parent.data.metrics["pareto_front_size"] == len(front_files)
    assert "plots/pareto_front.png" in [a.path for a in client.list_artifacts(parent.info.run_id, "plots")]
    code, shown, _ = run_cli(["show", str(workdir / "front.pareto")], capsys)
    assert code == 0 and shown.count(".recipe.yaml") == len(front_files)
