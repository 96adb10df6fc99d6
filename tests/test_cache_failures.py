"""A cache that cannot be written or read (read-only folder, a file where a folder should be, disk full, no
permission) costs one warning and the run goes on without it, with the result of a run without the cache.

Root ignores permission bits, so the "cannot be written" cases use a folder under a regular FILE (which fails
for everyone); the chmod 0o555 case runs only for other users.
"""
import errno
import os
import warnings

import numpy as np
import pytest
import torch

from features.cache import video_features
from pitrack.config import default_section, load_config

T, HW = 6, (60, 80)


def _under_file(tmp_path):
    """A cache folder that cannot be created: its parent is a regular file."""
    (tmp_path / "a_file").write_text("not a folder")
    return str(tmp_path / "a_file" / "cache")


@pytest.fixture(params=["under_file", "read_only"])
def bad_folder(request, tmp_path):
    if request.param == "under_file":
        yield _under_file(tmp_path)
        return
    if os.geteuid() == 0:
        pytest.skip("root ignores permission bits")
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    yield str(folder / "cache")
    folder.chmod(0o755)


def _cache_warnings(fn, *args, **kwargs):
    """(fn's result, the messages of the warnings it emitted that mention a cache)."""
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        out = fn(*args, **kwargs)
    return out, [str(x.message) for x in w if "cach" in str(x.message) or "checkpoint" in str(x.message)]


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _no_permission(*args, **kwargs):
    raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))


def _tmp_files(root):
    return [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs if f.startswith(".tmp-")]


# --- features ------------------------------------------------------------------------------------------

class TinyBackbone:
    """4×4 average pooling of the frame (stride 4, offset 1.5): features in no time."""
    name, stride, offset, channels = "tiny", 4, 1.5, 3

    def cache_id(self):
        return {"backbone": self.name, "weights": "none"}

    def __call__(self, frames):
        x = torch.from_numpy(np.asarray(frames)).permute(0, 3, 1, 2).float()
        return torch.nn.functional.avg_pool2d(x, 4)


def _features(cache_dir):
    video = np.random.default_rng(0).integers(0, 255, (5, 40, 60, 3), dtype=np.uint8)
    return video_features(video, default_section("features", resolution="64x48", batch_size=2), cache_dir,
                          backbone=TinyBackbone())


def test_features_with_an_unwritable_cache_folder(bad_folder):
    ref = _features(None)
    fs, msgs = _cache_warnings(_features, bad_folder)
    assert len(msgs) == 1 and "cannot be written" in msgs[0] and bad_folder in msgs[0], msgs
    assert torch.equal(fs.feats, ref.feats) and fs.stats["backbone_evals"] == 5
    _, msgs = _cache_warnings(_features, bad_folder)              # once per process, not once per file
    assert msgs == []


def test_features_on_a_full_disk(tmp_path, monkeypatch):
    ref = _features(None)
    monkeypatch.setattr(np, "savez", _no_space)
    fs, msgs = _cache_warnings(_features, str(tmp_path))
    assert len(msgs) == 1 and "No space left on device" in msgs[0] and "continuing" in msgs[0], msgs
    assert torch.equal(fs.feats, ref.feats) and _tmp_files(tmp_path) == []
    assert not list((tmp_path / "features").glob("*.npz"))


def test_unreadable_feature_file_is_a_miss_and_is_kept(tmp_path, monkeypatch):
    ref = _features(str(tmp_path))
    (path,) = (tmp_path / "features").glob("*.npz")
    monkeypatch.setattr(np, "load", _no_permission)
    fs, msgs = _cache_warnings(_features, str(tmp_path))
    assert len(msgs) == 1 and "cannot be read" in msgs[0] and "Permission denied" in msgs[0], msgs
    assert fs.stats["backbone_evals"] == 5 and torch.equal(fs.feats, ref.feats) and path.exists()


def test_a_bug_in_the_writer_still_surfaces(tmp_path, monkeypatch):
    monkeypatch.setattr(np, "savez", lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        _features(str(tmp_path))
    assert _tmp_files(tmp_path) == []


# --- TTO checkpoints -----------------------------------------------------------------------------------

def _net():
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    return net, torch.optim.Adam(net.parameters())


def test_checkpoint_that_cannot_be_written(tmp_path, monkeypatch):
    from tto.train import save_checkpoint
    net, opt = _net()
    path = os.path.join(_under_file(tmp_path), "tto", "k.pt")
    ok, msgs = _cache_warnings(save_checkpoint, path, "k", net, opt, 1, torch.zeros(1, 2))
    assert ok is False and len(msgs) == 1 and "TTO checkpoint" in msgs[0], msgs
    monkeypatch.setattr(torch, "save", _no_space)
    path = str(tmp_path / "tto" / "k.pt")
    ok, msgs = _cache_warnings(save_checkpoint, path, "k", net, opt, 1, torch.zeros(1, 2))
    assert ok is False and len(msgs) == 1 and "No space left on device" in msgs[0], msgs
    assert not os.path.exists(path) and _tmp_files(tmp_path) == []


def test_unreadable_checkpoint_is_a_miss_and_a_rejected_one_leaves_the_model_alone(tmp_path, monkeypatch):
    from tto.train import load_checkpoint, save_checkpoint
    net, opt = _net()
    path = str(tmp_path / "k.pt")
    with torch.no_grad():
        net.weight[0, 0] = float("nan")
    assert save_checkpoint(path, "k", net, opt, 1, torch.zeros(1, 2))
    fresh, fresh_opt = _net()
    init = {k: v.clone() for k, v in fresh.state_dict().items()}
    # non-finite weights: rejected and deleted, and the model is as it was (not NaN)
    got, msgs = _cache_warnings(load_checkpoint, path, "k", fresh, fresh_opt, 10)
    assert got is None and any("rejected" in m for m in msgs) and not os.path.exists(path)
    assert all(torch.equal(v, init[k]) for k, v in fresh.state_dict().items())
    assert save_checkpoint(path, "k", *_net(), 1, torch.zeros(1, 2))
    monkeypatch.setattr(torch, "load", _no_permission)
    got, msgs = _cache_warnings(load_checkpoint, path, "k", fresh, fresh_opt, 10)
    assert got is None and len(msgs) == 1 and "cannot be read" in msgs[0] and os.path.exists(path), msgs


# --- SAM2 masks ----------------------------------------------------------------------------------------

def test_mask_cache_that_cannot_be_written_or_read(tmp_path, monkeypatch):
    from filters import sam2_masks as sm
    from filters.masks import MaskSet
    ms = MaskSet.from_masks(np.random.default_rng(0).random((2, 3, 8, 12)) > 0.5, [0, 1, 1])
    ok, msgs = _cache_warnings(sm._save_cache, os.path.join(_under_file(tmp_path), "masks", "k.npz"), "k", ms)
    assert ok is False and len(msgs) == 1 and "SAM2 mask cache file" in msgs[0], msgs
    path = str(tmp_path / "masks" / "k.npz")
    assert sm._save_cache(path, "k", ms)
    monkeypatch.setattr(np, "load", _no_permission)
    got, msgs = _cache_warnings(sm._load_cache, path, "k", 3, 3, (8, 12))
    assert got is None and len(msgs) == 1 and "cannot be read" in msgs[0] and os.path.exists(path), msgs


# --- the tracker ---------------------------------------------------------------------------------------

def _track(**kwargs):
    """The pitrack tracker with a cheap config (DIS flow, random-init DINOv2, 4 TTO steps) on a tiny clip."""
    from eval.synthetic import make_clip
    from pitrack import Tracker
    video, points, _ = make_clip(num_frames=T, size_hw=HW, seed=2, num_points=6)
    queries = np.concatenate([np.zeros((6, 1)), points[:, 0]], 1).astype(np.float32)
    config = load_config({"tracker": "pitrack", "seed": 3, "flow": {"backend": "dis", "resolution": "native"},
                          "features": {"backbone": "dinov2_vits14", "random_init": True, "resolution": "112x84"},
                          "filters": {"mask": {"source": "none"}, "similarity": {"source": "tto"}},
                          "tto": {"enabled": True, "steps": 4, "warmup_steps": 1, "frames_per_step": 2,
                                  "traj_per_pair": 16, "buddies_per_pair": 16, "cycle_per_pair": 8,
                                  "checkpoint_every": 2, "threads": 1}})
    return Tracker(config, progress=False, **kwargs)(video, queries)


@pytest.fixture(scope="module")
def uncached():
    return _track(use_cache=False)


def _same(a, b):
    return all(np.array_equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("how", ["env", "argument"])
def test_tracker_with_an_unwritable_cache_root(tmp_path, monkeypatch, uncached, how):
    folder = _under_file(tmp_path)
    if how == "env":
        monkeypatch.setenv("PITRACK_CACHE", folder)
        result, msgs = _cache_warnings(_track)
    else:
        result, msgs = _cache_warnings(_track, cache_dir=os.path.join(folder, "video"))
    assert len(msgs) == 1 and "cannot be written" in msgs[0] and "running without the cache" in msgs[0], msgs
    assert _same(result, uncached)


def test_tracker_on_a_full_disk(tmp_path, monkeypatch, uncached):
    import tempfile
    real = tempfile.mkstemp

    def mkstemp(*args, dir=None, **kwargs):                    # no file can be created in the cache
        if dir is not None and str(tmp_path) in os.fspath(dir):
            _no_space()
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    result, msgs = _cache_warnings(_track, cache_dir=str(tmp_path / "video"))
    assert len(msgs) == 1 and "No space left on device" in msgs[0], msgs
    assert _same(result, uncached)


def test_tracker_when_the_disk_fills_during_the_run(tmp_path, monkeypatch, uncached):
    """The cache folder probes fine, then the feature file and every TTO checkpoint fail to be written."""
    monkeypatch.setattr(np, "savez", _no_space)
    monkeypatch.setattr(torch, "save", _no_space)
    result, msgs = _cache_warnings(_track, cache_dir=str(tmp_path / "video"))
    assert len(msgs) == 2 and all("No space left on device" in m for m in msgs), msgs
    assert any("feature cache file" in m for m in msgs) and any("TTO checkpoint" in m for m in msgs)
    assert _same(result, uncached) and _tmp_files(tmp_path) == []
