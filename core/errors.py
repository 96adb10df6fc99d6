"""Errors a user can cause. Command-line entry points print them as one line and exit with code 2."""


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
