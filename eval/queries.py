"""Write a video folder's benchmark queries to a .npy for run_video.py.

    python -m eval.queries --data DIR --mode first|strided --out Q.npy
"""
import argparse
import sys

import numpy as np

from eval.datasets import open_video_folder
from core.atomic import atomic_path
from core.errors import PitrackError


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m eval.queries", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--mode", choices=["first", "strided"], default="first")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    try:
        q, _ = open_video_folder(args.data).queries(args.mode)
    except PitrackError as e:
        print(f"eval.queries: error: {e}", file=sys.stderr)
        return 2
    with atomic_path(args.out, suffix=".npy") as tmp:
        with open(tmp, "wb") as f:
            np.save(f, q)
    return 0


if __name__ == "__main__":
    sys.exit(main())
