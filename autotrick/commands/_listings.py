"""`autotrick tricks` and `autotrick spaces`: what there is to search."""

from __future__ import annotations

import click


def list_tricks() -> None:
    from autotrick.tricks import TRICKS

    for trick in TRICKS:
        click.echo(f"{trick.name}: {trick.summary}")
        for p in trick.params:
            key, default = f"{trick.name}.{p.name}", "null" if p.default is None else str(p.default)
            when = f"  (when {p.when})" if p.when else ""
            search = "given, not searched" if p.kind == "str" else p.search
            click.echo(f"  {key:<26} default {default:<9} search {search}{when}")
            click.echo(f"  {'':<26} {p.help}")


def list_spaces() -> None:
    from autotrick.space import builtin_spaces, describe_space, load_space

    for name in builtin_spaces():
        click.echo(f"{name:<14} {describe_space(load_space(name))}")
