"""Fine-tuning from weights (tricks/finetune.py: new head, frozen backbone, head lr, layer-wise decay)
against their formulas, with real torch (nothing mocked)."""

from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from autotrick.apply import apply_tricks
from autotrick.checkpoint import build_initial_model, save_checkpoint
from autotrick.cli import main
from autotrick.errors import ConfigError
from autotrick.space import resolve_values
from autotrick.tricks.finetune import layers, load_pretrained, replace_head

torch.set_num_threads(2)

# --- layers, head and learning rates -------------------------------------------------------------


def test_resnet_layers_are_the_stem_then_each_block() -> None:
    model = torchvision.models.resnet18(weights=None, num_classes=10)
    found = layers(model)
    by_id = {id(p): name for name, p in model.named_parameters()}
    firsts = [by_id[id(layer[0])].rsplit(".", 1)[0] for layer in found]
    blocks = [f"layer{i}.{j}.conv1" for i in range(1, 5) for j in range(2)]
    assert firsts == ["conv1", "bn1", *blocks, "fc"]
    assert sum(len(layer) for layer in found) == len(list(model.parameters()))


def test_vit_layers_open_the_encoder_stack() -> None:
    model = torchvision.models.vit_b_16(weights=None, num_classes=10, image_size=32)
    assert len(layers(model)) == 1 + 1 + 1 + 12 + 1 + 1  # class token, patches, positions, blocks, norm, head


def net() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 5))


def test_head_lr_and_layer_decay_give_the_stated_learning_rates() -> None:
    lr, decay, mult = 0.1, 0.5, 4.0
    values = resolve_values({"optim.lr": lr, "finetune.layer_decay": decay, "finetune.head_lr_mult": mult,
                             "optim.weight_decay": 1e-3, "optim.no_decay_bias_norm": True}, "test")
    model = net()
    setup = apply_tricks(values, model, num_classes=5, steps_per_epoch=1, epochs=1)
    lr_of = {id(p): g["lr"] for g in setup.optimizer.param_groups for p in g["params"]}
    conv, bn, head = model[0], model[1], model[5]
    # from the top: the head, then bn (layer 1 below it), then conv (layer 2)
    expected = {**dict.fromkeys(map(id, head.parameters()), lr * mult),
                **dict.fromkeys(map(id, bn.parameters()), lr * decay),
                **dict.fromkeys(map(id, conv.parameters()), lr * decay**2)}
    assert lr_of == pytest.approx(expected)
    decay_of = {id(p): g["weight_decay"] for g in setup.optimizer.param_groups for p in g["params"]}
    assert decay_of[id(conv.weight)] == 1e-3 and decay_of[id(conv.bias)] == 0.0  # the groups still split
    assert setup.lr == pytest.approx(lr * mult)  # group 0: the head's


def test_the_backbone_is_frozen_for_the_freeze_epochs_then_trains() -> None:
    values = resolve_values({"finetune.freeze_epochs": 2, "optim.lr": 0.1}, "test")
    model = net()
    setup = apply_tricks(values, model, num_classes=5, steps_per_epoch=1, epochs=4)
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    backbone = [model[0].weight, model[0].bias, model[1].weight, model[1].bias]
    # (the conv's bias, right before a BatchNorm, has a zero gradient anyway: it is not checked for moving)
    watched = [model[0].weight, model[1].weight, model[1].bias, model[5].weight]
    for epoch in range(4):
        setup.on_epoch_start(epoch)
        before = [p.detach().clone() for p in watched]
        setup.step(setup.loss(model(x), setup.targets(y)))
        moved = [not torch.equal(b, p) for b, p in zip(before, watched, strict=True)]
        frozen = epoch < 2
        assert all(p.grad is None for p in backbone) == frozen, epoch  # no gradient at all while frozen
        assert moved == [not frozen] * 3 + [True], epoch


# --- weights: a new head, torchvision's files, checkpoints -----------------------------------------


def test_torchvision_weights_from_a_local_file_get_a_new_head(tmp_path: Path) -> None:
    torch.manual_seed(0)
    imagenet = torchvision.models.mobilenet_v3_small(weights=None)  # 1000 classes, as torchvision's file
    path = tmp_path / "mobilenet_v3_small.pth"
    torch.save(imagenet.state_dict(), path)
    model = build_initial_model("mobilenet_v3_small", weights=str(path), num_classes=7, in_channels=3,
                                image_size=(32, 32))
    own, theirs = model.state_dict(), imagenet.state_dict()
    head = "classifier.3"
    assert own[f"{head}.weight"].shape == (7, 1024)
    assert all(torch.equal(own[k], v) for k, v in theirs.items() if not k.startswith(head))
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)


def test_weights_of_another_architecture_fail_in_one_line() -> None:
    with pytest.raises(ConfigError, match=r"'0.weight' is \(8, 3, 3, 3\) in the file, \(8, 1, 3, 3\) in the model"):
        load_pretrained(nn.Sequential(nn.Conv2d(1, 8, 3)), net().state_dict(), head=[], source="x.pt")
    with pytest.raises(ConfigError, match=r"'extra\.weight' is in the file but not in the model"):
        load_pretrained(net(), {**net().state_dict(), "extra.weight": torch.zeros(1)}, head=[], source="x.pt")


def test_a_checkpoint_as_weights_names_its_model_and_gets_a_new_head(tmp_path: Path) -> None:
    from autotrick.models import cnn

    torch.manual_seed(0)
    trained = cnn(4, 1)
    path = save_checkpoint(tmp_path / "c.pt", trained, spec="cnn", tricks={}, num_classes=4, input_shape=(1, 8, 8))
    model = build_initial_model("ignored-for-a-checkpoint", weights=str(path), num_classes=10, in_channels=1,
                                image_size=(8, 8))
    assert torch.equal(model[0].weight, trained[0].weight) and model[-1].out_features == 10
    assert model.training


def test_train_from_weights_on_the_command_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    from autotrick.models import cnn

    monkeypatch.chdir(tmp_path)
    torch.save(cnn(10, 1).state_dict(), tmp_path / "cnn.pt")
    with pytest.raises(SystemExit) as exited:
        main(["train", "--weights", "cnn.pt", "--epochs", "1", "--set", "finetune.freeze_epochs=1",
              "--set", "finetune.head_lr_mult=3"])
    out, err = capsys.readouterr()
    assert exited.value.code == 0, out + err
    assert out.startswith("train cnn on digits, 1 epochs") and "finished: val_accuracy" in out
    with pytest.raises(SystemExit) as exited:
        main(["train", "--weights", "missing.pt", "--epochs", "1"])
    out, err = capsys.readouterr()
    assert exited.value.code == 2 and len(err.strip().splitlines()) == 1
    assert "--weights" in err and "missing.pt: no such file" in err


def test_finetune_trains_squeezenets_conv_head_which_it_used_to_refuse() -> None:
    torch.manual_seed(0)
    model = torchvision.models.squeezenet1_1(num_classes=7)
    values = resolve_values({"finetune.freeze_epochs": 1, "finetune.head_lr_mult": 4.0}, "test")
    setup = apply_tricks(values, model, num_classes=7, steps_per_epoch=1, epochs=2, example=torch.randn(2, 3, 64, 64))
    head = setup.model.classifier[1]
    assert setup.head == [head]
    assert all(p.requires_grad for p in head.parameters())
    assert not any(p.requires_grad for p in setup.model.features.parameters())  # frozen in epoch 0
    lrs = [g["lr"] for g in setup.optimizer.param_groups]
    assert max(lrs) == 4.0 * min(lrs)


def test_a_new_head_replaces_a_conv_classifier_too() -> None:
    model = torchvision.models.squeezenet1_1(num_classes=10)
    x = torch.randn(2, 3, 64, 64)
    model = replace_head(model, 3, x)
    assert model(x).shape == (2, 3)
