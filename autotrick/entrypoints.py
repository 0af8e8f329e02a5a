"""Load a user's own function from a `module:function` or `path/to/file.py:function` spec.

Shared by data sets and models so that both accept the same forms and fail with the same
one-line ConfigErrors (the CLI prints them as-is).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from autotrick.errors import ConfigError, UserCodeError, first_line

FORMS = "module:function or path/file.py:function"


def is_callable_spec(spec: str) -> bool:
    """True for specs that name a user function rather than a built-in."""
    module, sep, function = spec.rpartition(":")
    return bool(sep and module and function)


def absolute_spec(spec: str) -> str:
    """`spec` with a relative path/file.py made absolute: the same spec then names the same file
    from any working directory (Ray runs trials in their own folders)."""
    target, _, function = spec.rpartition(":")
    if is_callable_spec(spec) and target.endswith(".py"):
        return f"{Path(target).expanduser().resolve()}:{function}"
    return spec


def _import_file(path: Path) -> Any:
    # A stable, path-derived name: two files with the same stem must not overwrite each other
    # in sys.modules, and re-loading the same file reuses the module already imported.
    resolved = path.resolve()
    digest = hashlib.sha1(str(resolved).encode()).hexdigest()[:10]
    name = f"autotrick_user_{path.stem}_{digest}"
    if name in sys.modules:
        return sys.modules[name]
    module_spec = importlib.util.spec_from_file_location(name, resolved)
    if module_spec is None or module_spec.loader is None:
        raise ImportError(f"cannot load {path} as Python")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module  # before exec, so dataclasses and pickling can find it
    try:
        module_spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def load_callable(spec: str, what: str) -> Callable[..., Any]:
    """The function named by `spec`; `what` ("model", "data set") starts every error message."""
    target, _, function = spec.rpartition(":")
    if not (target and function):
        raise ConfigError(f"{what} '{spec}': expected {FORMS}")
    is_file = target.endswith(".py")
    if is_file and not Path(target).is_file():
        raise ConfigError(f"{what} '{spec}': file {target} not found (expected {FORMS})")
    if not is_file and os.getcwd() not in sys.path and "" not in sys.path:
        # The `autotrick` console script puts its bin folder, not the working directory, on
        # sys.path; users expect `mymodule:fn` to find ./mymodule.py, as uvicorn and flask do.
        sys.path.insert(0, os.getcwd())
    try:
        module = _import_file(Path(target)) if is_file else importlib.import_module(target)
    except Exception as error:
        raise ConfigError(f"{what} '{spec}': cannot import {target}: {first_line(error)}") from error
    fn = getattr(module, function, None)
    if not callable(fn):
        raise ConfigError(f"{what} '{spec}': {target} has no function '{function}'")
    return fn


def accepted_kwargs(fn: Callable[..., Any], offered: dict[str, Any]) -> dict[str, Any]:
    """The subset of `offered` that `fn`'s signature takes by keyword (all of it for **kwargs)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # builtins and some C callables have no signature
        return {}
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return dict(offered)
    names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return {k: v for k, v in offered.items() if k in names}


def check_callable_with(fn: Callable[..., Any], kwargs: dict[str, Any], spec: str, what: str,
                        expected: str) -> None:
    """ConfigError unless `fn(**kwargs)` binds: catches required arguments autotrick cannot give
    before the call, so a TypeError from inside the user's code is not mistaken for one."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # no signature to check: let the call decide
        return
    try:
        signature.bind(**kwargs)
    except TypeError as error:
        raise ConfigError(f"{what} '{spec}': the function must be callable as {expected} "
                          f"({' '.join(str(error).split())})") from error


def call_user_function(fn: Callable[..., Any], kwargs: dict[str, Any], spec: str, what: str) -> Any:
    """`fn(**kwargs)`; what the user's own code raises becomes one line naming `spec` and the
    exception (UserCodeError, exit 2), its traceback kept for -v."""
    try:
        return fn(**kwargs)
    except Exception as error:
        raise UserCodeError(f"{what} '{spec}' raised {first_line(error)}") from error
