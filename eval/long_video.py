"""Time, peak memory and cache size of one config against the video length T.

    python -m eval.long_video --video ../shared/data/videos/parkour --frames 50,100,200,1000 \
        --config configs/default.yaml --grid 10 --out results/long/default [--query-stride 5] [--size 427x240]

The clip's frames are played forward and backward (0 … n−1, n−2 … 1, 0 …) until T frames, so any T is a
smooth video; ``--size`` resizes them. Queries: a K×K grid (``--grid``) on frame 0, or with
``--query-stride S`` on every S-th frame. Each T runs in its own process (its peak RSS is its own) with
a fresh cache folder under OUT, so the pipeline runs cold and the cache size is that of one video.
Writes ``OUT/T<T>.json`` per length and ``OUT/table.md``: seconds, peak RSS, cache MB, the flow pairs
computed (and computed again after release), and where the time went: flow network, backbone, the
optimiser's steps, keypoints, integration and everything else.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np

from core.devices import peak_rss_mb
from core.atomic import save_json, save_text



def time_split(seconds, s):
    """Where the seconds went (tracker stats ``s``): network evaluations (flow, backbone, keypoint maps), the
    optimiser's steps, and the rest of each stage (training trajectories, integration) without their flows."""
    parts = {"flow net s": s.get("flow_s", 0.0), "backbone s": s.get("features_s", 0.0),
             "opt steps s": s.get("tto_s", 0.0), "keypoints s": s.get("keypoints_s", 0.0),
             "traj s": s.get("traj_s", 0.0) - s.get("flow_s_trajectories", 0.0),
             "integrate s": s.get("track_s", 0.0) - s.get("flow_s_integration", 0.0)}
    parts["rest s"] = seconds - sum(parts.values())
    return parts


def ping_pong(frames, T):
    """Indices 0 … n−1, n−2 … 1, 0, … of length T (a clip of n frames played back and forth)."""
    n = len(frames)
    cycle = list(range(n)) + list(range(n - 2, 0, -1)) if n > 1 else [0]
    return [cycle[i % len(cycle)] for i in range(T)]


def run_one(args, T, json_path):
    from pitrack import Tracker, load_config
    from pitrack.tracker import grid_queries
    from pitrack.video import load_video
    from core.images import resize_video
    clip = load_video(args.video)
    if args.size:
        w, h = (int(v) for v in args.size.lower().split("x"))
        clip = resize_video(clip, (h, w))
    video = clip[ping_pong(clip, T)]                  # uint8 [T, H, W, 3], the one copy of the video
    del clip
    H, W = video.shape[1:3]
    frames = range(0, T, args.query_stride) if args.query_stride else [0]
    queries = np.concatenate([grid_queries(args.grid, f, H, W) for f in frames])
    cache = os.path.join(os.path.dirname(json_path), f"cache-T{T}")
    shutil.rmtree(cache, ignore_errors=True)
    tracker = Tracker(load_config(args.config), progress=False, cache_dir=cache)
    t0 = time.perf_counter()
    tracker(video, queries)
    seconds = time.perf_counter() - t0
    s = tracker.stats
    rec = dict(T=T, frame_size=f"{W}x{H}", queries=int(queries.shape[0]), query_frames=len(frames),
               config=args.config, seconds=seconds, peak_rss_mb=peak_rss_mb(),
               cache_mb=float(s.get("cache_mb", 0.0)), video_mb=video.nbytes / 2 ** 20,
               stats={k: v for k, v in s.items() if isinstance(v, (int, float, str, bool))})
    shutil.rmtree(cache, ignore_errors=True)
    save_json(json_path, rec)


def table(records):
    names = list(time_split(0.0, {}))
    head = ["T", "frame", "queries", "s", "peak RSS MB", "cache MB", "pairs computed", "of which again",
            "flow MB held max"] + names + ["net + opt share"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in records:
        s = r["stats"]
        parts = time_split(r["seconds"], s)
        share = (parts["flow net s"] + parts["backbone s"] + parts["opt steps s"] + parts["keypoints s"]) / r["seconds"]
        rows.append("| " + " | ".join([str(r["T"]), r["frame_size"], str(r["queries"]), f"{r['seconds']:.0f}",
                                       f"{r['peak_rss_mb']:.0f}", f"{r['cache_mb']:.1f}",
                                       str(s.get("flow_pairs_computed", "–")), str(s.get("flow_pairs_recomputed", "–")),
                                       f"{s.get('flow_memory_peak_mb', 0):.0f}"]
                                      + [f"{parts[n]:.1f}" for n in names] + [f"{100 * share:.0f} %"]) + " |")
    return "\n".join(rows) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--video", required=True)
    p.add_argument("--frames", required=True, help="comma-separated lengths T")
    p.add_argument("--config", default="configs/default.yaml")
    p.add_argument("--grid", type=int, default=10)
    p.add_argument("--query-stride", type=int, default=0)
    p.add_argument("--size", default="", help="WxH to resize the frames to")
    p.add_argument("--out", required=True)
    p.add_argument("--one", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    try:
        lengths = [int(v) for v in args.frames.split(",")]
    except ValueError:
        p.error(f"--frames must be comma-separated integers, got {args.frames!r}")
    if any(T < 2 for T in lengths) or args.grid < 1 or args.query_stride < 0:
        p.error("need every T >= 2, --grid >= 1 and --query-stride >= 0")
    if not os.path.exists(args.video) or not os.path.isfile(args.config):
        p.error(f"no video at {args.video} or no config at {args.config}")
    os.makedirs(args.out, exist_ok=True)
    if args.one:
        run_one(args, args.one, os.path.join(args.out, f"T{args.one}.json"))
        return 0
    records = []
    for T in lengths:
        path = os.path.join(args.out, f"T{T}.json")
        cmd = [sys.executable, "-m", "eval.long_video", "--one", str(T)] + [a for a in (argv or sys.argv[1:])]
        rc = subprocess.call(cmd)
        if rc != 0 or not os.path.isfile(path):
            print(f"eval.long_video: error: T = {T} failed (exit code {rc})", file=sys.stderr)
            return 1
        with open(path) as f:
            records.append(json.load(f))
        r = records[-1]
        print(f"T={T}: {r['seconds']:.0f} s, peak {r['peak_rss_mb']:.0f} MB, cache {r['cache_mb']:.1f} MB", flush=True)
    text = f"### {args.config} on {args.video}\n\n" + table(sorted(records, key=lambda r: r["T"]))
    save_text(os.path.join(args.out, "table.md"), text)
    print(text)
    return 0


if __name__ == "__main__":
    from core.errors import run_command
    sys.exit(run_command(main, "eval.long_video"))
