"""Flow-chain tracker (MFT-style candidate selection), vectorised over all queries and intervals.

For a frame t and an interval Δ, a candidate position for a query comes from its estimate at the
source frame s = t − Δ (forward pass; s = t + Δ in the pass toward frame 0), or s = t_q for Δ = ∞,
chained through the flow s → t sampled bilinearly at the source estimate:

    x_c = x_s + F_{s→t}(x_s)          σ²_c = σ²_s + V_{s→t}(x_s)          o_c = max(o_s, O_{s→t}(x_s))

(F flow, V its variance, O its occlusion probability). A candidate is visible when o_c < threshold and
x_c lies inside the frame. The estimate at t is the visible candidate of least σ²; when none is visible
the point is occluded at t and keeps the least-σ² candidate's position. All positions are in the
pixel-centre convention of the flow bank's working resolution.
"""
import time

import numpy as np
import torch
from tqdm import tqdm

from pitrack.coords import from_center, scale_sigma, scale_xy, to_center


def needed_pairs(query_frames, num_frames, intervals, use_inf):
    """Directed frame pairs (s, t) both passes need: forward s < t (t > t_q), toward frame 0 s > t (t < t_q)."""
    tqs = sorted(set(int(t) for t in query_frames))
    first, last = tqs[0], tqs[-1]
    pairs = set()
    for t in range(num_frames):
        for d in intervals:
            if t - d >= first and t > first:
                pairs.add((t - d, t))
            if t + d <= last and t < last:
                pairs.add((t + d, t))
        if use_inf:
            pairs.update((q, t) for q in tqs if q != t)
    return pairs


def select_least_sigma(cand_xy, cand_var, cand_occ, cand_ok, threshold):
    """Pick one candidate per query. Inputs [N, K, 2], [N, K], [N, K], [N, K] (ok: candidate exists and is
    inside the frame). Visible candidates: ok and occ < threshold. Returns the chosen position [N, 2],
    variance [N], occlusion probability [N] and visibility [N]; queries with no candidate at all get
    ``exists`` False."""
    big = torch.full_like(cand_var, torch.finfo(cand_var.dtype).max)
    vis = cand_ok & (cand_occ < threshold)
    any_vis = vis.any(1)
    key_vis = torch.where(vis, cand_var, big)
    key_any = torch.where(torch.isfinite(cand_var), cand_var, big)
    k = torch.where(any_vis, key_vis.argmin(1), key_any.argmin(1))
    n = torch.arange(cand_xy.shape[0])
    return cand_xy[n, k], cand_var[n, k], cand_occ[n, k], any_vis


def chain_pass(bank, num_frames, q_xy, tq, intervals, use_inf, threshold, q_var, direction, progress=False):
    """One pass over the frames: direction +1 fills t > t_q, direction −1 fills t < t_q.

    ``q_xy`` [N, 2] query positions (working px, pixel-centre), ``tq`` [N] int query frames.
    Returns positions [N, T, 2], variances [N, T], occlusion probabilities [N, T], visibility [N, T],
    filled only on the pass's side of each query frame (the query frame itself is set too).
    """
    T = num_frames
    h, w = bank.working_hw
    N = q_xy.shape[0]
    xy = torch.zeros(N, T, 2)
    var = torch.full((N, T), float("inf"))
    occ = torch.ones(N, T)
    vis = torch.zeros(N, T, dtype=torch.bool)
    tq_t = torch.as_tensor(tq)
    xy[torch.arange(N), tq_t] = torch.as_tensor(q_xy, dtype=torch.float32)
    var[torch.arange(N), tq_t] = q_var
    occ[torch.arange(N), tq_t] = 0.0
    vis[torch.arange(N), tq_t] = True
    frames = range(T) if direction > 0 else range(T - 1, -1, -1)
    for t in tqdm(frames, desc="chain" if direction > 0 else "chain (to frame 0)", disable=not progress, leave=False):
        active = (tq_t < t) if direction > 0 else (tq_t > t)
        if not active.any():
            continue
        groups = []   # (source frame, query indices) of each candidate
        for d in intervals:
            s = t - direction * d
            if 0 <= s < T:
                idx = torch.nonzero(active & ((tq_t <= s) if direction > 0 else (tq_t >= s)))[:, 0]
                if idx.numel():
                    groups.append((s, idx))
        if use_inf:
            for q in torch.unique(tq_t[active]).tolist():
                if any(q == t - direction * d for d in intervals):
                    continue  # same pair as a finite interval: same candidate
                groups.append((q, torch.nonzero(active & (tq_t == q))[:, 0]))
        if not groups:
            continue
        G, M = len(groups), max(int(i.numel()) for _, i in groups)
        pts = torch.zeros(G, M, 2)
        for g, (s, idx) in enumerate(groups):
            pts[g, :idx.numel()] = xy[idx, s]
        samp = bank.sample([(s, t) for s, _ in groups], pts)                       # [G, M, 4]
        K = G
        cand_xy = torch.zeros(N, K, 2)
        cand_var = torch.full((N, K), float("inf"))
        cand_occ = torch.ones(N, K)
        cand_ok = torch.zeros(N, K, dtype=torch.bool)
        for g, (s, idx) in enumerate(groups):
            m = idx.numel()
            cxy = pts[g, :m] + samp[g, :m, :2]
            cand_xy[idx, g] = cxy
            cand_var[idx, g] = var[idx, s] + samp[g, :m, 3]
            cand_occ[idx, g] = torch.maximum(occ[idx, s], samp[g, :m, 2])
            inside = (cxy[:, 0] >= -0.5) & (cxy[:, 0] <= w - 0.5) & (cxy[:, 1] >= -0.5) & (cxy[:, 1] <= h - 0.5)
            cand_ok[idx, g] = inside & torch.isfinite(cand_var[idx, g])
        sel_xy, sel_var, sel_occ, sel_vis = select_least_sigma(cand_xy, cand_var, cand_occ, cand_ok, threshold)
        a = torch.nonzero(active)[:, 0]
        xy[a, t], var[a, t], occ[a, t], vis[a, t] = sel_xy[a], sel_var[a], sel_occ[a], sel_vis[a]
    return xy, var, occ, vis


def track_mft(video, queries, config, ctx):
    """Tracker backend 'mft': flow bank + chain passes toward the end and toward frame 0 from each query."""
    from flow.bank import FlowBank
    T, H, W = video.shape[:3]
    cfg = config.chain
    intervals, use_inf = cfg.parsed_intervals()
    bank = FlowBank(video, config.flow, cache_dir=ctx.video_cache_dir() if ctx.use_cache else None,
                    progress=ctx.progress)
    hw = bank.working_hw
    tq = queries[:, 0].astype(int)
    bank.prefetch(sorted(needed_pairs(tq, T, intervals, use_inf)))
    t0 = time.perf_counter()
    q_xy = to_center(scale_xy(queries[:, 1:3], (H, W), hw))
    passes = [chain_pass(bank, T, q_xy, tq, intervals, use_inf, cfg.occlusion_threshold, cfg.query_sigma ** 2,
                         d, ctx.progress) for d in (+1, -1)]
    before = torch.as_tensor(tq)[:, None] > torch.arange(T)[None, :]     # [N, T]: frames before the query
    xy, var, _, vis = (torch.where(before[..., None] if a.dim() == 3 else before, b, a)
                       for a, b in zip(passes[0], passes[1]))
    ctx.stats.update(bank.stats)
    ctx.stats["track_s"] = time.perf_counter() - t0
    ctx.stats["working_resolution"] = f"{hw[1]}x{hw[0]}"
    tracks = scale_xy(from_center(xy.numpy()), hw, (H, W))
    sigma = scale_sigma(np.sqrt(var.numpy()), hw, (H, W))
    return tracks, vis.numpy(), sigma
