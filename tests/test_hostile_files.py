"""Files a user hands over may be hostile: a space, a recipe or a checkpoint that would run code
when loaded, a file far too big, a FIFO that never ends. Each is refused in one line, exit 2,
before anything runs or is written, within a bounded time."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from test_cli_errors import one_error_line, run_real

PWNED = "pwned"  # the file each payload would create if it ran


class _Payload:
    """Unpickled, it would run `touch pwned`."""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {PWNED}",)


CODE_IN_YAML = f'!!python/object/apply:os.system ["touch {PWNED}"]\n'


@pytest.mark.parametrize("args, expected", [
    (["search", "--space", "code.yaml"], "code.yaml: line 1 is not valid YAML"),
    (["train", "--recipe", "code.yaml"], "recipe code.yaml"),
    (["train", "--weights", "evil.pt"],
     "evil.pt: refused: it holds Python objects other than tensors, which loading would run as code"),
    (["search", "--space", "huge.yaml"], "huge.yaml: over 1 MiB, refused before parsing; expected a search space"),
    (["train", "--recipe", "huge.yaml"], "recipe huge.yaml: over 1 MiB, refused before parsing; expected a recipe"),
    (["train", "--recipe", "fifo.yaml"], "recipe fifo.yaml: no such file; expected a recipe .yaml"),
    (["search", "--space", "fifo.yaml"], "search space fifo.yaml: no such file"),
], ids=["space runs code", "recipe runs code", "checkpoint runs code", "huge space", "huge recipe", "fifo recipe",
        "fifo space"])
def test_a_hostile_file_is_refused_in_one_line_and_runs_nothing(args: list[str], expected: str,
                                                                 tmp_path: Path) -> None:
    (tmp_path / "code.yaml").write_text(CODE_IN_YAML)
    torch.save({"state_dict": _Payload()}, tmp_path / "evil.pt")
    (tmp_path / "huge.yaml").write_text("tricks:\n" + "  # padding\n" * 200_000)  # 2.2 MB of valid YAML
    os.mkfifo(tmp_path / "fifo.yaml")  # opened for reading, it would wait for a writer for ever
    before = sorted(p.name for p in tmp_path.iterdir())
    code, out, err = run_real(args, tmp_path, timeout=120)
    assert code == 2 and expected in one_error_line(err), err
    assert "Traceback" not in err and out == ""
    assert not (tmp_path / PWNED).exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "__pycache__") == before
