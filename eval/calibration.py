"""How trustworthy is a tracker's σ? Compare predicted σ with actual errors on ground truth.

    python -m eval.calibration --config configs/X.yaml --data DIR --mode first|strided [--videos a,b] [--by-distance]
                               [--by-history] [--fit-drift] [--fit-scale]
    python -m eval.calibration --preds FOLDER --data DIR --mode first|strided ...

``--preds`` scores the predictions ``eval.bench --save-pred`` kept (FOLDER/<video>.npz: tracks, visible, sigma,
queries) instead of tracking again; each must have been made with the video's queries of that mode.

Over the scored frames where the ground truth and the prediction are both visible, in the 256×256
raster: median σ, median error, the fraction of errors below σ and below 2σ, and Spearman's rank
correlation between σ and error. For a calibrated isotropic 2-D Gaussian (σ per axis) the error
e = ‖x̂ − x‖ follows a Rayleigh law: P(e < σ) = 1 − e^(−1/2) ≈ 0.39 and P(e < 2σ) = 1 − e^(−2) ≈ 0.86.
Fractions far above those mean σ is too large (under-confident); far below, too small (over-confident).

``--by-distance`` adds the same figures (without occlusion) per distance in frames from the query frame
(1, 2-3, 4-7, 8-15, 16-31, 32-63, ...): a σ that is calibrated overall can still be too large near the
query and too small far from it.

Occlusion, over all scored frames: precision, recall and F1 of the frames called occluded (not visible)
against the ground truth's occluded frames.

``--by-history`` splits the same figures between frames where the point has been visible all the way from the
query frame and frames after the ground truth marked it occluded somewhere between the two: the second are
positions the tracker had to find again (keypoints, chains resuming), the first what chaining alone carried.

``--fit-drift`` fits the chaining's process noise ``chain.drift_var`` q (:func:`fit_drift`; run it on the
tracker with ``drift_var: 0``): the q for which σ'² = σ² + q·d (d frames from the query) is calibrated at
the median, in original px² per frame (= working px² at ``flow.resolution: native``). It also fits q on
the odd-numbered videos and scores σ' on the even ones, and the other way round: held-out figures.

``--fit-scale`` answers how far σ is from covering the errors a calibrated Gaussian would: the one factor k for
which P(e < 2kσ) ≈ 0.86 over all points (:func:`fit_scale`), and held out as for ``--fit-drift``. A k that
also moves P(e < kσ) far from 0.39 means the errors are not Gaussian in σ's scale, whatever the factor.
"""
import argparse
import json
import sys

import numpy as np

from eval.datasets import TapVidVideo, list_videos
from eval.metrics import evaluation_frames
from core.coords import SCORING_SIZE, scale_sigma, scale_xy
from core.errors import InputError, PitrackError


def occluded_in_between(occluded, query_frames):
    """bool [N, T]: whether ground truth ``occluded`` [N, T] marks the point occluded at any frame from its query
    frame ``query_frames`` [N] to frame t, both included (before the query frame: from t to it)."""
    n, t = occluded.shape
    counts = np.concatenate([np.zeros((n, 1), np.int64), np.cumsum(occluded, axis=1)], axis=1)
    frames, q = np.arange(t)[None, :], np.asarray(query_frames, np.int64)[:, None]
    first, last = np.minimum(frames, q), np.maximum(frames, q)
    return np.take_along_axis(counts, last + 1, axis=1) > np.take_along_axis(counts, first, axis=1)


def sigma_errors(video, result, mode):
    """(σ, error, distance in frames from the query frame, occluded in between (:func:`occluded_in_between`)) [M]
    in the 256×256 raster over scored frames visible in ground truth and prediction, and (truth occluded,
    predicted occluded) bool [K] over all scored frames."""
    queries, index = video.queries(mode)
    hw = video.size_hw
    err = np.linalg.norm(scale_xy(result.tracks, hw, SCORING_SIZE) - scale_xy(video.points[index], hw, SCORING_SIZE), axis=-1)
    sig = scale_sigma(result.sigma, hw, SCORING_SIZE)
    scored = evaluation_frames(queries[:, 0], video.num_frames, mode)
    use = scored & ~video.occluded[index] & result.visible
    distance = np.abs(np.arange(video.num_frames)[None, :] - queries[:, :1].astype(np.int64))
    between = occluded_in_between(video.occluded[index], queries[:, 0].astype(np.int64))
    return (sig[use], err[use], distance[use], between[use], video.occluded[index][scored],
            ~result.visible[scored])


def saved_prediction(folder, video, mode):
    """The prediction ``eval.bench --save-pred`` kept for ``video`` in ``folder``: tracks, visible, sigma (original px),
    checked to answer the video's queries of ``mode``."""
    import os
    from types import SimpleNamespace
    from eval.score import check_prediction, load_prediction
    path = os.path.join(folder, video.name + ".npz")
    if not os.path.isfile(path):
        raise InputError(f"no saved prediction {path} (eval.bench --save-pred keeps them)")
    pred = load_prediction(path)
    check_prediction(video, pred, mode, ("tracks", "visible", "sigma", "queries"), f"prediction {path}")
    return SimpleNamespace(tracks=pred["tracks"], visible=pred["visible"].astype(bool), sigma=pred["sigma"])


def spearman(a, b):
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1]) if len(a) > 2 else float("nan")


def occlusion_scores(truth, pred):
    """Precision, recall and F1 of ``pred`` (called occluded) against ``truth`` (occluded), bool [K]."""
    tp = float(np.sum(truth & pred))
    precision, recall = tp / max(int(pred.sum()), 1), tp / max(int(truth.sum()), 1)
    return {"occ_precision": precision, "occ_recall": recall,
            "occ_f1": 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0}


def summarize(sig, err, truth_occ=None, pred_occ=None):
    out = {"points": int(sig.size), "median_sigma": float(np.median(sig)), "median_error": float(np.median(err)),
           "within_1sigma": float(np.mean(err < sig)), "within_2sigma": float(np.mean(err < 2 * sig)),
           "spearman": spearman(sig, err)}
    if truth_occ is not None:
        out.update(occlusion_scores(truth_occ, pred_occ))
    return out


def by_distance(sig, err, distance):
    """``summarize`` per octave of the distance [M] from the query frame: {"1": …, "2-3": …, "4-7": …}."""
    out = {}
    for k in range(int(np.log2(max(int(distance.max(initial=1)), 1))) + 1):
        lo, hi = 2 ** k, 2 ** (k + 1) - 1
        sel = (distance >= lo) & (distance <= hi)
        if sel.any():
            out[str(lo) if lo == hi else f"{lo}-{hi}"] = summarize(sig[sel], err[sel])
    return out


def by_history(sig, err, between):
    """``summarize`` of the points visible all the way from their query frame and of those occluded in between
    (``between`` bool [M]); a group without points is left out."""
    groups = {"visible_since_query": ~between, "after_occlusion": between}
    return {k: summarize(sig[sel], err[sel]) for k, sel in groups.items() if sel.any()}


def fit_drift(sig, err, distance):
    """Process noise q with median(e² / (σ² + q·d)) = 2 ln 2, the median of e²/σ² for a calibrated isotropic
    2-D Gaussian error (χ² with two degrees of freedom, σ per axis); 0 when σ already reaches it. ``sig``, ``err``
    [M] in one unit, ``distance`` [M] (frames, or frames times a squared scale to report q in another unit).
    Bisection: the median falls as q grows."""
    s2, e2, d = np.square(sig, dtype=np.float64), np.square(err, dtype=np.float64), np.asarray(distance, np.float64)
    target = 2.0 * np.log(2.0)

    def median(q):
        return float(np.median(e2 / np.maximum(s2 + q * d, 1e-12)))
    if sig.size == 0 or median(0.0) <= target:
        return 0.0
    lo, hi = 0.0, 1.0
    while median(hi) > target:
        if hi > 1e9:                        # no distance to grow with (all points on their query frame)
            return float("inf")
        lo, hi = hi, 2.0 * hi
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if median(mid) > target else (lo, mid)
    return 0.5 * (lo + hi)


def fit_scale(sig, err):
    """The factor s for which P(e < 2·s·σ) is 1 − e^−2 ≈ 0.86, a calibrated isotropic 2-D Gaussian's coverage:
    s = (the (1 − e^−2) quantile of e / σ) / 2 (``np.quantile``'s linear interpolation); nan without points.
    ``sig``, ``err`` [M]."""
    if sig.size == 0:
        return float("nan")
    return float(np.quantile(err / np.maximum(sig, 1e-12), 1.0 - np.exp(-2.0)) / 2.0)


def odd_even_halves(video_index):
    """(name, fit on, score on) for the two ways of fitting on one half of the videos (odd, even ``video_index``
    [M]) and scoring on the other: bool masks [M]; none when one half has no points."""
    for fit_on in (1, 0):
        fit, test = video_index % 2 == fit_on, video_index % 2 != fit_on
        if fit.any() and test.any():
            yield "odd" if fit_on else "even", fit, test


def scale_report(sig, err, video_index):
    """:func:`fit_scale` on all points, and fitted on one half of the videos (odd, even index) and scored on the
    other, with σ multiplied by it."""
    out = {"sigma_scale": fit_scale(sig, err), "held_out": []}
    for name, fit, test in odd_even_halves(video_index):
        k = fit_scale(sig[fit], err[fit])
        out["held_out"].append({"fit_on": name, "sigma_scale": k, **summarize(k * sig[test], err[test])})
    return out


def drift_report(sig, err, distance, scale, video_index):
    """:func:`fit_drift` on all points, and fitted on one half of the videos (odd, even index) and scored on the
    other. ``scale`` [M]: raster px per original px of each point's video, so q comes out in original px²."""
    d = distance * scale ** 2
    out = {"drift_var": fit_drift(sig, err, d), "held_out": []}
    for name, fit, test in odd_even_halves(video_index):
        q = fit_drift(sig[fit], err[fit], d[fit])
        s = np.sqrt(sig[test] ** 2 + q * d[test])
        out["held_out"].append({"fit_on": name, "drift_var": q, **summarize(s, err[test])})
    return out


def rounded(d):
    if isinstance(d, list):
        return [rounded(v) for v in d]
    if isinstance(d, dict):
        return {k: rounded(v) for k, v in d.items()}
    return round(d, 6 if abs(d) < 0.01 else 4) if isinstance(d, float) else d


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m eval.calibration", description=__doc__.split("\n\n")[0])
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", help="track each video with this config")
    source.add_argument("--preds", help="folder of saved predictions (eval.bench --save-pred) to score instead")
    p.add_argument("--data", required=True)
    p.add_argument("--mode", choices=["first", "strided"], default="first")
    p.add_argument("--videos")
    p.add_argument("--by-distance", action="store_true", help="also report σ's figures per distance from the query frame")
    p.add_argument("--by-history", action="store_true", help="also report σ's figures for points visible since the "
                                                                 "query frame and for points occluded in between")
    p.add_argument("--fit-drift", action="store_true", help="fit chain.drift_var (run with drift_var 0)")
    p.add_argument("--fit-scale", action="store_true", help="fit the factor on σ that gives P(e<2σ) ≈ 0.86")
    args = p.parse_args(argv)
    try:
        refs = list_videos(args.data, args.videos)
        if args.config:
            from pitrack import Tracker
            tracker = Tracker.from_config(args.config, progress=False)
        parts = []
        for ref in refs:
            video = ref.open()
            if not isinstance(video, TapVidVideo):
                raise InputError(f"{ref.source}: calibration needs TAP-Vid format ground truth")
            q, _ = video.queries(args.mode)
            result = saved_prediction(args.preds, video, args.mode) if args.preds else tracker(video.load_frames(), q)
            sig, err, distance, between, truth_occ, pred_occ = sigma_errors(video, result, args.mode)
            scale = np.full(sig.shape, float(scale_sigma(1.0, video.size_hw, SCORING_SIZE)))
            parts.append((sig, err, distance, between, truth_occ, pred_occ, scale, np.full(sig.shape, len(parts))))
        sig, err, distance, between, truth_occ, pred_occ, scale, index = (np.concatenate(v) for v in zip(*parts))
        out = {"config": tracker.config.name if args.config else None, "preds": args.preds, "mode": args.mode,
               "videos": len(refs)}
        out.update(summarize(sig, err, truth_occ, pred_occ))
        if args.by_distance:
            out["by_distance"] = by_distance(sig, err, distance)
        if args.by_history:
            out["by_history"] = by_history(sig, err, between)
        if args.fit_drift:
            out.update(drift_report(sig, err, distance, scale, index))
        if args.fit_scale:
            out["scale"] = scale_report(sig, err, index)
        print(json.dumps(rounded(out)))
    except PitrackError as e:
        print(f"eval.calibration: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    from core.errors import run_command
    sys.exit(run_command(main, "eval.calibration"))
