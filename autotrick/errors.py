"""User-facing errors. The CLI turns each into one line on stderr and exit code 2."""


class AutotrickError(Exception):
    """A mistake in what the user gave us (a flag, a file, a value): not a bug in autotrick."""


class ConfigError(AutotrickError):
    """A bad value: an unknown trick or parameter, a value out of range, a malformed file."""


class DataError(AutotrickError):
    """A data set that cannot be found or read where the user said it would be."""


class TrickNote(UserWarning):
    """What a trick did to the model other than asked, or where, said in one line (a norm kept
    where the asked one is undefined, where a Dropout went). The trainer prints each one."""


class ModelCheckWarning(UserWarning):
    """The model check's one line (autotrick.diagnose): the tricks damaged the model (an activation
    lost, features that no longer depend on the input, a classifier without gradient)."""


class UserCodeError(ConfigError):
    """The user's own function (a `module:function` model or data set) raised: one line names the
    function and the exception; the exception is kept as `__cause__`, its traceback shown with -v."""


def first_line(error: BaseException) -> str:
    """`Type: first line of the message`, whitespace folded: how an exception is told in one line."""
    lines = str(error).strip().splitlines()
    message = " ".join(lines[0].split()) if lines else ""
    return f"{type(error).__name__}: {message}" if message else type(error).__name__
