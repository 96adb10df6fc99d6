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
    ("query_huge_header", "the .npy header claims shape [100000000000, 3] (1200000000000 bytes) but the file holds 24"),
    ("query_fifo", "is not a regular file"),
    ("query_dev_zero", "is not a regular file"),
    ("query_folder", "is not a regular file"),
    ("query_overflow", "query 0 at (x=1e+300, y=5) lies outside the 96x64 frame"),
    ("query_fractional_time", "query 0 has frame index 0.9995: must be an integer in [0, 5]"),
    ("config_deep", "nested deeper than 16 levels"),
    ("config_laughs", "expands to more than 20000 values"),
    ("config_duplicate_key", "key 'win_size' is given twice"),
    ("config_base_outside", "'base' must be one YAML file name"),
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
    elif case == "query_huge_header":                  # numpy would allocate 1.2 TB for it
        header = np.lib.format.header_data_from_array_1_0(np.zeros((1, 3), np.float32))
        q = str(tmp_path / "huge.npy")
        with open(q, "wb") as f:
            np.lib.format.write_array_header_1_0(f, dict(header, shape=(10 ** 11, 3)))
            f.write(bytes(24))
    elif case == "query_fifo":                          # reading it would wait forever
        q = str(tmp_path / "fifo")
        os.mkfifo(q)
    elif case == "query_dev_zero":                      # reading it would never end
        q = "/dev/zero"
    elif case == "query_folder":
        q = str(tmp_path)
    elif case == "query_overflow":                      # float64, infinite as float32
        q = str(tmp_path / "q64.npy")
        np.save(q, np.array([[0, 1e300, 5]], np.float64))
    elif case == "query_fractional_time":
        q = str(tmp_path / "q64.npy")
        np.save(q, np.array([[0.9995, 5, 5]], np.float64))
    elif case == "config_deep":
        cfg = write_config(tmp_path, "klt:\n  win_size: " + "[" * 5000 + "]" * 5000 + "\n")
    elif case == "config_laughs":
        from test_configs import billion_laughs
        cfg = write_config(tmp_path, billion_laughs(9))
    elif case == "config_duplicate_key":
        cfg = write_config(tmp_path, "tracker: klt\nklt:\n  win_size: 5\n  win_size: 7\n")
    elif case == "config_base_outside":
        cfg = write_config(tmp_path, "base: /etc/passwd\n")
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


def test_a_full_disk_while_writing_the_overlay_is_one_line(tmp_path):
    """The file-size limit (RLIMIT_FSIZE, SIGXFSZ ignored: writes fail with EFBIG as on a full disk) stops the
    mp4 part-way: one line (FFmpeg's own lines inside it, not printed), exit 2, neither output left."""
    import resource
    import signal
    folder = tmp_path / "big"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for t in range(30):
        cv2.imwrite(str(folder / f"{t:03d}.png"), rng.integers(0, 255, (240, 320, 3), dtype=np.uint8))
    q = save_queries(tmp_path, [[0, 100, 100]])
    out, viz = tmp_path / "out" / "p.npz", tmp_path / "out" / "v.mp4"

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))
    r = subprocess.run([sys.executable, os.path.join(ROOT, "run_video.py"), "--quiet", "--video", str(folder),
                        "--queries", q, "--config", STATIC, "--out", str(out), "--viz", str(viz)],
                       capture_output=True, text=True, timeout=300, preexec_fn=limit)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and f"cannot write {viz}" in lines[0], r.stderr
    assert os.listdir(tmp_path / "out") == []


@pytest.mark.parametrize("stage", ["Tracker.__call__", "write_overlay"])
def test_ctrl_c_anywhere_is_one_line_and_exit_130(tmp_path, frames, stage):
    """A real SIGINT arrives while tracking, or while the overlay is written: 'run_video.py: interrupted',
    exit code 130, no traceback, and neither output nor a temporary file left."""
    q = save_queries(tmp_path, [[0, 5, 5]])
    out, viz = tmp_path / "out" / "p.npz", tmp_path / "out" / "v.mp4"
    (tmp_path / "out").mkdir()
    owner, name = stage.split(".") if "." in stage else ("pitrack.viz", stage)
    code = (
        "import os, signal, sys, time\n"
        f"sys.path.insert(0, {ROOT!r}); sys.argv = ['run_video.py']\n"
        "import run_video, pitrack.viz\n"
        "from pitrack.tracker import Tracker\n"
        "def interrupted(*a, **k):\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    time.sleep(5)\n"
        f"setattr({'Tracker' if owner == 'Tracker' else 'pitrack.viz'}, {name!r}, interrupted)\n"
        "from core.errors import run_command\n"
        f"sys.exit(run_command(lambda: run_video.main(['--quiet', '--video', {str(frames)!r}, '--queries', {q!r},"
        f" '--config', {KLT!r}, '--out', {str(out)!r}, '--viz', {str(viz)!r}]), 'run_video.py'))\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 130 and r.stderr.strip() == "run_video.py: interrupted", (r.returncode, r.stderr)
    assert os.listdir(tmp_path / "out") == []


def test_a_note_above_100000_queries(tmp_path, frames):
    """10^6 queries track (the static baseline: quick) with one note on stderr pointing at --dense."""
    rng = np.random.default_rng(0)
    q = np.stack([np.zeros(10 ** 6), rng.uniform(0, 96, 10 ** 6), rng.uniform(0, 64, 10 ** 6)], 1)
    qpath = save_queries(tmp_path, q)
    r = run(os.path.join(ROOT, "run_video.py"), "--video", str(frames), "--queries", qpath, "--config", STATIC,
            "--out", str(tmp_path / "p.npz"))
    notes = [line for line in r.stderr.splitlines() if "note:" in line]
    assert r.returncode == 0 and len(notes) == 1 and "1000000 queries; --dense S" in notes[0], r.stderr[-2000:]


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


def _main_in_process(monkeypatch, argv, forbid_tracking=True):
    """run_video.main(argv) in this process; with ``forbid_tracking`` any tracking fails the test, so an error
    it returns was found before the work. Returns the exit code."""
    import run_video
    from pitrack.tracker import Tracker
    if forbid_tracking:
        def no_tracking(*a, **k):
            raise AssertionError("tracking started before the error was found")
        monkeypatch.setattr(Tracker, "__call__", no_tracking)
    return run_video.main(["--quiet"] + argv)


@pytest.mark.parametrize("case, needle", [
    ("out_is_a_folder", "is a folder"),
    ("out_under_a_file", "is a file, not a folder"),
    ("viz_under_a_file", "is a file, not a folder"),
    ("probe_refused", "Permission denied"),
])
def test_output_paths_are_checked_before_tracking(tmp_path, frames, monkeypatch, capsys, case, needle):
    q = save_queries(tmp_path, [[0, 5, 5]])
    (tmp_path / "a_file").write_text("x")
    out, viz = tmp_path / "pred.npz", None
    if case == "out_is_a_folder":
        out.mkdir()
    elif case == "out_under_a_file":
        out = tmp_path / "a_file" / "sub" / "pred.npz"
    elif case == "viz_under_a_file":
        viz = tmp_path / "a_file" / "v.mp4"
    else:                                   # a folder this user cannot write (root ignores chmod: simulated)
        import tempfile

        def refuse(*a, **k):
            raise PermissionError(13, "Permission denied")
        monkeypatch.setattr(tempfile, "mkstemp", refuse)
    argv = ["--video", str(frames), "--queries", q, "--config", KLT, "--out", str(out)]
    if viz:
        argv += ["--viz", str(viz)]
    assert _main_in_process(monkeypatch, argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
    assert sorted(os.listdir(tmp_path)) == sorted(["a_file", "q.npy", "frames"] + (["pred.npz"] if out.is_dir() else []))


def write_mp4(path, frames_dir):
    names = sorted(os.listdir(frames_dir))
    first = cv2.imread(str(frames_dir / names[0]))
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (first.shape[1], first.shape[0]))
    for n in names:
        w.write(cv2.imread(str(frames_dir / n)))
    w.release()
    return path


@pytest.mark.parametrize("case", ["viz_is_the_video", "out_is_the_queries", "out_links_to_the_queries",
                                  "viz_hard_links_the_video"])
def test_an_output_that_names_an_input_is_refused(tmp_path, frames, case):
    """--viz equal to the input video, --out equal to the queries file (by name, symbolic or hard link): one
    line, exit 2, the input byte-identical."""
    video = write_mp4(tmp_path / "in.mp4", frames)
    queries = tmp_path / "q.npz"                         # .npy data under an .npz name: read by its magic
    with open(queries, "wb") as f:
        np.save(f, np.float32([[0, 5, 5]]))
    out, viz = tmp_path / "pred.npz", None
    if case == "viz_is_the_video":
        viz = video
    elif case == "out_is_the_queries":
        out = queries
    elif case == "out_links_to_the_queries":
        out = tmp_path / "link.npz"
        os.symlink(queries, out)
    else:
        viz = tmp_path / "hard.mp4"
        os.link(video, viz)
    before = {p: p.read_bytes() for p in (video, queries)}
    argv = ["--video", str(video), "--queries", str(queries), "--config", KLT, "--out", str(out)]
    r = run_video(*argv, *(["--viz", str(viz)] if viz else []))
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "it would be overwritten" in lines[0], r.stderr
    assert ("--video" if viz else "--queries file") in lines[0]
    assert {p: p.read_bytes() for p in before} == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores permission bits")
def test_a_read_only_output_folder(tmp_path, frames):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        r = run_video("--video", str(frames), "--grid", "2", "--config", KLT, "--out", str(ro / "p.npz"))
    finally:
        ro.chmod(0o755)
    assert r.returncode == 2 and "cannot be written" in r.stderr and os.listdir(ro) == []


@pytest.mark.parametrize("fails", ["npz", "viz"])
def test_a_failing_write_is_one_line_and_leaves_nothing(tmp_path, frames, monkeypatch, capsys, fails):
    """A full disk while the results are written: exit 2, one line, neither output nor temporary left."""
    import errno
    import pitrack.viz as viz
    if fails == "npz":
        def full(*a, **k):
            raise OSError(errno.ENOSPC, "No space left on device")
        monkeypatch.setattr(np, "savez", full)
    else:                                   # OpenCV's writer drops frames silently when the disk fills
        real = viz._mp4_writer

        class Dropping:
            def __init__(self, *a):
                self.w, self.n = real(*a), 0

            def write(self, f):
                self.n += 1
                if self.n <= 2:
                    self.w.write(f)

            def release(self):
                self.w.release()
        monkeypatch.setattr(viz, "_mp4_writer", Dropping)
    out, v = tmp_path / "out" / "pred.npz", tmp_path / "out" / "v.mp4"
    rc = _main_in_process(monkeypatch, ["--video", str(frames), "--grid", "2", "--config", KLT, "--out", str(out),
                                        "--viz", str(v)], forbid_tracking=False)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "cannot write" in err[0], err
    assert os.listdir(tmp_path / "out") == []


def test_outputs_are_written_with_the_umask(tmp_path, frames):
    old = os.umask(0o022)
    try:
        r = run_video("--video", str(frames), "--grid", "2", "--config", KLT, "--out", str(tmp_path / "p.npz"),
                      "--viz", str(tmp_path / "p.mp4"))
    finally:
        os.umask(old)
    assert r.returncode == 0, r.stderr
    assert [os.stat(tmp_path / f).st_mode & 0o777 for f in ("p.npz", "p.mp4")] == [0o644, 0o644]


def test_missing_weights_stop_the_run_before_any_work(tmp_path, frames):
    """configs/default.yaml reads raft-small.pth (keypoint features): with an empty weights folder the run stops
    at once, one line naming the file, and no cache is written."""
    env = dict(os.environ, PITRACK_WEIGHTS=str(tmp_path / "no_weights"), PITRACK_CACHE=str(tmp_path / "cache"))
    r = subprocess.run([sys.executable, os.path.join(ROOT, "run_video.py"), "--quiet", "--video", str(frames),
                        "--grid", "2", "--out", str(tmp_path / "p.npz")], capture_output=True, text=True,
                       timeout=120, env=env)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "raft-small.pth" in lines[0], r.stderr
    assert not (tmp_path / "cache").exists() and not (tmp_path / "p.npz").exists()


def test_every_config_resolves_its_weights_when_the_tracker_is_built(tmp_path, monkeypatch):
    from core.errors import WeightsError
    from pitrack import Tracker
    monkeypatch.setenv("PITRACK_WEIGHTS", str(tmp_path))
    for cfg in ("default.yaml", "refiner.yaml", "ablations/no_filters.yaml"):
        with pytest.raises(WeightsError, match="raft-small.pth"):
            Tracker.from_config(os.path.join(ROOT, "configs", cfg), progress=False)
    assert Tracker.from_config(KLT).weights == {}
    # the packaged files are found without loading them; a missing one is named when the tracker is built
    from pitrack.config import load_config
    mft_learned = os.path.join(ROOT, "configs", "flow_variants", "mft-learned-uncertainty.yaml")
    assert Tracker(load_config(mft_learned)).weights["flow uncertainty head"].endswith("dis_uncertainty.pt")
    missing = str(tmp_path / "missing.pt")
    with pytest.raises(WeightsError, match="learned flow uncertainty: no weights file .*missing.pt"):
        Tracker(load_config(mft_learned, overrides={"flow": {"uncertainty_weights": missing}}))
    with pytest.raises(WeightsError, match="track refiner: no weights file .*missing.pt"):
        Tracker(load_config({"tto": {"enabled": False}, "filters": {"similarity": {"enabled": False}},
                             "visibility": {"appearance": False}, "refiner": {"enabled": True, "weights": missing}}))


@pytest.mark.parametrize("argv, needle", [
    (["--grid", "2", "--max-frames", "-3"], "--max-frames: must be >= 1"),
    (["--grid", "2", "--max-frames", "0"], "--max-frames: must be >= 1"),
    (["--queries", "Q", "--grid-frame", "1"], "--grid-frame applies to --grid only"),
    (["--grid", "2", "--query-frame", "1"], "--query-frame applies to --dense only"),
    (["--grid", "2", "--query-order", "tyx"], "--query-order applies to --queries only"),
    (["--grid", "0"], "--grid: must be >= 1"),
    (["--grid", "97"], "finer than the 96x64 frame"),
    (["--dense", "0"], "--dense: must be >= 1"),
    (["--grid", "2", "--tail", "-1"], "--tail: must be >= 0"),
])
def test_argument_values_are_checked(tmp_path, frames, argv, needle):
    argv = [a if a != "Q" else save_queries(tmp_path, [[0, 5, 5]]) for a in argv]
    r = run_video("--video", str(frames), "--config", KLT, "--out", str(tmp_path / "p.npz"), *argv)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and needle in lines[0], r.stderr


def test_text_queries_are_read_and_binary_garbage_is_named(tmp_path, frames):
    npy = save_queries(tmp_path, [[0, 40.5, 30.5], [2, 20, 10]])
    txt, csv, bad = tmp_path / "q.txt", tmp_path / "q.csv", tmp_path / "q.bin"
    txt.write_text("# t x y\n0 40.5 30.5\n2 20 10\n")
    csv.write_text("0,40.5,30.5\n2,20,10  # second\n")
    bad.write_bytes(bytes(range(256)))
    tracks = []
    for q in (npy, txt, csv):
        out = tmp_path / (os.path.basename(str(q)) + ".npz")
        r = run_video("--video", str(frames), "--queries", str(q), "--config", KLT, "--out", str(out))
        assert r.returncode == 0, r.stderr
        tracks.append(np.load(out)["tracks"])
    assert np.array_equal(tracks[0], tracks[1]) and np.array_equal(tracks[0], tracks[2])
    r = run_video("--video", str(frames), "--queries", str(bad), "--config", KLT, "--out", str(tmp_path / "p.npz"))
    assert r.returncode == 2 and "neither a .npy array nor text rows" in r.stderr


def test_progress_in_a_log_file_is_plain_lines(tmp_path, frames):
    """stderr not a terminal: no carriage-return redraws, only whole lines (core.progress.LogProgress)."""
    r = subprocess.run([sys.executable, os.path.join(ROOT, "run_video.py"), "--video", str(frames), "--grid", "2",
                        "--config", KLT, "--out", str(tmp_path / "p.npz")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "\r" not in r.stderr and r.stderr.startswith("tracked 4 points"), r.stderr


def test_log_progress_prints_a_line_per_interval_and_a_last_one():
    import io
    from core.progress import LogProgress
    buf = io.StringIO()
    bar = LogProgress(total=4, desc="flow", unit="pair", file=buf, interval=0.0)
    bar.update(3)
    bar.set_postfix(loss="0.5")
    bar.update(1)
    bar.close()
    assert buf.getvalue().splitlines() == ["flow: 3/4 pair (75%) 0 s", "flow: 4/4 pair (100%) 0 s [loss=0.5]"]
    buf = io.StringIO()
    assert list(LogProgress(range(3), desc="klt", file=buf)) == [0, 1, 2] and buf.getvalue() == ""


def test_calibration_of_saved_predictions_equals_tracking_again(synthetic_clip, tmp_path):
    """eval.calibration --preds scores what eval.bench --save-pred kept exactly as --config scores a fresh run;
    predictions made for the other mode's queries, or missing, are one line and exit code 2."""
    data = tmp_path / "data"
    data.mkdir()
    os.symlink(synthetic_clip, data / "a")
    out = tmp_path / "res"
    assert run("-m", "eval.bench", "--config", KLT, "--data", str(data), "--mode", "first", "--out", str(out),
               "--save-pred").returncode == 0
    fresh = run("-m", "eval.calibration", "--config", KLT, "--data", str(data), "--mode", "first")
    saved = run("-m", "eval.calibration", "--preds", str(out), "--data", str(data), "--mode", "first")
    assert fresh.returncode == 0 and saved.returncode == 0, saved.stderr
    a, b = json.loads(fresh.stdout), json.loads(saved.stdout)
    assert a["points"] > 0 and a.pop("config") == "klt" and a.pop("preds") is None and b.pop("preds") == str(out)
    assert json.dumps(a, sort_keys=True) == json.dumps({k: v for k, v in b.items() if k != "config"}, sort_keys=True)
    for args in (("--mode", "strided"), ("--preds", str(tmp_path))):
        r = run("-m", "eval.calibration", "--preds", str(out), "--data", str(data), *args)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
