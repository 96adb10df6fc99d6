"""Training correspondences from the video itself: verified flow trajectories and best buddies.

Trajectories (flow bank, working pixels, pixel-centre convention). Points on a regular grid (spacing
``traj_grid`` original px) are seeded at anchor frames a ∈ {0, k, 2k, …, T−1} and chained frame to frame
with the consecutive flows, forward (a → a+1 → …) and backward (a → a−1 → …); a step is kept while
the forward–backward occlusion probability of the step is below ``traj_occlusion_threshold`` and the
point stays in the frame. At the check frames n = a ± Δ (Δ ∈ ``traj_check_intervals``, and the chain's
last frame a ± max Δ clamped to the video; chains go no further) the chained position p_n is compared with the direct long-range flow from the anchor,
q_n = p_a + F_{a→n}(p_a): the chain survives only if that flow is trusted (occlusion below the threshold)
and |p_n − q_n| ≤ tol + frac·|q_n − p_a| (tol, frac: ``traj_tol`` (original px), ``traj_tol_frac``).
Only the frames up to the last check a chain passed are positions of it ("confirmed"), so every
stored position is covered by both a consecutive chain and a direct flow that agree.

Best buddies (feature grid). Cells i of frame a and j of frame b are best buddies when j is i's
nearest neighbour in b and i is j's nearest neighbour in a (cosine similarity of the frozen,
normalised backbone features), and that similarity is at least ``buddy_min_sim``.
"""
import time

import numpy as np
import torch

from core.coords import scale_sigma


def anchors(num_frames, stride):
    """Anchor frames 0, k, 2k, … and the last frame."""
    a = list(range(0, num_frames, max(1, int(stride))))
    if num_frames - 1 not in a:
        a.append(num_frames - 1)
    return a


def chain_end(a, direction, num_frames, intervals):
    """Last frame of a chain from anchor a: a ± max(Δ), clamped to the video (no check could confirm more)."""
    horizon = max([int(d) for d in intervals] + [1])
    return min(num_frames - 1, a + horizon) if direction > 0 else max(0, a - horizon)


def check_frames(a, direction, num_frames, intervals):
    """Frames a + direction·Δ (Δ in ``intervals``) inside the video, plus the chain's last frame."""
    end = chain_end(a, direction, num_frames, intervals)
    out = {a + direction * int(d) for d in intervals if 0 <= a + direction * int(d) < num_frames}
    if end != a:
        out.add(end)
    return out


def trajectory_flow_pairs(num_frames, cfg):
    """Directed frame pairs (s, t) whose flows :func:`flow_trajectories` reads (for ``bank.prefetch``)."""
    pairs = {(t, t + 1) for t in range(num_frames - 1)} | {(t + 1, t) for t in range(num_frames - 1)}
    for a in anchors(num_frames, cfg.traj_anchor_stride):
        for d in (1, -1):
            pairs |= {(a, n) for n in check_frames(a, d, num_frames, cfg.traj_check_intervals)}
    return sorted(pairs)


def _seed_points(working_hw, original_hw, spacing):
    h, w = working_hw
    g = max(1.0, float(scale_sigma(spacing, original_hw, working_hw)))
    xs = np.arange(g / 2 - 0.5, w - 0.5, g)
    ys = np.arange(g / 2 - 0.5, h - 0.5, g)
    gx, gy = np.meshgrid(xs, ys)
    return torch.from_numpy(np.stack([gx.ravel(), gy.ravel()], -1).astype(np.float32))


def flow_trajectories(bank, cfg, original_hw=None):
    """Verified trajectories. Returns (xy float32 [K, T, 2] working px pixel-centre, valid bool [K, T], stats).

    ``bank``: a FlowBank (its working resolution is used throughout); ``cfg``: a TTOConfig;
    ``original_hw``: the video's size, to convert the original-px settings (default: bank.original_hw).
    """
    t0 = time.perf_counter()
    T, (h, w) = bank.num_frames, bank.working_hw
    original_hw = original_hw or getattr(bank, "original_hw", bank.working_hw)
    tol0 = float(scale_sigma(cfg.traj_tol, original_hw, bank.working_hw))
    thr = float(cfg.traj_occlusion_threshold)
    seeds = _seed_points(bank.working_hw, original_hw, cfg.traj_grid)
    bank.prefetch(trajectory_flow_pairs(T, cfg))
    all_xy, all_ok = [], []
    checks_passed = checks_done = 0
    for a in anchors(T, cfg.traj_anchor_stride):
        for d in (1, -1):
            n_end = chain_end(a, d, T, cfg.traj_check_intervals)
            if a == n_end:
                continue
            checks = check_frames(a, d, T, cfg.traj_check_intervals)
            K = seeds.shape[0]
            xy = torch.zeros(K, T, 2)
            ok = torch.zeros(K, T, dtype=torch.bool)
            xy[:, a], ok[:, a] = seeds, True
            pos, alive, last = seeds.clone(), torch.ones(K, dtype=torch.bool), a
            for t in range(a, n_end, d):
                n = t + d
                s = bank.sample([(t, n)], pos[None])[0]
                pos = pos + s[:, :2]
                inside = (pos[:, 0] >= -0.5) & (pos[:, 0] <= w - 0.5) & (pos[:, 1] >= -0.5) & (pos[:, 1] <= h - 0.5)
                alive &= (s[:, 2] < thr) & inside
                xy[:, n] = pos
                if n in checks:
                    direct = bank.sample([(a, n)], seeds[None])[0]
                    q = seeds + direct[:, :2]
                    tol = tol0 + float(cfg.traj_tol_frac) * (q - seeds).norm(dim=-1)
                    agree = (direct[:, 2] < thr) & ((q - pos).norm(dim=-1) <= tol)
                    checks_done += int(alive.sum())
                    alive &= agree
                    checks_passed += int(alive.sum())
                    lo, hi = (last + 1, n + 1) if d > 0 else (n, last)
                    ok[:, lo:hi] |= alive[:, None]
                    last = n
                if not alive.any():
                    break
            keep = ok.sum(1) >= 2
            all_xy.append(xy[keep])
            all_ok.append(ok[keep])
    xy = torch.cat(all_xy) if all_xy else torch.zeros(0, T, 2)
    ok = torch.cat(all_ok) if all_ok else torch.zeros(0, T, dtype=torch.bool)
    stats = dict(traj_count=int(xy.shape[0]), traj_positions=int(ok.sum()), traj_checks_done=checks_done,
                 traj_checks_passed=checks_passed, traj_s=time.perf_counter() - t0)
    return xy, ok, stats


def best_buddies(fa, fb, min_sim):
    """Mutual nearest neighbours of unit features ``fa`` [C, n_a] and ``fb`` [C, n_b].

    Returns (ia [K] long, ib [K] long, sim [K]): cell indices in a and b, and their cosine similarity."""
    sim = fa.t() @ fb                                  # [n_a, n_b]
    best_b = sim.argmax(1)                             # a -> b
    best_a = sim.argmax(0)                             # b -> a
    ia = torch.arange(fa.shape[1], device=fa.device)
    mutual = best_a[best_b] == ia
    s = sim[ia, best_b]
    keep = mutual & (s >= min_sim)
    return ia[keep], best_b[keep], s[keep]
