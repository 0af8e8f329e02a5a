"""The helpers several test files share, so that each is written once: one torch thread, three small models,
the notes a trick said, and a ConfigError's one-line message."""

import warnings
from collections.abc import Iterator

import pytest
import torch
from torch import nn

from autotrick.errors import TrickNote


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """One torch thread: two OpenMP threads spin-waiting on a busy shared core run a small model
    several times slower (see test_tricks_architectures.py)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def small_cnn() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, 24, 3, padding=1), nn.BatchNorm2d(24), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(24, 10))


def convnet() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 32, 3), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))


def mlp() -> nn.Sequential:  # BatchNorm1d on (N, C) vectors
    return nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 10))


def said(caught: list[warnings.WarningMessage]) -> str:
    return " | ".join(str(w.message) for w in caught if issubclass(w.category, TrickNote))


def one_line(error: pytest.ExceptionInfo[Exception]) -> str:
    message = str(error.value)
    assert "\n" not in message  # the CLI prints it as-is
    return message
