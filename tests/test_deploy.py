"""The deployable model: ONNX export verified in ONNX Runtime, INT8 static quantization, the CPU's
quantization settings, and `autotrick export --onnx` from a checkpoint and from an MLflow run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

pytest.importorskip("onnxruntime")

from autotrick.apply import prepare_trained
from autotrick.checkpoint import save_checkpoint
from autotrick.cli import main
from autotrick.data import open_feed
from autotrick.deploy import (
    ATOL,
    RTOL,
    cpu_flags,
    deploy_model,
    export_onnx,
    onnx_session,
    quant_settings,
)
from autotrick.models import build_model
from autotrick.trainer import TrainConfig, run_trial

CPU = torch.device("cpu")


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exited:
        main(args)
    out, err = capsys.readouterr()
    return int(exited.value.code or 0), out, err


def trained_cnn(values: dict | None = None, epochs: int = 8) -> torch.nn.Module:
    kept: list[torch.nn.Module] = []
    result = run_trial(values or {}, TrainConfig(model="cnn", data="digits", epochs=epochs, batch_size=64),
                       on_trained=kept.append)
    assert result.val_accuracy > 0.9
    return kept[0]


@pytest.fixture(scope="module")
def cnn_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "cnn.pt"
    return save_checkpoint(path, trained_cnn(), spec="cnn", tricks={}, num_classes=10, input_shape=(1, 8, 8))


# --- the CPU's quantization settings: both sides of the VNNI decision --------------------------

CPUINFO_VNNI = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_vnni\n"
CPUINFO_AVX2 = "processor\t: 0\nflags\t\t: fpu sse avx2 fma\n"


def test_cpu_flags_are_read_from_cpuinfo_text() -> None:
    assert {"avx2", "avx512_vnni"} <= cpu_flags(CPUINFO_VNNI)
    assert cpu_flags("Features\t: fp asimd asimddp\n") == {"fp", "asimd", "asimddp"}


def test_x86_with_vnni_keeps_full_8_bit_weights() -> None:
    settings = quant_settings("x86_64", cpu_flags(CPUINFO_VNNI))
    assert not settings.reduce_range and "avx512_vnni" in settings.reason
    assert quant_settings("x86_64", frozenset({"avx_vnni"})).reduce_range is False


def test_x86_without_vnni_reduces_the_weight_range() -> None:
    settings = quant_settings("x86_64", cpu_flags(CPUINFO_AVX2))
    assert settings.reduce_range and "without VNNI" in settings.reason
    assert (settings.activations, settings.weights) == ("uint8", "int8")


def test_arm_needs_no_reduced_range() -> None:
    assert quant_settings("aarch64", cpu_flags("Features\t: fp asimd\n")).reduce_range is False


# --- export and verification -----------------------------------------------------------------

def _matches_pytorch(model: torch.nn.Module, shape: tuple[int, ...], path: Path) -> None:
    model = model.eval()
    export_onnx(model, torch.randn(2, *shape), path)
    session = onnx_session(path)
    for batch in (1, 5):  # the batch axis is dynamic
        x = torch.randn(batch, *shape)
        with torch.no_grad():
            expected = model(x).numpy()
        got = session.run(None, {"input": x.numpy()})[0]
        np.testing.assert_allclose(got, expected, atol=ATOL, rtol=RTOL)


def test_resnet18_exports_and_matches_pytorch_in_onnx_runtime(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=10, in_channels=3, image_size=(32, 32))
    with torch.no_grad():  # batch norm with statistics of its own, as after training
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
    _matches_pytorch(model, (3, 32, 32), tmp_path / "r18.onnx")


def test_timm_model_exports_and_matches_pytorch_in_onnx_runtime(tmp_path: Path) -> None:
    pytest.importorskip("timm")
    torch.manual_seed(0)
    model = build_model("timm:test_resnet", num_classes=10, in_channels=3, image_size=(32, 32))
    _matches_pytorch(model, (3, 32, 32), tmp_path / "timm.onnx")


def test_structurally_pruned_model_exports_smaller(tmp_path: Path) -> None:
    example = torch.randn(2, 1, 8, 8)
    dense = build_model("cnn", num_classes=10, in_channels=1, image_size=(8, 8))
    pruned = prepare_trained(build_model("cnn", num_classes=10, in_channels=1, image_size=(8, 8)),
                             {"prune.ratio": 0.5, "prune.structured": True}, example_inputs=example)
    dense_file = export_onnx(dense, example, tmp_path / "dense.onnx")
    pruned_file = export_onnx(pruned, example, tmp_path / "pruned.onnx")
    assert pruned_file.stat().st_size < 0.6 * dense_file.stat().st_size
    _matches_pytorch(pruned, (1, 8, 8), tmp_path / "pruned_check.onnx")


def test_trained_cnn_exports_verified_and_int8_is_smaller_within_a_point(tmp_path: Path) -> None:
    feed = open_feed("digits", None, device=CPU)
    report = deploy_model(trained_cnn(), feed, tmp_path / "cnn.onnx", int8=True)
    pytorch, onnx, int8 = (report.get(name) for name in ("pytorch", "onnx", "int8"))
    assert report.verified and report.outputs_match and onnx.accuracy == pytest.approx(pytorch.accuracy, abs=0.002)
    assert pytorch.accuracy > 0.9
    assert int8.size_mb < 0.5 * onnx.size_mb  # 8-bit weights: a quarter, plus scales and zero points
    assert report.int8_accuracy_drop <= 0.01  # the bound this test states: one point on digits' 360 images
    assert report.calibration_images == 512 and report.validation_images == 360
    for form in (pytorch, onnx, int8):
        assert set(form.latency_ms) == {1, 64} and all(ms > 0 for ms in form.latency_ms.values())
    assert {"onnx_latency_ms_b64", "int8_size_mb", "int8_accuracy_drop"} <= set(report.measurements())


# --- the command -----------------------------------------------------------------------------

def test_export_onnx_of_a_checkpoint_writes_a_verified_model_and_its_report(
        tmp_path: Path, cnn_checkpoint: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "digits.onnx"
    code, stdout, err = run_cli(["export", "--model", str(cnn_checkpoint), "--data", "digits", "--onnx", str(out),
                                 "--int8"], capsys)
    assert code == 0, err
    assert "verified" in stdout and "NOT" not in stdout
    assert out.is_file() and (tmp_path / "digits.int8.onnx").is_file()
    report = json.loads((tmp_path / "digits.report.json").read_text())
    assert report["verified"] and report["int8"]["activations"] == "uint8"
    assert [f["name"] for f in report["formats"]] == ["pytorch", "onnx", "int8"]


@pytest.mark.parametrize(("args", "message"), [
    (["--int8"], "--model"),  # filled below: a checkpoint names no data set
    (["--onnx", "x.txt", "--model", "m.pt"], "--onnx x.txt: expected a file name ending in .onnx"),
    (["--onnx", "nowhere/x.onnx", "--model", "m.pt"], "the folder nowhere does not exist"),
    (["--onnx", "x.onnx"], "give exactly one of --name SEARCH, --run RUN_ID or --model REF"),
    (["--int8", "--name", "quick"], "--int8 is for a model's export: give --onnx FILE.onnx too"),
    ([], "export: give --output FILE.yaml for the recipe, or --onnx FILE.onnx"),
])
def test_bad_export_input_exits_2_with_one_line(args: list[str], message: str, tmp_path: Path, cnn_checkpoint: Path,
                                                 capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    if args == ["--int8"]:
        args = ["--onnx", "x.onnx", "--int8", "--model", str(cnn_checkpoint)]
        message = "a checkpoint names no data set, and --onnx needs its calibration and validation images"
    code, out, err = run_cli(["export", *args], capsys)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and message in err
    assert not list(tmp_path.glob("*.onnx")) and not list(tmp_path.glob("mlflow.db"))


# --- MLflow: the run's model in, the ONNX models out ------------------------------------------

@pytest.fixture
def trial_run(tmp_path: Path) -> tuple[str, str]:
    """A run as a search's best trial leaves it: the trained model logged as `model`, the recipe beside it."""
    import mlflow
    import mlflow.pytorch

    from autotrick.recipe import Recipe
    from autotrick.tricks import defaults

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    experiment = client.create_experiment("deploy", artifact_location=str(tmp_path / "artifacts"))
    run_id = client.create_run(experiment).info.run_id
    recipe = Recipe(tricks=defaults(), training={"model": "cnn", "data": "digits", "epochs": 8},
                    provenance={"metric": "val_accuracy"})
    client.log_text(run_id, recipe.to_yaml(), "recipe.yaml")
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(experiment_id=experiment)
    mlflow.pytorch.log_model(trained_cnn(), name="model", run_id=run_id, serialization_format="pickle",
                             pip_requirements=[])
    client.set_terminated(run_id)
    return uri, run_id


def test_export_onnx_of_a_run_registers_fp32_and_int8_with_aliases(
        tmp_path: Path, trial_run: tuple[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    import mlflow

    uri, run_id = trial_run
    out = tmp_path / "best.onnx"
    code, _, err = run_cli(["export", "--run", run_id, "--onnx", str(out), "--int8", "--register", "digits-cnn",
                                 "--tracking-uri", uri], capsys)
    assert code == 0, err
    client = mlflow.MlflowClient(uri)
    model = client.get_registered_model("digits-cnn")
    assert set(model.aliases) == {"champion-onnx", "champion-int8"}
    int8_version = client.get_model_version("digits-cnn", model.aliases["champion-int8"])
    assert int8_version.run_id == run_id
    loaded = mlflow.onnx.load_model("models:/digits-cnn@champion-int8")
    assert any(node.op_type == "QuantizeLinear" for node in loaded.graph.node)
    run = client.get_run(run_id)
    assert run.data.metrics["onnx_accuracy"] > 0.9 and "int8_latency_ms_b64" in run.data.metrics
    artifacts = [a.path for a in client.list_artifacts(run_id, "deploy")]
    assert "deploy/export_report.json" in artifacts
    recipe = yaml.safe_load((tmp_path / "best.recipe.yaml").read_text())
    assert recipe["provenance"]["deployment"]["onnx_accuracy"] > 0.9
    code, shown, _ = run_cli(["show", str(tmp_path / "best.recipe.yaml")], capsys)
    assert code == 0 and "deployment: " in shown and "int8_latency_ms_b64" in shown


def test_export_onnx_of_a_run_without_a_model_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("empty")).info.run_id
    code, _, err = run_cli(["export", "--run", run_id, "--onnx", str(tmp_path / "x.onnx"), "--data", "digits",
                              "--tracking-uri", uri], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "no model there" in err
    assert not (tmp_path / "x.onnx").exists()


def test_tricks_that_change_the_graph_export_as_their_inference_model(tmp_path: Path) -> None:
    from autotrick.apply import apply_tricks

    example = torch.randn(4, 1, 8, 8)
    model = build_model("cnn", num_classes=10, in_channels=1, image_size=(8, 8))
    setup = apply_tricks({"norm.type": "batch_renorm", "reparam.type": "weight_norm", "quant.qat": 1}, model,
                         num_classes=10, steps_per_epoch=1, epochs=1, example=example)
    setup.model.train()
    setup.model(example)  # the running statistics move off their initial values
    plain = setup.export()
    assert not any(torch.nn.utils.parametrize.is_parametrized(m) for m in plain.modules())
    _matches_pytorch(plain, (1, 8, 8), tmp_path / "tricks.onnx")


@pytest.mark.slow
def test_export_onnx_of_a_searchs_best_model_by_search_name(
        ray_address: str, workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from autotrick.commands import SearchRequest, run_search_command

    uri = f"sqlite:///{workdir}/mlflow.db"
    assert run_search_command(SearchRequest(space="quick", trials=2, max_epochs=3, name="best", tracking_uri=uri,
                                            register="digits-best")) == 0
    capsys.readouterr()
    code, out, err = run_cli(["export", "--name", "best", "--onnx", str(workdir / "best.onnx"),
                              "--tracking-uri", uri], capsys)
    assert code == 0, err
    assert "verified" in out and (workdir / "best.onnx").is_file()
    recipe = yaml.safe_load((workdir / "best.recipe.yaml").read_text())
    assert recipe["provenance"]["search"] == "best" and "onnx_latency_ms_b1" in recipe["provenance"]["deployment"]


def test_export_onnx_of_a_registered_model_adds_onnx_versions_beside_it(
        tmp_path: Path, trial_run: tuple[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    import mlflow

    uri, run_id = trial_run
    client = mlflow.MlflowClient(uri)
    version = mlflow.register_model(f"runs:/{run_id}/model", "digits-cnn").version
    client.set_registered_model_alias("digits-cnn", "champion", version)
    code, out, err = run_cli(["export", "--model", "models:/digits-cnn@champion", "--onnx", str(tmp_path / "c.onnx"),
                              "--tracking-uri", uri], capsys)
    assert code == 0, err
    model = client.get_registered_model("digits-cnn")
    assert set(model.aliases) == {"champion", "champion-onnx"}  # no --int8: no INT8 version
    assert model.aliases["champion-onnx"] != model.aliases["champion"]
    assert "models:/digits-cnn@champion-onnx" in out
