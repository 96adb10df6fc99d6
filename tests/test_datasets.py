"""Readers of the published benchmark layouts (TAP-Vid pickles, BADJA release), eval.bench over them, the
official 256×256 protocol, Ray, shards and merging, and the bad-file errors."""
import json
import os
import pickle
import subprocess
import sys

import cv2
import numpy as np
import pytest

from conftest import ROOT
from core.errors import InputError, PitrackError
from eval.datasets import list_videos

KLT = os.path.join(ROOT, "configs", "baselines", "klt.yaml")


def run(*args):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def one_line_exit_2(r, needle):
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and needle in lines[0], (r.returncode, r.stderr)


def jpeg_bytes(frame):
    ok, buf = cv2.imencode(".jpg", frame[..., ::-1])
    assert ok
    return buf.tobytes()


@pytest.fixture(scope="module")
def folder_video(synthetic_clip):
    return list_videos(synthetic_clip)[0].open()


def normalised(video):
    h, w = video.size_hw
    return (video.points / np.array([w, h], np.float32)).astype(np.float32)


def dump(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f)
    return str(path)


def test_tapvid_pickle_layouts_read_as_the_folder(tmp_path, folder_video):
    """DAVIS (dict, uint8 frames), RGB-Stacking (list), RoboTAP (dicts in split files) and Kinetics (list shards
    of JPEG bytes): same frames (DAVIS exactly; JPEG as decoded), pixels, queries and scores as the folder."""
    v = folder_video
    frames = v.load_frames()
    rec = {"video": frames, "points": normalised(v), "occluded": v.occluded}
    jpeg_rec = dict(rec, video=[jpeg_bytes(f) for f in frames])
    davis = dump(tmp_path / "tapvid_davis.pkl", {"clip": rec, "other": rec})
    stacking = dump(tmp_path / "tapvid_rgb_stacking.pkl", [rec])
    robotap = tmp_path / "robotap"
    robotap.mkdir()
    dump(robotap / "robotap_split0.pkl", {"r0": jpeg_rec})
    dump(robotap / "robotap_split1.pkl", {"r1": rec})
    kinetics = tmp_path / "kinetics"
    kinetics.mkdir()
    dump(kinetics / "0000_of_0010.pkl", [jpeg_rec, rec])
    dump(kinetics / "0001_of_0010.pkl", [])
    (kinetics / "README.md").write_text("not a pickle")

    assert [r.name for r in list_videos(davis)] == ["clip", "other"]
    assert [r.name for r in list_videos(stacking)] == ["tapvid_rgb_stacking_0000"]
    assert [r.name for r in list_videos(str(robotap))] == ["r0", "r1"]
    assert [r.name for r in list_videos(str(kinetics))] == ["0000_of_0010_0000", "0000_of_0010_0001"]
    assert [r.name for r in list_videos(davis, "other")] == ["other"]

    pred = v.points[v.queries("strided")[1]] + 1.5
    visible = np.ones(pred.shape[:2], bool)
    want = v.score(pred, visible, "strided")
    for data in (davis, stacking, str(robotap), str(kinetics)):
        for ref in list_videos(data):
            got = ref.open()
            assert got.size_hw == v.size_hw and got.num_frames == v.num_frames
            np.testing.assert_allclose(got.points, v.points, atol=1e-4)
            assert np.array_equal(got.occluded, v.occluded)
            np.testing.assert_allclose(got.queries("strided")[0], v.queries("strided")[0], atol=1e-4)
            loaded = got.load_frames()
            if isinstance(ref.record()["video"], np.ndarray):
                assert np.array_equal(loaded, frames)
            else:                                     # JPEG: what OpenCV decodes from the same bytes
                assert np.array_equal(loaded, np.stack([cv2.imdecode(np.frombuffer(b, np.uint8), 1)[..., ::-1]
                                                        for b in jpeg_rec["video"]]))
            assert got.score(pred, visible, "strided") == pytest.approx(want, abs=1e-9)


def test_badja_release_reads_joints_as_row_column(tmp_path):
    """A two-animal BADJA release: joints (row, column) become (x, y); the annotated frames are found in the
    image folder by name; a mask of another size has its area scaled to the frames; PCK of the truth is 1."""
    root = tmp_path / "BADJA"
    img_dir = root / "DAVIS" / "JPEGImages" / "Full-Resolution" / "cat"
    seg_dir = root / "DAVIS" / "Annotations" / "Full-Resolution" / "cat"
    img_dir.mkdir(parents=True)
    seg_dir.mkdir(parents=True)
    for t in range(6):
        cv2.imwrite(str(img_dir / f"{t:05d}.jpg"), np.full((40, 60, 3), 30 * t, np.uint8))
    entries = []
    for t in (4, 1):                             # listed out of order on purpose
        mask = np.zeros((20, 30), np.uint8)      # half the frame size: area ×4 at the frames' size
        mask[2:12, 3:13] = 255
        cv2.imwrite(str(seg_dir / f"{t:05d}.png"), mask)
        entries.append({"segmentation_path": f"DAVIS/Annotations/Full-Resolution/cat/{t:05d}.png",
                        "image_path": f"DAVIS/JPEGImages/Full-Resolution/cat/{t:05d}.jpg",
                        "joints": [[10 + t, 50 - t], [0, 0], [30, 5]], "visibility": [True, False, t == 1]})
    (root / "joint_annotations").mkdir()
    (root / "joint_annotations" / "cat.json").write_text(json.dumps(entries))
    (ref,) = list_videos(str(root))
    v = ref.open()
    assert ref.name == "cat" and v.kind == "badja" and v.num_frames == 6 and v.size_hw == (40, 60)
    assert list(v.frames) == [1, 4]
    np.testing.assert_array_equal(v.points[0], [[49, 11], [46, 14]])          # (x, y) = (column, row)
    np.testing.assert_array_equal(v.visible, [[True, True], [False, False], [True, False]])
    np.testing.assert_allclose(v.mask_areas(), [400, 400])
    q, joints = v.queries()
    assert list(joints) == [0, 2] and np.array_equal(q[0], [1, 49, 11])
    perfect = np.zeros((2, 6, 2), np.float32)
    perfect[:, v.frames] = v.points[joints]
    assert v.score(perfect)["PCK_seg"] == 1.0
    os.remove(img_dir / "00004.jpg")
    with pytest.raises(InputError, match="missing file .*00004.jpg"):
        ref.open()
    out = tmp_path / "res"                     # from the command line: found while listing, before tracking
    one_line_exit_2(run("-m", "eval.bench", "--config", KLT, "--data", str(root), "--out", str(out)),
                    "cat.json: missing file")
    assert not out.exists()


@pytest.mark.parametrize("bad, needle", [
    ("text", "cannot read the pickle"),
    ("tuple", "not a TAP-Vid pickle"),
    ("no_occluded", "not a TAP-Vid record"),
    ("points_shape", "are not [N, T, 2]"),
    ("frame_count", "frames but the points have"),
    ("truncated_jpeg", "frame 2 is not a complete JPEG"),
])
def test_bad_pickles_are_refused_before_tracking(tmp_path, folder_video, bad, needle):
    v = folder_video
    frames = v.load_frames()
    rec = {"video": frames, "points": normalised(v), "occluded": v.occluded}
    path = tmp_path / "bad.pkl"
    if bad == "text":
        path.write_text("points,occluded\n")
    else:
        obj = {"tuple": lambda: (rec,),
               "no_occluded": lambda: {"a": {"video": frames, "points": rec["points"]}},
               "points_shape": lambda: {"a": dict(rec, points=rec["points"][..., :1])},
               "frame_count": lambda: {"a": dict(rec, video=frames[:-1])},
               "truncated_jpeg": lambda: [dict(rec, video=[jpeg_bytes(f) for f in frames[:2]]
                                               + [jpeg_bytes(frames[2])[:-300]]
                                               + [jpeg_bytes(f) for f in frames[3:]])]}[bad]()
        dump(path, obj)
    out = tmp_path / "res"
    r = run("-m", "eval.bench", "--config", KLT, "--data", str(path), "--out", str(out))
    one_line_exit_2(r, needle)
    assert not out.exists() or not os.listdir(out)


@pytest.mark.parametrize("damage, needle", [
    (lambda p: p.write_text("not a zip"), "tracks.npz is not an .npz archive (not a zip file)"),
    (lambda p: p.write_bytes(p.read_bytes()[:len(p.read_bytes()) // 2]), "tracks.npz is not an .npz archive"),
])
def test_every_tracks_npz_is_checked_when_a_folder_is_listed(tmp_path, synthetic_clip, damage, needle):
    """A dataset folder whose second video's tracks.npz is damaged: one line, exit 2, before the first video
    is tracked (no result written)."""
    import shutil
    data = tmp_path / "data"
    for name in ("a", "b"):
        shutil.copytree(synthetic_clip, data / name)
    damage(data / "b" / "tracks.npz")
    out = tmp_path / "res"
    one_line_exit_2(run("-m", "eval.bench", "--config", KLT, "--data", str(data), "--out", str(out)), needle)
    assert not out.exists()


def test_an_unreadable_dataset_folder_is_one_line(tmp_path, monkeypatch):
    """A folder that cannot be listed (a non-root user without read permission; simulated, as root reads
    anything) is an InputError naming it."""
    from eval.datasets import list_videos
    (tmp_path / "data").mkdir()
    real = os.listdir

    def refuse(path="."):
        if os.fspath(path) == str(tmp_path / "data"):
            raise PermissionError(13, "Permission denied")
        return real(path)
    monkeypatch.setattr(os, "listdir", refuse)
    with pytest.raises(InputError, match=r"cannot list .*data \(Permission denied\)"):
        list_videos(str(tmp_path / "data"))


class _RunsCode:
    """Unpickled by plain pickle.load, this runs a shell command that creates ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("where", ["file", "folder"])
def test_a_pickle_that_would_run_code_is_refused_unrun(tmp_path, folder_video, where):
    """A TAP-Vid pickle carrying a __reduce__ (here os.system) is one line naming the file and the refused
    global, exit 2, and the command never runs: its marker file is not created."""
    v = folder_video
    marker = tmp_path / "ran"
    rec = {"video": _RunsCode(marker), "points": normalised(v), "occluded": v.occluded}
    folder = tmp_path / "data"
    folder.mkdir()
    path = dump(folder / "tapvid_davis.pkl", {"clip": rec})
    out = tmp_path / "res"
    r = run("-m", "eval.bench", "--config", KLT, "--data", str(folder if where == "folder" else path), "--out", str(out))
    one_line_exit_2(r, f"{path}: cannot read the pickle (refused global {os.system.__module__}.system")
    assert not marker.exists()
    pickle.loads(pickle.dumps(_RunsCode(marker)))            # the same object, plainly unpickled, does run
    assert marker.exists()


def test_pickles_of_every_protocol_and_numpy_1_names_are_read(tmp_path, folder_video):
    """Protocols 2-5 and the module names numpy 1 wrote (numpy.core.multiarray) are admitted."""
    from eval.datasets import load_pickle
    v = folder_video
    rec = {"video": v.load_frames(), "points": normalised(v), "occluded": v.occluded, "n": np.float32(2.5),
           "jpeg": [b"\xff\xd8"]}
    for protocol in (2, 3, 4, 5):
        data = pickle.dumps({"clip": rec}, protocol=protocol)
        if protocol == 2:
            assert b"numpy._core.multiarray" in data
            data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
        path = tmp_path / f"p{protocol}.pkl"
        path.write_bytes(data)
        got = load_pickle(str(path))["clip"]
        assert np.array_equal(got["video"], rec["video"]) and got["n"] == 2.5 and got["jpeg"] == [b"\xff\xd8"]


def test_broken_frame_in_a_kinetics_shard_is_one_line(tmp_path, folder_video):
    """A frame with JPEG markers whose data does not decode is found when its video is read: one line naming
    the shard, the video and the frame; exit 2; the videos before it keep their results."""
    v = folder_video
    frames = v.load_frames()
    good = {"video": [jpeg_bytes(f) for f in frames], "points": normalised(v), "occluded": v.occluded}
    broken = dict(good, video=list(good["video"]))
    broken["video"][5] = b"\xff\xd8" + b"\x00" * 64 + b"\xff\xd9"
    shard = dump(tmp_path / "0000_of_0010.pkl", [good, broken])
    out = tmp_path / "res"
    r = run("-m", "eval.bench", "--config", KLT, "--data", str(tmp_path), "--out", str(out))
    errors = [l for l in r.stderr.splitlines() if "error" in l]
    assert r.returncode == 2 and errors == [r.stderr.strip().splitlines()[-1]], r.stderr
    assert f"eval.bench: error: video 0000_of_0010_0001: {shard}#1: frame 5 does not decode as a JPEG" == errors[0]
    assert (out / "0000_of_0010_0000.json").exists() and not (out / "0000_of_0010_0001.json").exists()


def test_bench_scores_pickle_and_folder_identically(tmp_path, synthetic_clip):
    """The same videos from folders and from a TAP-Vid DAVIS pickle written by eval.export_dataset: the same
    records, metric for metric; --resize tracks at another size and maps the tracks back to original pixels."""
    data = tmp_path / "data"
    data.mkdir()
    for name in ("a", "b"):
        os.symlink(synthetic_clip, data / name)
    pkl = tmp_path / "tapvid_davis.pkl"
    assert run("-m", "eval.export_dataset", "--data", str(data), "--layout", "davis", "--out", str(pkl)).returncode == 0
    recs = {}
    for label, src in (("folder", data), ("pickle", pkl)):
        r = run("-m", "eval.bench", "--config", KLT, "--data", str(src), "--mode", "strided", "--out",
                str(tmp_path / label))
        assert r.returncode == 0, r.stderr
        recs[label] = {n: json.loads((tmp_path / label / f"{n}.json").read_text()) for n in ("a", "b")}
    for n in ("a", "b"):
        assert recs["folder"][n]["metrics"] == recs["pickle"][n]["metrics"]
        assert recs["pickle"][n]["data"] == f"{pkl}#{n}"
    r = run("-m", "eval.bench", "--config", KLT, "--data", str(pkl), "--videos", "a", "--resize", "80x64",
            "--save-pred", "--out", str(tmp_path / "small"))
    assert r.returncode == 0, r.stderr
    assert "frames resized to 80x64 before tracking" in (tmp_path / "small" / "table.md").read_text()
    assert "native resolution" in (tmp_path / "pickle" / "table.md").read_text()
    rec = json.loads((tmp_path / "small" / "a.json").read_text())
    assert rec["resize"] == "80x64" and rec["frame_size"] == "80x64"
    assert rec["metrics"]["AJ"] != recs["pickle"]["a"]["metrics"]["AJ"]
    pred = np.load(tmp_path / "small" / "a.npz")
    v = list_videos(synthetic_clip)[0].open()
    assert v.size_hw[1] == 160 and pred["tracks"].shape[1] == v.num_frames
    assert np.nanmax(pred["tracks"][..., 0]) > 100          # original pixels (the tracked frames are 80 wide)
    r = run("-m", "eval.rescore", "--data", str(pkl), "--preds", str(tmp_path / "small"), "--out", str(tmp_path / "re"))
    assert r.returncode == 0, r.stderr                 # the saved tracks score the same on the original video


def test_ray_shards_and_merge_give_the_serial_table(tmp_path, synthetic_clip):
    """Two videos through a local Ray instance, and as two shards merged: the serial run's numbers."""
    pytest.importorskip("ray", reason="Ray is the optional extra .[ray] (make test installs it)")
    data = tmp_path / "data"
    data.mkdir()
    for name in ("a", "b"):
        os.symlink(synthetic_clip, data / name)
    base = ["-m", "eval.bench", "--config", KLT, "--data", str(data), "--mode", "strided"]
    assert run(*base, "--out", str(tmp_path / "serial")).returncode == 0
    r = run(*base, "--out", str(tmp_path / "ray"), "--ray", "--workers", "2")
    assert r.returncode == 0, r.stderr
    assert "local Ray: 2 task slots" in r.stderr
    for i in (0, 1):
        r = run(*base, "--out", str(tmp_path / f"shard{i}"), "--shard", f"{i}/2")
        assert r.returncode == 0 and f"shard {i}/2" in r.stdout, r.stderr
    assert sorted(os.listdir(tmp_path / "shard1")) == ["b.json"]
    one_line_exit_2(run("-m", "eval.bench", "--merge", str(tmp_path / "shard0"), "--out", str(tmp_path / "m")),
                    "only 1 of the dataset's 2 videos")
    r = run("-m", "eval.bench", "--merge", str(tmp_path / "shard0"), str(tmp_path / "shard1"), "--out",
            str(tmp_path / "merged"))
    assert r.returncode == 0, r.stderr

    def rows(folder):
        return [l for l in (tmp_path / folder / "table.md").read_text().splitlines() if l.startswith("| ")]

    def metric(folder, name):
        return json.loads((tmp_path / folder / f"{name}.json").read_text())["metrics"]

    assert [metric("ray", n) for n in "ab"] == [metric("serial", n) for n in "ab"] == \
        [metric("shard0", "a"), metric("shard1", "b")]
    strip = lambda rs: [r.rsplit("|", 3)[0] for r in rs]          # drop seconds and peak MB
    assert strip(rows("ray")) == strip(rows("serial")) == strip(rows("merged"))
    one_line_exit_2(run(*base, "--out", str(tmp_path / "x"), "--shard", "2/2"), "need 0 <= i < n")


def test_query_order_tyx_is_tapnets(tmp_path, synthetic_clip):
    """eval.queries --order tyx writes (t, y, x); run_video.py --query-order tyx tracks them as (t, x, y)."""
    preds = {}
    for order in ("txy", "tyx"):
        q = tmp_path / f"{order}.npy"
        assert run("-m", "eval.queries", "--data", synthetic_clip, "--order", order, "--out", str(q)).returncode == 0
        r = run(os.path.join(ROOT, "run_video.py"), "--quiet", "--video", os.path.join(synthetic_clip, "frames"),
                "--queries", str(q), "--query-order", order, "--config", KLT, "--out", str(tmp_path / f"{order}.npz"))
        assert r.returncode == 0, r.stderr
        preds[order] = np.load(tmp_path / f"{order}.npz")
    a, b = np.load(tmp_path / "txy.npy"), np.load(tmp_path / "tyx.npy")
    assert np.array_equal(a[:, [0, 2, 1]], b) and not np.array_equal(a, b)
    assert np.array_equal(preds["txy"]["tracks"], preds["tyx"]["tracks"])
    assert np.array_equal(preds["tyx"]["queries"], a)


def test_shards_partition_and_gpu_request():
    from core.jobs import config_uses_gpu, parse_shard, take_shard
    from pitrack import load_config
    items = list(range(7))
    parts = [take_shard(items, (i, 3)) for i in range(3)]
    assert parts == [[0, 3, 6], [1, 4], [2, 5]] and take_shard(items, None) == items
    assert parse_shard("1/3") == (1, 3)
    for bad in ("3/3", "-1/2", "a/b", "1"):
        with pytest.raises(PitrackError):
            parse_shard(bad)
    default = load_config(os.path.join(ROOT, "configs", "default.yaml"))
    assert config_uses_gpu(default, cluster_has_gpu=True) and not config_uses_gpu(default, cluster_has_gpu=False)
    assert not config_uses_gpu(load_config(KLT), cluster_has_gpu=True)


def test_batch_tracks_a_list_one_result_per_video_and_resumes(tmp_path, synthetic_clip):
    """pitrack.batch: every listed video gets <name>.npz (run_video.py's output) and <name>.json; a rerun
    recomputes nothing; a shard takes its share; a missing video or query file stops before any tracking."""
    frames = os.path.join(synthetic_clip, "frames")
    for name in ("cam1", "cam2"):
        os.symlink(frames, tmp_path / name)
    listing = tmp_path / "videos.txt"
    listing.write_text("# two cameras\ncam1\n\ncam2  # relative to the list\n")
    out = tmp_path / "res"
    batch = ["-m", "pitrack.batch", "--config", KLT, "--list", str(listing), "--grid", "3"]
    r = run(*batch, "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(out)) == ["cam1.json", "cam1.npz", "cam2.json", "cam2.npz"]
    pred = np.load(out / "cam1.npz")
    assert pred["tracks"].shape == (9, 24, 2) and pred["queries"].shape == (9, 3)
    rec = json.loads((out / "cam2.json").read_text())
    assert rec["video"] == str(tmp_path / "cam2") and rec["peak_rss_mb"] > 10 and rec["seconds"] > 0
    mtime = os.path.getmtime(out / "cam1.npz")
    r = run(*batch, "--out", str(out))
    assert r.returncode == 0 and "0 videos tracked, 2 already done" in r.stderr
    assert os.path.getmtime(out / "cam1.npz") == mtime
    r = run(*batch, "--out", str(tmp_path / "s1"), "--shard", "1/2")
    assert r.returncode == 0 and sorted(os.listdir(tmp_path / "s1")) == ["cam2.json", "cam2.npz"]
    listing.write_text("cam1\nnowhere\n")
    one_line_exit_2(run(*batch, "--out", str(tmp_path / "x")), "videos.txt:2: video not found")
    listing.write_text("cam1\n")
    one_line_exit_2(run("-m", "pitrack.batch", "--config", KLT, "--list", str(listing), "--queries-dir",
                        str(tmp_path), "--out", str(tmp_path / "x")), "no queries for video cam1")
    assert not (tmp_path / "x").exists()
