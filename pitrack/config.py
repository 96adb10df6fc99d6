"""YAML configs as typed dataclasses. Every key is explicit: an unknown key, a missing key, a wrong type or a
value outside the field's range or choices (``Annotated`` checks, core/config_checks.py) is an error, and so
is an empty file.

``configs/default.yaml`` is the one source of defaults: the dataclasses have none, and every config
(a file, a dict, or nothing) is read as changes to that file, section by section. A config file may
also start with ``base: other.yaml``, whose keys are applied first: one file name, looked up in the
config's own folder and then in ``configs/``. Ablations are written that way.

A config file is small and read before any work: above :data:`MAX_CONFIG_BYTES`, nested deeper than
:data:`MAX_DEPTH` (counting what YAML aliases expand to), expanding to more than :data:`MAX_NODES` values, or
with a key given twice in one mapping, it is one ConfigError, found from the parsed node graph before any
value is built (a "billion laughs" of nested aliases costs nothing).
"""
import dataclasses
import os
import typing
from typing import Annotated

import yaml

from core.config_checks import RESOLUTION, above, between, check_value
from core.errors import ConfigError, quoted, shortened
from core.paths import json_key
from features.config import FeatureConfig, MatcherConfig
from filters.config import FilterConfig
from flow.config import FlowConfig
from fusion.config import ChainConfig, FusionConfig, RefinerConfig, VisibilityConfig
from tto.config import TTOConfig

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
DEFAULT_CONFIG = os.path.join(CONFIG_DIR, "default.yaml")
MAX_CONFIG_BYTES = 1 << 20      # default.yaml is 9 kB
MAX_DEPTH = 16                  # default.yaml nests 3 deep
MAX_NODES = 20_000              # values after alias expansion; default.yaml has about 400


@dataclasses.dataclass
class KLTConfig:
    """OpenCV pyramidal Lucas–Kanade reference tracker."""
    resolution: Annotated[str, RESOLUTION]  # working resolution, see coords.parse_resolution
    win_size: Annotated[int, between(3, 1023)]  # LK window side (px at working resolution); OpenCV's cost grows as its square
    max_level: Annotated[int, between(0, 13)]  # pyramid levels above the base (2^13 = MAX_SIDE)
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


def _check_nodes(root, path):
    """ConfigError if the node graph under ``root``, aliases expanded, nests deeper than MAX_DEPTH or holds
    more than MAX_NODES nodes, or if a mapping gives a key twice. Each node is visited once (shared nodes,
    i.e. aliases, by their memoised size and height), so the cost is that of the file, not of its expansion."""
    memo = {}                                    # id(node) -> (expanded nodes, height)

    def visit(node, level):
        if level > MAX_DEPTH:
            raise ConfigError(f"config {path}: nested deeper than {MAX_DEPTH} levels (line {node.start_mark.line + 1})")
        if id(node) in memo:
            size, height = memo[id(node)]
            if level + height > MAX_DEPTH:
                raise ConfigError(f"config {path}: the anchor of line {node.start_mark.line + 1}, used at depth "
                                  f"{level}, nests deeper than {MAX_DEPTH} levels")
            return size
        size, height = 1, 0
        if isinstance(node, yaml.MappingNode):
            keys = set()
            for k, _ in node.value:
                if isinstance(k, yaml.ScalarNode) and k.tag != "tag:yaml.org,2002:merge":
                    if k.value in keys:
                        raise ConfigError(f"config {path} line {k.start_mark.line + 1}: key {quoted(k.value)} is "
                                          f"given twice in one mapping")
                    keys.add(k.value)
            children = [c for kv in node.value for c in kv]
        else:
            children = node.value if isinstance(node, yaml.SequenceNode) else []
        for c in children:
            size += visit(c, level + 1)
            height = max(height, memo[id(c)][1] + 1)
            if size > MAX_NODES:
                raise ConfigError(f"config {path}: expands to more than {MAX_NODES} values (YAML aliases?)")
        memo[id(node)] = (size, height)
        return size

    visit(root, 0)


def _parse_yaml(text, path):
    """The data of one YAML document ``text`` (None when empty), checked by :func:`_check_nodes` first. Depth
    is counted on the event stream before composing, since PyYAML's composer recurses once per level."""
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            if depth > MAX_DEPTH:
                raise ConfigError(f"config {path}: nested deeper than {MAX_DEPTH} levels "
                                  f"(line {event.start_mark.line + 1})")
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return None
        _check_nodes(root, path)
        return loader.construct_document(root)           # the checked graph itself: no second parse
    finally:
        loader.dispose()


def _base_path(base, path):
    """The file ``base:`` names in config ``path``: one YAML file name, in the config's folder or else in
    configs/."""
    if (not isinstance(base, str) or not base.endswith((".yaml", ".yml")) or os.path.basename(base) != base
            or "\\" in base or base.startswith(".")):
        raise ConfigError(f"config {path}: 'base' must be one YAML file name (other.yaml, in the same folder or "
                          f"in configs/), got {quoted(base)}")
    for folder in (os.path.dirname(path), CONFIG_DIR):
        candidate = os.path.join(folder, base)
        if os.path.isfile(candidate):
            return candidate
    raise ConfigError(f"config {path}: base {base} is neither in {os.path.dirname(path)} nor in {CONFIG_DIR}")


def _read_yaml(path, seen=()):
    path = os.path.abspath(path)
    if path in seen:
        raise ConfigError(f"config {path}: 'base' chain loops")
    if not os.path.isfile(path):
        what = "is not a file" if os.path.exists(path) else "not found"
        raise ConfigError(f"config file {what}: {path}")
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
        if len(raw) > MAX_CONFIG_BYTES:
            raise ConfigError(f"config {path} is larger than {MAX_CONFIG_BYTES // 1024} kB: not a config")
        data = _parse_yaml(raw.decode("utf-8"), path)
    except UnicodeDecodeError as e:
        raise ConfigError(f"config {path} is not UTF-8 text (byte {e.start}: {e.reason})") from None
    except OSError as e:
        raise ConfigError(f"config {path} cannot be read: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config {path} is not valid YAML: {shortened(str(e).splitlines()[0])}") from None
    if data is None:
        raise ConfigError(f"config {path} is empty (to run the defaults, name configs/default.yaml or no config)")
    if not isinstance(data, dict):
        raise ConfigError(f"config {path}: top level must be a mapping")
    base = data.pop("base", None)
    if base is not None:
        data = _merge(_read_yaml(_base_path(base, path), seen + (path,)), data)
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
        raise ConfigError(f"config key '{key}' must be {typ.__name__}, got {quoted(value)}")
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
