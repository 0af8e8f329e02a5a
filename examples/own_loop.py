"""A user's own model and training loop, taking the tricks from an autotrick recipe.

    python examples/own_loop.py quick.recipe.yaml [--epochs 10]

Nothing here is autotrick's: the model, the data pipeline (a plain DataLoader) and the loop are
the user's. The recipe supplies the model-side tricks (init, norm swap, dropout, weight or spectral
norm), the optimizer with its parameter groups, the per-step schedule, the loss (smoothing,
mixup/cutmix, focal, L1), the per-epoch tricks (a frozen backbone, gradual pruning, the batch
renorm ramp), the augmentation policy, gradient clipping and the pruning step. A recipe with a
distillation teacher needs it passed in: recipe.apply(..., teacher=autotrick.load_model(ref)).
"""

from __future__ import annotations

import argparse

import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, Dataset

import autotrick


class MyNet(nn.Module):
    """The user's own model: nothing autotrick knows about."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 24, 3, padding=1), nn.BatchNorm2d(24), nn.ReLU(),
                                      nn.Conv2d(24, 48, 3, padding=1), nn.BatchNorm2d(48), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(2))
        self.head = nn.Linear(48 * 4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


class Digits(Dataset[tuple[torch.Tensor, int]]):
    """The user's own data pipeline: uint8 images (the recipe's augmentation runs on whole batches)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], int(self.labels[i])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe")
    parser.add_argument("--epochs", type=int, default=None)
    args = parser.parse_args()

    recipe = autotrick.load_recipe(args.recipe)
    epochs = args.epochs or int(recipe.training.get("epochs", 10))
    torch.manual_seed(0)
    digits = load_digits()
    images = torch.tensor(digits.images * 255 / 16, dtype=torch.uint8).unsqueeze(1)
    labels = torch.tensor(digits.target)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    train_idx, val_idx = order[:1437], order[1437:]

    example = images[train_idx[:4]].float() / 255.0  # the model-side tricks watch the model run on these
    setup = recipe.apply(MyNet(), num_classes=10, steps_per_epoch=23, epochs=epochs, example=example,
                         class_counts=torch.bincount(labels[train_idx], minlength=10))
    train_loader = DataLoader(Digits(images[train_idx], labels[train_idx]), batch_size=64, shuffle=True)
    assert len(train_loader) == 23

    def evaluate() -> float:
        setup.model.eval()
        with torch.no_grad():
            logits = setup.model(images[val_idx].float() / 255.0)
        return float((logits.argmax(1) == labels[val_idx]).float().mean())

    def train_one_epoch(epoch: int) -> None:
        setup.on_epoch_start(epoch)                            # unfreeze, gradual pruning, renorm ramp
        setup.model.train()
        for x, y in train_loader:
            x = setup.augment(x).float() / 255.0               # the policy, each image its own draw
            x, targets = setup.mix(x, setup.targets(y))        # smoothing, then mixup/cutmix
            with setup.autocast():
                loss = setup.loss(setup.model(x), targets, inputs=x)   # ce or focal, distillation, L1
            setup.step(loss)                                   # backward, clip, optimizer, schedule

    for epoch in range(1, epochs + 1):
        train_one_epoch(epoch - 1)
        print(f"epoch {epoch}: val_accuracy {evaluate():.4f}  lr {setup.lr:.4g}")
    if setup.prune_ratio > 0:                                  # the recipe's post-training pruning
        setup.prune(example_inputs=images[val_idx[:2]].float() / 255.0)
        for _ in range(setup.finetune_epochs):
            train_one_epoch(epochs - 1)
        sparsity = setup.finish_pruning()                      # the zeros now stay zero through setup.step
        print(f"pruned: sparsity {sparsity.sparsity:.3f}, {sparsity.nonzero_params:,} non-zero parameters")
    setup.export()                                             # plain weights, to save or export
    print(f"final val_accuracy {evaluate():.4f}")


if __name__ == "__main__":
    main()
