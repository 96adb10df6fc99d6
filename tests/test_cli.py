"""run_video.py, eval.score and eval.bench from the command line: the contract and every error path."""
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from conftest import ROOT

KLT = os.path.join(ROOT, "configs", "baselines", "klt.yaml")
STATIC = os.path.join(ROOT, "configs", "baselines", "static.yaml")


def run(*args, cwd=ROOT):
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def run_video(*args):
    return run(os.path.join(ROOT, "run_video.py"), "--quiet", *args)


@pytest.fixture
def frames(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    rng = np.random.default_rng(0)
    base = cv2.GaussianBlur(rng.integers(0, 255, (72, 104, 3)).astype(np.uint8), (0, 0), 2)
    for t in range(6):
        cv2.imwrite(str(folder / f"{t:03d}.png"), np.roll(base, t, axis=1)[4:68, 4:100])
    return folder


def save_queries(tmp_path, q, name="q.npy"):
    p = tmp_path / name
    np.save(p, np.asarray(q, np.float32))
    return str(p)


def test_cli_writes_contract(tmp_path, frames):
    q = save_queries(tmp_path, [[0, 40.5, 30.5], [2, 20, 10]])
    out, viz = tmp_path / "pred.npz", tmp_path / "v.mp4"
    r = run_video("--video", str(frames), "--queries", q, "--config", KLT, "--out", str(out), "--viz", str(viz))
    assert r.returncode == 0, r.stderr
    d = np.load(out)
    assert d["tracks"].dtype == np.float32 and d["tracks"].shape == (2, 6, 2)
    assert d["visible"].dtype == bool and d["visible"].shape == (2, 6)
    assert d["sigma"].dtype == np.float32 and d["sigma"].shape == (2, 6)
    assert d["queries"].shape == (2, 3)
    # the texture moves 1 px right per frame: the KLT track follows it
    assert np.allclose(d["tracks"][0, 5] - d["tracks"][0, 0], [5, 0], atol=0.3)
    assert np.allclose(d["tracks"][1, 2], [20, 10], atol=1e-4)  # at its query frame, the query itself
    cap = cv2.VideoCapture(str(viz))
    assert cap.isOpened() and int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 6
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp")]


def test_cli_grid(tmp_path, frames):
    out = tmp_path / "g.npz"
    r = run_video("--video", str(frames), "--grid", "3", "--grid-frame", "1", "--config", STATIC, "--out", str(out))
    assert r.returncode == 0, r.stderr
    q = np.load(out)["queries"]
    assert q.shape == (9, 3) and np.all(q[:, 0] == 1)
    assert np.allclose(sorted(set(q[:, 1])), [16, 48, 80])  # cell centres of a 96-wide frame


def write_config(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return str(p)


@pytest.mark.parametrize("case,needle", [
    ("missing_video", "not found"),
    ("empty_folder", "no .jpg/.png"),
    ("bad_video_file", "cannot open"),
    ("mixed_sizes", "one size"),
    ("query_outside_frame", "outside"),
    ("query_bad_time", "frame index"),
    ("query_wrong_shape", "shape [N, 3]"),
    ("query_not_npy", "cannot read queries"),
    ("unknown_config_key", "unknown config key 'klt.window'"),
    ("unknown_tracker", "unknown tracker"),
    ("wrong_type", "must be int"),
    ("grid_frame", "--grid-frame"),
])
def test_cli_bad_input_one_line_exit_2(tmp_path, frames, case, needle):
    video, q, cfg, extra = str(frames), save_queries(tmp_path, [[0, 5, 5]]), KLT, []
    if case == "missing_video":
        video = str(tmp_path / "nope")
    elif case == "empty_folder":
        video = str(tmp_path / "empty")
        os.mkdir(video)
    elif case == "bad_video_file":
        video = str(tmp_path / "v.mp4")
        open(video, "w").write("not a video")
    elif case == "mixed_sizes":
        cv2.imwrite(str(frames / "999.png"), np.zeros((10, 10, 3), np.uint8))
    elif case == "query_outside_frame":
        q = save_queries(tmp_path, [[0, 5, 5], [1, 500, 5]])
    elif case == "query_bad_time":
        q = save_queries(tmp_path, [[6, 5, 5]])
    elif case == "query_wrong_shape":
        q = save_queries(tmp_path, [[0, 5]])
    elif case == "query_not_npy":
        q = str(tmp_path / "q.npy")
        open(q, "w").write("garbage")
    elif case == "unknown_config_key":
        cfg = write_config(tmp_path, "tracker: klt\nklt:\n  window: 3\n")
    elif case == "unknown_tracker":
        cfg = write_config(tmp_path, "tracker: magic\n")
    elif case == "wrong_type":
        cfg = write_config(tmp_path, "klt:\n  win_size: big\n")
    out = tmp_path / "pred.npz"
    args = ["--video", video, "--config", cfg, "--out", str(out)]
    if case == "grid_frame":
        args += ["--grid", "2", "--grid-frame", "99"]
    else:
        args += ["--queries", q]
    r = run_video(*args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], r.stderr
    assert not out.exists()


def test_cli_argument_errors_are_one_line(tmp_path):
    r = run_video("--video", "x", "--config", KLT, "--out", str(tmp_path / "p.npz"))  # neither --queries nor --grid
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1


def test_score_and_bench_end_to_end(tmp_path, synthetic_clip):
    # score a prediction made with the wrong queries -> exit 2; the right ones -> JSON line
    q = tmp_path / "q.npy"
    assert run("-m", "eval.queries", "--data", synthetic_clip, "--mode", "strided", "--out", str(q)).returncode == 0
    pred = tmp_path / "p.npz"
    r = run_video("--video", os.path.join(synthetic_clip, "frames"), "--queries", str(q), "--config", KLT,
                  "--out", str(pred))
    assert r.returncode == 0, r.stderr
    bad = run("-m", "eval.score", "--data", synthetic_clip, "--pred", str(pred), "--mode", "first")
    assert bad.returncode == 2 and "other queries" in bad.stderr
    good = run("-m", "eval.score", "--data", synthetic_clip, "--pred", str(pred), "--mode", "strided")
    assert good.returncode == 0, good.stderr
    m = json.loads(good.stdout)
    assert {"AJ", "delta_avg", "OA", "occ_called_visible", "vis_called_occluded", "vis_far16"} <= set(m) and 0 <= m["AJ"] <= 1

    # bench over a dataset folder of two videos, then resume without recomputing
    data = tmp_path / "data"
    data.mkdir()
    for name in ("a", "b"):
        os.symlink(synthetic_clip, data / name)
    out = tmp_path / "res"
    r = run("-m", "eval.bench", "--config", STATIC, "--data", str(data), "--mode", "first", "--out", str(out))
    assert r.returncode == 0, r.stderr
    table = (out / "table.md").read_text()
    assert "| a |" in table and "| b |" in table and "**mean (2)**" in table and "peak MB" in table
    rec = json.loads((out / "a.json").read_text())
    assert rec["peak_rss_mb"] > 10 and rec["seconds"] >= 0 and rec["metrics"]["AJ"] >= 0
    mtime = os.path.getmtime(out / "a.json")
    r = run("-m", "eval.bench", "--config", STATIC, "--data", str(data), "--mode", "first", "--out", str(out),
            "--videos", "a")
    assert r.returncode == 0 and os.path.getmtime(out / "a.json") == mtime     # resumed, not recomputed
    r = run("-m", "eval.bench", "--config", KLT, "--data", str(data), "--mode", "first", "--out", str(out),
            "--videos", "a")
    assert r.returncode == 0 and json.loads((out / "a.json").read_text())["config"] == "klt"  # other config: rerun
    r = run("-m", "eval.bench", "--config", KLT, "--data", str(data), "--out", str(out), "--videos", "zz")
    assert r.returncode == 2 and "zz" in r.stderr
    r = run("-m", "eval.compare", str(out))
    assert r.returncode == 0 and "| res | " in r.stdout and "cache MB" in r.stdout, r.stderr


def test_config_defaults_to_configs_default_yaml():
    sys.path.insert(0, ROOT)
    try:
        import run_video as cli
    finally:
        sys.path.remove(ROOT)
    args = cli.parse_args(["--video", "v", "--grid", "3", "--out", "p.npz"])
    assert args.config == os.path.join(ROOT, "configs", "default.yaml") and os.path.isfile(args.config)


def test_video_selection_is_shared_and_strict(synthetic_clip, tmp_path):
    """eval.bench, eval.calibration and eval.keypoint_quality take --videos through list_videos:
    the given order, and an unknown name is an error rather than a silently smaller benchmark."""
    from eval.datasets import list_videos
    from core.errors import InputError
    data = tmp_path / "data"
    data.mkdir()
    for name in ("b", "a"):
        os.symlink(synthetic_clip, data / name)
    assert [r.name for r in list_videos(str(data))] == ["a", "b"]
    assert [r.name for r in list_videos(str(data), "b,a")] == ["b", "a"]
    with pytest.raises(InputError, match="no video named zz"):
        list_videos(str(data), ["a", "zz"])
    r = run("-m", "eval.calibration", "--config", KLT, "--data", str(data), "--videos", "a,zz")
    assert r.returncode == 2 and "zz" in r.stderr and len(r.stderr.strip().splitlines()) == 1
