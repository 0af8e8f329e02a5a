"""The user's files and modules, as they are made ready for trials on nodes that do not share the
driver's disk (the two-node searches in test_cluster.py show them used)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from autotrick.shipping import driver_modules, files_to_ship, localized
from autotrick.trainer import TrainConfig


def test_the_driver_files_a_trial_opens_are_copied_on_the_node_and_the_config_points_at_the_copies(
        workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (workdir / "net.py").write_text("def build(num_classes, in_channels): ...\n")
    (workdir / "start.pt").write_bytes(b"weights")
    (workdir / "teacher.pt").write_bytes(b"teacher")
    train = TrainConfig(model=f"{workdir}/net.py:build", data="digits", weights=str(workdir / "start.pt"),
                        teachers=(("teacher.pt", str(workdir / "teacher.pt")),))
    files = files_to_ship(train)
    assert sorted(files) == sorted([str(workdir / "net.py"), str(workdir / "start.pt"), str(workdir / "teacher.pt")])

    node_tmp = workdir / "node-tmp"  # another node's temp folder
    node_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(node_tmp))
    here = localized(train, files)
    model_file, _, function = here.model.rpartition(":")
    assert function == "build" and Path(model_file).name == "net.py" and Path(model_file).is_relative_to(node_tmp)
    assert Path(model_file).read_text() == (workdir / "net.py").read_text()
    assert here.weights is not None and Path(here.weights).read_bytes() == b"weights"
    assert here.teachers[0][0] == "teacher.pt" and Path(here.teachers[0][1]).read_bytes() == b"teacher"
    assert here.data == "digits" and localized(train, files) == here  # written once per node and content


def test_modules_of_the_driver_folder_go_to_the_nodes_and_installed_ones_do_not(workdir: Path) -> None:
    (workdir / "mymod.py").write_text("def build(num_classes, in_channels): ...\n")
    (workdir / "mypkg").mkdir()
    (workdir / "mypkg" / "__init__.py").write_text("")
    (workdir / "mypkg" / "nets.py").write_text("def build(num_classes, in_channels): ...\n")
    found = driver_modules("mymod:build", "mypkg.nets:build", "torchvision.models:resnet18", "cnn", "digits",
                           f"{workdir}/mymod.py:build", "imagefolder:/data/pets")
    assert found == [str(workdir / "mymod.py"), str(workdir / "mypkg")]
