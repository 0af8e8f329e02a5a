"""The README's promises stay true: CI runs its test command verbatim, and its table lists every
registered trick."""

from pathlib import Path

from autotrick.tricks import TRICKS

ROOT = Path(__file__).resolve().parent.parent


def test_ci_runs_the_readmes_test_command() -> None:
    ci_command = next(line for line in (ROOT / ".ci" / "run").read_text().splitlines()
                      if line.startswith("apt-get"))
    assert f"\n{ci_command}\n" in (ROOT / "README.md").read_text()


def test_readme_lists_every_trick() -> None:
    readme = (ROOT / "README.md").read_text()
    for trick in TRICKS:
        assert f"| `{trick.name}` |" in readme, trick.name
