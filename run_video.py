#!/usr/bin/env python
"""Track points through a video.

    python run_video.py --video V --queries Q.npy [--config configs/X.yaml] --out pred.npz [--viz out.mp4]
    python run_video.py --video V --grid 10 [--grid-frame 0] --config configs/X.yaml --out pred.npz
    python run_video.py --video V --dense 4 [--query-frame 0] --out dense.npz [--viz dense.mp4]

V: a folder of frames (jpg/png, sorted by name) or a video file. Q.npy: float32 [N, 3] rows (t, x, y),
frame index and pixel position in the original frames (rows (t, y, x), tapnet's order, with --query-order tyx). pred.npz: tracks float32 [N, T, 2] (x, y original
pixels), visible bool [N, T], sigma float32 [N, T] (px), queries float32 [N, 3]. dense.npz (every S-th
pixel of frame F, point (i, j) starting at x = S·j + S/2, y = S·i + S/2): tracks float16 [Hs, Ws, T, 2],
visible bool [Hs, Ws, T], sigma float16 [Hs, Ws, T], query_frame, stride. Bad input: one line, exit 2.
"""
import argparse
import os
import sys


DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "default.yaml")


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit code 2
        print(f"run_video.py: error: {message}", file=sys.stderr)
        sys.exit(2)


def parse_args(argv=None):
    p = _Parser(description=__doc__.split("\n\n")[0])
    p.add_argument("--video", required=True, help="frame folder or video file")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--queries", help="Q.npy, float32 [N, 3] rows (t, x, y) in original pixels")
    src.add_argument("--grid", type=int, help="track a K×K grid of points instead of --queries")
    src.add_argument("--dense", type=int, metavar="S", help="track every S-th pixel of --query-frame (S = 1: all)")
    p.add_argument("--query-order", choices=["txy", "tyx"], default="txy",
                   help="column order of --queries: txy (default) or tyx (tapnet's); outputs are always t, x, y")
    p.add_argument("--grid-frame", type=int, default=0, help="frame of the --grid queries (default 0)")
    p.add_argument("--query-frame", type=int, default=0, help="frame of the --dense points (default 0)")
    p.add_argument("--config", default=DEFAULT_CONFIG,
                   help="YAML config (default: configs/default.yaml; e.g. configs/baselines/klt.yaml)")
    p.add_argument("--out", required=True, help="output .npz")
    p.add_argument("--viz", help="also write a video (.mp4) of the tracks (dense: trails and flow colours)")
    p.add_argument("--tail", type=int, default=8, help="frames of trail drawn behind each point (--viz)")
    p.add_argument("--max-frames", type=int, help="use only the first N frames")
    p.add_argument("--no-cache", action="store_true", help="recompute every cached stage")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    import numpy as np
    from pitrack import Tracker, grid_queries, load_video
    from pitrack.tracker import check_queries, dense_grid
    from core.atomic import save_npz
    from core.errors import InputError, PitrackError
    try:
        tracker = Tracker.from_config(args.config, progress=not args.quiet, use_cache=not args.no_cache)
        if args.queries is not None:
            try:
                queries = np.load(args.queries, allow_pickle=False)
            except (OSError, ValueError) as e:
                raise InputError(f"cannot read queries {args.queries}: {e}") from None
            if args.query_order == "tyx" and queries.ndim == 2 and queries.shape[1] == 3:
                queries = queries[:, [0, 2, 1]]
        if not args.out.endswith(".npz"):
            raise InputError(f"--out must end in .npz, got {args.out}")
        if args.viz and not args.viz.endswith(".mp4"):
            raise InputError(f"--viz must end in .mp4, got {args.viz}")
        if args.tail < 0:
            raise InputError(f"--tail must be >= 0, got {args.tail}")
        video = load_video(args.video, args.max_frames)
        T, H, W = video.shape[:3]
        if args.dense is not None:
            dense_grid(args.dense, H, W)                     # bad stride: fails before any tracking
            if not 0 <= args.query_frame < T:
                raise InputError(f"--query-frame {args.query_frame} outside the video's {T} frames")
            dense = tracker.dense(video, args.query_frame, args.dense)
            save_npz(args.out, tracks=dense.tracks, visible=dense.visible, sigma=dense.sigma,
                     query_frame=np.int64(dense.query_frame), stride=np.int64(dense.stride))
            if args.viz:
                from pitrack.viz import write_dense_overlay
                write_dense_overlay(args.viz, video, dense, tail=args.tail)
            what = f"{dense.visible.shape[0]}x{dense.visible.shape[1]} points of frame {args.query_frame}"
        else:
            if args.grid is not None:
                if not 0 <= args.grid_frame < T:
                    raise InputError(f"--grid-frame {args.grid_frame} outside the video's {T} frames")
                queries = grid_queries(args.grid, args.grid_frame, H, W)
            queries = check_queries(queries, video.shape)
            result = tracker(video, queries)
            save_npz(args.out, tracks=result.tracks, visible=result.visible, sigma=result.sigma, queries=queries)
            if args.viz:
                from pitrack.viz import write_overlay
                write_overlay(args.viz, video, result.tracks, result.visible, queries, tail=args.tail)
            what = f"{queries.shape[0]} points"
    except PitrackError as e:
        print(f"run_video.py: error: {e}", file=sys.stderr)
        return 2
    if not args.quiet:
        s = tracker.stats
        print(f"tracked {what} through {T} frames in {s.get('seconds', 0):.1f} s -> {args.out}",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
