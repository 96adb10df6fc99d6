"""Drift on long videos, measured with object masks (no point labels needed beyond the labelled frames).

    python -m eval.drift --config C --data ../shared/data/davis_full [--videos a,b] [--step 16] [--from-frame 32]
        [--dilate 8] [--out report.json]

``--data``: folders of ``frames/`` and ``masks/`` (PNGs, all annotated objects together: any non-zero pixel,
grey or DAVIS palette colour, is the object; the masks are read here only, never by the tracker). Queries: a grid of every ``--step`` px of frame 0 (pixel centres,
starting at step/2) kept where frame 0's mask is on (a video with none is left out, and named). Each video is tracked whole; then, with M_t the mask of
frame t dilated by ``--dilate`` px (a square of side 2·dilate + 1) and p_it the tracked position:

* called visible from ``--from-frame`` on: the share of (point, frame ≥ from) pairs the tracker calls visible;
* on the object where visible: of those visible pairs, the share with p_it on M_t — what re-detection after
  an occlusion and drift along the flow chains decide, and the 32-frame labels cannot show;
* on the object at the last frame: the share of points whose last-frame position lies on M_T (visible or
  not), and the same among the points called visible there.

Per video and their means (over videos), with seconds per video.
"""
import argparse
import json
import os
import sys
import time

import cv2
import numpy as np

from core.errors import InputError, PitrackError
from pitrack.video import list_frame_files, load_video


def read_masks(folder, num_frames):
    """bool [T, H, W] from ``folder``'s PNGs (one per frame, in name order)."""
    files = [os.path.join(folder, f) for f in list_frame_files(folder)]
    if len(files) != num_frames:
        raise InputError(f"{folder} holds {len(files)} masks for {num_frames} frames")
    out = []
    for f in files:
        m = cv2.imread(f, cv2.IMREAD_UNCHANGED) if os.path.isfile(f) else None
        if m is None:
            raise InputError(f"mask {f} does not decode")
        out.append((m > 0).any(-1) if m.ndim == 3 else m > 0)
    return np.stack(out)


def mask_grid_queries(mask0, step):
    """Queries (t = 0, x, y corner-convention px) on a grid of every ``step`` px where ``mask0`` is on."""
    H, W = mask0.shape
    ys, xs = np.mgrid[step // 2:H:step, step // 2:W:step]
    on = mask0[ys, xs]
    q = np.stack([np.zeros(on.sum()), xs[on] + 0.5, ys[on] + 0.5], -1).astype(np.float32)
    return q


def on_mask(masks, xy):
    """bool [N, T]: whether position ``xy`` [N, T, 2] (corner px) lies on ``masks`` [T, H, W] (outside: False)."""
    T, H, W = masks.shape
    ix = np.floor(xy[..., 0]).astype(np.int64)
    iy = np.floor(xy[..., 1]).astype(np.int64)
    inside = (ix >= 0) & (ix < W) & (iy >= 0) & (iy < H)
    t = np.broadcast_to(np.arange(T)[None], ix.shape)
    out = np.zeros(ix.shape, bool)
    out[inside] = masks[t[inside], iy[inside], ix[inside]]
    return out


def drift_scores(tracks, visible, masks, from_frame, dilate):
    """The module docstring's shares from tracks [N, T, 2], visible [N, T] and masks [T, H, W]."""
    k = np.ones((2 * dilate + 1, 2 * dilate + 1), np.uint8)
    grown = np.stack([cv2.dilate(m.astype(np.uint8), k) > 0 for m in masks]) if dilate > 0 else masks
    on = on_mask(grown, tracks)
    late = np.zeros(visible.shape, bool)
    late[:, from_frame:] = True
    vis_late = visible & late

    def share(a, of):
        return float(a[of].mean()) if of.any() else None
    return {
        "points": int(tracks.shape[0]),
        "late_pairs": int(late.sum()),
        "called_visible_late": share(visible, late),
        "on_object_where_visible_late": share(on, vis_late),
        "on_object_last_frame": float(on[:, -1].mean()) if tracks.shape[0] else None,
        "on_object_last_frame_visible": share(on[:, -1], visible[:, -1]),
    }


def video_folders(data, videos=None):
    names = sorted(d for d in os.listdir(data) if os.path.isdir(os.path.join(data, d, "masks")))
    if videos:
        wanted = [v.strip() for v in videos.split(",") if v.strip()]
        missing = [v for v in wanted if v not in names]
        if missing:
            raise InputError(f"{data} has no video {missing[0]} with frames/ and masks/")
        names = wanted
    if not names:
        raise InputError(f"{data} holds no video folder with frames/ and masks/")
    return [(n, os.path.join(data, n)) for n in names]


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m eval.drift", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--videos", default=None)
    p.add_argument("--step", type=int, default=16, help="grid step of the queries on frame 0's mask, px")
    p.add_argument("--from-frame", type=int, default=32, help="first frame of the late part (beyond the labels)")
    p.add_argument("--dilate", type=int, default=8, help="px the masks are grown by")
    p.add_argument("--out", default=None, help="also write the report as JSON here")
    args = p.parse_args(argv)
    try:
        if args.step < 1 or args.from_frame < 1 or args.dilate < 0:
            raise InputError("--step and --from-frame must be >= 1, --dilate >= 0")
        if not os.path.isdir(args.data):
            raise InputError(f"--data {args.data} is not a folder")
        from pitrack import Tracker
        tracker = Tracker.from_config(args.config, progress=False)
        folders = video_folders(args.data, args.videos)
        rows, skipped = [], []
        for name, folder in folders:
            video = load_video(os.path.join(folder, "frames"))
            masks = read_masks(os.path.join(folder, "masks"), video.shape[0])
            if masks.shape[1:] != video.shape[1:3]:
                raise InputError(f"{folder}: masks are {masks.shape[2]}x{masks.shape[1]}, frames "
                                 f"{video.shape[2]}x{video.shape[1]}")
            if video.shape[0] <= args.from_frame:
                raise InputError(f"{name} has {video.shape[0]} frames: nothing from frame {args.from_frame} on")
            q = mask_grid_queries(masks[0], args.step)
            if q.shape[0] == 0:                      # the object is not in frame 0: nothing to query there
                skipped.append(name)
                continue
            t0 = time.perf_counter()
            res = tracker(video, q)
            rows.append(dict(video=name, frames=int(video.shape[0]), seconds=time.perf_counter() - t0,
                             **drift_scores(res.tracks, res.visible, masks, args.from_frame, args.dilate)))
        if not rows:
            raise InputError(f"no video of {args.data} has a grid point on frame 0's mask at step {args.step}")
    except PitrackError as e:
        print(f"eval.drift: error: {e}", file=sys.stderr)
        return 2
    keys = ("called_visible_late", "on_object_where_visible_late", "on_object_last_frame",
            "on_object_last_frame_visible")
    mean = {k: float(np.mean([r[k] for r in rows if r[k] is not None])) for k in keys}
    mean["seconds"] = float(np.mean([r["seconds"] for r in rows]))
    print(f"| video | frames | points | visible ≥{args.from_frame} | on object where visible | on object, last frame "
          f"| … of those visible | s |")
    print("|---|---|---|---|---|---|---|---|")
    pct = lambda v: "–" if v is None else f"{100 * v:.1f}"  # noqa: E731
    for r in rows + [dict(video="mean", frames="", points="", **mean)]:
        print(f"| {r['video']} | {r['frames']} | {r['points']} | {pct(r['called_visible_late'])} | "
              f"{pct(r['on_object_where_visible_late'])} | {pct(r['on_object_last_frame'])} | "
              f"{pct(r['on_object_last_frame_visible'])} | {r['seconds']:.0f} |")
    if skipped:
        print(f"left out (no grid point on frame 0's mask): {', '.join(skipped)}")
    if args.out:
        from core.atomic import save_bytes
        save_bytes(args.out, (json.dumps(dict(config=tracker.config.name, videos=rows, mean=mean, skipped=skipped),
                                         indent=1)
                              + "\n").encode())
    return 0


if __name__ == "__main__":
    from core.errors import run_command
    sys.exit(run_command(main, "eval.drift"))
