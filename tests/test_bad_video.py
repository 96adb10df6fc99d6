"""Bad video input is an InputError, never a silent loss of frames or a traceback: damaged video files,
frames that do not decode completely, --max-frames, frame order, tiny frames, query dtypes, frames of
different sizes, and CoTracker's tensor layout."""
import os
import re
import subprocess
import sys
import warnings

import cv2
import numpy as np
import pytest

from conftest import ROOT, raft_small_path
from core.errors import InputError, PitrackError
from pitrack import Tracker, load_video
from pitrack.video import list_frame_files

KLT = os.path.join(ROOT, "configs", "baselines", "klt.yaml")


def textured_frames(n=8, hw=(64, 80), seed=0):
    """n uint8 BGR frames of a smooth random texture moving 2 px right per frame."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (hw[0] // 8, hw[1] // 8, 3), dtype=np.uint8)
    base = cv2.resize(base, (hw[1], hw[0]), interpolation=cv2.INTER_CUBIC)
    return [np.roll(base, 2 * t, axis=1) for t in range(n)]


def write_video(path, fourcc, frames):
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 10, (w, h))
    if not writer.isOpened():
        pytest.skip(f"OpenCV cannot write {fourcc} here")
    for f in frames:
        writer.write(f)
    writer.release()
    return str(path)


def zero_middle_of_frame_data(path):
    """Zero 70-95 % of an mp4's frame data (its mdat box): past frame 0, the I-frame that fills most of it."""
    data = bytearray(open(path, "rb").read())
    start = data.find(b"mdat") + 4
    end = data.find(b"moov", start)
    end = len(data) if end < 0 else end
    a, b = start + 70 * (end - start) // 100, start + 95 * (end - start) // 100
    data[a:b] = bytes(b - a)
    open(path, "wb").write(bytes(data))


def truncate(path, fraction):
    data = open(path, "rb").read()
    open(path, "wb").write(data[:int(len(data) * fraction)])


# ---------------------------------------------------------------------------------------------------------------
# 1. video files


@pytest.mark.parametrize("name, fourcc, damage", [
    ("clip.mp4", "mp4v", zero_middle_of_frame_data),
    ("clip.avi", "MJPG", lambda p: truncate(p, 0.55)),
])
def test_damaged_video_file_is_refused_and_max_frames_reads_what_decodes(tmp_path, name, fourcc, damage):
    path = write_video(tmp_path / name, fourcc, textured_frames())
    assert load_video(path).shape == (8, 64, 80, 3)          # intact: every frame
    damage(path)
    with pytest.raises(InputError) as e:
        load_video(path)
    msg = str(e.value)
    m = re.search(r"is damaged: only (\d) of its 8 frames decode \(decoder: .+\); use --max-frames (\d) to track the "
                  r"\2 before the damage$", msg)
    assert m and int(m.group(2)) <= int(m.group(1)) and "\n" not in msg, msg
    k = int(m.group(2))
    assert 1 <= k < 8
    assert load_video(path, max_frames=k).shape[0] == k      # the way out the message names works


def damaged_but_complete_mp4(tmp_path):
    """An mp4 (20 frames) with 200 random bytes written into its frame data such that every frame still
    decodes but FFmpeg reports the damage (and conceals it): the first of a few random placements that do."""
    rng = np.random.default_rng(0)
    base = cv2.GaussianBlur(rng.integers(0, 255, (240, 320, 3)).astype(np.uint8), (0, 0), 3)
    path = write_video(tmp_path / "clip.mp4", "mp4v", [np.roll(base, 3 * t, axis=1) for t in range(20)])
    good = open(path, "rb").read()
    assert load_video(path).shape == (20, 240, 320, 3)
    for seed in range(8):
        for frac in (0.6, 0.4):
            data = bytearray(good)
            at = int(len(data) * frac)
            data[at:at + 200] = np.random.default_rng(seed).integers(0, 256, 200, dtype=np.uint8).tobytes()
            open(path, "wb").write(bytes(data))
            cap = cv2.VideoCapture(path)
            n = 0
            while cap.read()[0]:
                n += 1
            cap.release()
            if n == 20:
                try:
                    load_video(path)
                except InputError:
                    return path
    pytest.fail("no placement of the damage gave a file whose 20 frames decode with errors")


def test_video_file_whose_decoder_reports_damage_is_refused_unless_allowed(tmp_path):
    """Every frame decodes, but FFmpeg says 'Error at MB' / 'marker bit missing' and fills in guessed pixels:
    one line naming the frames and the decoder's message, exit 2; --allow-damaged tracks it with one note."""
    path = damaged_but_complete_mp4(tmp_path)
    with pytest.raises(InputError) as e:
        load_video(path)
    msg = str(e.value)
    assert re.search(r"is damaged: its decoder reported errors in frames? [0-9, ]+ of 20 \(decoder: mpeg4: .+\); "
                     r"--allow-damaged tracks it anyway$", msg) and "\n" not in msg, msg
    notes = []
    assert load_video(path, allow_damaged=True, notes=notes).shape == (20, 240, 320, 3)
    assert len(notes) == 1 and "tracked as decoded (--allow-damaged)" in notes[0]
    q = tmp_path / "q.npy"
    np.save(q, np.float32([[0, 100, 100]]))
    cli = [sys.executable, os.path.join(ROOT, "run_video.py"), "--quiet", "--video", path, "--queries", str(q),
           "--config", KLT, "--out", str(tmp_path / "p.npz")]
    r = subprocess.run(cli, capture_output=True, text=True, timeout=300)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "is damaged: its decoder reported errors" in lines[0], r.stderr
    assert not (tmp_path / "p.npz").exists()
    r = subprocess.run(cli + ["--allow-damaged"], capture_output=True, text=True, timeout=300)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 0 and len(lines) == 1 and lines[0].startswith("run_video.py: note: video file"), r.stderr
    assert np.load(tmp_path / "p.npz")["tracks"].shape == (1, 20, 2)


def test_jpegs_with_data_after_their_end_marker_track_like_the_plain_files(tmp_path):
    """Motion photos append a video after the JPEG's end marker: the frames decode as the plain JPEGs do, and
    run_video.py writes byte-identical outputs for the two folders."""
    plain, motion = tmp_path / "plain", tmp_path / "motion"
    plain.mkdir(), motion.mkdir()
    for t, f in enumerate(textured_frames(5, (96, 128))):
        data = _jpeg(f)
        (plain / f"{t}.jpg").write_bytes(data)
        (motion / f"{t}.jpg").write_bytes(data + b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 4)
    assert np.array_equal(load_video(plain), load_video(motion))
    q = tmp_path / "q.npy"
    np.save(q, np.float32([[0, 60, 40], [2, 30, 50]]))
    outs = []
    for folder in (plain, motion):
        out = tmp_path / f"{folder.name}.npz"
        r = subprocess.run([sys.executable, os.path.join(ROOT, "run_video.py"), "--quiet", "--video", str(folder),
                            "--queries", str(q), "--config", KLT, "--out", str(out)], capture_output=True, text=True,
                           timeout=300)
        assert r.returncode == 0 and not r.stderr, r.stderr
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]


# ---------------------------------------------------------------------------------------------------------------
# 2. frames that do not decode completely


def _jpeg(frame):
    return cv2.imencode(".jpg", frame)[1].tobytes()


def _png(frame):
    return cv2.imencode(".png", frame)[1].tobytes()


def _corrupt_middle(data):
    """Cut the entropy-coded data in the middle and put the end marker back: the file ends like a whole
    JPEG, only the decoder can tell (libjpeg: 'Corrupt JPEG data')."""
    return data[:len(data) // 2] + b"\xff\xd9"


@pytest.mark.parametrize("bad, ext, make, needle", [
    ("truncated_jpeg", "jpg", lambda f: _jpeg(f)[:len(_jpeg(f)) * 2 // 3], "is truncated: the JPEG file ends"),
    ("corrupt_jpeg", "jpg", lambda f: _corrupt_middle(_jpeg(f)), "does not decode completely (decoder: Corrupt JPEG"),
    ("truncated_png", "png", lambda f: _png(f)[:len(_png(f)) // 2], "is truncated: the PNG file ends"),
    ("garbage", "jpg", lambda f: bytes(range(256)) * 8, "is not a JPEG or PNG image"),
    ("empty", "png", lambda f: b"", "is empty"),
])
def test_frame_that_does_not_decode_completely_is_refused(tmp_path, bad, ext, make, needle):
    frames = textured_frames(4, (96, 128))
    for t, f in enumerate(frames):
        (tmp_path / f"{t:05d}.{ext}").write_bytes(_jpeg(f) if ext == "jpg" else _png(f))
    assert load_video(tmp_path).shape == (4, 96, 128, 3)
    (tmp_path / f"00002.{ext}").write_bytes(make(frames[2]))
    with pytest.raises(InputError) as e:
        load_video(tmp_path)
    msg = str(e.value)
    assert needle in msg and f"00002.{ext}" in msg and "\n" not in msg, msg
    with pytest.raises(InputError, match=re.escape(needle)):            # a single image file, too
        load_video(tmp_path / f"00002.{ext}")
    assert load_video(tmp_path, max_frames=2).shape[0] == 2              # frames before it are fine


def test_complete_jpeg_with_zero_padding_or_bytes_before_its_end_is_read(tmp_path):
    f = textured_frames(1, (96, 128))[0]
    data = _jpeg(f)
    (tmp_path / "0.jpg").write_bytes(data + bytes(16))                   # zero padding after the end marker
    (tmp_path / "1.jpg").write_bytes(data[:-2] + b"\x00\x00\x00\x55" + data[-2:])  # junk before it (every pixel decoded)
    video = load_video(tmp_path)
    assert video.shape == (2, 96, 128, 3) and np.array_equal(video[0], video[1])


def test_pickled_jpeg_frames_are_checked_by_the_same_decoder(tmp_path):
    from eval.datasets import decode_jpeg_frames
    frames = [_jpeg(f) for f in textured_frames(3, (96, 128))]
    assert decode_jpeg_frames(frames, "x.pkl#0").shape == (3, 96, 128, 3)
    with pytest.raises(InputError, match=r"^x.pkl#0: frame 1 does not decode completely \(decoder: Corrupt JPEG"):
        decode_jpeg_frames([frames[0], _corrupt_middle(frames[1]), frames[2]], "x.pkl#0")


# ---------------------------------------------------------------------------------------------------------------
# 3. --max-frames and frame order


@pytest.mark.parametrize("bad", [0, -3, True, 2.5])
def test_max_frames_below_one_is_refused(tmp_path, bad):
    for t, f in enumerate(textured_frames(5, (16, 16))):
        cv2.imwrite(str(tmp_path / f"{t:05d}.png"), f)
    path = write_video(tmp_path / "v.avi", "MJPG", textured_frames(5, (16, 16)))
    for p in (tmp_path, path):
        with pytest.raises(InputError, match="--max-frames must be >= 1"):
            load_video(p, max_frames=bad)


def test_frames_are_read_in_numeric_order(tmp_path):
    for k, pattern in enumerate(["{}.png", "frame_{}.png", "{:05d}.png", "cam2_{:03d}.png", "{}.jpg"]):
        folder = tmp_path / str(k)
        folder.mkdir()
        for t in range(1, 13):                                           # frame t is the grey level 10·t
            cv2.imwrite(str(folder / pattern.format(t)), np.full((4, 6, 3), 10 * t, np.uint8))
        video = load_video(folder)
        assert np.allclose(video[:, 0, 0, 0], [10 * t for t in range(1, 13)], atol=2), pattern
        assert list_frame_files(folder) == [pattern.format(t) for t in range(1, 13)]
        assert np.allclose(load_video(folder, max_frames=3)[:, 0, 0, 0], [10, 20, 30], atol=2)


# ---------------------------------------------------------------------------------------------------------------
# 4. tiny frames


def test_dis_computes_flow_on_small_and_thin_frames():
    """OpenCV's DIS fails below 12 px and kills the process on thin frames (8×40 medium, 16×100 ultrafast):
    run in a child process so such a crash is a failed test, not a dead test run."""
    code = ("import numpy as np\n"
            "from flow.dis import DISFlow\n"
            "rng = np.random.default_rng(0)\n"
            "for preset in ('ultrafast', 'fast', 'medium'):\n"
            "    dis = DISFlow(preset)\n"
            "    for h, w in [(1, 1), (8, 8), (5, 40), (11, 11), (8, 40), (40, 8), (12, 200), (16, 100), (31, 100),\n"
            "                 (100, 16), (8, 854)]:\n"
            "        a = rng.integers(0, 255, (2, h, w, 3), dtype=np.uint8)\n"
            "        f = dis(a, np.roll(a, 1, axis=2))\n"
            "        assert f.shape == (2, 2, h, w) and np.isfinite(f).all(), (preset, h, w)\n"
            "print('done')\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "done", (r.returncode, r.stderr[-2000:])


def test_tiny_videos_track_or_are_refused_early(monkeypatch):
    """The representative configs (no flow; LK; DIS with integration; RAFT at the frames' own size) on
    videos of 4 tiny frames: each tracks (the query stays where it was given) or raises a PitrackError."""
    tiny = [(1, 1), (8, 8), (5, 40), (11, 11), (16, 16)]
    runs = [("baselines/static.yaml", tiny), ("baselines/klt.yaml", tiny), ("mft.yaml", tiny)]
    if raft_small_path() is not None:
        monkeypatch.setenv("PITRACK_WEIGHTS", os.path.dirname(raft_small_path()))
        runs += [("flow_variants/raft12-native.yaml", [(5, 40)]), ("tto_gpu.yaml", [(8, 8), (16, 16)])]
    rng = np.random.default_rng(0)
    for config, sizes in runs:
        for h, w in sizes:
            video = rng.integers(0, 255, (4, h, w, 3), dtype=np.uint8)
            queries = np.array([[0, w / 2, h / 2], [3, 0.5, 0.5]], np.float32)
            try:
                r = Tracker.from_config(os.path.join(ROOT, "configs", config), progress=False)(video, queries)
            except PitrackError:
                continue                                   # a clear refusal is allowed; a traceback is not
            assert r.tracks.shape == (2, 4, 2) and np.isfinite(r.tracks).all(), (config, h, w)
            assert np.allclose(r.tracks[np.arange(2), [0, 3]], queries[:, 1:], atol=1e-3), (config, h, w)


# ---------------------------------------------------------------------------------------------------------------
# 5-7. the Python API


@pytest.fixture(scope="module")
def klt():
    return Tracker.from_config(KLT, progress=False, use_cache=False)


@pytest.fixture(scope="module")
def clip():
    """A tiny clip uint8 [6, 48, 64, 3] RGB and two queries."""
    frames = np.stack(textured_frames(6, (48, 64), seed=3))[..., ::-1]
    return np.ascontiguousarray(frames), np.array([[0, 20.5, 24.0], [2, 40.0, 10.5]], np.float32)


def test_queries_that_are_not_real_numbers_are_refused(klt, clip):
    video, queries = clip
    for dtype in (np.complex64, bool, object):
        with warnings.catch_warnings():
            warnings.simplefilter("error")                 # numpy's ComplexWarning would be an error too
            with pytest.raises(InputError, match="queries must be real numbers"):
                klt(video, queries.astype(dtype))
    assert klt(video, np.round(queries).astype(np.int64)).tracks.shape == (2, 6, 2)   # integers are fine


def test_list_of_frames_of_different_sizes_names_the_first_odd_frame(klt, clip):
    video, queries = clip
    frames = list(video)
    assert np.array_equal(klt(frames, queries).tracks, klt(video, queries).tracks)   # a list of frames is fine
    frames[3] = frames[3][:40]
    with pytest.raises(InputError, match=r"video frame 3 has shape \[40, 64, 3\] but frame 0 has \[48, 64, 3\]"):
        klt(frames, queries)


def test_cotracker_layout_tracks_like_ours(klt, clip):
    torch = pytest.importorskip("torch")
    video, queries = clip
    ours = klt(video, queries)
    as_cotracker = torch.from_numpy(video).permute(0, 3, 1, 2)[None].float()      # [1, T, 3, H, W] 0..255
    q = torch.from_numpy(queries)[None]                                             # [1, N, 3]
    for v, qq in [(as_cotracker, q), (as_cotracker.numpy(), q.numpy()), (as_cotracker.to(torch.uint8), queries),
                  (torch.from_numpy(video), q)]:
        r = klt(v, qq)
        assert r.tracks.shape == (2, 6, 2) and r.visible.shape == (2, 6) and r.sigma.shape == (2, 6)
        assert np.array_equal(r.tracks, ours.tracks) and np.array_equal(r.visible, ours.visible)
    dense = klt.dense(as_cotracker, query_frame=1, stride=16)
    assert np.array_equal(dense.tracks, klt.dense(video, query_frame=1, stride=16).tracks)


def test_cotracker_layout_errors(klt, clip):
    torch = pytest.importorskip("torch")
    video, queries = clip
    v = torch.from_numpy(video).permute(0, 3, 1, 2)[None].float()
    with pytest.raises(InputError, match="batch of 2 videos .*pass one video at a time"):
        klt(torch.cat([v, v]), queries)
    with pytest.raises(InputError, match="batch of 2 .*one video at a time"):
        klt(v, torch.from_numpy(np.stack([queries, queries])))
    with pytest.raises(InputError, match=r"values in \[0, 510\]: they must lie in 0..255"):
        klt(v * 2, queries)
    with pytest.raises(InputError, match=r"values in \[-1, .*0..255"):
        klt(v / 127.5 - 1, queries)
    bad = v.clone()
    bad[0, 2, 1, 5, 5] = float("nan")
    with pytest.raises(InputError, match="NaN or infinity"):
        klt(bad, queries)
    with pytest.raises(InputError, match=r"uint8 \(0..255\), got float"):     # our layout stays uint8 only
        klt(video.astype(np.float32), queries)


def test_tracker_module_imports_without_torch():
    code = "import sys, pitrack.tracker; print('torch' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "False", r.stderr[-2000:]


def test_api_inputs_of_the_wrong_kind_are_one_clear_error(klt, clip, tmp_path, monkeypatch):
    """A meta-device tensor (no data), a bytes path, a float video of 0..1 in CoTracker's layout (it would be
    tracked as an almost black video), an object that is no path, and a frame folder that cannot be listed."""
    torch = pytest.importorskip("torch")
    video, queries = clip
    with pytest.raises(InputError, match="meta device holds no data"):
        klt(torch.empty(video.shape, dtype=torch.uint8, device="meta"), queries)
    with pytest.raises(InputError, match="meta device holds no data"):
        klt(video, torch.empty((2, 3), device="meta"))
    for t, f in enumerate(video):
        cv2.imwrite(str(tmp_path / f"{t}.png"), f[..., ::-1])
    assert np.array_equal(load_video(os.fsencode(str(tmp_path))), load_video(tmp_path))
    with pytest.raises(InputError, match="video must be a path .* got int"):
        load_video(5)
    v01 = torch.from_numpy(video).permute(0, 3, 1, 2)[None].float() / 255
    with pytest.raises(InputError, match=r"is float with values in \[0, 1\]: CoTracker's layout takes 0..255"):
        klt(v01, queries)
    assert klt(v01 * 255, queries).tracks.shape == (2, 6, 2)
    real = os.listdir
    monkeypatch.setattr(os, "listdir", lambda p=".": (_ for _ in ()).throw(PermissionError(13, "Permission denied"))
                        if os.fspath(p) == str(tmp_path) else real(p))
    with pytest.raises(InputError, match=r"cannot list the video folder .* \(Permission denied\)"):
        load_video(tmp_path)


def test_a_fractional_frame_index_beyond_one_millionth_is_refused(klt, clip):
    video, queries = clip
    q = queries.astype(np.float64)
    q[0, 0] = 0.9995
    with pytest.raises(InputError, match=r"frame index 0.9995: must be an integer"):
        klt(video, q)
    q[0, 0] = 1 - 1e-7                                   # float rounding of 1: accepted as frame 1
    assert klt(video, q).tracks.shape == (2, 6, 2)
