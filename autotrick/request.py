"""What a search was asked to do, stored with its state when it starts (`.autotrick/NAME/request.json`),
so that `autotrick search --name NAME --resume` continues that search and not another: a flag
not given takes its stored value, a flag given again with the same value is fine, and one given
with another value is refused with one line naming both, except the flags that say how far,
how fast or where the search goes rather than what it searches (RESUME_MAY_CHANGE).

Works on any dataclass of the command's options (commands.SearchRequest), field by field, so an
option added later is stored and checked without a change here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import fields, replace
from pathlib import Path
from typing import Any, TypeVar

from autotrick.errors import ConfigError

Request = TypeVar("Request")

# How far (the trial budget, the time budget), how fast (trials at a time, a local Ray's CPUs),
# where it runs (the cluster's address may change between sessions) and where it reports (the
# recipe file, the registered model's name), and how the data reaches the trials (the same numbers either way).
RESUME_MAY_CHANGE = ("trials", "time_budget", "concurrency", "address", "num_cpus", "output", "register",
                     "data_mode", "wait_for_resources")
_NOT_STORED = ("name", "resume", "verbose")
_SPACE_TEXT = "space_yaml"  # the space's YAML as it was: an edited or deleted file does not change the search
FORMAT = "autotrick_request"


def stored_form(request: Any, space_yaml: str) -> dict[str, Any]:
    """The request as `request.json` keeps it: every option's effective value, and the space's text."""
    kept = {f.name: getattr(request, f.name) for f in fields(request) if f.name not in _NOT_STORED}
    return {FORMAT: 1, **kept, _SPACE_TEXT: space_yaml}


def resumed(given: Request, stored: Mapping[str, Any], name: str,
            same: Mapping[str, Callable[[Any], Any]]) -> tuple[Request, str]:
    """The request of a resumed search and its space's text: the stored values, with what
    `given` may change. `same[option]` maps a value to what it means (an absolute path, say), so
    `--space quick` and `--space search_spaces/quick.yaml` are one value."""
    changes: dict[str, Any] = {}
    for field in fields(given):  # type: ignore[arg-type]
        key = field.name
        if key in _NOT_STORED or key not in stored:  # an option newer than the stored request: as given
            continue
        now, was = getattr(given, key), stored[key]
        if now is None or key in RESUME_MAY_CHANGE:
            changes[key] = was if now is None else now
            continue
        meaning = same.get(key, lambda value: value)
        if was is None or meaning(now) != meaning(was):  # None: not given when the search started
            started = f"without {flag(key)}" if was is None else f"with {flag(key)} {was}"
            raise ConfigError(f"{flag(key)} {now}: search '{name}' was started {started}, and a resumed "
                              f"search keeps it (only {', '.join(map(flag, RESUME_MAY_CHANGE))} may change); drop "
                              f"{flag(key)}, or start a new search with another --name")
        changes[key] = was
    return replace(given, **changes), str(stored.get(_SPACE_TEXT, ""))  # type: ignore[type-var]


def check_space_unchanged(given_space: str | None, text_now: str | None, stored_yaml: str, name: str) -> None:
    """`--space FILE` given again names the same file: it must still say what it said."""
    if given_space is not None and text_now is not None and text_now != stored_yaml:
        raise ConfigError(f"--space {given_space}: the file changed since search '{name}' started, and a resumed "
                          "search keeps the space it started with; drop --space to resume it, or start a new "
                          "search with another --name")


def flag(option: str) -> str:
    return "--" + option.replace("_", "-")


def as_path(value: Any) -> str | None:
    return str(Path(value).expanduser().resolve()) if value is not None else None
