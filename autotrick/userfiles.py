"""Text files a user hands over (a search space, a recipe, here or in an MLflow run): read up to a
size no real one comes near, so that a huge or endless file (a log or a data file passed by
mistake, /dev/zero, a hostile upload) is refused in one line before it is read whole or parsed.
What is parsed is parsed safely elsewhere: yaml.safe_load only (no Python objects), and
torch.load(weights_only=True) for checkpoints (autotrick.checkpoint)."""

from __future__ import annotations

from pathlib import Path

from autotrick.errors import ConfigError

MAX_TEXT_BYTES = 1 << 20  # 1 MiB: the built-in spaces are under 4 KB, a recipe about 1 KB


def read_user_text(path: str | Path, what: str, expected: str) -> str:
    """The text of `path`, `what` it is (e.g. "recipe x.yaml") naming it in a refusal; `expected`
    says what it should be. Only a regular file is opened: a FIFO would block the open."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what}: not a regular file; expected {expected}")
    with path.open("rb") as file:
        data = file.read(MAX_TEXT_BYTES + 1)
    return user_text(data, what, expected)


def user_text(data: bytes, what: str, expected: str) -> str:
    if len(data) > MAX_TEXT_BYTES:
        raise ConfigError(f"{what}: over {MAX_TEXT_BYTES >> 20} MiB, refused before parsing; expected {expected}")
    try:
        return data.decode()
    except UnicodeDecodeError:
        raise ConfigError(f"{what}: not a text file (not UTF-8); expected {expected}") from None
