"""Track many videos with one config: one result per video, serially, on Ray, or one shard of the list.

    python -m pitrack.batch --config configs/X.yaml --list videos.txt --out DIR (--grid K | --queries-dir Q)
        [--ray | --ray-address ADDR] [--shard i/n] [--viz] [--fresh]

``videos.txt``: one video per line, a frame folder or a video file (relative paths are relative to the list;
blank lines and ``#`` comments are skipped). A video's name is its file or folder name without extension;
names must be unique. Queries: ``--grid K`` (a K×K grid on ``--grid-frame``) for every video, or
``--queries-dir Q`` holding ``Q/<name>.npy`` per video (rows (t, x, y), or (t, y, x) with ``--query-order
tyx``). Each video runs ``run_video.py`` in a process of its own and lands as ``DIR/<name>.npz`` (run_video.py's
output: tracks, visible, sigma, queries) and ``DIR/<name>.json`` (video, config, seconds, peak MB), plus
``DIR/<name>.mp4`` with ``--viz``. A rerun skips videos whose JSON matches (config, video, queries), so an
interrupted run resumes and shards share one DIR. Every video and query file is checked before any tracking.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from core.atomic import save_bytes, save_json
from core.errors import InputError, PitrackError
from core.jobs import load_record, worker_error

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read_video_list(path):
    """[(name, absolute video path)] of a list file; InputError for a missing video or a repeated name."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read the video list {path}: {e}") from None
    base, videos, names = os.path.dirname(os.path.abspath(path)), [], {}
    for n, line in enumerate(lines, 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        video = os.path.normpath(os.path.join(base, line))
        if not os.path.exists(video):
            raise InputError(f"{path}:{n}: video not found: {video}")
        name = os.path.splitext(os.path.basename(video))[0]
        if name in names:
            raise InputError(f"{path}:{n}: a second video named {name} (line {names[name]}); names must be unique")
        names[name] = n
        videos.append((name, video))
    if not videos:
        raise InputError(f"{path} lists no videos")
    return videos


def track_job(job):
    """Run run_video.py on one video in a temporary folder; ``{"record", "files": {suffix: bytes}}`` or
    ``{"error": one line}``. The same in this process or as a Ray task."""
    with tempfile.TemporaryDirectory(prefix="pitrack-batch-") as tmp:
        out = os.path.join(tmp, "out.npz")
        cmd = [sys.executable, "-m", "pitrack.batch", "--worker", "--out", tmp, "--", "--video", job["video"],
               "--config", job["config"], "--out", out, "--quiet"] + job["query_args"]
        if job["viz"]:
            cmd += ["--viz", os.path.join(tmp, "out.mp4")]
        r = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if r.returncode != 0:
            return {"error": worker_error(job["name"], r.returncode, r.stderr)}
        with open(os.path.join(tmp, "worker.json")) as f:
            rec = json.load(f)
        files = {}
        for suffix in (".npz", ".mp4") if job["viz"] else (".npz",):
            with open(os.path.join(tmp, "out" + suffix), "rb") as f:
                files[suffix] = f.read()
        return {"record": rec, "files": files}


def _worker(out_dir, run_video_argv):
    """run_video.py's main in this process, then its seconds and peak memory in ``out_dir/worker.json``."""
    sys.path.insert(0, ROOT)
    import run_video
    from core.devices import peak_rss_mb
    t0 = time.perf_counter()
    rc = run_video.main(run_video_argv)
    if rc == 0:
        save_json(os.path.join(out_dir, "worker.json"), {"seconds": time.perf_counter() - t0,
                                                         "peak_rss_mb": peak_rss_mb()})
    return rc


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        split = argv.index("--")
        return _worker(argv[argv.index("--out") + 1], argv[split + 1:])
    p = argparse.ArgumentParser(prog="python -m pitrack.batch", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True)
    p.add_argument("--list", required=True, help="text file: one video (frame folder or file) per line")
    p.add_argument("--out", required=True, help="results folder: <name>.npz and <name>.json per video")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--grid", type=int, help="track a K×K grid of points in every video")
    src.add_argument("--queries-dir", help="folder of <name>.npy queries, one per video")
    p.add_argument("--grid-frame", type=int, default=0)
    p.add_argument("--query-order", choices=["txy", "tyx"], default="txy")
    p.add_argument("--viz", action="store_true", help="also write <name>.mp4 overlays")
    p.add_argument("--fresh", action="store_true", help="recompute videos that already have results")
    p.add_argument("--ray", action="store_true", help="run the videos as tasks of a local Ray instance")
    p.add_argument("--ray-address", metavar="ADDR", help="run them on the Ray cluster at ADDR")
    p.add_argument("--workers", type=int, help="local Ray: tasks at once (default: cores / --cpus-per-task)")
    p.add_argument("--cpus-per-task", type=int, default=1)
    p.add_argument("--gpus-per-task", type=float, help="default: 1 when the config runs on a GPU")
    p.add_argument("--shard", metavar="i/n", help="only every n-th video from the i-th (Slurm array)")
    args = p.parse_args(argv)
    try:
        from pitrack import load_config
        from core.jobs import parse_shard, run_jobs, take_shard
        config = load_config(args.config)
        shard = parse_shard(args.shard) if args.shard else None
        if args.grid is not None and args.grid < 1:
            raise InputError(f"--grid must be >= 1, got {args.grid}")
        videos = take_shard(read_video_list(args.list), shard)
        jobs = []
        for name, video in videos:
            if args.grid is not None:
                query_args = ["--grid", str(args.grid), "--grid-frame", str(args.grid_frame)]
            else:
                q = os.path.abspath(os.path.join(args.queries_dir, name + ".npy"))
                if not os.path.isfile(q):
                    raise InputError(f"no queries for video {name}: {q} not found")
                query_args = ["--queries", q, "--query-order", args.query_order]
            job = dict(name=name, video=video, config=os.path.abspath(args.config), query_args=query_args,
                       viz=args.viz, config_fingerprint=config.fingerprint())
            if args.fresh or not _done(args.out, job):
                jobs.append(job)
        os.makedirs(args.out, exist_ok=True)
        finished = []

        def on_result(job, result):
            if "error" in result:
                raise PitrackError(result["error"])
            for suffix, data in result["files"].items():
                save_bytes(os.path.join(args.out, job["name"] + suffix), data)
            rec = dict(result["record"], video=job["video"], config=config.name,
                       config_fingerprint=job["config_fingerprint"], queries=job["query_args"], viz=job["viz"])
            save_json(os.path.join(args.out, job["name"] + ".json"), rec)
            finished.append(job["name"])
            print(f"{job['name']}: {rec['seconds']:.1f}s {rec['peak_rss_mb']:.0f}MB "
                  f"({len(finished)}/{len(jobs)})", file=sys.stderr)

        t0 = time.perf_counter()
        where = run_jobs(track_job, jobs, on_result, ray=args.ray, ray_address=args.ray_address,
                         workers=args.workers, cpus_per_task=args.cpus_per_task, gpus_per_task=args.gpus_per_task,
                         gpu_config=config)
        print(f"{len(jobs)} videos tracked, {len(videos) - len(jobs)} already done, in "
              f"{time.perf_counter() - t0:.1f} s ({where}) -> {args.out}", file=sys.stderr)
    except PitrackError as e:
        print(f"pitrack.batch: error: {e}", file=sys.stderr)
        return 2
    return 0


def _done(out, job):
    match = lambda rec: (rec.get("config_fingerprint"), rec.get("video"), rec.get("queries")) == \
        (job["config_fingerprint"], job["video"], job["query_args"]) and rec.get("viz", False) >= job["viz"]
    return load_record(os.path.join(out, job["name"] + ".json"), match) is not None and \
        os.path.isfile(os.path.join(out, job["name"] + ".npz"))


if __name__ == "__main__":
    from core.errors import run_command
    sys.exit(run_command(main, "pitrack.batch"))
