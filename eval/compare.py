"""Put several benchmark results side by side (the mean row of each ``eval.bench`` output folder).

    python -m eval.compare results/klt-davis32-first results/mft-davis32-first ...

Prints a Markdown table: results folder, config, mode (with ``@WxH`` when frames were resized), videos, metrics (%; TAP-Vid: AJ, <δ avg, OA and the error
shares occ→vis, vis→occ, >16px, each the mean over the videos that have a value), mean seconds per video
(with flow, per-video optimisation and tracking seconds when the tracker reports them), mean flow-cache MB, max peak MB.
"""
import argparse
import glob
import json
import os
import sys

import numpy as np

from eval.bench import BADJA_COLUMNS, TAPVID_COLUMNS, _fmt, _mean
from core.errors import InputError


def load_records(folder):
    recs = []
    for p in sorted(glob.glob(os.path.join(folder, "*.json"))):
        if os.path.basename(p) == "summary.json":
            continue
        with open(p) as f:
            recs.append(json.load(f))
    if not recs:
        raise InputError(f"{folder} holds no per-video results")
    return recs


def compare_table(folders):
    rows, kinds = [], set()
    for folder in folders:
        recs = load_records(folder)
        kinds.add(recs[0]["kind"])
        cols = TAPVID_COLUMNS if recs[0]["kind"] == "tapvid" else BADJA_COLUMNS
        mean = lambda key: float(np.mean([r["stats"].get(key, np.nan) for r in recs]))
        rows.append([os.path.basename(os.path.normpath(folder)), recs[0].get("config") or "–",
                     recs[0]["mode"] + (f" @{recs[0]['resize']}" if recs[0].get("resize") else ""), str(len(recs))]
                    + [_fmt(_mean([r["metrics"].get(c) for r in recs]), True) for c, _ in cols]
                    + [_fmt(_mean([r.get("seconds") for r in recs]))]
                    + [("–" if np.isnan(mean(k)) else f"{mean(k):.1f}") for k in ("flow_s", "tto_s", "track_s", "cache_mb")]
                    + [_fmt_mb(max((r["peak_rss_mb"] for r in recs if r.get("peak_rss_mb") is not None), default=None))])
    if len(kinds) > 1:
        raise InputError("compare TAP-Vid and BADJA results in separate tables")
    cols = TAPVID_COLUMNS if kinds == {"tapvid"} else BADJA_COLUMNS
    head = ["results", "config", "mode", "videos"] + [c for _, c in cols] + \
           ["s/video", "flow s", "opt s", "track s", "cache MB", "max peak MB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _fmt_mb(v):
    return "–" if v is None else f"{v:.0f}"


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m eval.compare", description=__doc__.split("\n\n")[0])
    p.add_argument("folders", nargs="+")
    args = p.parse_args(argv)
    try:
        print(compare_table(args.folders), end="")
    except InputError as e:
        print(f"eval.compare: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    from core.errors import run_command
    sys.exit(run_command(main, "eval.compare"))
