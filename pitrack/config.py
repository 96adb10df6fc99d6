"""YAML configs as typed dataclasses. Every key is explicit: an unknown key, a missing key or a wrong type is
an error.

``configs/default.yaml`` is the one source of defaults: the dataclasses have none, and every config
(a file, a dict, or nothing) is read as changes to that file, section by section. A config file may
also start with ``base: other.yaml`` (a path relative to the file), whose keys are applied first.
Ablations are written that way.
"""
import dataclasses
import hashlib
import json
import os
import typing

import yaml

from core.errors import ConfigError
from features.config import FeatureConfig
from filters.config import FilterConfig
from flow.config import FlowConfig
from fusion.config import ChainConfig, FusionConfig, RefinerConfig, VisibilityConfig
from tto.config import TTOConfig

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
DEFAULT_CONFIG = os.path.join(CONFIG_DIR, "default.yaml")


@dataclasses.dataclass
class KLTConfig:
    """OpenCV pyramidal Lucas–Kanade reference tracker."""
    resolution: str  # working resolution, see coords.parse_resolution
    win_size: int  # LK window side (px at working resolution)
    max_level: int  # pyramid levels above the base
    fb_threshold: float  # forward–backward error (px, working res) above which a step is 'occluded'


@dataclasses.dataclass
class Config:
    tracker: str  # which tracker: static | klt | pitrack
    seed: int
    flow: FlowConfig
    chain: ChainConfig
    features: FeatureConfig
    tto: TTOConfig
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
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

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
        with open(path) as f:
            data = yaml.safe_load(f) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config {path}: top level must be a mapping")
    base = data.pop("base", None)
    if base is not None:
        data = _merge(_read_yaml(os.path.join(os.path.dirname(path), base), seen + (path,)), data)
    return data


def _coerce(value, typ, key):
    if dataclasses.is_dataclass(typ):
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
    """Build dataclass ``cls`` from a dict; unknown keys and wrong types raise ConfigError."""
    hints = typing.get_type_hints(cls)
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
    return dataclasses.replace(section, **changes)
