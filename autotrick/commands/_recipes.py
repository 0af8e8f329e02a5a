"""`autotrick export`, `show` and `ui`: recipes read back from files and MLflow, and the MLflow UI."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from autotrick.atomic import write_text_atomically
from autotrick.commands._format import short_value
from autotrick.errors import ConfigError


def export_recipe(*, search_name: str | None, run_id: str | None, output: str, tracking_uri: str | None) -> None:
    from autotrick.recipe import parse_recipe
    from autotrick.tracking import export_recipe_text

    if bool(search_name) == bool(run_id):
        raise ConfigError("export: give exactly one of --name SEARCH or --run RUN_ID")
    if not Path(output).parent.is_dir():
        raise ConfigError(f"--output {output}: the folder {Path(output).parent} does not exist")
    text = export_recipe_text(search_name=search_name, run_id=run_id, tracking_uri=tracking_uri)
    parse_recipe(text, search_name or run_id or "")  # never write a recipe that would not load
    write_text_atomically(output, text)
    click.echo(f"recipe written to {output}")


def show_recipe(ref: str, *, tracking_uri: str | None) -> None:
    """The recipe as a table: each trick parameter that differs from the baseline, then the rest."""
    from autotrick.tracking import load_recipe
    from autotrick.tricks import defaults

    if Path(ref).is_dir():  # a multi-objective search's NAME.pareto/
        from autotrick.commands._pareto import show_front

        show_front(Path(ref))
        return
    recipe = load_recipe(ref, tracking_uri=tracking_uri)
    provenance, baseline = recipe.provenance, defaults()
    metric = provenance.get("metric", "metric")
    value, base = provenance.get("value"), provenance.get("baseline")
    click.echo(f"recipe {ref}" + (f" (search '{provenance['search']}', trial {provenance.get('trial')})"
                                  if "search" in provenance else ""))
    if isinstance(value, int | float):
        gain = f", baseline {base:.4f}, gain {value - base:+.4f}" if isinstance(base, int | float) else ""
        click.echo(f"{metric} {value:.4f}{gain}")
    click.echo("training: " + ", ".join(f"{k} {v}" for k, v in recipe.training.items()))
    for key in ("objectives", "deployment"):  # a front point's values; what `export --onnx` measured
        if provenance.get(key):
            click.echo(f"{key}: " + ", ".join(f"{k} {short_value(v)}" for k, v in provenance[key].items()))
    rows = sorted(recipe.tricks.items(), key=lambda kv: (baseline.get(kv[0]) == kv[1], kv[0]))
    click.echo(f"{'trick parameter':<28} {'value':<16} baseline")
    for key, v in rows:
        mark = "*" if baseline.get(key) != v else " "
        click.echo(f"{mark} {key:<26} {short_value(v):<16} {short_value(baseline.get(key))}")
    click.echo("* differs from the baseline")
    _show_trust(provenance, metric)


def _show_trust(provenance: dict[str, Any], metric: str) -> None:
    """The confirmation over seeds and the ablation table, as the search or `autotrick ablate` stored them."""
    confirmed, ablation = provenance.get("confirmed"), provenance.get("ablation")
    if isinstance(confirmed, dict):
        click.echo(f"confirmed over {confirmed.get('seeds')} paired seeds at {confirmed.get('epochs')} epochs "
                   f"({confirmed.get('test')}):")
        click.echo(f"{'recipe':<12} {metric + ' mean ± 95%':<24} {'sd':>7}   {'vs baseline ± 95%':<22} p (Holm)")
        for row in confirmed.get("rows", []):
            gain = (f"{row['gain']:+.4f} ± {(row['gain_high'] - row['gain_low']) / 2:.4f}"
                    if row.get("gain") is not None else "-")
            p = f"{row['p_adjusted']:.2g}" if row.get("p_adjusted") is not None else "-"
            click.echo(f"{row['name']:<12} {row['mean']:.4f} ± {(row['high'] - row['low']) / 2:.4f}{'':<8} "
                       f"{row['sd']:>7.4f}   {gain:<22} {p}")
        head = "CONFIRMED: " if confirmed.get("significant") else "NOT CONFIRMED: "
        click.echo(head + str(confirmed.get("verdict")))
    else:
        click.echo("not confirmed over seeds: its value is one run (`autotrick search` confirms by default)")
    if isinstance(ablation, dict) and ablation.get("table"):
        table = ablation["table"]
        widths = [max(len(str(line[i])) for line in table) for i in range(len(table[0]))]
        click.echo(f"ablation over {ablation.get('seeds')} paired seeds (change > 0: better):")
        for line in table:
            click.echo("  ".join(str(cell).ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())
        click.echo(str(ablation.get("summary", "")))


def run_ui(*, port: int, search_name: str | None, tracking_uri: str | None) -> None:
    import signal

    from autotrick.tracking import is_server, resolve_tracking_uri, serve_ui, ui_url

    if is_server(resolve_tracking_uri(tracking_uri)):  # a tracking server has its UI already
        click.echo(f"MLflow UI at {ui_url(search_name=search_name, tracking_uri=tracking_uri)}")
        return
    # SIGTERM (a service manager, `timeout`, `docker stop`) stops the server as Ctrl-C does.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    process = serve_ui(tracking_uri=tracking_uri, port=port)
    click.echo(f"MLflow UI at {ui_url(search_name=search_name, tracking_uri=tracking_uri, port=port)} "
               "(Ctrl-C to stop)")
    try:
        process.wait()
    except KeyboardInterrupt:
        pass
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=30)
