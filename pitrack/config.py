"""YAML configs as typed dataclasses. Every key is explicit: an unknown key or a wrong type is an error.

A config file may start with ``base: other.yaml`` (a path relative to the file); its keys are loaded
first and the file's own keys override them section by section. Ablations are written that way.
"""
import dataclasses
import hashlib
import json
import os
import typing

import yaml

from features.config import FeatureConfig
from flow.config import FlowConfig
from fusion.config import ChainConfig, FusionConfig
from pitrack.errors import ConfigError
from tto.config import TTOConfig


@dataclasses.dataclass
class KLTConfig:
    """OpenCV pyramidal Lucas–Kanade reference tracker."""
    resolution: str = "native"    # working resolution, see coords.parse_resolution
    win_size: int = 21            # LK window side (px at working resolution)
    max_level: int = 3            # pyramid levels above the base
    fb_threshold: float = 1.5     # forward–backward error (px, working res) above which a step is 'occluded'


@dataclasses.dataclass
class Config:
    tracker: str = "klt"          # which tracker: static | klt | pitrack
    seed: int = 0
    klt: KLTConfig = dataclasses.field(default_factory=KLTConfig)
    flow: FlowConfig = dataclasses.field(default_factory=FlowConfig)
    chain: ChainConfig = dataclasses.field(default_factory=ChainConfig)
    fusion: FusionConfig = dataclasses.field(default_factory=FusionConfig)
    features: FeatureConfig = dataclasses.field(default_factory=FeatureConfig)
    tto: TTOConfig = dataclasses.field(default_factory=TTOConfig)
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
    kwargs = {k: _coerce(v, hints[k], prefix + k) for k, v in data.items()}
    return cls(**kwargs)


def load_config(path_or_config=None, overrides=None):
    """A :class:`Config` from a YAML path, a dict, or a Config (returned as is). ``overrides`` is a dict merged last."""
    if isinstance(path_or_config, Config):
        return path_or_config
    if path_or_config is None:
        data, name = {}, "defaults"
    elif isinstance(path_or_config, dict):
        data, name = dict(path_or_config), "dict"
    else:
        data = _read_yaml(path_or_config)
        name = os.path.splitext(os.path.basename(os.fspath(path_or_config)))[0]
    if overrides:
        data = _merge(data, overrides)
    data.setdefault("name", name)
    return from_dict(Config, data)
