"""Benchmark a tracker config over every video of a dataset folder.

    python -m eval.bench --config configs/X.yaml --data DIR --mode first|strided --out results/NAME \
        [--videos a,b] [--save-pred] [--fresh]

Each video runs in its own process, so its seconds and peak memory are its own. Per video it writes
``OUT/<video>.json`` (metrics, seconds, peak RSS, tracker stats); then ``OUT/table.md`` (per video, mean
last; under it the footnotes, the pooled error shares and the filter counts) and ``OUT/summary.json`` (mean
row; TAP-Vid: pooled error shares; ``filters_total`` where the tracker reports ``stats["filters"]``). A rerun
skips videos whose JSON exists for the same config, mode and data (so an interrupted run resumes); ``--fresh``
recomputes them. ``--save-pred`` also keeps ``OUT/<video>.npz``
(tracks, visible, sigma, queries), which ``eval.rescore`` scores again.
"""
import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

from eval.datasets import list_video_folders, open_video_folder
from core.devices import peak_rss_mb
from core.atomic import save_json, save_npz, save_text
from core.errors import PitrackError

TAPVID_COLUMNS = (("AJ", "AJ"), ("delta_avg", "<δ avg"), ("OA", "OA"),
                  ("occ_called_visible", "occ→vis"), ("vis_called_occluded", "vis→occ"), ("vis_far16", ">16px"))
BADJA_COLUMNS = (("PCK_seg", "PCK@seg"), ("PCK_3px", "PCK@3px"))
POOLED = (("occ_called_visible", "n_occ_called_visible", "n_occ"), ("vis_called_occluded", "n_vis_called_occluded", "n_vis"),
          ("vis_far16", "n_vis_far16", "n_vis"))  # share, its numerator count, its denominator count
NO_PAIR = {"occ_called_visible": "no occluded scored pair", "vis_called_occluded": "no visible scored pair",
           "vis_far16": "no visible scored pair"}


def run_one(config_path, video_dir, mode, json_path, pred_path=None):
    """Track and score one video in this process; write its JSON record atomically."""
    from pitrack import Tracker, load_config
    config = load_config(config_path)
    video = open_video_folder(video_dir)
    t0 = time.perf_counter()
    frames = video.load_frames()
    load_s = time.perf_counter() - t0
    queries, track_of_query = video.queries(mode)
    tracker = Tracker(config, progress=sys.stderr.isatty())
    result = tracker(frames, queries)
    metrics = video.score(result.tracks, result.visible, mode)
    filters = {}
    for name, r in tracker.extras.get("filter_rejections", {}).items():
        filters[name] = dict(rejected=int(r["query"].size), rejected_keypoints=int(r["keypoint"].sum()))
        if hasattr(video, "candidate_is_wrong"):   # TAP-Vid: every frame has ground truth
            wrong = video.candidate_is_wrong(track_of_query[r["query"]], r["frame"], r["xy"])
            filters[name].update(rejected_wrong=int(wrong.sum()), rejected_keypoints_wrong=int(wrong[r["keypoint"]].sum()))
    rec = {
        "video": video.name, "kind": video.kind, "mode": mode if video.kind == "tapvid" else "badja",
        "config": config.name, "config_fingerprint": config.fingerprint(), "data": os.path.abspath(video_dir),
        "num_queries": int(queries.shape[0]), "num_frames": int(frames.shape[0]),
        "frame_size": f"{frames.shape[2]}x{frames.shape[1]}",
        "seconds": tracker.stats["seconds"], "load_seconds": load_s,
        "peak_rss_mb": peak_rss_mb(),
        "metrics": metrics, "stats": {k: v for k, v in tracker.stats.items() if k != "seconds"},
    }
    if filters:
        rec["stats"]["filters"] = filters
    if pred_path:
        save_npz(pred_path, tracks=result.tracks, visible=result.visible, sigma=result.sigma, queries=queries)
    save_json(json_path, rec)
    return rec


def record_or_run(path, matches, cmd, what, fresh=False):
    """The JSON record at ``path`` when it loads and ``matches(record)`` (and not ``fresh``); else the record
    that ``cmd``, a worker process run in the repository root, writes there. PitrackError if the worker fails."""
    rec = None
    if os.path.exists(path) and not fresh:
        try:
            with open(path) as f:
                rec = json.load(f)
        except (OSError, ValueError):
            rec = None
        if rec is not None and not matches(rec):
            rec = None
    if rec is None:
        r = subprocess.run(cmd, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        if r.returncode != 0:
            raise PitrackError(f"{what} failed (exit code {r.returncode})")
        with open(path) as f:
            rec = json.load(f)
    return rec


def _mean(xs):
    """Mean of the finite values of ``xs`` (None and NaN left out); None if there are none."""
    xs = [x for x in xs if x is not None and np.isfinite(x)]
    return float(np.mean(xs)) if xs else None


def _fmt(v, pct=False):
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "–"
    return f"{100 * v:.1f}" if pct else (f"{v:.1f}" if isinstance(v, float) else str(v))


def markdown_table(records, title):
    """Per-video rows and a final mean row. Metrics in %, seconds, peak RSS in MB, stage stats ending _s/_mb.

    A video without a value for a metric (a share with no pair) is left out of its mean, said in a footnote line.
    TAP-Vid: a line with the pooled error shares. Then a line per filter of ``stats["filters"]`` (summed counts)."""
    kind = records[0]["kind"]
    cols = TAPVID_COLUMNS if kind == "tapvid" else BADJA_COLUMNS
    extra = sorted({k for r in records for k, v in r["stats"].items()
                    if isinstance(v, (int, float)) and (k.endswith("_s") or k.endswith("_mb"))})
    head = ["video", "queries"] + [c[1] for c in cols] + ["s", "peak MB"] + extra
    lines = [f"### {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def row(name, nq, m, s, mem, st):
        return ("| " + " | ".join([name, nq] + [_fmt(m.get(c[0]), True) for c in cols] + [_fmt(s), _fmt(mem)]
                                  + [_fmt(st.get(k)) for k in extra]) + " |")

    for r in records:
        lines.append(row(r["video"], str(r["num_queries"]), r["metrics"], r["seconds"], r["peak_rss_mb"], r["stats"]))
    lines.append(row(f"**mean ({len(records)})**", str(sum(r["num_queries"] for r in records)),
                     {c[0]: _mean([r["metrics"].get(c[0]) for r in records]) for c in cols},
                     _mean([r["seconds"] for r in records]), _mean([r["peak_rss_mb"] for r in records]),
                     {k: _mean([r["stats"].get(k) for r in records]) for k in extra}))
    notes = []
    for key, label in cols:
        left_out = [f"{r['video']} ({NO_PAIR.get(key, 'no value') if key in r['metrics'] else 'not in its record'})"
                    for r in records if _mean([r["metrics"].get(key)]) is None]
        if left_out:
            notes.append(f"{label}: mean over {len(records) - len(left_out)} of {len(records)} videos; left out: "
                         + ", ".join(left_out))
    p = pooled(records) if kind == "tapvid" else {}
    if p:
        notes.append("pooled over all scored pairs: " + ", ".join(
            f"{label} {_fmt(p[f'pooled_{key}'], True)} %" for key, label in cols if f"pooled_{key}" in p))
    for name, c in filters_total(records).items():
        rej, wrong = c.get("rejected", 0), c.get("rejected_wrong", 0)
        notes.append(f"filter {name}: rejected {rej} candidates, of which {wrong} "
                     f"({_fmt(wrong / rej if rej else None, True)} %) truly wrong")
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


def summarize(records):
    """The mean row: each metric's mean over videos (fractions; a video without a value left out), seconds, peak MB."""
    kind = records[0]["kind"]
    cols = TAPVID_COLUMNS if kind == "tapvid" else BADJA_COLUMNS
    s = {c[0]: _mean([r["metrics"].get(c[0]) for r in records]) for c in cols}
    mem = [r["peak_rss_mb"] for r in records if r.get("peak_rss_mb") is not None]
    s.update(videos=len(records), seconds_mean=_mean([r.get("seconds") for r in records]),
             peak_rss_mb_max=float(np.max(mem)) if mem else None)
    return s


def pooled(records):
    """TAP-Vid error shares over the scored pairs of all videos together: ``pooled_<share>`` = total count / total
    count (None where the total denominator is 0). A share is absent when a record lacks its counts."""
    out = {}
    for key, num, den in POOLED:
        if all(num in r["metrics"] and den in r["metrics"] for r in records):
            n, d = sum(r["metrics"][num] for r in records), sum(r["metrics"][den] for r in records)
            out[f"pooled_{key}"] = n / d if d else None
    return out


def filters_total(records):
    """{filter name: {count name: sum over videos}} of the integer counts in each record's ``stats["filters"]``."""
    total = {}
    for r in records:
        for name, counts in r["stats"].get("filters", {}).items():
            t = total.setdefault(name, {})
            for k, v in counts.items():
                if isinstance(v, int):
                    t[k] = t.get(k, 0) + v
    return total


def summary(records, config_name, mode):
    """Content of summary.json: config, mode, the mean row; TAP-Vid: pooled shares; ``filters_total`` if reported."""
    s = {"config": config_name, "mode": mode, "mean": summarize(records)}
    if records[0]["kind"] == "tapvid":
        s.update(pooled(records))
    if any("filters" in r["stats"] for r in records):
        s["filters_total"] = filters_total(records)
    return s


def results_title(config_name, data, records, mode):
    """The heading of a results table: config, dataset folder, and the query mode for TAP-Vid."""
    return f"{config_name} on {os.path.basename(os.path.normpath(data))}" + \
        (f", query-{mode}" if records[0]["kind"] == "tapvid" else "")


def write_results(out, records, title, config_name, mode):
    """Write ``out/table.md`` and ``out/summary.json`` of per-video records; returns the table."""
    table = markdown_table(records, title)
    save_text(os.path.join(out, "table.md"), table)
    save_json(os.path.join(out, "summary.json"), summary(records, config_name, mode))
    return table


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m eval.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True)
    p.add_argument("--data", required=True, help="dataset folder of video folders, or one video folder")
    p.add_argument("--mode", choices=["first", "strided"], default="first", help="TAP-Vid query mode")
    p.add_argument("--out", required=True, help="results folder")
    p.add_argument("--videos", help="comma-separated subset of video names")
    p.add_argument("--save-pred", action="store_true", help="also keep each video's prediction .npz")
    p.add_argument("--fresh", action="store_true", help="recompute videos that already have results")
    p.add_argument("--worker", help=argparse.SUPPRESS)  # internal: one video in this process
    args = p.parse_args(argv)
    try:
        if args.worker:
            name = os.path.basename(os.path.normpath(args.worker))
            pred = os.path.join(args.out, name + ".npz") if args.save_pred else None
            run_one(args.config, args.worker, args.mode, os.path.join(args.out, name + ".json"), pred)
            return 0
        from pitrack import load_config
        from tqdm import tqdm
        config = load_config(args.config)
        folders = list_video_folders(args.data, args.videos)
        os.makedirs(args.out, exist_ok=True)
        records = []
        for folder in tqdm(folders, desc=f"bench {config.name} {args.mode}", disable=not sys.stderr.isatty()):
            name = os.path.basename(os.path.normpath(folder))
            jpath = os.path.join(args.out, name + ".json")
            cmd = [sys.executable, "-m", "eval.bench", "--config", args.config, "--mode", args.mode, "--data", folder,
                   "--out", args.out, "--worker", folder] + (["--save-pred"] if args.save_pred else [])
            def matches(r, folder=folder):
                kind_mode = args.mode if open_video_folder(folder).kind == "tapvid" else "badja"
                return (r.get("config_fingerprint"), r.get("mode"), r.get("data")) == \
                    (config.fingerprint(), kind_mode, os.path.abspath(folder))
            rec = record_or_run(jpath, matches, cmd, f"video {name}", args.fresh)
            records.append(rec)
            m = rec["metrics"]
            shown = " ".join(f"{k}={_fmt(m.get(k), True)}" for k, _ in (TAPVID_COLUMNS if rec["kind"] == "tapvid" else BADJA_COLUMNS))
            print(f"{name}: {shown} {rec['seconds']:.1f}s {rec['peak_rss_mb']:.0f}MB", file=sys.stderr)
        kinds = {r["kind"] for r in records}
        if len(kinds) > 1:
            raise PitrackError(f"{args.data} mixes TAP-Vid and BADJA folders; benchmark them separately")
        title = results_title(config.name, args.data, records, args.mode)
        print(write_results(args.out, records, title, config.name, args.mode))
    except PitrackError as e:
        print(f"eval.bench: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
