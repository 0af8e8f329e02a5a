"""A search's configuration exists once, resolved (search_options.py): prepare_search settles the
request into SearchOptions with the data's measured size and the trials' device, which the search,
MLflow (`info()`) and the recipe read. Real data and validation; no Ray here (the cluster case, auto
settled once connected, runs in test_search_gpu.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from autotrick.commands import SearchRequest
from autotrick.commands._search import prepare_search
from autotrick.records import UNSETTLED_DEVICE
from autotrick.search_options import SearchOptions, trial_device
from autotrick.trainer import TrainConfig


def prepared(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **given: object) -> SearchOptions:
    monkeypatch.chdir(tmp_path)
    return prepare_search(SearchRequest(trials=3, max_epochs=2, **given), tmp_path / ".autotrick" / "s")  # type: ignore[arg-type]


def test_a_local_search_is_settled_with_its_measured_data_and_device(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    options = prepared(tmp_path, monkeypatch, gpus_per_trial="0")
    assert options.settled and options.gpus_per_trial == 0.0 and options.train.device == "cpu"
    assert (options.data_size.name, options.data_size.num_classes, options.data_size.image_size) == \
        ("digits", 10, (8, 8))
    info = options.info()
    assert (info.device, info.trials, info.max_epochs, info.model, info.data) == ("cpu", 3, 2, "cnn", "digits")
    assert options.stored_request["trials"] == 3 and "space_yaml" in options.stored_request
    assert options.output == Path("s.recipe.yaml")
    assert not (tmp_path / ".autotrick").exists() and not (tmp_path / "mlflow.db").exists()  # nothing written


def test_the_device_follows_the_gpu_share_in_one_place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    options = prepared(tmp_path, monkeypatch, gpus_per_trial="0")
    pending = SearchOptions(name=options.name, space=options.space, train=TrainConfig(device=UNSETTLED_DEVICE),
                            state_dir=options.state_dir, data_size=options.data_size, gpus_per_trial=None)
    assert not pending.settled and pending.info().device == "auto"
    quarter = pending.with_gpus(0.25)
    assert quarter.settled and quarter.train.device == trial_device(0.25) == "cuda"
    assert pending.with_gpus(0.0).info().device == "cpu"
