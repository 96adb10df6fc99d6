"""What does the track refiner change: its positions, its visibility, or both, and where does it help?

    python -m eval.refiner_variants --config configs/default_refined.yaml --data DIR --mode first|strided \
        [--videos a,b] [--out FILE.json]

One run of ``--config`` (refiner enabled) per video gives both the refiner's input (the tracks, σ and
visibility it was handed) and its output (positions, σ, visibility logit), so every variant below is
scored on the same tracks (TAP-Vid, means over the videos, %):

* ``input``: the refiner's input (what the config gives with the refiner off);
* ``refined``: the config's output;
* ``refined positions, input visibility``;
* ``clamped r``: the input moved towards the refined position by at most r px of the 256×256 raster;
* ``fused``: input and refined positions averaged by inverse variance (their σ);
* ``refiner visibility > b``: input positions, visible where the refiner's logit exceeds b.

Then, over the scored frames where the point is visible in the ground truth, the refined positions against
the input's, by bins of the input's error (px of the 256×256 raster).
"""
import argparse
import sys

import numpy as np

from core.atomic import save_json
from core.coords import SCORING_SIZE, scale_sigma, scale_xy
from core.errors import InputError, PitrackError
from eval.datasets import list_videos
from eval.metrics import evaluation_frames

CLAMPS = (1.0, 2.0, 4.0, 8.0)
LOGIT_OFFSETS = (-4.0, -2.0, -1.0, 0.0, 1.0)
ERROR_BINS = (0.0, 1.0, 2.0, 4.0, 8.0, 16.0, np.inf)


def clamped(xy_in, xy_ref, radius):
    """``xy_in`` moved towards ``xy_ref`` ([..., 2]) by at most ``radius``."""
    d = xy_ref - xy_in
    n = np.linalg.norm(d, axis=-1, keepdims=True)
    return xy_in + d * np.minimum(1.0, radius / np.maximum(n, 1e-9))


def fused(xy_a, sigma_a, xy_b, sigma_b):
    """Inverse-variance mean of two positions [..., 2] with σ [...]."""
    wa, wb = 1.0 / np.maximum(sigma_a, 1e-6) ** 2, 1.0 / np.maximum(sigma_b, 1e-6) ** 2
    return (xy_a * wa[..., None] + xy_b * wb[..., None]) / (wa + wb)[..., None]


def variants(inp, out):
    """{name: (tracks, visible)} in 256-raster px from the refiner's input and output (dicts of tracks, visible,
    sigma, and the output's visibility_logit), all already in raster px."""
    v = {"input": (inp["tracks"], inp["visible"]), "refined": (out["tracks"], out["visible"]),
         "refined positions, input visibility": (out["tracks"], inp["visible"])}
    for r in CLAMPS:
        v[f"clamped {r:g}"] = (clamped(inp["tracks"], out["tracks"], r), inp["visible"])
    v["fused"] = (fused(inp["tracks"], inp["sigma"], out["tracks"], out["sigma"]), inp["visible"])
    for b in LOGIT_OFFSETS:
        v[f"refiner visibility > {b:g}"] = (inp["tracks"], out["visibility_logit"] > b)
    return v


def error_bins(e_in, e_ref):
    """Rows per bin of the input's error: share, both medians, shares moved closer / farther by > 0.5 px."""
    rows = []
    for lo, hi in zip(ERROR_BINS[:-1], ERROR_BINS[1:]):
        s = (e_in >= lo) & (e_in < hi)
        if not s.any():
            continue
        rows.append(dict(bin=f"{lo:g}–{hi:g}" if np.isfinite(hi) else f"≥{lo:g}", share=float(s.mean()),
                         median_input=float(np.median(e_in[s])), median_refined=float(np.median(e_ref[s])),
                         closer=float(np.mean(e_ref[s] < e_in[s] - 0.5)),
                         farther=float(np.mean(e_ref[s] > e_in[s] + 0.5))))
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m eval.refiner_variants", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="a config with refiner.enabled")
    p.add_argument("--data", required=True, help="a TAP-Vid dataset folder")
    p.add_argument("--mode", choices=["first", "strided"], default="first")
    p.add_argument("--videos", default=None, help="comma-separated subset")
    p.add_argument("--out", default=None, help="JSON file for the per-video scores and the bins")
    args = p.parse_args(argv)
    try:
        from pitrack import Tracker
        tracker = Tracker.from_config(args.config, progress=False)
        if not tracker.config.refiner.enabled:
            raise InputError(f"{args.config}: refiner.enabled is false, there is nothing to compare")
        videos = [ref.open() for ref in list_videos(args.data, args.videos)]
        if any(v.kind != "tapvid" for v in videos):
            raise InputError(f"{args.data}: eval.refiner_variants scores TAP-Vid folders only")
        per_video, e_in, e_ref = {}, [], []
        for v in videos:
            q, idx = v.queries(args.mode)
            res = tracker(v.load_frames(), q)
            ri = tracker.extras.get("refiner_input")
            if ri is None:
                raise InputError(f"{v.name}: the queries were tracked in several chunks, which keep no refiner input; "
                                 "raise chain.query_frames_per_chunk")
            to_r = lambda xy: scale_xy(xy, v.size_hw, SCORING_SIZE)  # noqa: E731
            s_r = lambda s: scale_sigma(s, v.size_hw, SCORING_SIZE)  # noqa: E731
            inp = dict(tracks=to_r(ri["tracks"]), visible=ri["visible"], sigma=s_r(ri["sigma"]))
            out = dict(tracks=to_r(res.tracks), visible=res.visible, sigma=s_r(res.sigma),
                       visibility_logit=ri["visibility_logit"])
            per_video[v.name] = {name: v.score(scale_xy(xy, SCORING_SIZE, v.size_hw), vis, args.mode)
                                 for name, (xy, vis) in variants(inp, out).items()}
            scored = evaluation_frames(q[:, 0], v.num_frames, args.mode)   # never the query frame itself
            m = scored & ~v.occluded[idx]
            gt = to_r(v.points[idx])
            e_in.append(np.linalg.norm(inp["tracks"] - gt, axis=-1)[m])
            e_ref.append(np.linalg.norm(out["tracks"] - gt, axis=-1)[m])
            print(f"{v.name}: " + " ".join(f"{k}={100 * r['AJ']:.1f}" for k, r in per_video[v.name].items()),
                  file=sys.stderr, flush=True)
        e_in, e_ref = np.concatenate(e_in), np.concatenate(e_ref)
        names = list(next(iter(per_video.values())))
        print(f"{tracker.config.name}, {args.mode}, {len(videos)} videos (TAP-Vid %, means over videos)\n")
        print("| variant | AJ | <δ avg | OA |\n|---|---|---|---|")
        for name in names:
            m = {k: 100 * np.mean([per_video[v][name][k] for v in per_video]) for k in ("AJ", "delta_avg", "OA")}
            print(f"| {name} | {m['AJ']:.1f} | {m['delta_avg']:.1f} | {m['OA']:.1f} |")
        bins = error_bins(e_in, e_ref)
        print(f"\nGround-truth-visible scored frames: {e_in.size}; median error {np.median(e_in):.2f} px (input), "
              f"{np.median(e_ref):.2f} px (refined), 256×256 raster\n")
        print("| input error px | share | median input | median refined | refined closer by > 0.5 px "
              "| refined farther by > 0.5 px |\n|---|---|---|---|---|---|")
        for b in bins:
            print(f"| {b['bin']} | {b['share']:.3f} | {b['median_input']:.2f} | {b['median_refined']:.2f} "
                  f"| {b['closer']:.3f} | {b['farther']:.3f} |")
        if args.out:
            save_json(args.out, dict(config=tracker.config.name, mode=args.mode, per_video=per_video, bins=bins))
    except PitrackError as e:
        print(f"eval.refiner_variants: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    from core.errors import run_command
    sys.exit(run_command(main, "eval.refiner_variants"))
