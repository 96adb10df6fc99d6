"""Benchmark a tracker config over the videos of a dataset, in any format eval.datasets reads.

    python -m eval.bench --config configs/X.yaml --data DATA --mode first|strided --out results/NAME \
        [--videos a,b] [--resize 256x256] [--save-pred] [--fresh] [--ray | --ray-address ADDR] [--shard i/n]
    python -m eval.bench --merge results/NAME [more folders] --out results/ALL

DATA: a folder of video folders, one video folder, a TAP-Vid pickle or folder of pickles (DAVIS, Kinetics
shards, RGB-Stacking, RoboTAP), or a BADJA release (``joint_annotations/``) or folder. ``--resize WxH`` tracks
frames resized to that size (TAP-Vid's official protocol: 256x256) and scores the tracks mapped back;
without it, frames are tracked at their native resolution. The table's title says which.

Each video runs in its own process, so its seconds and peak memory are its own: one after another, or as
Ray tasks (``--ray``: a local Ray instance; ``--ray-address``: a cluster), or only the videos of one shard
(``--shard i/n``: every n-th video from the i-th, for a Slurm job array). Per video it writes
``OUT/<video>.json`` (metrics, seconds, peak RSS, tracker stats); then ``OUT/table.md`` (per video, mean
last; under it the footnotes, the pooled error shares and the filter counts) and ``OUT/summary.json`` (mean
row; TAP-Vid: pooled error shares; ``filters_total`` where the tracker reports ``stats["filters"]``). A rerun
skips videos whose JSON exists for the same config, mode, resize and video (so an interrupted run resumes);
``--fresh`` recomputes them. A shard writes no table; ``--merge`` makes it from the per-video results of
one or more folders once every video of the dataset has one. ``--save-pred`` also keeps ``OUT/<video>.npz``
(tracks, visible, sigma in original pixels; queries), which ``eval.rescore`` scores again.
"""
import argparse
import glob
import json
import os
import pickle
import subprocess
import sys
import tempfile
import time

import numpy as np

from eval.datasets import list_videos
from core.devices import peak_rss_mb
from core.atomic import save_bytes, save_json, save_npz, save_text
from core.errors import InputError, PitrackError
from core.jobs import load_record, worker_error

TAPVID_COLUMNS = (("AJ", "AJ"), ("delta_avg", "<δ avg"), ("OA", "OA"),
                  ("occ_called_visible", "occ→vis"), ("vis_called_occluded", "vis→occ"), ("vis_far16", ">16px"))
BADJA_COLUMNS = (("PCK_seg", "PCK@seg"), ("PCK_3px", "PCK@3px"))
POOLED = (("occ_called_visible", "n_occ_called_visible", "n_occ"), ("vis_called_occluded", "n_vis_called_occluded", "n_vis"),
          ("vis_far16", "n_vis_far16", "n_vis"))  # share, its numerator count, its denominator count
NO_PAIR = {"occ_called_visible": "no occluded scored pair", "vis_called_occluded": "no visible scored pair",
           "vis_far16": "no visible scored pair"}
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_one(config_path, spec, mode, json_path, source, pred_path=None, resize=None):
    """Track and score one video in this process; write its JSON record atomically.

    ``spec``: a path eval.datasets reads that holds this one video; ``source``: its identity in the record;
    ``resize``: None, or the (H, W) the frames are resized to before tracking (tracks are mapped back)."""
    from pitrack import Tracker, load_config
    from pitrack.video import resize_video
    from core.coords import scale_sigma, scale_xy
    config = load_config(config_path)
    (ref,) = list_videos(spec)
    video = ref.open()
    t0 = time.perf_counter()
    frames = video.load_frames()
    queries, track_of_query = video.queries(mode)
    tracked = queries.copy()
    if resize:
        frames = resize_video(frames, resize)
        tracked[:, 1:] = scale_xy(queries[:, 1:], video.size_hw, resize)
    load_s = time.perf_counter() - t0
    tracker = Tracker(config, progress=sys.stderr.isatty())
    result = tracker(frames, tracked)
    tracks, sigma = result.tracks, result.sigma
    if resize:
        tracks, sigma = scale_xy(tracks, resize, video.size_hw), scale_sigma(sigma, resize, video.size_hw)
    metrics = video.score(tracks, result.visible, mode)
    filters = {}
    for name, r in tracker.extras.get("filter_rejections", {}).items():
        filters[name] = dict(rejected=int(r["query"].size), rejected_keypoints=int(r["keypoint"].sum()))
        if hasattr(video, "candidate_is_wrong"):   # TAP-Vid: every frame has ground truth
            xy = scale_xy(r["xy"], resize, video.size_hw) if resize else r["xy"]
            wrong = video.candidate_is_wrong(track_of_query[r["query"]], r["frame"], xy)
            filters[name].update(rejected_wrong=int(wrong.sum()), rejected_keypoints_wrong=int(wrong[r["keypoint"]].sum()))
    rec = {
        "video": video.name, "kind": video.kind, "mode": mode if video.kind == "tapvid" else "badja",
        "config": config.name, "config_fingerprint": config.fingerprint(), "data": source,
        "resize": f"{resize[1]}x{resize[0]}" if resize else None,
        "num_queries": int(queries.shape[0]), "num_frames": int(frames.shape[0]),
        "frame_size": f"{frames.shape[2]}x{frames.shape[1]}",
        "seconds": tracker.stats["seconds"], "load_seconds": load_s,
        "peak_rss_mb": peak_rss_mb(),
        "metrics": metrics, "stats": {k: v for k, v in tracker.stats.items() if k != "seconds"},
    }
    if filters:
        rec["stats"]["filters"] = filters
    if pred_path:
        save_npz(pred_path, tracks=tracks, visible=result.visible, sigma=sigma, queries=queries)
    save_json(json_path, rec)
    return rec


def video_job(job):
    """Run one video in a worker process (``run_one``), in a temporary folder of its own, and return
    ``{"record", "pred"}`` (the prediction file's bytes or None), or ``{"error": one line}``.

    ``job``: name, source, config (path), mode, resize (WxH or None), save_pred, and either ``path`` (a
    video folder or BADJA JSON the worker reads) or ``record`` (a TAP-Vid record, handed on in a one-video
    pickle). Runs the same in this process or as a Ray task on another machine."""
    with tempfile.TemporaryDirectory(prefix="pitrack-bench-") as tmp:
        spec = job.get("path")
        if spec is None:
            spec = os.path.join(tmp, "video.pkl")
            with open(spec, "wb") as f:
                pickle.dump({job["name"]: job["record"]}, f, protocol=pickle.HIGHEST_PROTOCOL)
        cmd = [sys.executable, "-m", "eval.bench", "--worker", spec, "--source", job["source"],
               "--config", job["config"], "--mode", job["mode"], "--out", tmp]
        cmd += (["--resize", job["resize"]] if job["resize"] else []) + (["--save-pred"] if job["save_pred"] else [])
        r = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if r.returncode != 0:
            why = worker_error(job["name"], r.returncode, r.stderr)
            return {"error": why.replace(f"{spec}#{job['name']}", job["source"])}
        with open(os.path.join(tmp, "video.json")) as f:
            rec = json.load(f)
        pred = None
        if job["save_pred"]:
            with open(os.path.join(tmp, "video.npz"), "rb") as f:
                pred = f.read()
        return {"record": rec, "pred": pred}


def record_or_run(path, matches, cmd, what, fresh=False):
    """The JSON record at ``path`` when it loads and ``matches(record)`` (and not ``fresh``); else the record
    that ``cmd``, a worker process run in the repository root, writes there. PitrackError if the worker fails."""
    rec = None if fresh else load_record(path, matches)
    if rec is None:
        r = subprocess.run(cmd, cwd=ROOT)
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
        rej, wrong = c.get("rejected", 0), c.get("rejected_wrong")
        notes.append(f"filter {name}: rejected {rej} candidates" + ("" if wrong is None else
                     f", of which {wrong} ({_fmt(wrong / rej if rej else None, True)} %) truly wrong"))
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
    """The heading of a results table: config, dataset, the query mode for TAP-Vid, and the frame size tracked."""
    resize = records[0].get("resize")
    return f"{config_name} on {os.path.basename(os.path.normpath(data))}" + \
        (f", query-{mode}" if records[0]["kind"] == "tapvid" else "") + \
        (f", frames resized to {resize} before tracking" if resize else ", frames at native resolution")


def write_results(out, records, title, config_name, mode):
    """Write ``out/table.md`` and ``out/summary.json`` of per-video records; returns the table."""
    table = markdown_table(records, title)
    save_text(os.path.join(out, "table.md"), table)
    save_json(os.path.join(out, "summary.json"), summary(records, config_name, mode))
    return table


def merge(folders, out, partial=False):
    """Table and summary in ``out`` of the per-video records of ``folders`` (e.g. the shards of one run).

    The records must share config, mode and resize; a video found twice must have the same metrics; unless
    ``partial``, every video of the dataset (``dataset_videos`` in the records) must be there."""
    records, first_key = {}, None
    for folder in folders:
        paths = [p for p in sorted(glob.glob(os.path.join(folder, "*.json"))) if os.path.basename(p) != "summary.json"]
        for p in paths:
            try:
                with open(p) as f:
                    rec = json.load(f)
                key = (rec["config_fingerprint"], rec["mode"], rec.get("resize"), rec["kind"])
            except (OSError, ValueError, KeyError, TypeError):
                raise InputError(f"{p}: not a per-video result of eval.bench") from None
            first_key = first_key or key
            if key != first_key:
                raise InputError(f"{p}: config, mode or resize differ from {next(iter(records))}'s; merge one run at a time")
            old = records.get(rec["video"])
            if old is not None and old["metrics"] != rec["metrics"]:
                raise InputError(f"video {rec['video']} has two different results ({p} and another folder)")
            records[rec["video"]] = rec
    if not records:
        raise InputError(f"no per-video results in {', '.join(folders)}")
    recs = list(records.values())
    expected = max((r.get("dataset_videos") or 0) for r in recs)
    if len(recs) < expected and not partial:
        raise InputError(f"only {len(recs)} of the dataset's {expected} videos have results (a shard missing or "
                         f"unfinished?); --partial makes the table anyway")
    recs.sort(key=lambda r: (r.get("dataset_index", 0), r["video"]))
    os.makedirs(out, exist_ok=True)
    title = results_title(recs[0]["config"], recs[0].get("dataset") or folders[0], recs, recs[0]["mode"])
    if len(recs) < expected:
        title += f" ({len(recs)} of {expected} videos)"
    return write_results(out, recs, title, recs[0]["config"], recs[0]["mode"])


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m eval.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--config")
    p.add_argument("--data", help="dataset: folder, video folder, TAP-Vid .pkl (or folder of them), BADJA release")
    p.add_argument("--mode", choices=["first", "strided"], default="first", help="TAP-Vid query mode")
    p.add_argument("--out", required=True, help="results folder")
    p.add_argument("--videos", help="comma-separated subset of video names")
    p.add_argument("--resize", metavar="WxH", help="track frames resized to WxH (TAP-Vid official: 256x256)")
    p.add_argument("--save-pred", action="store_true", help="also keep each video's prediction .npz")
    p.add_argument("--fresh", action="store_true", help="recompute videos that already have results")
    p.add_argument("--ray", action="store_true", help="run the videos as tasks of a local Ray instance")
    p.add_argument("--ray-address", metavar="ADDR", help="run them on the Ray cluster at ADDR ('auto': this node's)")
    p.add_argument("--workers", type=int, help="local Ray: tasks at once (default: cores / --cpus-per-task)")
    p.add_argument("--cpus-per-task", type=int, default=1, help="Ray: CPUs (and threads) per video (default 1)")
    p.add_argument("--gpus-per-task", type=float, help="Ray: GPUs per video (default: 1 when the config runs on "
                   "a GPU: a device 'cuda', or 'auto' on a cluster with GPUs)")
    p.add_argument("--shard", metavar="i/n", help="only every n-th video from the i-th (Slurm: $SLURM_ARRAY_TASK_ID/n)")
    p.add_argument("--merge", nargs="+", metavar="DIR", help="make the table of these results folders into --out")
    p.add_argument("--partial", action="store_true", help="--merge: also when some videos have no result")
    p.add_argument("--worker", help=argparse.SUPPRESS)  # internal: one video in this process
    p.add_argument("--source", help=argparse.SUPPRESS)  # internal: the worker's video identity
    args = p.parse_args(argv)
    try:
        from core.coords import parse_frame_size
        resize = parse_frame_size(args.resize, option="--resize") if args.resize else None
        if args.worker:
            run_one(args.config, args.worker, args.mode, os.path.join(args.out, "video.json"), args.source,
                    os.path.join(args.out, "video.npz") if args.save_pred else None, resize)
            return 0
        if args.merge:
            print(merge(args.merge, args.out, args.partial))
            return 0
        if not (args.config and args.data):
            raise InputError("--config and --data are needed (or --merge)")
        print(run_benchmark(args, resize))
    except PitrackError as e:
        print(f"eval.bench: error: {e}", file=sys.stderr)
        return 2
    return 0


def run_benchmark(args, resize):
    """Every video of ``args.data`` (or of its shard) that has no matching result yet, then the table."""
    from pitrack import load_config
    from core.jobs import parse_shard, run_jobs, take_shard
    config = load_config(args.config)
    shard = parse_shard(args.shard) if args.shard else None
    refs = list_videos(args.data, args.videos)
    kinds = {r.kind for r in refs}
    if len(kinds) > 1:
        raise PitrackError(f"{args.data} mixes TAP-Vid and BADJA videos; benchmark them separately")
    mode = args.mode if kinds == {"tapvid"} else "badja"
    resize_text = f"{resize[1]}x{resize[0]}" if resize else None
    os.makedirs(args.out, exist_ok=True)
    indexed = take_shard(list(enumerate(refs)), shard)
    records, todo, fingerprint = {}, [], config.fingerprint()
    for index, ref in indexed:
        match = lambda r, ref=ref: (r.get("config_fingerprint"), r.get("mode"), r.get("data"), r.get("resize")) == \
            (fingerprint, mode, ref.source, resize_text)
        rec = None if args.fresh else load_record(os.path.join(args.out, ref.name + ".json"), match)
        if rec is not None:
            records[ref.name] = rec
        else:
            todo.append((index, ref))
    context = dict(dataset=os.path.abspath(args.data), dataset_videos=len(refs))

    def job_of(item):          # the record of a pickle is read only now, one file at a time
        index, ref = item
        job = dict(name=ref.name, source=ref.source, config=os.path.abspath(args.config), mode=args.mode,
                   resize=args.resize, save_pred=args.save_pred)
        record = ref.record()
        return dict(job, record=record) if record is not None else dict(job, path=ref.path)

    def on_result(item, result):
        index, ref = item
        if "error" in result:
            raise PitrackError(result["error"])
        rec = dict(result["record"], dataset_index=index, **context)
        if result["pred"] is not None:
            save_bytes(os.path.join(args.out, ref.name + ".npz"), result["pred"])
        save_json(os.path.join(args.out, ref.name + ".json"), rec)
        records[ref.name] = rec
        m = rec["metrics"]
        cols = TAPVID_COLUMNS if rec["kind"] == "tapvid" else BADJA_COLUMNS
        shown = " ".join(f"{k}={_fmt(m.get(k), True)}" for k, _ in cols)
        print(f"{ref.name}: {shown} {rec['seconds']:.1f}s {rec['peak_rss_mb']:.0f}MB "
              f"({len(records)}/{len(indexed)})", file=sys.stderr)

    t0 = time.perf_counter()
    where = run_jobs(video_job, todo, on_result, prepare=job_of, ray=args.ray, ray_address=args.ray_address,
                     workers=args.workers, cpus_per_task=args.cpus_per_task, gpus_per_task=args.gpus_per_task,
                     gpu_config=config)
    if todo:
        print(f"{len(todo)} videos tracked in {time.perf_counter() - t0:.1f} s wall ({where})", file=sys.stderr)
    ordered = [records[ref.name] for _, ref in indexed]
    title = results_title(config.name, args.data, ordered, args.mode)
    if shard:
        return markdown_table(ordered, title + f", shard {args.shard} (merge the shards with --merge for the table)")
    return write_results(args.out, ordered, title, config.name, args.mode)


if __name__ == "__main__":
    from core.errors import run_command
    sys.exit(run_command(main, "eval.bench"))
