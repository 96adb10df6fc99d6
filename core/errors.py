"""Errors a user can cause. Command-line entry points print them as one line and exit with code 2, and
run under :func:`run_command`, which makes Ctrl-C one line and exit code 130."""
import sys

QUOTE_CHARS = 200   # an error message quotes at most this much of a value


def shortened(text):
    """``text`` (a message quoted inside another), cut to :data:`QUOTE_CHARS` characters ('...' when cut)."""
    text = str(text)
    return text if len(text) <= QUOTE_CHARS else text[:QUOTE_CHARS] + "..."


def quoted(value):
    """``repr(value)``, cut to :data:`QUOTE_CHARS` characters with the full length said."""
    text = repr(value)
    return text if len(text) <= QUOTE_CHARS else f"{text[:QUOTE_CHARS]}... ({len(text)} characters)"


class PitrackError(Exception):
    """Base class of errors caused by the user's input, configuration or environment."""


class InputError(PitrackError, ValueError):
    """Bad video, queries or prediction file."""


class ConfigError(PitrackError, ValueError):
    """Unknown key, wrong type or bad value in a YAML config."""


class WeightsError(PitrackError, FileNotFoundError):
    """A model checkpoint is missing or does not fit the model."""


class OutputError(PitrackError):
    """An output path that cannot be written: a folder, under a file, no permission, disk full."""


def run_command(main, prog):
    """``main()``'s exit code; Ctrl-C (KeyboardInterrupt) anywhere in it is one line on stderr and exit code 130
    (128 + SIGINT) instead of a traceback. Outputs are written atomically (core.atomic), so nothing is left
    half-written; a per-video optimisation keeps its last completed step (tto/train.py)."""
    try:
        return main()
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
