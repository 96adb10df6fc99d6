"""Are the long-term keypoints right, and where do they disagree with the flow chains?

    python -m eval.keypoint_quality --config configs/default.yaml --flow-config configs/ablations/no_keypoints.yaml \
        --data DIR --mode first|strided [--videos a,b] [--far 8]

``--config`` must produce keypoint observations (tto.enabled); its per-video cache is
reused, so after an ``eval.bench`` run nothing is optimised again. ``--flow-config`` tracks without them.
Over the scored frames (query frame excluded) of every video, errors in px of the 256×256 raster:

* observations: how many (query, frame) pairs have a valid keypoint, how many of those are visible in
  the ground truth (precision), their median error and the fraction within 4 and 8 px; recall = valid
  observations / ground-truth-visible pairs;
* where the flow-only tracker says visible: how far the keypoint lies from its estimate; for the pairs
  farther apart than ``--far`` px ("conflicts"), how often the keypoint is the closer of the two to the
  ground truth, and both median errors;
* where the flow-only tracker says occluded (the re-detections): how many are visible in the ground truth
  and the keypoint's median error there.
"""
import argparse
import json
import sys

import numpy as np

from eval.datasets import list_videos
from eval.metrics import evaluation_frames
from core.coords import SCORING_SIZE, scale_xy
from core.errors import PitrackError


def _median(x):
    return float(np.median(x)) if x.size else None


def _mean(x):
    return float(np.mean(x)) if x.size else None


def keypoint_quality(kp_xy, kp_valid, flow_xy, flow_vis, gt_xy, gt_vis, scored, far):
    """Counts and errors (see module docstring) from arrays [N, T, 2] / [N, T] already in raster px."""
    e_kp = np.linalg.norm(kp_xy - gt_xy, axis=-1)
    e_fl = np.linalg.norm(flow_xy - gt_xy, axis=-1)
    gap = np.linalg.norm(kp_xy - flow_xy, axis=-1)
    obs = scored & kp_valid
    good = obs & gt_vis
    conflict = obs & flow_vis & gt_vis & (gap > far)
    redetect = obs & ~flow_vis
    return {
        "pairs_scored": int(scored.sum()),
        "observations": int(obs.sum()),
        "precision_gt_visible": _mean(gt_vis[obs]),
        "recall_of_gt_visible": float(good.sum()) / max(1, int((scored & gt_vis).sum())),
        "kp_median_error": _median(e_kp[good]),
        "kp_within_4": _mean(e_kp[good] < 4),
        "kp_within_8": _mean(e_kp[good] < 8),
        "flow_median_error_same_pairs": _median(e_fl[good & flow_vis]),
        "kp_flow_gap_median": _median(gap[obs & flow_vis]),
        "conflicts": int(conflict.sum()),
        "conflict_kp_closer": _mean(e_kp[conflict] < e_fl[conflict]),
        "conflict_kp_median_error": _median(e_kp[conflict]),
        "conflict_flow_median_error": _median(e_fl[conflict]),
        "conflict_obs_not_gt_visible": int((obs & flow_vis & ~gt_vis & (gap > far)).sum()),
        "redetections": int(redetect.sum()),
        "redetection_gt_visible": _mean(gt_vis[redetect]),
        "redetection_kp_median_error": _median(e_kp[redetect & gt_vis]),
    }


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m eval.keypoint_quality", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="config with keypoint observations")
    p.add_argument("--flow-config", required=True, help="the same without keypoints")
    p.add_argument("--data", required=True)
    p.add_argument("--mode", choices=["first", "strided"], default="first")
    p.add_argument("--videos", default=None, help="comma-separated subset")
    p.add_argument("--far", type=float, default=8.0, help="conflict distance, px of the 256x256 raster")
    args = p.parse_args(argv)
    try:
        from pitrack import Tracker
        tk = Tracker.from_config(args.config, progress=False)
        tf = Tracker.from_config(args.flow_config, progress=False)
        if not tk.config.tto.enabled:
            raise PitrackError(f"{args.config} makes no keypoint observations (tto.enabled is false)")
        cols = {k: [] for k in ("kp_xy", "kp_valid", "flow_xy", "flow_vis", "gt_xy", "gt_vis", "scored")}
        for ref in list_videos(args.data, args.videos):
            v = ref.open()
            q, idx = v.queries(args.mode)
            frames = v.load_frames()
            tk(frames, q)
            kp = tk.extras["keypoints"]
            rf = tf(frames, q)
            scored = evaluation_frames(q[:, 0], v.num_frames, args.mode)   # never the query frame itself
            to_r = lambda xy: scale_xy(xy, v.size_hw, SCORING_SIZE)  # noqa: E731
            for k, val in (("kp_xy", to_r(kp["xy"])), ("kp_valid", kp["valid"]), ("flow_xy", to_r(rf.tracks)),
                           ("flow_vis", rf.visible), ("gt_xy", to_r(v.points[idx])), ("gt_vis", ~v.occluded[idx]),
                           ("scored", scored)):
                cols[k].append(np.asarray(val).reshape(-1, *np.asarray(val).shape[2:]))
        cat = {k: np.concatenate(v) for k, v in cols.items()}
        out = {"config": tk.config.name, "flow_config": tf.config.name, "mode": args.mode,
               **keypoint_quality(far=args.far, **cat)}
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}))
    except PitrackError as e:
        print(f"eval.keypoint_quality: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    from core.errors import run_command
    sys.exit(run_command(main, "eval.keypoint_quality"))
