"""Readers for the evaluation datasets: the project's folders and the files TAP-Vid and BADJA publish.

Every reader gives a ``TapVidVideo`` or a ``BadjaVideo`` whose ground truth is in pixels of the frames it
loads (corner convention, core.coords). ``list_videos(data)`` finds the videos of any of these:

- **TAP-Vid folder** (../shared/README.md): ``frames/*.jpg``, ``tracks.npz`` (points [N, T, 2] (x, y) px,
  occluded [N, T]), ``meta.json``; or a folder of such folders.
- **TAP-Vid pickle**, as published: DAVIS ``tapvid_davis.pkl`` (a dict name → record), RGB-Stacking
  ``tapvid_rgb_stacking.pkl`` (a list of records), RoboTAP ``robotap_split*.pkl`` (dicts), Kinetics
  ``*_of_0010.pkl`` (lists); a file, or a folder of them. A record: ``video`` uint8 [T, H, W, 3] or a
  sequence of T JPEG-encoded frames (bytes), ``points`` float [N, T, 2] (x, y) normalised to [0, 1] (times
  the frame size gives corner-convention pixels), ``occluded`` bool [N, T]. A video's name is its dict key,
  or ``<file stem>_<index>`` in a list.
- **BADJA folder** (../shared/README.md): ``frames/``, ``gt_masks/`` (metric only), ``joints.npz``, ``meta.json``.
- **BADJA release**: ``ROOT/joint_annotations/<animal>.json``, a list of annotated frames {``image_path``,
  ``segmentation_path`` (both relative to ROOT, DAVIS layout ``DAVIS/JPEGImages/<res>/<animal>/00000.jpg``),
  ``joints`` [J][2] (row, column) px, ``visibility`` [J]}; the video is every frame of the image folder.
"""
import functools
import json
import os
import pickle
import zipfile
from dataclasses import dataclass

import numpy as np

from core.errors import InputError, shortened
from core.images import NativeMessages, decode_image, image_format, is_complete_image
from pitrack.video import list_frame_files, load_video

STRIDE = 5  # TAP-Vid query-strided: every 5th frame


def read_npz(path, keys):
    """The arrays ``keys`` of an .npz archive, read now: one InputError naming the file unless it is a zip
    file that holds them (not a zip, a damaged member, a missing key, pickled objects)."""
    if not zipfile.is_zipfile(path):
        raise InputError(f"{path} is not an .npz archive (not a zip file)")
    try:
        with np.load(path, allow_pickle=False) as d:
            return tuple(d[k] for k in keys)
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise InputError(f"cannot read {path} ({shortened(e)})") from None


class TapVidVideo:
    """A TAP-Vid video: ``points`` float32 [N, T, 2] (x, y) px of the loaded frames, ``occluded`` bool [N, T]."""
    kind = "tapvid"

    def __init__(self, name, points, occluded, size_hw, load_frames, source):
        self.name, self.source, self._load = name, source, load_frames
        self.points = np.asarray(points, np.float32)
        self.occluded = np.asarray(occluded).astype(bool)
        if self.points.ndim != 3 or self.points.shape[2] != 2 or self.points.shape[:2] != self.occluded.shape:
            raise InputError(f"{source}: points {list(self.points.shape)} / occluded {list(self.occluded.shape)} "
                             f"do not match ([N, T, 2] and [N, T])")
        self.num_frames = self.points.shape[1]
        self.size_hw = (int(size_hw[0]), int(size_hw[1]))

    @classmethod
    def from_folder(cls, folder):
        points, occluded = read_npz(os.path.join(folder, "tracks.npz"), ("points", "occluded"))
        meta = _read_meta(folder)
        if not {"height", "width"} <= set(meta):
            raise InputError(f"{folder}: meta.json lacks height or width")
        video = cls(_basename(folder), points, occluded, (meta["height"], meta["width"]), None, folder)
        video._load = lambda: _check_frame_count(load_video(os.path.join(folder, "frames")), video.num_frames, folder)
        return video

    @classmethod
    def from_record(cls, name, record, source):
        """A record of a TAP-Vid pickle (layout checked by ``check_record``); frames decode on ``load_frames``."""
        frames = record["video"]
        if isinstance(frames, np.ndarray) and frames.dtype == np.uint8:
            size_hw = frames.shape[1:3]
            load = lambda: np.ascontiguousarray(frames)
        else:
            size_hw = _decode_jpeg(frames[0], source, 0).shape[:2]
            load = lambda: decode_jpeg_frames(frames, source)
        points = np.asarray(record["points"], np.float64) * np.array([size_hw[1], size_hw[0]])
        return cls(name, points.astype(np.float32), record["occluded"], size_hw, load, source)

    def load_frames(self):
        """uint8 RGB [T, H, W, 3]."""
        return self._load()

    def queries(self, mode, query_frame=None):
        """Queries [M, 3] (t, x, y original px) and the ground-truth track of each query [M].

        first: each track once, at its first visible frame (a track never visible gives none). strided: each
        track at frames 0, 5, 10, … where it is visible. Order: tracks in file order; for each track, query
        frames ascending. ``query_frame``: only the queries on that frame (e.g. query-first tracks starting in frame 0).
        """
        rows, index = [], []
        for i in range(self.points.shape[0]):
            vis = np.nonzero(~self.occluded[i])[0]
            if mode == "first":
                frames = vis[:1]
            elif mode == "strided":
                frames = [t for t in range(0, self.num_frames, STRIDE) if not self.occluded[i, t]]
            else:
                raise InputError(f"mode must be 'first' or 'strided', got {mode!r}")
            for t in frames:
                if query_frame is None or t == query_frame:
                    rows.append((t, *self.points[i, t]))
                    index.append(i)
        return np.array(rows, np.float32).reshape(-1, 3), np.array(index, int)

    def score(self, pred_tracks, pred_visible, mode, query_frame=None):
        """TAP-Vid metrics and error shares (eval.metrics) for a prediction made with
        ``self.queries(mode, query_frame)`` (original px in, 256 raster scored)."""
        from eval.metrics import tapvid_error_shares, tapvid_metrics
        from core.coords import SCORING_SIZE, scale_xy
        queries, index = self.queries(mode, query_frame)
        _check_prediction(pred_tracks, pred_visible, queries.shape[0], self.num_frames)
        hw = self.size_hw
        args = (queries[:, 0], scale_xy(self.points[index], hw, SCORING_SIZE), self.occluded[index],
                scale_xy(pred_tracks, hw, SCORING_SIZE), ~np.asarray(pred_visible, bool), mode)
        return {**tapvid_metrics(*args), **tapvid_error_shares(*args)}

    def candidate_is_wrong(self, track, frame, xy, tolerance=8.0):
        """Bool [R]: is a candidate of track ``track`` [R] at ``frame`` [R], position ``xy`` [R, 2] (original px)
        wrong, i.e. is the point occluded there, or is it more than ``tolerance`` px (256 raster) away?"""
        from core.coords import SCORING_SIZE, scale_xy
        track, frame = np.asarray(track, int), np.asarray(frame, int)
        gt = scale_xy(self.points[track, frame], self.size_hw, SCORING_SIZE)
        err = np.linalg.norm(scale_xy(xy, self.size_hw, SCORING_SIZE) - gt, axis=-1)
        return self.occluded[track, frame] | (err > tolerance)


class BadjaVideo:
    """A BADJA video: every frame of ``frames_dir``; ``frames`` int [K] annotated frame indices, ``points``
    float32 [J, K, 2] (x, y) px, ``visible`` bool [J, K]; ``mask_paths`` [K] the metric's masks."""
    kind = "badja"

    def __init__(self, name, frames_dir, frames, points, visible, mask_paths, source):
        self.name, self.frames_dir, self.source = name, frames_dir, source
        self.frames = np.asarray(frames, int)
        self.points = np.asarray(points, np.float32)
        self.visible = np.asarray(visible).astype(bool)
        self.mask_paths = list(mask_paths)
        if (self.points.shape[1:] != (self.frames.size, 2) or self.visible.shape != self.points.shape[:2]
                or len(self.mask_paths) != self.frames.size or self.frames.size == 0):
            raise InputError(f"{source}: {self.frames.size} annotated frames but points "
                             f"{list(self.points.shape)}, visible {list(self.visible.shape)}, {len(self.mask_paths)} masks")
        names = list_frame_files(frames_dir) if os.path.isdir(frames_dir) else []
        if not names:
            raise InputError(f"{source}: no frames in {frames_dir}")
        self.num_frames = len(names)
        if self.frames.min() < 0 or self.frames.max() >= self.num_frames:
            raise InputError(f"{source}: annotated frame {self.frames.max()} outside the {self.num_frames} frames")
        self.size_hw = _image_size(os.path.join(frames_dir, names[0]))

    @classmethod
    def from_folder(cls, folder):
        frames, points, visible = read_npz(os.path.join(folder, "joints.npz"), ("frames", "points", "visible"))
        masks_dir = os.path.join(folder, "gt_masks")
        masks = list_frame_files(masks_dir) if os.path.isdir(masks_dir) else []
        if len(masks) <= int(np.max(frames, initial=-1)):
            raise InputError(f"{folder}: gt_masks/ has {len(masks)} masks, fewer than the annotated frames need")
        return cls(_basename(folder), os.path.join(folder, "frames"), frames, points, visible,
                   [os.path.join(masks_dir, masks[f]) for f in frames], folder)

    @classmethod
    def from_release(cls, json_path):
        """One animal of the BADJA release (``ROOT/joint_annotations/<animal>.json``, paths relative to ROOT)."""
        root = os.path.dirname(os.path.dirname(os.path.abspath(json_path)))
        try:
            with open(json_path, encoding="utf-8") as f:
                entries = json.load(f)
            image_paths = [os.path.join(root, e["image_path"]) for e in entries]
            mask_paths = [os.path.join(root, e["segmentation_path"]) for e in entries]
            joints = np.array([e["joints"] for e in entries], np.float64)             # [K, J, 2] (row, col)
            visible = np.array([e["visibility"] for e in entries], bool)              # [K, J]
        except (OSError, ValueError, TypeError, KeyError) as e:
            raise InputError(f"{json_path}: not a BADJA annotation file ({type(e).__name__}: {e})") from None
        if not entries or joints.ndim != 3 or joints.shape[2] != 2 or visible.shape != joints.shape[:2]:
            raise InputError(f"{json_path}: not a BADJA annotation file (needs a list of frames with joints [J][2] "
                             f"and visibility [J])")
        for p in image_paths + mask_paths:
            if not os.path.isfile(p):
                raise InputError(f"{json_path}: missing file {p}")
        frames_dir = os.path.dirname(image_paths[0])
        if any(os.path.dirname(p) != frames_dir for p in image_paths):
            raise InputError(f"{json_path}: annotated images lie in more than one folder")
        names = list_frame_files(frames_dir)
        frames = np.array([names.index(os.path.basename(p)) for p in image_paths])
        order = np.argsort(frames, kind="stable")
        points = joints[order][..., ::-1].transpose(1, 0, 2)                           # [J, K, 2] (x, y)
        return cls(os.path.splitext(os.path.basename(json_path))[0], frames_dir, frames[order], points,
                   visible[order].T, [mask_paths[i] for i in order], json_path)

    def load_frames(self):
        return load_video(self.frames_dir)

    def queries(self, mode=None):
        """Every joint visible at the first annotated frame, queried there. [M, 3] and joint index [M]."""
        f0 = self.frames[0]
        joints = np.nonzero(self.visible[:, 0])[0]
        q = np.concatenate([np.full((joints.size, 1), f0, np.float32), self.points[joints, 0]], 1)
        return q.astype(np.float32), joints

    def mask_areas(self):
        """Foreground pixel count of the metric mask at each annotated frame, in pixels of the tracked frames
        (a mask of another size is scaled by the area ratio); the tracker never reads these."""
        import cv2
        areas = []
        for path in self.mask_paths:
            m = cv2.imread(path, cv2.IMREAD_GRAYSCALE)
            if m is None:
                raise InputError(f"{self.source}: cannot read mask {path}")
            scale = self.size_hw[0] * self.size_hw[1] / (m.shape[0] * m.shape[1])
            areas.append(int(np.count_nonzero(m)) if scale == 1 else np.count_nonzero(m) * scale)
        return np.array(areas)

    def score(self, pred_tracks, pred_visible=None, mode=None):
        from eval.metrics import badja_pck
        queries, joints = self.queries()
        _check_prediction(pred_tracks, pred_visible, queries.shape[0], self.num_frames)
        pred = np.asarray(pred_tracks)[:, self.frames]
        return badja_pck(pred, self.points[joints], self.visible[joints], self.mask_areas(), self.size_hw,
                         self.frames != self.frames[0])


# ---------------------------------------------------------------------------------------------------------------
# Finding videos


@dataclass(frozen=True)
class VideoRef:
    """Where one video is: ``path`` a video folder, a TAP-Vid pickle (``key``: the record's dict key or list
    index) or a BADJA annotation JSON. Small and picklable; ``open()`` reads it."""
    name: str
    path: str
    key: object = None

    @property
    def source(self):
        """The video's identity in results: the path, and ``#key`` for a record of a pickle."""
        return self.path if self.key is None else f"{self.path}#{self.key}"

    @property
    def kind(self):
        """'tapvid' or 'badja', from the file or folder alone (without reading the video)."""
        if self.path.endswith(".json") or os.path.isfile(os.path.join(self.path, "joints.npz")):
            return "badja"
        return "tapvid"

    def open(self):
        if self.path.endswith(".pkl"):
            return TapVidVideo.from_record(self.name, load_pickle(self.path)[self.key], self.source)
        if self.path.endswith(".json"):
            return BadjaVideo.from_release(self.path)
        return open_video_folder(self.path)

    def record(self):
        """The TAP-Vid record of a pickle's video (None for other sources)."""
        return load_pickle(self.path)[self.key] if self.path.endswith(".pkl") else None


def list_videos(data, videos=None):
    """VideoRefs of a dataset in any supported format (module docstring), in dataset order.

    ``videos``: None, or a comma-separated string / list of names: only those, in that order; a name not in
    ``data`` is an InputError (a typo must not silently shrink a benchmark). Pickles are loaded and every
    record's layout is checked here, before any tracking."""
    data = os.path.abspath(data)
    refs = _all_videos(data)
    if not refs:
        raise InputError(f"{data} holds no videos")
    seen = set()
    for r in refs:
        if r.name in seen:
            raise InputError(f"{data}: two videos are named {r.name}")
        seen.add(r.name)
    if not videos:
        return refs
    wanted = videos.split(",") if isinstance(videos, str) else list(videos)
    by_name = {r.name: r for r in refs}
    missing = [w for w in wanted if w not in by_name]
    if missing:
        raise InputError(f"--videos: no video named {missing[0]} in {data}")
    return [by_name[w] for w in wanted]


def open_one_video(data, name=None):
    """The one video of ``data`` (or the one called ``name``): InputError if there are several and no name."""
    refs = list_videos(data, [name] if name else None)
    if len(refs) != 1:
        raise InputError(f"{data} holds {len(refs)} videos; name one (e.g. {refs[0].name})")
    return refs[0].open()


def open_video_folder(folder):
    """A TapVidVideo or BadjaVideo, by which annotation file the folder holds."""
    if os.path.isfile(os.path.join(folder, "tracks.npz")):
        return TapVidVideo.from_folder(folder)
    if os.path.isfile(os.path.join(folder, "joints.npz")):
        return BadjaVideo.from_folder(folder)
    raise InputError(f"{folder} is not a video folder (no tracks.npz or joints.npz)")


def is_video_folder(folder):
    return any(os.path.isfile(os.path.join(folder, f)) for f in ("tracks.npz", "joints.npz"))


def _all_videos(data):
    if os.path.isfile(data):
        if data.endswith(".pkl"):
            return _pickle_videos(data)
        if data.endswith(".json"):
            ref = VideoRef(os.path.splitext(os.path.basename(data))[0], data)
            ref.open()
            return [ref]
        raise InputError(f"{data}: not a dataset (a folder, a TAP-Vid .pkl or a BADJA .json)")
    if not os.path.isdir(data):
        raise InputError(f"data not found: {data}")
    if is_video_folder(data):
        folders = [data]
    else:
        try:
            entries = sorted(os.listdir(data))
        except OSError as e:
            raise InputError(f"cannot list {data} ({e.strerror or e})") from None
        folders = [os.path.join(data, d) for d in entries if is_video_folder(os.path.join(data, d))]
    if folders:
        refs = [VideoRef(_basename(f), f) for f in folders]
        for r in refs:          # cheap (tracks.npz / joints.npz and meta.json; frames are read later)
            r.open()
        return refs
    annotations = os.path.join(data, "joint_annotations")
    if os.path.isdir(annotations):
        jsons = sorted(f for f in os.listdir(annotations) if f.endswith(".json"))
        refs = [VideoRef(os.path.splitext(f)[0], os.path.join(annotations, f)) for f in jsons]
        for r in refs:          # cheap (the JSON and a look at each file): a missing image is found now
            r.open()
        return refs
    pickles = [os.path.join(data, f) for f in entries if f.endswith(".pkl")]
    if pickles:
        return [r for p in pickles for r in _pickle_videos(p)]
    raise InputError(f"{data} holds no videos in a known format (video folders with tracks.npz or joints.npz, "
                     f"TAP-Vid .pkl files, or a BADJA joint_annotations/ folder)")


def _pickle_videos(path):
    data = load_pickle(path)
    stem = os.path.splitext(os.path.basename(path))[0]
    keys = list(data) if isinstance(data, dict) else range(len(data))
    refs = [VideoRef(str(k) if isinstance(data, dict) else f"{stem}_{k:04d}", path, k) for k in keys]
    for r in refs:
        check_record(data[r.key], r.source)
    return refs


# The only globals a TAP-Vid pickle refers to: numpy arrays (protocols 2-4: _reconstruct + ndarray + dtype;
# protocol 5: _frombuffer), numpy scalars, under numpy 1's and numpy 2's module names, and _codecs.encode,
# which protocol 2 writes bytes with (str -> latin-1 bytes). Dicts, lists, tuples,
# strings, bytes and Python numbers need no global. Anything else (os.system, builtins.eval, a class with a
# __reduce__) is refused before it is called.
PICKLE_GLOBALS = frozenset(f"{m}.{n}" for m, names in (
    ("numpy", ("ndarray", "dtype")),
    ("numpy.core.multiarray", ("_reconstruct", "scalar")), ("numpy._core.multiarray", ("_reconstruct", "scalar")),
    ("numpy.core.numeric", ("_frombuffer",)), ("numpy._core.numeric", ("_frombuffer",)), ("_codecs", ("encode",)),
) for n in names)


class _DataUnpickler(pickle.Unpickler):
    """Admits only :data:`PICKLE_GLOBALS`; any other global is an UnpicklingError naming it."""

    def find_class(self, module, name):
        if f"{module}.{name}" not in PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"refused global {module}.{name}: a TAP-Vid pickle holds only dicts, "
                                         f"lists, strings, numbers and numpy arrays")
        return super().find_class(module, name)


@functools.lru_cache(maxsize=1)
def load_pickle(path):
    """A TAP-Vid pickle: a dict name → record or a list of records (the last file read stays in memory), read
    by a restricted unpickler (:data:`PICKLE_GLOBALS`): a pickle that would run code is refused unrun."""
    try:
        with open(path, "rb") as f:
            data = _DataUnpickler(f).load()
    except pickle.UnpicklingError as e:
        raise InputError(f"{path}: cannot read the pickle ({e})") from None
    except (OSError, EOFError, AttributeError, ImportError, ValueError, TypeError, IndexError, KeyError,
            MemoryError, RecursionError) as e:
        raise InputError(f"{path}: cannot read the pickle ({type(e).__name__}: {shortened(e)})") from None
    if not isinstance(data, (dict, list)):
        raise InputError(f"{path}: not a TAP-Vid pickle (expected a dict of name → record or a list of records, "
                         f"got {type(data).__name__})")
    return data


def check_record(record, source):
    """InputError unless ``record`` has the TAP-Vid layout (module docstring). JPEG frames are checked for
    their start and end markers here (core.images.is_complete_image: a truncated file lacks the end) and
    decoded only with the video."""
    if not isinstance(record, dict) or not {"video", "points", "occluded"} <= set(record):
        got = sorted(record) if isinstance(record, dict) else type(record).__name__
        raise InputError(f"{source}: not a TAP-Vid record (needs 'video', 'points', 'occluded'; got {got})")
    points, occluded, video = np.asarray(record["points"]), np.asarray(record["occluded"]), record["video"]
    if points.ndim != 3 or points.shape[2] != 2 or occluded.shape != points.shape[:2]:
        raise InputError(f"{source}: points {list(points.shape)} / occluded {list(occluded.shape)} "
                         f"are not [N, T, 2] / [N, T]")
    if isinstance(video, np.ndarray) and video.dtype != object:
        if video.dtype != np.uint8 or video.ndim != 4 or video.shape[3] != 3:
            raise InputError(f"{source}: video is {video.dtype} {list(video.shape)}, expected uint8 [T, H, W, 3]")
        n = video.shape[0]
    else:
        if not all(isinstance(b, bytes) for b in video):
            raise InputError(f"{source}: video is neither a uint8 array nor a list of JPEG bytes")
        n = len(video)
        for t, b in enumerate(video):
            if image_format(b) != "JPEG" or not is_complete_image(b):
                raise InputError(f"{source}: frame {t} is not a complete JPEG")
    if n != points.shape[1]:
        raise InputError(f"{source}: {n} frames but the points have {points.shape[1]}")


def decode_jpeg_frames(frames, source):
    """uint8 RGB [T, H, W, 3] from JPEG-encoded frames; InputError naming the first that does not decode
    completely (core.images.decode_image)."""
    out = []
    with NativeMessages() as messages:
        for t, b in enumerate(frames):
            img = _decode_jpeg(b, source, t, messages)
            if out and img.shape != out[0].shape:
                raise InputError(f"{source}: frame {t} is {img.shape[1]}x{img.shape[0]}, frame 0 "
                                 f"{out[0].shape[1]}x{out[0].shape[0]}")
            out.append(img)
    return np.stack(out)


def _decode_jpeg(data, source, t, messages=None):
    img = decode_image(data, f"{source}: frame {t}", messages, fmt_expected="JPEG")
    return np.ascontiguousarray(img[..., ::-1])


def _check_frame_count(video, num_frames, source):
    if video.shape[0] != num_frames:
        raise InputError(f"{source}: {video.shape[0]} frames but the ground truth has {num_frames}")
    return video


def _image_size(path):
    import cv2
    img = cv2.imread(path, cv2.IMREAD_GRAYSCALE)
    if img is None:
        raise InputError(f"cannot read frame {path}")
    return img.shape[:2]


def _basename(path):
    return os.path.basename(os.path.normpath(path))


def _read_meta(folder):
    try:
        with open(os.path.join(folder, "meta.json")) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise InputError(f"{folder}: cannot read meta.json ({e})") from None


def _check_prediction(tracks, visible, num_queries, num_frames):
    tracks = np.asarray(tracks)
    if tracks.shape != (num_queries, num_frames, 2):
        raise InputError(f"prediction tracks have shape {list(tracks.shape)}, expected "
                         f"[{num_queries}, {num_frames}, 2] (queries of this video and mode × frames × xy)")
    if visible is not None and np.asarray(visible).shape != (num_queries, num_frames):
        raise InputError(f"prediction visible has shape {list(np.asarray(visible).shape)}, "
                         f"expected [{num_queries}, {num_frames}]")
