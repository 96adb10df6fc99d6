"""Python API, configs, coordinates, video reading, dataset readers, and the baselines on real data."""
import os

import cv2
import numpy as np
import pytest

from conftest import BADJA, DAVIS, ROOT, need
from eval.datasets import BadjaVideo, TapVidVideo, open_video_folder
from pitrack import ConfigError, InputError, Tracker, load_config, load_video
from core.coords import parse_resolution, scale_xy


def test_config_base_and_errors(tmp_path):
    (tmp_path / "base.yaml").write_text("tracker: klt\nklt:\n  win_size: 15\n  max_level: 2\n")
    (tmp_path / "child.yaml").write_text("base: base.yaml\nklt:\n  win_size: 9\n")
    c = load_config(str(tmp_path / "child.yaml"))
    assert (c.tracker, c.klt.win_size, c.klt.max_level, c.name) == ("klt", 9, 2, "child")
    assert c.fingerprint() != load_config(str(tmp_path / "base.yaml")).fingerprint()
    with pytest.raises(ConfigError, match="unknown config key 'klt.foo'"):
        load_config({"klt": {"foo": 1}})
    with pytest.raises(ConfigError, match="must be float"):
        load_config({"klt": {"fb_threshold": "x"}})
    assert load_config({"klt": {"fb_threshold": 2}}).klt.fb_threshold == 2.0   # int -> float is fine


def test_resolution_and_scaling_round_trip():
    assert parse_resolution("native", (480, 854)) == (480, 854)
    assert parse_resolution("256x256", (480, 854)) == (256, 256)
    assert parse_resolution("512x288", (480, 854)) == (288, 512)
    assert parse_resolution("long512", (480, 854)) == (288, 512)
    with pytest.raises(ConfigError):
        parse_resolution("big", (480, 854))
    xy = np.array([[0.0, 0.0], [854.0, 480.0], [0.5, 0.5]])
    s = scale_xy(xy, (480, 854), (256, 256))
    assert np.allclose(s[1], [256, 256]) and np.allclose(s[2], [0.5 * 256 / 854, 0.5 * 256 / 480])
    assert np.allclose(scale_xy(s, (256, 256), (480, 854)), xy, atol=1e-4)


def test_video_file_and_folder_read_the_same(tmp_path, synthetic_clip):
    frames = load_video(os.path.join(synthetic_clip, "frames"))
    assert frames.dtype == np.uint8 and frames.shape == (24, 120, 160, 3)
    path = str(tmp_path / "clip.avi")
    w = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), 10, (160, 120))
    for f in frames:
        w.write(f[..., ::-1])
    w.release()
    v = load_video(path)
    assert v.shape == frames.shape
    assert np.abs(v.astype(int) - frames).mean() < 12   # lossy codec, same picture, RGB order kept
    assert load_video(path, max_frames=5).shape[0] == 5


def test_api_checks_input():
    tracker = Tracker.from_config(os.path.join(ROOT, "configs", "baselines", "static.yaml"))
    video = np.zeros((3, 10, 12, 3), np.uint8)
    tracks, visible, sigma = tracker(video, [[1, 12, 10]])       # the far corner is inside (corner convention)
    assert tracks.shape == (1, 3, 2) and visible.all() and sigma.shape == (1, 3)
    with pytest.raises(InputError, match="outside"):
        tracker(video, [[1, 12.5, 1]])
    with pytest.raises(InputError, match="uint8"):
        tracker(video.astype(float), [[0, 1, 1]])
    with pytest.raises(InputError, match="frame index"):
        tracker(video, [[0.5, 1, 1]])


def test_klt_beats_static_on_known_motion(synthetic_clip):
    video = open_video_folder(synthetic_clip)
    frames, (q, _) = video.load_frames(), video.queries("first")
    scores = {}
    for name in ("static", "klt"):
        r = Tracker.from_config(os.path.join(ROOT, "configs", "baselines", f"{name}.yaml"), progress=False)(frames, q)
        scores[name] = video.score(r.tracks, r.visible, "first")
    assert scores["klt"]["delta_avg"] > scores["static"]["delta_avg"] + 0.08, scores
    assert scores["klt"]["AJ"] > scores["static"]["AJ"] + 0.05, scores


def test_datasets_read_shared_data():
    v = TapVidVideo.from_folder(need(os.path.join(DAVIS, "blackswan")))
    qf, idx = v.queries("first")
    qs, idxs = v.queries("strided")
    assert qf.shape == (v.points.shape[0], 3) and np.all(np.diff(idx) == 1)
    assert np.all(qs[:, 0] % 5 == 0) and np.all(np.diff(idxs) >= 0)
    for (t, x, y), i in zip(qs, idxs):     # each strided query is a visible ground-truth point
        assert not v.occluded[i, int(t)] and np.allclose([x, y], v.points[i, int(t)])
    b = BadjaVideo.from_folder(need(os.path.join(BADJA, "dog")))
    q, joints = b.queries()
    assert np.all(q[:, 0] == b.frames[0]) and (b.mask_areas() > 0).all()
    perfect = np.zeros((q.shape[0], b.num_frames, 2), np.float32)
    perfect[:, b.frames] = b.points[joints]
    assert b.score(perfect)["PCK_seg"] == 1.0


def test_klt_beats_static_on_real_video():
    """A real DAVIS clip scored by eval: KLT must clear the static floor."""
    v = TapVidVideo.from_folder(need(os.path.join(DAVIS, "car-shadow")))
    frames, (q, _) = v.load_frames(), v.queries("first")
    aj = {}
    for name in ("static", "klt"):
        r = Tracker.from_config(os.path.join(ROOT, "configs", "baselines", f"{name}.yaml"), progress=False)(frames, q)
        aj[name] = v.score(r.tracks, r.visible, "first")["AJ"]
    assert aj["klt"] > aj["static"] + 0.05, aj


def test_every_shipped_config_loads():
    import glob
    paths = glob.glob(os.path.join(ROOT, "configs", "**", "*.yaml"), recursive=True)
    assert len(paths) >= 8
    for p in paths:
        c = load_config(p)
        Tracker(c)                      # the tracker name is known too
    d = load_config(os.path.join(ROOT, "configs", "ablations", "no_backward.yaml"))
    assert not d.fusion.backward and d.fusion.probabilistic and d.flow.backend == "dis"
