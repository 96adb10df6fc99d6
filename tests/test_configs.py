"""The configs: configs/default.yaml is the one source of defaults, every file in configs/ loads, and every
ablation changes exactly the keys its `# changes:` line names."""
import dataclasses
import glob
import os
import re

import pytest
import yaml

from conftest import ROOT
from core.errors import ConfigError
from fusion.config import FusionConfig
from pitrack.config import CONFIG_DIR, DEFAULT_CONFIG, Config, default_section, from_dict, load_config

CONFIGS = os.path.join(ROOT, "configs")
ABLATIONS = sorted(glob.glob(os.path.join(CONFIGS, "ablations", "*.yaml")) + glob.glob(os.path.join(CONFIGS, "appearance", "*.yaml")))
ALL = sorted(glob.glob(os.path.join(CONFIGS, "**", "*.yaml"), recursive=True))


def flatten(d, prefix=""):
    """Nested dict -> {dotted key: value} (lists are values)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def settings(config):
    """Every setting of a Config as {dotted key: value}, without its name."""
    d = dataclasses.asdict(config)
    d.pop("name")
    return flatten(d)


def documented_changes(path):
    """The dotted keys of the file's `# changes: a.b, c.d` line; fails when the line is missing."""
    lines = [m.group(1) for m in (re.match(r"^#\s*changes:\s*(.*)$", ln.strip()) for ln in open(path)) if m]
    assert len(lines) == 1, f"{os.path.relpath(path, ROOT)} needs exactly one '# changes: key.a, key.b' line"
    return {k.strip() for k in lines[0].split(",") if k.strip()}


def test_there_are_ablations():
    assert len(ABLATIONS) >= 5


@pytest.mark.parametrize("path", ABLATIONS, ids=lambda p: os.path.basename(p))
def test_ablation_changes_exactly_the_documented_keys(path):
    documented = documented_changes(path)
    default, ablation = settings(load_config(DEFAULT_CONFIG)), settings(load_config(path))
    assert set(default) == set(ablation)
    changed = {k for k in default if default[k] != ablation[k]}
    assert changed == documented, (f"{os.path.basename(path)} changes {sorted(changed)}, its '# changes:' line "
                                   f"says {sorted(documented)}")


def test_documented_changes_line_is_required(tmp_path):
    p = tmp_path / "x.yaml"
    p.write_text("# Ablation without the line\nfusion:\n  backward: false\n")
    with pytest.raises(AssertionError, match="changes:"):
        documented_changes(str(p))
    p.write_text("# changes: fusion.backward, fusion.correlation\nfusion:\n  backward: false\n")
    assert documented_changes(str(p)) == {"fusion.backward", "fusion.correlation"}


@pytest.mark.parametrize("path", ALL, ids=lambda p: os.path.relpath(p, CONFIGS))
def test_every_config_loads(path):
    c = load_config(path)
    assert isinstance(c, Config) and c.name == os.path.splitext(os.path.basename(path))[0]
    assert set(settings(c)) == set(settings(load_config(None)))


def test_default_is_default_yaml():
    none = load_config(None)
    assert none == load_config(DEFAULT_CONFIG) == load_config(os.path.join(CONFIGS, "default.yaml"))
    assert settings(load_config({})) == settings(none)             # an empty dict changes nothing
    # every key of the Config is written in default.yaml, with that value
    with open(DEFAULT_CONFIG) as f:
        raw = flatten(yaml.safe_load(f))
    got = settings(none)
    assert set(raw) == set(got)
    for k, v in raw.items():
        if isinstance(v, list):
            assert [str(x) for x in v] == [str(x) for x in got[k]], k
        else:
            assert got[k] == v, k
    # a dict is read as changes to default.yaml (no 'base:'), other sections untouched
    c = load_config({"fusion": {"correlation": 0.25}})
    diff = {k for k, v in settings(c).items() if v != got[k]}
    assert diff == {"fusion.correlation"} and c.fusion.correlation == 0.25
    # a section built alone is default.yaml's with the changes applied
    assert default_section("fusion") == none.fusion
    assert default_section("fusion", backward=False) == dataclasses.replace(none.fusion, backward=False)
    with pytest.raises(TypeError):
        default_section("fusion", keypoints=False)                  # fusion.keypoints is gone


def test_missing_and_unknown_keys_raise():
    full = dataclasses.asdict(load_config(None))
    # a missing key inside a section
    fusion = dict(full["fusion"])
    del fusion["correlation"]
    with pytest.raises(ConfigError, match=r"fusion\.correlation.*missing"):
        from_dict(FusionConfig, fusion, prefix="fusion.")
    # a missing section
    data = dict(full)
    del data["visibility"]
    with pytest.raises(ConfigError, match=r"'visibility' is missing"):
        from_dict(Config, data)
    # a missing key of a nested section
    data = dataclasses.asdict(load_config(None))
    del data["filters"]["similarity"]["flow_threshold"]
    with pytest.raises(ConfigError, match=r"filters\.similarity\.flow_threshold.*missing"):
        from_dict(Config, data)
    assert from_dict(Config, full) == load_config(None)
    # unknown keys: in a file, in a dict, in from_dict; the old fusion.keypoints switch is one
    with pytest.raises(ConfigError, match=r"unknown config key 'fusion\.keypoints'"):
        load_config({"fusion": {"keypoints": False}})
    with pytest.raises(ConfigError, match=r"unknown config key 'filters\.mask\.colour'"):
        load_config({"filters": {"mask": {"colour": "red"}}})
    with pytest.raises(ConfigError, match=r"unknown config key 'sections'"):
        load_config({"sections": {}})
    with pytest.raises(ConfigError, match="unknown config key"):
        from_dict(FusionConfig, dict(full["fusion"], rho=0.3))


def test_unknown_key_in_a_file_raises(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("visibility:\n  appearance: false\n  similarity_thresold: 0.2\n")
    with pytest.raises(ConfigError, match=r"visibility\.similarity_thresold"):
        load_config(str(p))
    p.write_text("flow:\n  batch_size: 2\n")
    c = load_config(str(p))
    assert c.flow.batch_size == 2 and c.name == "bad" and c.fusion == load_config(None).fusion


@pytest.mark.parametrize("change, message", [
    ({"tto": {"steps": -5}}, r"'tto\.steps' must be in \[0, 1000000000\], got -5"),
    ({"chain": {"occlusion_threshold": -3}}, r"'chain\.occlusion_threshold' must be in \[0, 1\], got -3"),
    ({"klt": {"win_size": -5}}, r"'klt\.win_size' must be in \[3, 1023\]"),
    ({"flow": {"var_floor": 0}}, r"'flow\.var_floor' must be > 0"),
    ({"fusion": {"correlation": float("nan")}}, r"'fusion\.correlation' must be a finite number"),
    ({"flow": {"backend": "raft"}}, r"'flow\.backend' must be one of raft_small \| raft_large \| dis"),
    ({"flow": {"device": "gpu"}}, r"'flow\.device' must be auto, cpu"),
    ({"features": {"resolution": "big"}}, r"'features\.resolution' is not a resolution"),
    ({"tto": {"traj_check_intervals": [2, 0]}}, r"'tto\.traj_check_intervals' must be in \[1, 1000000000\], got 0"),
    ({"chain": {"intervals": [1, 0]}}, r"chain\.intervals: 0 must be >= 1"),
    ({"seed": -1}, r"'seed' must be in \[0, 4294967295\]"),
])
def test_values_out_of_range_raise_when_the_config_is_read(change, message):
    with pytest.raises(ConfigError, match=message):
        load_config(change)


@pytest.mark.parametrize("change, message", [
    ({"klt": {"resolution": "100000x100000"}}, r"too large \(each side must be <= 8192\)"),
    ({"flow": {"resolution": "long100000"}}, r"too large \(at most long8192\)"),
    ({"klt": {"win_size": 100001}}, r"'klt\.win_size' must be in \[3, 1023\], got 100001"),
    ({"klt": {"win_size": 1e23}}, r"'klt\.win_size' must be int"),
    ({"klt": {"max_level": 40}}, r"'klt\.max_level' must be in \[0, 13\]"),
    ({"flow": {"memory_mb": 1e12}}, r"'flow\.memory_mb' must be in \[0, "),
    ({"flow": {"batch_size": 10 ** 6}}, r"'flow\.batch_size' must be in \[1, 1024\]"),
    ({"chain": {"query_frames_per_chunk": 10 ** 15}}, r"'chain\.query_frames_per_chunk' must be in \[1, "),
    ({"tto": {"window": 10 ** 5}}, r"'tto\.window' must be in \[1, 256\]"),
    ({"filters": {"mask": {"sam2": {"image_size": 100000}}}}, r"image_size' must be in \[16, 8192\]"),
    ({"refiner": {"window": 10 ** 6}}, r"'refiner\.window' must be in \[2, 1024\]"),
])
def test_size_like_settings_have_upper_bounds(change, message):
    """Resolutions, windows, batches, chunks and memory budgets beyond what a machine holds are refused when
    the config is read (they were OOM kills after 38 s)."""
    with pytest.raises(ConfigError, match=message):
        load_config(change)


def test_memory_bounds_come_from_this_machines_memory():
    from core.config_checks import MACHINE_BYTES
    limit = MACHINE_BYTES / 2 ** 20
    assert load_config({"flow": {"memory_mb": limit}}).flow.memory_mb == limit
    with pytest.raises(ConfigError, match="flow.memory_mb"):
        load_config({"flow": {"memory_mb": limit * 1.01}})
    n = MACHINE_BYTES // 64                            # the chunk's own bytes: 64 per (query, frame)
    assert load_config({"chain": {"query_frames_per_chunk": n}}).chain.query_frames_per_chunk == n
    with pytest.raises(ConfigError, match="query_frames_per_chunk"):
        load_config({"chain": {"query_frames_per_chunk": n + 1}})


def test_raft_correlation_memory_is_checked_before_any_flow():
    """RAFT's correlation pyramid, 4 (hw/64)^2 (1 + 1/4 + 1/16 + 1/64) bytes per pair, by hand at 854x480
    (padded to 856x480: 107 x 60 cells); a working size whose pyramid exceeds the machine is one ConfigError
    from FlowBank, before the network is even loaded."""
    import numpy as np
    from core.config_checks import MACHINE_BYTES
    from flow.bank import FlowBank
    from flow.raft import correlation_bytes
    assert correlation_bytes((480, 854), 1) == int(4 * 6420 ** 2 * 1.328125)
    assert correlation_bytes((480, 854), 4) == 4 * int(4 * 6420 ** 2 * 1.328125)
    assert correlation_bytes((8192, 8192), 1) > MACHINE_BYTES
    video = np.zeros((2, 64, 64, 3), np.uint8)
    flow = load_config({"flow": {"backend": "raft_small", "resolution": "8192x8192", "weights": "/nonexistent.pth"}}).flow
    with pytest.raises(ConfigError, match=r"flow.resolution 8192x8192 with flow.batch_size 4: RAFT's correlation "
                                          r"volume needs [0-9.]+ GB, this machine has"):
        FlowBank(video, flow)


def test_every_range_check_admits_the_shipped_values():
    """The checks are written beside the fields; each shipped config passes them (test_every_config_loads), and
    the bounds are sharp: the default's value at a closed bound is accepted."""
    assert load_config({"tto": {"steps": 0}, "chain": {"occlusion_threshold": 1.0}, "klt": {"win_size": 3}}).tto.steps == 0


@pytest.mark.parametrize("text, message", [
    ("", r"is empty"),
    ("# only a comment\n", r"is empty"),
    ("base: 5\n", r"'base' must be one YAML file name .*, got 5"),
    ("base: [a.yaml]\n", r"'base' must be one YAML file name .*, got \['a.yaml'\]"),
    ("base: /etc/passwd\n", r"'base' must be one YAML file name .*, got '/etc/passwd'"),
    ("base: ../../x.yaml\n", r"'base' must be one YAML file name .*, got '../../x.yaml'"),
    ("base: sub/mft.yaml\n", r"'base' must be one YAML file name"),
    ("base: nowhere.yaml\n", r"base nowhere.yaml is neither in .* nor in .*configs"),
    ("klt:\n  win_size: 5\n  max_level: 2\n  win_size: 7\n", r"line 4: key 'win_size' is given twice in one mapping"),
    ("klt:\n  win_size: " + "[" * 5000 + "]" * 5000 + "\n", r"nested deeper than 16 levels \(line 2\)"),
    ("klt:\n  win_size: " + "[" * 17 + "]" * 17 + "\n", r"nested deeper than 16 levels"),
    ("- a\n- b\n", r"top level must be a mapping"),
    ("flow: {batch_size: 2\n", r"is not valid YAML"),
])
def test_bad_config_files_raise_one_config_error(tmp_path, text, message):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(str(p))


def billion_laughs(levels):
    """YAML of ``levels`` nested anchors, each a list of nine aliases of the one before, under klt.win_size:
    9 ** levels strings once expanded, about 40 bytes per level on disk."""
    text = 'a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n'
    for i in range(1, levels):
        text += f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]\n"
    return text + f"klt:\n  win_size: *a{levels - 1}\n"


@pytest.mark.parametrize("levels", [6, 9])
def test_yaml_aliases_that_expand_beyond_the_limit_are_refused_unexpanded(tmp_path, levels):
    """A 'billion laughs' is refused from its node graph: one short message, no expansion (9 levels would
    be 3.9e8 strings, gigabytes, if built)."""
    p = tmp_path / "laughs.yaml"
    p.write_text(billion_laughs(levels))
    assert p.stat().st_size < 600
    with pytest.raises(ConfigError, match=r"expands to more than 20000 values") as e:
        load_config(str(p))
    assert len(str(e.value)) < 300


def test_aliases_within_the_limit_and_a_deep_alias(tmp_path):
    """Aliases that expand to few values are ordinary YAML; one that nests a 15-deep anchor two levels further
    is refused by the depth it expands to."""
    p = tmp_path / "alias.yaml"
    p.write_text("sizes: &s 9\nklt:\n  win_size: *s\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'sizes'"):      # aliases read; the key is unknown
        load_config(str(p))
    p.write_text("klt:\n  win_size: &w 9\n  max_level: *w\n")
    assert load_config(str(p)).klt.max_level == 9
    p.write_text("a: &d " + "[" * 15 + "]" * 15 + "\nklt:\n  win_size: [[*d]]\n")
    with pytest.raises(ConfigError, match=r"the anchor of line 1, used at depth 4, nests deeper than 16 levels"):
        load_config(str(p))


def test_error_messages_quote_at_most_a_few_hundred_characters_of_a_value(tmp_path):
    p = tmp_path / "long.yaml"
    for text in ("klt:\n  resolution: " + "x" * 5000 + "\n", "klt:\n  win_size: " + "7" * 5000 + "a\n",
                 "chain:\n  intervals: [" + "z" * 5000 + "]\n"):
        p.write_text(text)
        with pytest.raises(ConfigError) as e:
            load_config(str(p))
        assert len(str(e.value)) < 600 and "characters)" in str(e.value), str(e.value)[:100]


def test_a_config_larger_than_a_megabyte_is_refused_unread(tmp_path):
    p = tmp_path / "big.yaml"
    p.write_text("# " + "x" * (1 << 20) + "\n")
    with pytest.raises(ConfigError, match=r"larger than 1024 kB"):
        load_config(str(p))


def test_base_is_a_file_name_in_the_configs_folder_or_in_configs(tmp_path):
    """``base: mft.yaml`` from any folder is configs/mft.yaml; a file of that name beside the config wins."""
    p = tmp_path / "x.yaml"
    p.write_text("base: mft.yaml\n")
    assert load_config(str(p)).to_dict() == dict(load_config(os.path.join(CONFIG_DIR, "mft.yaml")).to_dict(),
                                                   name="x")
    (tmp_path / "mft.yaml").write_text("klt:\n  win_size: 11\n")
    assert load_config(str(p)).klt.win_size == 11 and load_config(str(p)).tto.enabled


def test_a_config_that_is_not_utf8_raises(tmp_path):
    p = tmp_path / "latin1.yaml"
    p.write_bytes("# r\xe9glages\nflow:\n  batch_size: 2\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"is not UTF-8 text"):
        load_config(str(p))
