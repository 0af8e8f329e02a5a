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
