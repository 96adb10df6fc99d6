"""Does a candidate config earn its place as the default? The project's rule, checked on eval.bench results.

    python -m eval.default_rule --new NEW-first NEW-strided NEW-badja --old OLD-first OLD-strided OLD-badja \
        [--aj-margin 0] [--oa-margin 0]

Each argument is an ``eval.bench`` output folder (TAP-Vid query-first, query-strided, BADJA; in that order).
The dev clips are split into two halves by name in alphabetical order (odd and even positions: 1st, 3rd, … and
2nd, 4th, …). The candidate passes when, in **both** query modes:

* its AJ (mean over the half's clips) exceeds the other's by more than ``--aj-margin`` points on **each** half;
* its OA (mean over all clips) is at least the other's + ``--oa-margin`` points;

and its BADJA PCK@seg (mean over the videos) is at least the other's. Both sides must hold the same clips.
Prints one table; exit 0 when the rule holds, 1 when it does not, 2 on unusable input.
"""
import argparse
import sys

import numpy as np

from core.errors import InputError, PitrackError
from eval.compare import load_records


def halves(names):
    """(odd, even) positions of ``names`` in alphabetical order (1-based: 1st, 3rd, … and 2nd, 4th, …)."""
    s = sorted(names)
    return s[0::2], s[1::2]


def _by_video(folder, kind):
    recs = load_records(folder)
    got = {r["kind"] for r in recs}
    if got != {kind}:
        raise InputError(f"{folder} holds {'/'.join(sorted(got))} results, expected {kind}")
    return {r["video"]: r for r in recs}


def _mean(recs, names, key):
    return 100.0 * float(np.mean([recs[n]["metrics"][key] for n in names]))


def check_rule(new, old, aj_margin=0.0, oa_margin=0.0):
    """``new``, ``old``: (first, strided, badja) folders. Returns (passes, rows) with rows
    (what, new value, old value, needed difference, holds)."""
    rows = []
    for mode, a, b in (("first", new[0], old[0]), ("strided", new[1], old[1])):
        ra, rb = _by_video(a, "tapvid"), _by_video(b, "tapvid")
        if set(ra) != set(rb):
            raise InputError(f"{a} and {b} hold different clips ({len(set(ra) ^ set(rb))} differ)")
        modes = {r["mode"] for r in list(ra.values()) + list(rb.values())}
        if modes != {mode}:
            raise InputError(f"{a} / {b}: expected query-{mode} results, found {', '.join(sorted(modes))}")
        for label, names in zip(("odd half", "even half"), halves(ra)):
            x, y = _mean(ra, names, "AJ"), _mean(rb, names, "AJ")
            rows.append((f"{mode} AJ, {label} ({len(names)} clips)", x, y, f"> {aj_margin:+g}", x - y > aj_margin))
        x, y = _mean(ra, list(ra), "OA"), _mean(rb, list(rb), "OA")
        rows.append((f"{mode} OA ({len(ra)} clips)", x, y, f">= {oa_margin:+g}", x - y >= oa_margin))
    ra, rb = _by_video(new[2], "badja"), _by_video(old[2], "badja")
    if set(ra) != set(rb):
        raise InputError(f"{new[2]} and {old[2]} hold different videos")
    x, y = _mean(ra, list(ra), "PCK_seg"), _mean(rb, list(rb), "PCK_seg")
    rows.append((f"BADJA PCK@seg ({len(ra)} videos)", x, y, ">= +0", x >= y))
    return all(r[-1] for r in rows), rows


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m eval.default_rule", description=__doc__.split("\n\n")[0])
    p.add_argument("--new", nargs=3, required=True, metavar=("FIRST", "STRIDED", "BADJA"))
    p.add_argument("--old", nargs=3, required=True, metavar=("FIRST", "STRIDED", "BADJA"))
    p.add_argument("--aj-margin", type=float, default=0.0, help="AJ points the candidate must gain on each half")
    p.add_argument("--oa-margin", type=float, default=0.0, help="OA points the candidate may not fall below")
    args = p.parse_args(argv)
    try:
        ok, rows = check_rule(args.new, args.old, args.aj_margin, args.oa_margin)
    except (PitrackError, OSError, KeyError, ValueError) as e:
        print(f"eval.default_rule: error: {e}", file=sys.stderr)
        return 2
    print("| check | new | old | needed | holds |")
    print("|---|---|---|---|---|")
    for what, x, y, need, holds in rows:
        print(f"| {what} | {x:.1f} | {y:.1f} | {need} (got {x - y:+.1f}) | {'yes' if holds else 'NO'} |")
    print(f"rule {'holds' if ok else 'does not hold'}: new {' '.join(args.new)} against old {' '.join(args.old)}")
    return 0 if ok else 1


if __name__ == "__main__":
    from core.errors import run_command
    sys.exit(run_command(main, "eval.default_rule"))
