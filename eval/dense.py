"""Dense against sparse on the same tracks: TAP-Vid query-first tracks that start in frame F.

    python -m eval.dense --config configs/X.yaml --data DIR --stride 4 --out results/NAME \
        [--query-frame 0] [--videos a,b] [--fresh]

Per video, two runs, each in its own process (so seconds and peak memory are its own): sparse, the
tracker on the ground-truth query points of frame F; dense, ``Tracker.dense`` at stride S, then sampled at
those query points (:func:`sample_dense`). Both are scored with the TAP-Vid query-first metrics on those
tracks only. Writes ``OUT/<video>-sparse.json``, ``OUT/<video>-dense.json`` and ``OUT/table.md``; a rerun
reuses the records of the same config, stride and data.
"""
import argparse
import os
import sys

import numpy as np

from core.atomic import save_json, save_text
from core.devices import peak_rss_mb
from core.errors import InputError, PitrackError
from eval.bench import record_or_run
from eval.datasets import list_videos


def sample_dense(dense, xy):
    """A dense result at points ``xy`` [M, 2] (original px) of its query frame, bilinearly between the four
    grid points around each (clamped to the grid at its border): the displacement is interpolated and added
    to the point, so the point stays where it was queried. Returns tracks float32 [M, T, 2], visible bool
    [M, T] (the weighted vote of the four, >= 0.5) and σ float32 [M, T]."""
    Hs, Ws, T = dense.visible.shape
    S = float(dense.stride)
    xy = np.asarray(xy, np.float64).reshape(-1, 2)
    u = np.clip((xy[:, 0] - S / 2) / S, 0, Ws - 1)
    v = np.clip((xy[:, 1] - S / 2) / S, 0, Hs - 1)
    j0 = np.minimum(np.floor(u).astype(int), max(Ws - 2, 0))
    i0 = np.minimum(np.floor(v).astype(int), max(Hs - 2, 0))
    j1, i1 = np.minimum(j0 + 1, Ws - 1), np.minimum(i0 + 1, Hs - 1)
    fu, fv = (u - j0)[:, None], (v - i0)[:, None]
    corners = [(i0, j0, (1 - fu) * (1 - fv)), (i0, j1, fu * (1 - fv)), (i1, j0, (1 - fu) * fv), (i1, j1, fu * fv)]
    disp, vis, sig = 0.0, 0.0, 0.0
    for i, j, w in corners:
        start = np.stack([S * j + S / 2, S * i + S / 2], -1)[:, None]          # [M, 1, 2]
        disp = disp + w[..., None] * (dense.tracks[i, j].astype(np.float64) - start)
        vis = vis + w * dense.visible[i, j]
        sig = sig + w * dense.sigma[i, j].astype(np.float64)
    return (xy[:, None] + disp).astype(np.float32), vis >= 0.5, sig.astype(np.float32)


def run_one(config_path, data, name, kind, stride, query_frame, json_path):
    """Track (``kind`` 'sparse' or 'dense') and score the query-first tracks of ``query_frame`` of the video
    ``name`` of ``data``."""
    from pitrack import Tracker, load_config
    config = load_config(config_path)
    (ref,) = list_videos(data, [name])
    video = ref.open()
    if video.kind != "tapvid":
        raise InputError(f"{ref.source}: eval.dense needs TAP-Vid ground truth")
    frames = video.load_frames()
    queries, _ = video.queries("first", query_frame)
    rec = dict(video=video.name, kind=kind, config=config.name, config_fingerprint=config.fingerprint(),
               stride=int(stride), query_frame=int(query_frame), data=ref.source,
               num_queries=int(queries.shape[0]), frame_size=f"{frames.shape[2]}x{frames.shape[1]}")
    tracker = Tracker(config, progress=sys.stderr.isatty())
    if queries.shape[0]:
        if kind == "dense":
            dense = tracker.dense(frames, query_frame, stride)
            tracks, visible, _ = sample_dense(dense, queries[:, 1:3])
            rec["points"] = int(dense.visible.shape[0] * dense.visible.shape[1])
        else:
            tracks, visible, _ = tracker(frames, queries)
        rec["metrics"] = video.score(tracks, visible, "first", query_frame)
        rec["seconds"] = tracker.stats["seconds"]
    rec["peak_rss_mb"] = peak_rss_mb()
    save_json(json_path, rec)
    return rec


def table(pairs, title):
    """Markdown: per video sparse and dense AJ, <δ avg, OA, ΔAJ, seconds and peak MB; the mean row last."""
    head = ["video", "queries", "points", "sparse AJ", "dense AJ", "Δ AJ", "sparse <δ", "dense <δ", "sparse OA",
            "dense OA", "sparse s", "dense s", "sparse MB", "dense MB"]
    lines = [f"### {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def cells(name, nq, pts, s, d):
        pct = [100 * s["metrics"]["AJ"], 100 * d["metrics"]["AJ"], 100 * (d["metrics"]["AJ"] - s["metrics"]["AJ"]),
               100 * s["metrics"]["delta_avg"], 100 * d["metrics"]["delta_avg"], 100 * s["metrics"]["OA"],
               100 * d["metrics"]["OA"], s["seconds"], d["seconds"], s["peak_rss_mb"], d["peak_rss_mb"]]
        return "| " + " | ".join([name, nq, pts] + [f"{v:.1f}" for v in pct]) + " |"

    scored = [(s, d) for s, d in pairs if "metrics" in s]
    for s, d in scored:
        lines.append(cells(s["video"], str(s["num_queries"]), str(d.get("points", "–")), s, d))
    if scored:
        def mean(recs, key, sub=None):
            return float(np.mean([r[key][sub] if sub else r[key] for r in recs]))
        ss, ds = [s for s, _ in scored], [d for _, d in scored]
        ms = dict(metrics={k: mean(ss, "metrics", k) for k in ("AJ", "delta_avg", "OA")},
                  seconds=mean(ss, "seconds"), peak_rss_mb=mean(ss, "peak_rss_mb"))
        md = dict(metrics={k: mean(ds, "metrics", k) for k in ("AJ", "delta_avg", "OA")},
                  seconds=mean(ds, "seconds"), peak_rss_mb=mean(ds, "peak_rss_mb"))
        lines.append(cells(f"**mean ({len(scored)})**", str(sum(s["num_queries"] for s in ss)),
                           f"{mean(ds, 'points'):.0f}", ms, md))
    skipped = [s["video"] for s, _ in pairs if "metrics" not in s]
    if skipped:
        lines += ["", "no query-first track starts in this frame: " + ", ".join(skipped)]
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m eval.dense", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True)
    p.add_argument("--data", required=True, help="TAP-Vid dataset (any format eval.bench reads)")
    p.add_argument("--stride", type=int, default=4, help="dense stride S")
    p.add_argument("--query-frame", type=int, default=0)
    p.add_argument("--out", required=True)
    p.add_argument("--videos", help="comma-separated subset of video names")
    p.add_argument("--fresh", action="store_true", help="recompute videos that already have results")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--kind", choices=["sparse", "dense"], help=argparse.SUPPRESS)
    p.add_argument("--video", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    try:
        if args.stride < 1 or args.query_frame < 0:
            raise InputError("--stride must be >= 1 and --query-frame >= 0")
        if args.worker:
            name = args.video
            run_one(args.config, args.worker, name, args.kind, args.stride, args.query_frame,
                    os.path.join(args.out, f"{name}-{args.kind}.json"))
            return 0
        from pitrack import load_config
        config = load_config(args.config)
        refs = list_videos(args.data, args.videos)
        os.makedirs(args.out, exist_ok=True)
        pairs = []
        for ref in refs:
            name = ref.name
            recs = []
            for kind in ("sparse", "dense"):
                cmd = [sys.executable, "-m", "eval.dense", "--config", args.config, "--data", ref.path,
                       "--stride", str(args.stride), "--query-frame", str(args.query_frame), "--out", args.out,
                       "--worker", ref.path, "--video", name, "--kind", kind]
                rec = record_or_run(os.path.join(args.out, f"{name}-{kind}.json"),
                                    lambda r: (r.get("config_fingerprint"), r.get("stride"), r.get("query_frame"),
                                               r.get("data")) == (config.fingerprint(), args.stride, args.query_frame,
                                                                  ref.source),
                                    cmd, f"video {name} ({kind})", args.fresh)
                recs.append(rec)
                if "metrics" in rec:
                    print(f"{name} {kind}: AJ={100 * rec['metrics']['AJ']:.1f} {rec['seconds']:.1f}s "
                          f"{rec['peak_rss_mb']:.0f}MB", file=sys.stderr)
            pairs.append(tuple(recs))
        title = (f"{config.name} on {os.path.basename(os.path.normpath(args.data))}: dense (stride {args.stride}) "
                 f"against sparse, query-first tracks from frame {args.query_frame}")
        text = table(pairs, title)
        save_text(os.path.join(args.out, "table.md"), text)
        print(text)
    except PitrackError as e:
        print(f"eval.dense: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    from core.errors import run_command
    sys.exit(run_command(main, "eval.dense"))
