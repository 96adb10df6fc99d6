"""Bidirectional Gaussian integration of flow chains (and keypoint observations) for all queries at once.

Candidates. For a frame t and an interval Δ, a query's candidate comes from its estimate at the source
frame s (s = t − Δ going forward, s = t + Δ going backward, s = t_q for Δ = ∞), moved through the flow
s → t sampled at that estimate (:func:`fusion.gaussian.chain_gaussian`), the link's variance being the
flow's σ² plus the process noise q·|t − s| (``drift_var`` q, px² per frame: a random-walk drift that no
single flow's σ shows, so a chain's variance grows with the frames it spans; 0 turns it off); its
occlusion probability is max(o_s, O_{s→t}). A candidate is visible when that probability is below the
threshold and it lies in the frame.

Per frame, the visible candidates are combined: outliers (farther than a radius from the least-σ
visible candidate) are dropped and the rest merged by inverse variance with correlation ρ
(:func:`fusion.gaussian.merge_gaussians`), or — switch ``probabilistic: false`` — the least-σ visible
candidate is taken (MFT's rule). With no visible candidate the point is occluded and keeps its least-σ
candidate's position. A valid keypoint observation is merged with a visible estimate within the
observation gate (a farther one is dropped as a conflict) and re-initialises an occluded one.

Traversals (:func:`traversals`). (1) Forward, frames 0 … T−1: each query from its query frame toward the
last frame, each frame's estimate built from the estimates already made. (2) Backward, frames T−1 … 0:
at each frame first the queries before their query frame, from the estimates after it, then,
optionally, the sweep over every query off its query frame, using the backward flows t + Δ → t from
the current estimates; the sweep replaces an estimate that is occluded where its own is visible (and,
as a switch, a visible one of larger σ). With ``backward_sources: anchored`` the sweep chains only
estimates that a keypoint observation confirmed (and, frame by frame, what it built from them): it
carries a re-detection back into the gap before it. With ``all`` it chains every estimate, and a
forward estimate that is visible but on the wrong surface is then carried back too (measured: most
frames it flipped to visible were occluded). Both steps of a backward frame read the same pairs, so
each pair is read once per traversal; :func:`flow_schedule` lists the reads in order, which lets the
flow bank hold a pair only while it is still needed. Positions are pixel-centre working pixels
inside this module.
"""
import numpy as np
import torch
from core.progress import progress_bar

from core.coords import inside_frame
from fusion.gaussian import chain_gaussian, least_sigma_index, merge_gaussians, reject_outliers


class Estimates:
    """Per query and frame: position [N, T, 2], variance [N, T], occlusion probability [N, T], visible [N, T]."""

    def __init__(self, n, t):
        self.xy = torch.zeros(n, t, 2)
        self.var = torch.full((n, t), float("inf"))
        self.occ = torch.ones(n, t)
        self.vis = torch.zeros(n, t, dtype=torch.bool)
        self.anchor = torch.zeros(n, t, dtype=torch.bool)   # a keypoint observation confirmed it (see sweep)

    def set(self, idx, t, xy, var, occ, vis, anchor=None):
        self.xy[idx, t], self.var[idx, t], self.occ[idx, t], self.vis[idx, t] = xy, var, occ, vis
        if anchor is not None:
            self.anchor[idx, t] = anchor


def combine(cand_xy, cand_var, cand_occ, cand_ok, threshold, fusion, radius):
    """One estimate per query from its K candidates ([N, K, 2], [N, K], [N, K], [N, K] bool).

    Returns position [N, 2], variance [N], occlusion probability [N] and visibility [N].
    """
    n = torch.arange(cand_xy.shape[0])
    vis = cand_ok & (cand_occ < threshold)
    any_vis = vis.any(-1)
    finite = torch.isfinite(cand_var)
    fallback = least_sigma_index(cand_var, finite)
    k = torch.where(any_vis, least_sigma_index(cand_var, vis), fallback)
    xy, var, occ = cand_xy[n, k], cand_var[n, k], cand_occ[n, k]
    if fusion is not None and fusion.probabilistic:
        keep = reject_outliers(cand_xy, cand_var, vis, radius) if fusion.outlier_removal else vis
        m_xy, m_var, w = merge_gaussians(cand_xy, torch.where(keep, cand_var, torch.ones_like(cand_var)), keep,
                                         fusion.correlation, fusion.spread_variance)
        m_occ = (w * torch.where(keep, cand_occ, torch.zeros_like(cand_occ))).sum(-1)
        xy = torch.where(any_vis[:, None], m_xy, xy)
        var = torch.where(any_vis, m_var, var)
        occ = torch.where(any_vis, m_occ, occ)
    return xy, var, occ, any_vis


def accepted_observations(xy, vis, obs_xy, obs_ok, gate):
    """The observations :func:`fuse_observation` uses: valid, and for a visible estimate within ``gate``."""
    if gate is not None and gate > 0:
        return obs_ok & (~vis | ((obs_xy - xy).norm(dim=-1) <= gate))
    return obs_ok


def fuse_observation(xy, var, occ, vis, obs_xy, obs_var, obs_ok, gate=None, spread=False):
    """Merge a keypoint observation (independent of the flow estimate: ρ = 0) into a visible estimate;
    re-initialise an occluded estimate from it. All [M, ...] for the M queries of one frame.

    ``gate`` (working px, None or <= 0: none): an observation farther than this from a visible estimate
    is a conflict and is dropped, like a flow candidate outside the outlier radius — the merge of two
    far-apart Gaussians lies between them, where neither surface is. ``spread``: the merged variance adds
    the two positions' weighted scatter (:func:`fusion.gaussian.merge_gaussians`)."""
    obs_ok = accepted_observations(xy, vis, obs_xy, obs_ok, gate)
    both = torch.stack([xy, obs_xy], 1)
    vars_ = torch.stack([var, obs_var], 1)
    m_xy, m_var, _ = merge_gaussians(both, vars_, torch.stack([vis, obs_ok], 1), 0.0, spread)
    use_merge = vis & obs_ok
    reinit = ~vis & obs_ok
    xy = torch.where(use_merge[:, None], m_xy, torch.where(reinit[:, None], obs_xy, xy))
    var = torch.where(use_merge, m_var, torch.where(reinit, obs_var, var))
    occ = torch.where(reinit, torch.zeros_like(occ), occ)
    return xy, var, occ, vis | obs_ok


def _step(bank, est, t, groups, mode, replace_smaller, anchored_only, threshold, fusion, radius, h, w, obs, gate,
          candidate_filter, drift_var):
    """Estimate frame ``t`` of the queries in ``groups`` = [(s, query indices)] from their estimates at s.

    ``mode`` 'set' writes the estimates; 'replace' only replaces an occluded estimate with a visible one
    (and, with ``replace_smaller``, a visible one of larger σ). ``anchored_only``: only estimates a keypoint
    observation confirmed (est.anchor) are chained; the result is anchored too, so a re-detection is carried
    from frame to frame. ``candidate_filter``: see :func:`integrate`."""
    N = est.xy.shape[0]
    if anchored_only:
        groups = [(s, idx[est.anchor[idx, s]]) for s, idx in groups]
    groups = [(s, idx) for s, idx in groups if idx.numel()]
    if not groups:
        return
    G, M = len(groups), max(int(i.numel()) for _, i in groups)
    pts = torch.zeros(G, M, 2)
    for g, (s, idx) in enumerate(groups):
        pts[g, :idx.numel()] = est.xy[idx, s]
    samp = bank.sample([(s, t) for s, _ in groups], pts)                    # [G, M, 4]
    cand_xy = torch.zeros(N, G, 2)
    cand_var = torch.full((N, G), float("inf"))
    cand_occ = torch.ones(N, G)
    cand_ok = torch.zeros(N, G, dtype=torch.bool)
    for g, (s, idx) in enumerate(groups):
        m = idx.numel()
        link_var = samp[g, :m, 3] + drift_var * abs(t - s)
        cxy, cvar = chain_gaussian(pts[g, :m], est.var[idx, s], samp[g, :m, :2], link_var)
        cand_xy[idx, g], cand_var[idx, g] = cxy, cvar
        cand_occ[idx, g] = torch.maximum(est.occ[idx, s], samp[g, :m, 2])
        inside = inside_frame(cxy[:, 0], cxy[:, 1], (h, w))
        cand_ok[idx, g] = inside & torch.isfinite(cvar)
    a = torch.unique(torch.cat([idx for _, idx in groups]))
    c_occ = cand_occ[a]
    if candidate_filter is not None:
        c_occ = candidate_filter(t, a, cand_xy[a], c_occ, cand_ok[a])
    xy, var, occ, vis = combine(cand_xy[a], cand_var[a], c_occ, cand_ok[a], threshold, fusion, radius)
    anchor = vis.clone() if anchored_only else torch.zeros_like(vis)
    if obs is not None:
        used = accepted_observations(xy, vis, obs[0][a, t], obs[2][a, t], gate)
        xy, var, occ, vis = fuse_observation(xy, var, occ, vis, obs[0][a, t], obs[1][a, t], used,
                                             spread=fusion is not None and fusion.spread_variance)
        anchor |= used
    if mode == "replace":
        old_vis, old_var = est.vis[a, t], est.var[a, t]
        take = (~old_vis & vis) | (replace_smaller & old_vis & vis & (var < old_var))
        # an estimate kept because it is already visible becomes anchored when the anchored chains
        # agree with it (within the outlier radius), so the anchor passes through it to earlier frames
        agree = ~take & old_vis & anchor & ((xy - est.xy[a, t]).norm(dim=-1) <= radius)
        est.anchor[a[agree], t] = True
        a, xy, var, occ, vis, anchor = a[take], xy[take], var[take], occ[take], vis[take], anchor[take]
        anchor |= est.anchor[a, t]
    est.set(a, t, xy, var, occ, vis, anchor)


def traversals(num_frames, tq, intervals, use_inf, fusion):
    """The integration's two traversals of the video, as [(name, frames, steps)], where each step of a frame
    is (mode, sources, anchored_only) and ``sources(t)`` lists (s, query indices [M]) whose estimate at s is
    chained to t. Forward: frames 0 … T−1, queries after their query frame. Backward: frames T−1 … 0, first
    the queries before their query frame, then (``fusion.backward``) the sweep over every query off its
    query frame. Every pair a frame reads is read by both its steps at once."""
    T = int(num_frames)
    tq_t = torch.as_tensor(np.asarray(tq), dtype=torch.long)

    def outward(direction):
        def sources(t):
            active = (tq_t < t) if direction > 0 else (tq_t > t)
            out = []
            for d in intervals:
                s = t - direction * d
                if 0 <= s < T:
                    ok = (tq_t <= s) if direction > 0 else (tq_t >= s)
                    out.append((s, torch.nonzero(active & ok)[:, 0]))
            if use_inf:
                for q in torch.unique(tq_t[active]).tolist():
                    if not any(q == t - direction * d for d in intervals):
                        out.append((q, torch.nonzero(active & (tq_t == q))[:, 0]))
            return out
        return sources

    def sweep(t):
        active = tq_t != t
        out = [(t + d, torch.nonzero(active)[:, 0]) for d in intervals if t + d < T]
        if use_inf:
            for q in torch.unique(tq_t[tq_t > t]).tolist():
                if q - t not in intervals:
                    out.append((q, torch.nonzero(tq_t == q)[:, 0]))
        return out

    backward_steps = [("set", outward(-1), False)]
    if fusion is not None and fusion.backward:
        backward_steps.append(("replace", sweep, fusion.backward_sources == "anchored"))
    return [("track forward", range(T), [("set", outward(+1), False)]),
            ("track backward", range(T - 1, -1, -1), backward_steps)]


def flow_schedule(num_frames, tq, intervals, use_inf, fusion):
    """The reads :func:`integrate` makes, in order: a list of steps, each the directed frame pairs (s, t) of
    one ``bank.sample`` call (for ``FlowBank.plan``). A step may read fewer pairs (no query, or no anchored
    source), never others."""
    steps = []
    for _, frames, frame_steps in traversals(num_frames, tq, intervals, use_inf, fusion):
        for t in frames:
            for _, sources, _ in frame_steps:
                pairs = [(s, t) for s, idx in sources(t) if idx.numel()]
                if pairs:
                    steps.append(pairs)
    return steps


def integrate(bank, num_frames, q_xy, tq, intervals, use_inf, threshold, query_var, fusion=None, radius=10.0,
              observations=None, progress=False, gate=None, candidate_filter=None, segment="integration",
              drift_var=0.0):
    """Track queries through a flow bank. ``q_xy`` [N, 2] working px (pixel-centre), ``tq`` [N] query frames.

    ``bank``: anything with ``working_hw`` and ``sample(pairs, points)`` (flow.bank.FlowBank.sample); the
    reads follow :func:`flow_schedule`, segment ``segment`` of a FlowBank's plan.
    ``fusion``: a FusionConfig, or None for least-σ selection without the backward sweep.
    ``observations``: None or (xy [N, T, 2] working px, var [N, T] px², valid [N, T] bool) tensors;
    ``gate``: working px, see :func:`fuse_observation`.
    ``candidate_filter``: None or ``f(t, idx [M], xy [M, K, 2], occ [M, K], ok [M, K]) -> occ [M, K]``, called
    between sampling a frame's candidates and combining them (the filters hook): it returns the candidates'
    occlusion probabilities with those it rejects set to 1, so they take no part in selection or merging.
    ``drift_var``: the chaining's process noise q (working px² per frame; module docstring).
    Returns an :class:`Estimates`.
    """
    T, (h, w) = num_frames, bank.working_hw
    N = q_xy.shape[0]
    tq_t = torch.as_tensor(np.asarray(tq), dtype=torch.long)
    est = Estimates(N, T)
    est.set(torch.arange(N), tq_t, torch.as_tensor(q_xy, dtype=torch.float32), query_var, 0.0, True)
    common = dict(threshold=threshold, fusion=fusion, radius=radius, h=h, w=w, obs=observations, gate=gate,
                  candidate_filter=candidate_filter, drift_var=float(drift_var))
    replace_smaller = fusion is not None and fusion.backward_replace_smaller_sigma
    if hasattr(bank, "begin"):
        bank.begin(segment)
    for name, frames, frame_steps in traversals(T, tq, intervals, use_inf, fusion):
        for t in progress_bar(frames, desc=name, enabled=progress, leave=False):
            for mode, sources, anchored_only in frame_steps:
                _step(bank, est, t, sources(t), mode, replace_smaller, anchored_only, **common)
    return est
