"""Where two configs disagree, who is right? A tool for explaining ablations with ground truth.

    python -m eval.disagree --a configs/A.yaml --b configs/B.yaml --data DIR --mode first|strided

Over the scored frames of every video: frames that A calls visible and B occluded (and the reverse),
the fraction of them visible in the ground truth, and their median error (256×256 raster) where the
ground truth is visible; and, over frames where both say visible but positions differ by > 0.5 px,
how often A is closer to the ground truth.
"""
import argparse
import json
import sys

import numpy as np

from eval.datasets import list_videos
from eval.metrics import evaluation_frames
from core.coords import SCORING_SIZE, scale_xy
from core.errors import PitrackError


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m eval.disagree", description=__doc__.split("\n\n")[0])
    p.add_argument("--a", required=True)
    p.add_argument("--b", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--mode", choices=["first", "strided"], default="first")
    args = p.parse_args(argv)
    try:
        from pitrack import Tracker
        ta, tb = Tracker.from_config(args.a, progress=False), Tracker.from_config(args.b, progress=False)
        acc = {"a_vis_b_occ": [], "b_vis_a_occ": [], "a_err": [], "b_err": [], "moved_a_closer": []}
        for ref in list_videos(args.data):
            v = ref.open()
            q, idx = v.queries(args.mode)
            frames = v.load_frames()
            ra, rb = ta(frames, q), tb(frames, q)
            scored = evaluation_frames(q[:, 0], v.num_frames, args.mode)
            gt_vis = ~v.occluded[idx]
            gt = scale_xy(v.points[idx], v.size_hw, SCORING_SIZE)
            ea = np.linalg.norm(scale_xy(ra.tracks, v.size_hw, SCORING_SIZE) - gt, axis=-1)
            eb = np.linalg.norm(scale_xy(rb.tracks, v.size_hw, SCORING_SIZE) - gt, axis=-1)
            only_a = scored & ra.visible & ~rb.visible
            only_b = scored & rb.visible & ~ra.visible
            acc["a_vis_b_occ"].append(gt_vis[only_a])
            acc["b_vis_a_occ"].append(gt_vis[only_b])
            acc["a_err"].append(ea[only_a & gt_vis])
            acc["b_err"].append(eb[only_b & gt_vis])
            moved = scored & ra.visible & rb.visible & gt_vis & (np.abs(ea - eb) > 0.5)
            acc["moved_a_closer"].append(ea[moved] < eb[moved])
        cat = {k: np.concatenate(v) for k, v in acc.items()}
        med = lambda x: float(np.median(x)) if x.size else None
        out = {"a": ta.config.name, "b": tb.config.name, "mode": args.mode,
               "frames_a_visible_b_occluded": int(cat["a_vis_b_occ"].size),
               "of_those_gt_visible": float(cat["a_vis_b_occ"].mean()) if cat["a_vis_b_occ"].size else None,
               "their_median_error_a": med(cat["a_err"]),
               "frames_b_visible_a_occluded": int(cat["b_vis_a_occ"].size),
               "of_those_gt_visible_b": float(cat["b_vis_a_occ"].mean()) if cat["b_vis_a_occ"].size else None,
               "their_median_error_b": med(cat["b_err"]),
               "both_visible_positions_differ": int(cat["moved_a_closer"].size),
               "a_closer_fraction": float(cat["moved_a_closer"].mean()) if cat["moved_a_closer"].size else None}
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}))
    except PitrackError as e:
        print(f"eval.disagree: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    from core.errors import run_command
    sys.exit(run_command(main, "eval.disagree"))
