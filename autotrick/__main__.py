"""`python -m autotrick` is the `autotrick` command."""

from autotrick.cli import run

run()
