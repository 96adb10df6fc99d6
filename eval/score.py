"""Score one prediction against one video; prints one JSON line.

    python -m eval.score --data DIR --pred pred.npz --mode first|strided [--video NAME]

DIR: a video folder, or any dataset eval.bench reads with ``--video`` naming the video.

The prediction must be made with that video's queries for the mode (``python -m eval.queries`` writes
them): tracks in file order; strided: for each track, its query frames ascending. TAP-Vid folders print
{"AJ", "delta_avg", "OA", "occ_called_visible", "vis_called_occluded", "vis_far16"} (fractions; a share with no
pair is NaN) and the counts {"n_occ", "n_vis", "n_occ_called_visible", "n_vis_called_occluded", "n_vis_far16"};
BADJA folders print {"PCK_seg", "PCK_3px"}.
"""
import argparse
import json
import sys
import zipfile

import numpy as np

from eval.datasets import open_one_video
from core.errors import InputError, PitrackError

TAPVID_KEYS = ("AJ", "delta_avg", "OA", "occ_called_visible", "vis_called_occluded", "vis_far16",
               "n_occ", "n_vis", "n_occ_called_visible", "n_vis_called_occluded", "n_vis_far16")


def load_prediction(path):
    try:
        d = np.load(path, allow_pickle=False)
        return {k: d[k] for k in d.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise InputError(f"cannot read prediction {path}: {e}") from None


def score_prediction(video, pred, mode):
    """Metrics dict for a prediction dict (keys tracks, visible, optional queries) on a dataset video."""
    check_prediction(video, pred, mode)
    return video.score(pred["tracks"], pred["visible"], mode)


def check_prediction(video, pred, mode, arrays=("tracks", "visible"), source="prediction"):
    """InputError unless the prediction dict has ``arrays`` and its ``queries`` (where it has them) are ``video``'s
    queries of ``mode``; ``source`` names it in the message."""
    for k in arrays:
        if k not in pred:
            raise InputError(f"{source} has no '{k}' array")
    expected, _ = video.queries(mode)
    if "queries" in pred:
        q = np.asarray(pred["queries"])
        if q.shape != expected.shape or not np.allclose(q, expected, atol=1e-3):
            raise InputError(f"{source} was made with other queries than {video.name}'s '{mode}' queries "
                             f"({q.shape[0]} given, {expected.shape[0]} expected)")


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m eval.score", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="a video folder, or a dataset with --video")
    p.add_argument("--video", help="the video's name in --data (a dataset of several videos)")
    p.add_argument("--pred", required=True, help="prediction .npz from run_video.py")
    p.add_argument("--mode", choices=["first", "strided"], default="first")
    p.add_argument("--all", action="store_true", help="print per-threshold numbers too")
    args = p.parse_args(argv)
    try:
        video = open_one_video(args.data, args.video)
        m = score_prediction(video, load_prediction(args.pred), args.mode)
    except PitrackError as e:
        print(f"eval.score: error: {e}", file=sys.stderr)
        return 2
    if not args.all:
        keys = TAPVID_KEYS if video.kind == "tapvid" else ("PCK_seg", "PCK_3px")
        m = {k: m[k] for k in keys}
    print(json.dumps({k: round(v, 6) if isinstance(v, float) else v for k, v in m.items()}))
    return 0


if __name__ == "__main__":
    from core.errors import run_command
    sys.exit(run_command(main, "eval.score"))
