"""YAML configs as typed dataclasses. Every key is explicit: an unknown key, a missing key, a wrong type or a
value outside the field's range or choices (``Annotated`` checks, core/config_checks.py) is an error, and so
is an empty file.

``configs/default.yaml`` is the one source of defaults: the dataclasses have none, and every config
(a file, a dict, or nothing) is read as changes to that file, section by section. A config file may
also start with ``base: other.yaml`` (a path relative to the file), whose keys are applied first.
Ablations are written that way.
"""
import dataclasses
import os
import typing
from typing import Annotated

import yaml

from core.config_checks import RESOLUTION, above, at_least, between, check_value
from core.errors import ConfigError
from core.paths import json_key
from features.config import FeatureConfig, MatcherConfig
from filters.config import FilterConfig
from flow.config import FlowConfig
from fusion.config import ChainConfig, FusionConfig, RefinerConfig, VisibilityConfig
from tto.config import TTOConfig

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
DEFAULT_CONFIG = os.path.join(CONFIG_DIR, "default.yaml")


@dataclasses.dataclass
class KLTConfig:
    """OpenCV pyramidal Lucas–Kanade reference tracker."""
    resolution: Annotated[str, RESOLUTION]  # working resolution, see coords.parse_resolution
    win_size: Annotated[int, at_least(3)]  # LK window side (px at working resolution)
    max_level: Annotated[int, at_least(0)]  # pyramid levels above the base
    fb_threshold: Annotated[float, above(0)]  # forward–backward error (px, working res) above which a step is 'occluded'


@dataclasses.dataclass
class Config:
    tracker: str  # which tracker: static | klt | pitrack
    seed: Annotated[int, between(0, 2 ** 32 - 1)]
    flow: FlowConfig
    chain: ChainConfig
    features: FeatureConfig
    tto: TTOConfig
    matcher: MatcherConfig
    filters: FilterConfig
    fusion: FusionConfig
    visibility: VisibilityConfig
    refiner: RefinerConfig
    klt: KLTConfig
    name: str = ""                # set from the file name when loaded from YAML

    def fingerprint(self):
        """Short hash of every setting, for cache keys and resumable benchmarks."""
        d = dataclasses.asdict(self)
        d.pop("name", None)
        return json_key(d)

    def to_dict(self):
        return dataclasses.asdict(self)


def _merge(base, over):
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def _read_yaml(path, seen=()):
    path = os.path.abspath(path)
    if path in seen:
        raise ConfigError(f"config {path}: 'base' chain loops")
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except UnicodeDecodeError as e:
        raise ConfigError(f"config {path} is not UTF-8 text (byte {e.start}: {e.reason})") from None
    except OSError as e:
        raise ConfigError(f"config {path} cannot be read: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if data is None:
        raise ConfigError(f"config {path} is empty (to run the defaults, name configs/default.yaml or no config)")
    if not isinstance(data, dict):
        raise ConfigError(f"config {path}: top level must be a mapping")
    base = data.pop("base", None)
    if base is not None:
        if not isinstance(base, str) or not base:
            raise ConfigError(f"config {path}: 'base' must be the path of one YAML file, got {base!r}")
        data = _merge(_read_yaml(os.path.join(os.path.dirname(path), base), seen + (path,)), data)
    return data


def _coerce(value, typ, key):
    if typing.get_origin(typ) is typing.Annotated:
        base, *checks = typing.get_args(typ)
        value = _coerce(value, base, key)
        problem = check_value(value, checks, key)
        if problem:
            raise ConfigError(problem)
        return value
    if dataclasses.is_dataclass(typ):
        if isinstance(value, typ):
            value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' must be a mapping")
        return from_dict(typ, value, prefix=key + ".")
    origin = typing.get_origin(typ)
    if origin in (list, tuple):
        (inner,) = set(typing.get_args(typ)) - {Ellipsis}
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}' must be a list")
        return origin(_coerce(v, inner, key) for v in value)
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if typ is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        raise ConfigError(f"config key '{key}' must be {typ.__name__}, got {value!r}")
    return value


def from_dict(cls, data, prefix=""):
    """Build dataclass ``cls`` from a dict; unknown keys, wrong types and values outside a field's
    ``Annotated`` checks (core.config_checks) raise ConfigError."""
    hints = typing.get_type_hints(cls, include_extras=True)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown config key '{prefix}{unknown[0]}' (known here: {', '.join(sorted(names))})")
    required = [f.name for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [k for k in required if k not in data]
    if missing:
        raise ConfigError(f"config key '{prefix}{missing[0]}' is missing")
    kwargs = {k: _coerce(v, hints[k], prefix + k) for k, v in data.items()}
    return cls(**kwargs)


def load_config(path_or_config=None, overrides=None):
    """A :class:`Config` from a YAML path, a dict of changes, or a Config (returned as is); None is
    ``configs/default.yaml``. Files and dicts are changes to ``configs/default.yaml``; ``overrides`` is a
    dict merged last."""
    if isinstance(path_or_config, Config):
        return path_or_config
    if path_or_config is None:
        path_or_config = DEFAULT_CONFIG
    if isinstance(path_or_config, dict):
        data, name = dict(path_or_config), "dict"
    else:
        data = _read_yaml(path_or_config)
        name = os.path.splitext(os.path.basename(os.fspath(path_or_config)))[0]
    data = _merge(_read_yaml(DEFAULT_CONFIG), data)
    if overrides:
        data = _merge(data, overrides)
    data.setdefault("name", name)
    return from_dict(Config, data)


def default_section(name, **changes):
    """Section ``name`` of configs/default.yaml as its dataclass, with ``changes`` applied (for code and tests
    that build one stage alone)."""
    section = getattr(load_config(DEFAULT_CONFIG), name)
    unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(section)})
    if unknown:
        raise TypeError(f"{type(section).__name__} has no field '{unknown[0]}'")
    data = {f.name: getattr(section, f.name) for f in dataclasses.fields(section)}
    return from_dict(type(section), dict(data, **changes), prefix=name + ".")      # changes are checked too
