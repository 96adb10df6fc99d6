"""Dense tracking (Tracker.dense, run_video.py --dense), sampling a dense result at query points
(eval.dense.sample_dense) and the pictures (pitrack.viz)."""
import os

import cv2
import numpy as np
import pytest

from conftest import ROOT
from test_cli import STATIC, run_video

MFT = os.path.join(ROOT, "configs", "mft.yaml")


def translating_clip(T=8, hw=(64, 96), v=(0.8, -0.5), seed=3):
    """A texture translating by ``-v`` px per frame: pixel x of frame 0 is at x − v·t in frame t."""
    from eval.synthetic import _bilinear, smooth_texture
    rng = np.random.default_rng(seed)
    H, W = hw
    tex = smooth_texture(rng, H + 40, W + 40)
    ys, xs = np.mgrid[0:H, 0:W].astype(np.float32)
    frames = [_bilinear(tex, xs + 20 + v[0] * t, ys + 20 + v[1] * t) for t in range(T)]
    return np.clip(np.stack(frames), 0, 255).astype(np.uint8), np.array(v, np.float32)


# --- the grid and the result --------------------------------------------------------------------------------

def test_dense_grid_pixel_centres_and_shapes():
    from pitrack import Tracker
    from pitrack.tracker import dense_grid
    xs, ys = dense_grid(4, 6, 10)
    assert np.allclose(xs, [2, 6]) and np.allclose(ys, [2])           # x = 4j + 2 < 10, y = 4i + 2 < 6
    xs, ys = dense_grid(1, 2, 3)
    assert np.allclose(xs, [0.5, 1.5, 2.5]) and np.allclose(ys, [0.5, 1.5])
    xs, ys = dense_grid(3, 9, 10)
    assert np.allclose(xs, [1.5, 4.5, 7.5]) and np.allclose(ys, [1.5, 4.5, 7.5])
    video, _ = translating_clip(T=5, hw=(20, 30))
    d = Tracker(STATIC, progress=False, use_cache=False).dense(video, query_frame=2, stride=4)
    assert d.tracks.shape == (5, 7, 5, 2) and d.tracks.dtype == np.float16
    assert d.visible.shape == (5, 7, 5) and d.visible.dtype == bool
    assert d.sigma.shape == (5, 7, 5) and d.sigma.dtype == np.float16
    assert d.query_frame == 2 and d.stride == 4
    # the static tracker stays at the query: point (i, j) is at (4j + 2, 4i + 2) in every frame
    assert np.allclose(d.tracks[1, 3, :, 0], 14) and np.allclose(d.tracks[1, 3, :, 1], 6)


@pytest.mark.parametrize("frame,stride,needle", [(5, 4, "query frame"), (0, 0, "stride"), (0, 2.5, "stride"),
                                                  (0, 40, "larger than")])
def test_dense_bad_arguments(frame, stride, needle):
    from pitrack import InputError, Tracker
    video, _ = translating_clip(T=5, hw=(20, 30))
    with pytest.raises(InputError, match=needle):
        Tracker(STATIC, progress=False, use_cache=False).dense(video, query_frame=frame, stride=stride)


def test_dense_tracks_known_motion_through_the_pipeline():
    """mft.yaml (DIS flow chains through the pitrack pipeline) on a translating texture: every grid point
    that stays inside moves by −v·t."""
    from pitrack import Tracker
    T = 8
    video, v = translating_clip(T=T)
    d = Tracker(MFT, progress=False, use_cache=False).dense(video, query_frame=0, stride=4)
    H, W = video.shape[1:3]
    start = d.tracks[:, :, 0].astype(np.float32)
    truth = start[:, :, None] - v * np.arange(T)[:, None]                    # [Hs, Ws, T, 2]
    inside = np.all((truth[..., 0] > 4) & (truth[..., 0] < W - 4) & (truth[..., 1] > 4) & (truth[..., 1] < H - 4), -1)
    err = np.linalg.norm(d.tracks.astype(np.float32) - truth, axis=-1)[inside]
    assert inside.sum() > 150
    assert np.median(err) < 0.3 and np.percentile(err, 95) < 1.0, (np.median(err), np.percentile(err, 95))
    assert d.visible[inside].mean() > 0.95


def test_query_chunks_give_the_same_tracks():
    """Tracking in chunks of queries (bounded memory) gives what one chunk gives."""
    from pitrack import Tracker, load_config
    video, _ = translating_clip(T=6, hw=(32, 48))
    one = Tracker(load_config(MFT), progress=False, use_cache=False)
    many = Tracker(load_config(MFT, overrides={"chain": {"query_frames_per_chunk": 6 * 20}}), progress=False,
                   use_cache=False)
    a, b = one.dense(video, 0, 4), many.dense(video, 0, 4)
    assert one.stats["query_chunks"] == 1 and many.stats["query_chunks"] == 5      # 96 points, 20 per chunk
    np.testing.assert_allclose(a.tracks.astype(np.float32), b.tracks.astype(np.float32), atol=1e-3)
    np.testing.assert_array_equal(a.visible, b.visible)
    # every chunk's reads are planned, so within the memory budget each pair is computed once for all chunks
    assert many.stats["flow_pairs_computed"] == one.stats["flow_pairs_computed"] > 0


# --- sampling a dense result at query points ----------------------------------------------------------------

def test_sample_dense_bilinear_between_grid_points():
    from eval.dense import sample_dense
    from pitrack import DenseResult
    S, Hs, Ws, T = 4, 2, 3, 2
    gx, gy = np.meshgrid(S * np.arange(Ws) + 2.0, S * np.arange(Hs) + 2.0)
    start = np.stack([gx, gy], -1)
    disp = np.zeros((Hs, Ws, T, 2))
    disp[:, :, 1, 0] = np.arange(Ws)[None] * 2.0          # frame 1: dx = 0, 2, 4 along a row
    disp[1, :, 1, 1] = 8.0                                  # dy = 8 in the second row
    vis = np.ones((Hs, Ws, T), bool)
    vis[1, 2, 1] = False
    sig = np.ones((Hs, Ws, T))
    sig[:, :, 1] = 3.0
    dense = DenseResult((start[:, :, None] + disp).astype(np.float16), vis, sig.astype(np.float16), 0, S)
    # (3, 3): a quarter of the way from (2, 2) to (6, 2), a quarter from (2, 2) to (2, 6)
    tr, v, s = sample_dense(dense, np.array([[3.0, 3.0], [9.0, 5.0]]))
    assert np.allclose(tr[0, 0], [3, 3]) and np.allclose(tr[0, 1], [3 + 0.5, 3 + 2.0])
    # (9, 5): between columns 1 and 2 (f = 0.75) and rows 0 and 1 (f = 0.75): dx = 2 + 0.75·2, dy = 6
    assert np.allclose(tr[1, 1], [9 + 3.5, 5 + 6.0])
    assert v[0].all() and not v[1, 1]                       # the occluded corner has weight 0.5625 ≥ 0.5
    assert np.allclose(s[:, 1], 3.0)


# --- pictures -------------------------------------------------------------------------------------------------

def test_draw_tracks_colours_at_the_track_positions():
    from pitrack.viz import draw_tracks, track_colors
    T, H, W = 6, 64, 96
    video = np.zeros((T, H, W, 3), np.uint8)
    xs = 10.5 + 6 * np.arange(T)
    tracks = np.zeros((2, T, 2))
    tracks[0, :, 0], tracks[0, :, 1] = xs, 20.5                     # moving right, visible
    tracks[1, :, 0], tracks[1, :, 1] = 60.5, 50.5                   # standing, occluded from frame 3
    visible = np.ones((2, T), bool)
    visible[1, 3:] = False
    queries = np.array([[0, 10.5, 20.5], [0, 60.5, 50.5]], np.float32)
    out = draw_tracks(video, tracks, visible, queries, tail=4)
    colors = track_colors(queries)
    assert not np.array_equal(colors[0], colors[1])
    for t in range(T):
        assert np.array_equal(out[t, 20, int(xs[t])], colors[0])    # filled dot at the track
    assert np.array_equal(out[2, 50, 60], colors[1])                # visible: filled
    assert out[4, 50, 60].max() < 40                                # occluded: hollow centre ...
    assert out[4, 50, 60 - 2:60 + 3].max() > 100                    # ... inside a drawn ring
    tail = out[5, 20, int(xs[2]) + 1]                               # the trail behind the moving point
    assert tail.max() > 100 and np.argmax(tail) == np.argmax(colors[0])
    assert out[5, 20, int(xs[0])].max() == 0                        # older than the tail: not drawn


def test_written_video_shows_the_tracks(tmp_path):
    from pitrack.viz import track_colors, write_overlay
    T, H, W = 4, 160, 240
    video = np.full((T, H, W, 3), 40, np.uint8)
    tracks = np.tile(np.array([[60.5, 80.5], [180.5, 80.5]])[:, None], (1, T, 1))
    visible = np.ones((2, T), bool)
    queries = np.array([[0, 60.5, 10.0], [0, 180.5, 150.0]], np.float32)
    path = tmp_path / "o.mp4"
    write_overlay(str(path), video, tracks, visible, queries)
    cap = cv2.VideoCapture(str(path))
    ok, frame = cap.read()
    assert ok and frame.shape == (H, W, 3)
    rgb = frame[..., ::-1].astype(int)
    for n, (x, y) in enumerate([(60, 80), (180, 80)]):
        got = rgb[y - 1:y + 2, x - 1:x + 2].reshape(-1, 3).mean(0)
        want = track_colors(queries)[n].astype(int)
        assert np.abs(got - want).max() < 60, (got, want)
    assert np.abs(rgb[20, 20] - 40).max() < 10                       # elsewhere: the frame


def test_flow_colours_and_dense_picture():
    from pitrack import DenseResult
    from pitrack.viz import OCCLUDED_DIM, draw_dense, flow_colors
    assert np.array_equal(flow_colors(np.zeros((1, 2))), [[255, 255, 255]])          # no motion: white
    wheel = flow_colors(np.array([[1.0, 0], [0, 1.0], [-1.0, 0], [0, -1.0]]))
    assert len({tuple(c) for c in wheel}) == 4 and wheel.min() < 50                   # four directions, saturated
    assert np.array_equal(flow_colors(np.array([[2.0, 0]]), max_norm=4.0)[0],
                          np.round(255 - 0.5 * (255 - flow_colors(np.array([[1.0, 0]]))[0].astype(float))))
    T, H, W, S = 3, 16, 24, 4
    gx, gy = np.meshgrid(S * np.arange(W // S) + 2.0, S * np.arange(H // S) + 2.0)
    start = np.stack([gx, gy], -1)[:, :, None]
    tracks = np.repeat(start, T, 2) + np.array([5.0, 0])[None, None, None] * np.arange(T)[None, None, :, None]
    vis = np.ones((H // S, W // S, T), bool)
    vis[0, 0, 2] = False
    dense = DenseResult(tracks.astype(np.float16), vis, np.ones_like(vis, np.float16), 0, S)
    out = draw_dense(np.zeros((T, H, W, 3), np.uint8), dense, points=4)
    assert out.shape == (T, H, 2 * W, 3)
    right = flow_colors(np.array([[10.0, 0]]), 10.0)[0]
    assert np.array_equal(out[2, 10, W + 10], right)                                   # grid cell (2, 2)
    assert np.array_equal(out[2, 1, W + 1], (right * np.float32(OCCLUDED_DIM)).astype(np.uint8))
    assert np.array_equal(out[0, 10, W + 10], [255, 255, 255])                         # frame 0: no motion


# --- command line ------------------------------------------------------------------------------------------

def test_cli_dense_writes_contract_and_picture(tmp_path):
    video, _ = translating_clip(T=5, hw=(24, 40))
    folder = tmp_path / "frames"
    folder.mkdir()
    for t, f in enumerate(video):
        cv2.imwrite(str(folder / f"{t:03d}.png"), f[..., ::-1])
    out, viz = tmp_path / "d.npz", tmp_path / "d.mp4"
    r = run_video("--video", str(folder), "--dense", "4", "--query-frame", "1", "--config", STATIC,
                  "--out", str(out), "--viz", str(viz))
    assert r.returncode == 0, r.stderr
    d = np.load(out)
    assert d["tracks"].shape == (6, 10, 5, 2) and d["tracks"].dtype == np.float16
    assert d["visible"].shape == (6, 10, 5) and d["sigma"].dtype == np.float16
    assert int(d["query_frame"]) == 1 and int(d["stride"]) == 4
    cap = cv2.VideoCapture(str(viz))
    assert cap.isOpened() and int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 5
    assert int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)) == 80
    for args, needle in [(["--dense", "0"], "--dense: must be >= 1"), (["--dense", "4", "--query-frame", "9"], "--query-frame"),
                         (["--dense", "4", "--viz", str(tmp_path / "x.gif")], "--viz")]:
        bad = tmp_path / "bad.npz"
        r = run_video("--video", str(folder), "--config", STATIC, "--out", str(bad), *args)
        assert r.returncode == 2 and needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert not bad.exists()


def test_eval_dense_scores_dense_beside_sparse(tmp_path, synthetic_clip):
    """The static tracker stays at the query, so its dense result sampled at the query points is the sparse
    result: the same scores."""
    import json
    from test_cli import run
    data = os.path.dirname(synthetic_clip)
    r = run("-m", "eval.dense", "--config", STATIC, "--data", data, "--stride", "4", "--out", str(tmp_path / "o"))
    assert r.returncode == 0, r.stderr
    name = os.path.basename(synthetic_clip)
    s, d = (json.load(open(tmp_path / "o" / f"{name}-{k}.json")) for k in ("sparse", "dense"))
    assert s["num_queries"] > 0 and d["points"] == 30 * 40
    assert abs(s["metrics"]["AJ"] - d["metrics"]["AJ"]) < 1e-6
    assert "| **mean (1)** |" in (tmp_path / "o" / "table.md").read_text()
