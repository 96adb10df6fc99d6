"""Allowed values of config fields, written beside each field as ``typing.Annotated[type, check]``.

``pitrack.config`` applies them while it reads a config, so a value out of range is one ConfigError naming
the key, before any work starts::

    steps: Annotated[int, at_least(0)]
    occlusion_threshold: Annotated[float, between(0, 1)]
    backend: Annotated[str, one_of("raft_small", "raft_large", "dis")]
"""
import dataclasses
import math
import os
import re

from core.coords import parse_resolution
from core.errors import quoted, shortened


@dataclasses.dataclass(frozen=True)
class Range:
    """lo <= v <= hi (either side may be None: unbounded; ``open_lo``: lo < v)."""
    lo: float = None
    hi: float = None
    open_lo: bool = False

    def problem(self, v):
        if isinstance(v, float) and not math.isfinite(v):
            return "must be a finite number"
        low = self.lo is not None and (v <= self.lo if self.open_lo else v < self.lo)
        high = self.hi is not None and v > self.hi
        if not (low or high):
            return None
        if self.lo is not None and self.hi is not None:
            return f"must be in {'(' if self.open_lo else '['}{self.lo:g}, {self.hi:.10g}]"
        return f"must be {'>' if self.open_lo else '>='} {self.lo:g}" if low else f"must be <= {self.hi:.10g}"


@dataclasses.dataclass(frozen=True)
class OneOf:
    choices: tuple

    def problem(self, v):
        return None if v in self.choices else f"must be one of {' | '.join(self.choices)}"


@dataclasses.dataclass(frozen=True)
class Pattern:
    """A string check by a function that raises (e.g. core.coords.parse_resolution) or a regular expression."""
    what: str
    regex: str = ""
    parse: object = None

    def problem(self, v):
        if self.regex and not re.fullmatch(self.regex, v):
            return f"must be {self.what}"
        if self.parse is not None:
            try:
                self.parse(v)
            except ValueError as e:
                return f"is not {self.what} ({shortened(e)})"
        return None


def at_least(lo):
    return Range(lo=lo)


def above(lo):
    return Range(lo=lo, open_lo=True)


def between(lo, hi):
    return Range(lo=lo, hi=hi)


def one_of(*choices):
    return OneOf(tuple(choices))


def _physical_memory():
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):       # not POSIX: assume a 64 GB machine
        return 64 * 2 ** 30


# Upper bounds of the size-like settings: a typo or a hostile file is a ConfigError when the config is read,
# not a 40 GB allocation and the OOM killer minutes later. Each bound is where the setting's own cost
# (the formula beside it) passes MACHINE_BYTES, this machine's physical memory, or a geometric limit:
# nothing is larger than a raster of MAX_SIDE (core.coords). Useful values are far below every bound.
MACHINE_BYTES = _physical_memory()


def fits_memory(lo, bytes_each):
    """lo <= v, and v units of ``bytes_each`` bytes fit in this machine's memory."""
    return between(lo, max(lo, MACHINE_BYTES // int(bytes_each)))


PROBABILITY = between(0.0, 1.0)
COSINE = between(-1.0, 1.0)
DEVICE = Pattern("auto, cpu, cuda, cuda:N or mps", regex=r"|auto|cpu|cuda|cuda:\d+|mps")


def _parse_resolution(v):
    parse_resolution(v, (64, 64))


RESOLUTION = Pattern("a resolution", parse=_parse_resolution)


def check_value(value, checks, key):
    """The ConfigError message for ``value`` of ``key`` failing one of ``checks``, or None."""
    for c in checks:
        why = c.problem(value)
        if why:
            return f"config key '{key}' {why}, got {quoted(value)}"
    return None
