"""Write a video's benchmark queries to a .npy for run_video.py.

    python -m eval.queries --data DIR --mode first|strided --out Q.npy [--video NAME] [--order txy|tyx]

Rows are (t, x, y) in pixels of the original frames, or (t, y, x) with ``--order tyx`` (tapnet's order;
``run_video.py --query-order tyx`` reads them). DIR: a video folder, or any dataset eval.bench reads with
``--video`` naming the video.
"""
import argparse
import sys

import numpy as np

from eval.datasets import open_one_video
from core.atomic import atomic_path
from core.errors import PitrackError


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m eval.queries", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--video", help="the video's name in --data (a dataset of several videos)")
    p.add_argument("--mode", choices=["first", "strided"], default="first")
    p.add_argument("--order", choices=["txy", "tyx"], default="txy", help="column order (tapnet: tyx)")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    try:
        q, _ = open_one_video(args.data, args.video).queries(args.mode)
    except PitrackError as e:
        print(f"eval.queries: error: {e}", file=sys.stderr)
        return 2
    if args.order == "tyx":
        q = q[:, [0, 2, 1]]
    with atomic_path(args.out, suffix=".npy") as tmp:
        with open(tmp, "wb") as f:
            np.save(f, q)
    return 0


if __name__ == "__main__":
    from core.errors import run_command
    sys.exit(run_command(main, "eval.queries"))
