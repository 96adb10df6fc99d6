"""Can a config's appearance maps re-find a point, and tell when it is hidden? Ground-truth tracks, no flow.

    python -m eval.redetection --config C [--config C2 ...] --data DIR [--mode first|strided] [--videos a,b]
        [--window 24] [--out table.json]

The maps are the ones the long-term keypoints match in (``Tracker.feature_maps``: the per-video model's
refined maps when the config optimises it, else the normalised frozen backbone features). For every query (its
template: the map of its query frame bilinearly sampled at the query, normalised) and every scored frame
t (query frame excluded), with e the distance in the 256×256 raster between a cell's centre and the
ground truth:

* local: the best-matching (cosine) cell among those whose centre lies within ±``window`` raster px
  (box) of the true position; <2 / <4 / <8 = share of the ground-truth-visible pairs with e below that;
* global: the best-matching cell of the whole frame; <8 / <16;
* occlusion AUC: how well s_vis = the similarity at the true position (visible pairs, bilinear) separates
  from s_occ = the best similarity within ±``window`` of the last visible true position (occluded pairs):
  P(s_vis > s_occ) + ½ P(s_vis = s_occ), over all pairs of the two sets (Mann–Whitney);
* s/frame: the backbone's seconds per frame (``features_s`` / T; a cached video counts as computed);
  opt s: the per-video optimisation's seconds (0 when its checkpoint was in the cache).

Positions are cell centres (no sub-cell refinement), so a stride-s map is bounded by its cell size.
"""
import argparse
import json
import sys

import numpy as np
import torch

from core.coords import SCORING_SIZE, from_center, scale_xy, to_center
from core.errors import PitrackError
from core.sampling import sample_map
from eval.datasets import list_videos
from eval.metrics import evaluation_frames


def occlusion_auc(s_vis, s_occ):
    """Mann–Whitney AUC = P(s_vis > s_occ) + ½ P(s_vis = s_occ); None when either set is empty."""
    s_vis, s_occ = np.asarray(s_vis, np.float64), np.asarray(s_occ, np.float64)
    if s_vis.size == 0 or s_occ.size == 0:
        return None
    from scipy.stats import rankdata
    ranks = rankdata(np.concatenate([s_vis, s_occ]))
    return float((ranks[:s_vis.size].sum() - s_vis.size * (s_vis.size + 1) / 2) / (s_vis.size * s_occ.size))


def cell_centres_raster(grid, hw):
    """Centre of every cell of ``grid`` [gh·gw, 2] in the 256×256 raster, for original frames of ``hw``."""
    gh, gw = grid.grid_hw
    v, u = torch.meshgrid(torch.arange(gh, dtype=torch.float32), torch.arange(gw, dtype=torch.float32), indexing="ij")
    xy = grid.to_working(torch.stack([u, v], -1).reshape(-1, 2), hw)
    return torch.as_tensor(scale_xy(from_center(xy.numpy()), hw, SCORING_SIZE))


def video_pairs(maps, grid, hw, queries, gt_xy, gt_vis, scored, window):
    """Per (query, scored frame): local and global error (raster px, NaN where not visible), s_vis / s_occ
    (NaN where not applicable). ``maps`` [T, C, gh, gw]; ``queries`` [N, 3] original px; ``gt_xy`` [N, T, 2]
    raster px; ``gt_vis``, ``scored`` bool [N, T]."""
    T = maps.shape[0]
    N = queries.shape[0]
    cells = cell_centres_raster(grid, hw)                                            # [K, 2]
    tq = queries[:, 0].astype(int)
    q_uv = grid.from_working(torch.as_tensor(to_center(queries[:, 1:3]), dtype=torch.float32), hw)
    templates = torch.zeros(N, maps.shape[1])
    for f in np.unique(tq):
        sel = np.nonzero(tq == f)[0]
        templates[sel] = torch.nn.functional.normalize(sample_map(maps[f], q_uv[sel]), dim=1)
    gt = torch.as_tensor(gt_xy, dtype=torch.float32)
    gt_uv = grid.from_working(torch.as_tensor(to_center(scale_xy(gt_xy, SCORING_SIZE, hw)), dtype=torch.float32), hw)
    last = np.zeros((N, T), int)                    # last frame before t (after the query) where it is visible
    for i in range(N):
        seen = tq[i]
        for t in range(T):
            last[i, t] = seen
            if gt_vis[i, t]:
                seen = t
    e_local = np.full((N, T), np.nan)
    e_global = np.full((N, T), np.nan)
    s_vis = np.full((N, T), np.nan)
    s_occ = np.full((N, T), np.nan)
    for t in range(T):
        rows = np.nonzero(scored[:, t])[0]
        if rows.size == 0:
            continue
        m = maps[t].float()
        sim = templates[rows] @ m.flatten(1)                                         # [n, K]
        best = sim.argmax(1)
        e_global[rows, t] = (cells[best] - gt[rows, t]).norm(dim=1).numpy()
        box = ((cells[None] - gt[rows, t][:, None]).abs() <= window).all(-1)          # [n, K]
        lb = sim.masked_fill(~box, float("-inf")).argmax(1)
        e_local[rows, t] = (cells[lb] - gt[rows, t]).norm(dim=1).numpy()
        at = (torch.nn.functional.normalize(sample_map(maps[t], gt_uv[rows, t]), dim=1) * templates[rows]).sum(1)
        s_vis[rows, t] = at.numpy()
        ref = gt[rows, last[rows, t]]
        box_occ = ((cells[None] - ref[:, None]).abs() <= window).all(-1)
        s_occ[rows, t] = sim.masked_fill(~box_occ, float("-inf")).max(1).values.numpy()
    vis = scored & gt_vis
    occ = scored & ~gt_vis
    return dict(e_local=e_local[vis], e_global=e_global[vis], s_vis=s_vis[vis], s_occ=s_occ[occ])


def summary(parts, seconds_per_frame, opt_s):
    cat = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    el, eg = cat["e_local"], cat["e_global"]
    out = {f"local_lt{d}": float(np.mean(el < d)) for d in (2, 4, 8)}
    out.update({f"global_lt{d}": float(np.mean(eg < d)) for d in (8, 16)})
    out["occlusion_auc"] = occlusion_auc(cat["s_vis"], cat["s_occ"])
    out["pairs_visible"], out["pairs_occluded"] = int(el.size), int(cat["s_occ"].size)
    out["s_per_frame"] = seconds_per_frame
    out["opt_s_per_video"] = opt_s
    return out


def measure(config, data, mode, videos, window):
    from pitrack import Tracker
    tracker = Tracker.from_config(config, progress=False)
    parts, secs, frames, opt = [], 0.0, 0, []
    for ref in list_videos(data, videos):
        v = ref.open()
        q, idx = v.queries(mode)
        video = v.load_frames()
        maps, grid = tracker.feature_maps(video)
        st = tracker.stats
        secs += float(st.get("features_s", 0.0))
        frames += int(video.shape[0])
        opt.append(float(st.get("tto_s", 0.0)))
        scored = evaluation_frames(q[:, 0], v.num_frames, mode)
        gt_xy = scale_xy(v.points[idx], v.size_hw, SCORING_SIZE)
        parts.append(video_pairs(maps, grid, v.size_hw, q, gt_xy, ~v.occluded[idx], scored, window))
    out = summary(parts, secs / max(1, frames), float(np.mean(opt)) if opt else 0.0)
    return dict(config=tracker.config.name, backbone=tracker.config.features.backbone,
                optimised=tracker.config.tto.optimises, **out)


def markdown(rows):
    head = "| config | backbone | optimised | local <2 / <4 / <8 | global <8 / <16 | occlusion AUC | s/frame | opt s |"
    lines = [head, "|" + "---|" * 8]
    for r in rows:
        auc = "–" if r["occlusion_auc"] is None else f"{r['occlusion_auc']:.2f}"
        lines.append(f"| {r['config']} | {r['backbone']} | {'yes' if r['optimised'] else 'no'} | "
                     f"{100 * r['local_lt2']:.1f} / {100 * r['local_lt4']:.1f} / {100 * r['local_lt8']:.1f} | "
                     f"{100 * r['global_lt8']:.1f} / {100 * r['global_lt16']:.1f} | {auc} | "
                     f"{r['s_per_frame']:.3f} | {r['opt_s_per_video']:.1f} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m eval.redetection", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", action="append", required=True, help="a config (repeat for several)")
    p.add_argument("--data", required=True)
    p.add_argument("--mode", choices=["first", "strided"], default="first")
    p.add_argument("--videos", default=None, help="comma-separated subset")
    p.add_argument("--window", type=float, default=24.0, help="half-width of the local box, 256-raster px")
    p.add_argument("--out", default=None, help="also write the rows as JSON here")
    args = p.parse_args(argv)
    try:
        if not args.window > 0:
            raise PitrackError(f"--window must be > 0, got {args.window}")
        rows = [measure(c, args.data, args.mode, args.videos, args.window) for c in args.config]
        if args.out:
            from core.atomic import save_bytes
            save_bytes(args.out, (json.dumps(rows, indent=1) + "\n").encode())
    except PitrackError as e:
        print(f"eval.redetection: error: {e}", file=sys.stderr)
        return 2
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    from core.errors import run_command
    sys.exit(run_command(main, "eval.redetection"))
