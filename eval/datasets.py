"""Readers for the evaluation folders (formats in ../shared/README.md). Any folder in the format works.

TAP-Vid format: ``frames/*.jpg``, ``tracks.npz`` (points [N, T, 2] (x, y) original px, occluded [N, T]),
``meta.json``. BADJA format: ``frames/*.jpg``, ``gt_masks/*.png`` (metric only), ``joints.npz``
(frames [K], points [J, K, 2], visible [J, K]), ``meta.json``.
"""
import json
import os

import numpy as np

from core.errors import InputError
from pitrack.video import list_frame_files, load_video

STRIDE = 5  # TAP-Vid query-strided: every 5th frame


class TapVidVideo:
    kind = "tapvid"

    def __init__(self, folder):
        self.folder = folder
        self.name = os.path.basename(os.path.normpath(folder))
        try:
            d = np.load(os.path.join(folder, "tracks.npz"))
            self.points = d["points"].astype(np.float32)
            self.occluded = d["occluded"].astype(bool)
        except (OSError, KeyError, ValueError) as e:
            raise InputError(f"{folder}: cannot read tracks.npz ({e})") from None
        if self.points.ndim != 3 or self.points.shape[:2] != self.occluded.shape:
            raise InputError(f"{folder}: tracks.npz points {self.points.shape} / occluded {self.occluded.shape} mismatch")
        self.num_frames = self.points.shape[1]
        self.meta = _read_meta(folder)

    @property
    def size_hw(self):
        return int(self.meta["height"]), int(self.meta["width"])

    def load_frames(self):
        video = load_video(os.path.join(self.folder, "frames"))
        if video.shape[0] != self.num_frames:
            raise InputError(f"{self.folder}: {video.shape[0]} frames but tracks.npz has {self.num_frames}")
        return video

    def queries(self, mode, query_frame=None):
        """Queries [M, 3] (t, x, y original px) and the ground-truth track of each query [M].

        first: each track once, at its first visible frame. strided: each track at frames 0, 5, 10, …
        where it is visible. Order: tracks in file order; for each track, query frames ascending.
        ``query_frame``: only the queries on that frame (e.g. query-first tracks starting in frame 0).
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
    kind = "badja"

    def __init__(self, folder):
        self.folder = folder
        self.name = os.path.basename(os.path.normpath(folder))
        try:
            d = np.load(os.path.join(folder, "joints.npz"))
            self.frames = d["frames"].astype(int)
            self.points = d["points"].astype(np.float32)
            self.visible = d["visible"].astype(bool)
        except (OSError, KeyError, ValueError) as e:
            raise InputError(f"{folder}: cannot read joints.npz ({e})") from None
        self.meta = _read_meta(folder)
        self.num_frames = len(list_frame_files(os.path.join(folder, "frames")))

    @property
    def size_hw(self):
        return int(self.meta["height"]), int(self.meta["width"])

    def load_frames(self):
        return load_video(os.path.join(self.folder, "frames"))

    def queries(self, mode=None):
        """Every joint visible at the first annotated frame, queried there. [M, 3] and joint index [M]."""
        f0 = self.frames[0]
        joints = np.nonzero(self.visible[:, 0])[0]
        q = np.concatenate([np.full((joints.size, 1), f0, np.float32), self.points[joints, 0]], 1)
        return q.astype(np.float32), joints

    def mask_areas(self):
        """Foreground pixel count of the metric mask at each annotated frame (the tracker never reads these)."""
        import cv2
        names = list_frame_files(os.path.join(self.folder, "gt_masks"))
        areas = []
        for f in self.frames:
            m = cv2.imread(os.path.join(self.folder, "gt_masks", names[f]), cv2.IMREAD_GRAYSCALE)
            if m is None:
                raise InputError(f"{self.folder}: cannot read mask of frame {f}")
            areas.append(int(np.count_nonzero(m)))
        return np.array(areas)

    def score(self, pred_tracks, pred_visible=None, mode=None):
        from eval.metrics import badja_pck
        queries, joints = self.queries()
        _check_prediction(pred_tracks, pred_visible, queries.shape[0], self.num_frames)
        pred = np.asarray(pred_tracks)[:, self.frames]
        return badja_pck(pred, self.points[joints], self.visible[joints], self.mask_areas(), self.size_hw,
                         self.frames != self.frames[0])


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


def open_video_folder(folder):
    """A TapVidVideo or BadjaVideo, by which annotation file the folder holds."""
    if os.path.isfile(os.path.join(folder, "tracks.npz")):
        return TapVidVideo(folder)
    if os.path.isfile(os.path.join(folder, "joints.npz")):
        return BadjaVideo(folder)
    raise InputError(f"{folder} is not a video folder (no tracks.npz or joints.npz)")


def is_video_folder(folder):
    return any(os.path.isfile(os.path.join(folder, f)) for f in ("tracks.npz", "joints.npz"))


def list_video_folders(data_dir, videos=None):
    """Video folders of a dataset folder (sorted by name), or [data_dir] if it is itself a video folder.

    ``videos``: None, or a comma-separated string / list of video names: only those, in that order; a
    name not in ``data_dir`` is an InputError (a typo must not silently shrink a benchmark)."""
    found = _all_video_folders(data_dir)
    if not videos:
        return found
    wanted = videos.split(",") if isinstance(videos, str) else list(videos)
    names = {os.path.basename(os.path.normpath(f)): f for f in found}
    missing = [w for w in wanted if w not in names]
    if missing:
        raise InputError(f"--videos: no video named {missing[0]} in {data_dir}")
    return [names[w] for w in wanted]


def _all_video_folders(data_dir):
    if not os.path.isdir(data_dir):
        raise InputError(f"data folder not found: {data_dir}")
    if is_video_folder(data_dir):
        return [data_dir]
    found = [os.path.join(data_dir, d) for d in sorted(os.listdir(data_dir))
             if is_video_folder(os.path.join(data_dir, d))]
    if not found:
        raise InputError(f"{data_dir} holds no video folders (with tracks.npz or joints.npz)")
    return found
