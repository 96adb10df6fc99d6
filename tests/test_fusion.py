"""Gaussian integration: each formula against hand-computed values, then the passes on known motion."""
import math

import numpy as np
import pytest
import torch

from fusion.gaussian import chain_gaussian, merge_gaussians, reject_outliers
from fusion.integrate import combine, fuse_observation, integrate
from analytic import AnalyticBank, translate
from pitrack.config import default_section


def FusionConfig(**changes):
    """configs/default.yaml's fusion section with ``changes``."""
    return default_section("fusion", **changes)


def test_chain_gaussian_adds_variance():
    m, v = chain_gaussian(torch.tensor([[1.0, 2.0]]), torch.tensor([0.5]), torch.tensor([[0.5, -1.0]]), torch.tensor([0.25]))
    assert m.tolist() == [[1.5, 1.0]] and v.tolist() == [0.75]


def test_merge_independent_is_the_product_of_gaussians():
    mean = torch.tensor([[[0.0, 0.0], [3.0, 0.0]]])
    var = torch.tensor([[1.0, 2.0]])
    mask = torch.tensor([[True, True]])
    m, v, w = merge_gaussians(mean, var, mask, 0.0)
    assert w[0].tolist() == pytest.approx([2 / 3, 1 / 3])
    assert m[0].tolist() == pytest.approx([1.0, 0.0])
    assert v[0].item() == pytest.approx(1 / (1 / 1 + 1 / 2))           # 1 / Σ 1/σ²


def test_merge_with_correlation():
    mean = torch.tensor([[[0.0, 0.0], [3.0, 0.0]]])
    var = torch.tensor([[1.0, 2.0]])
    mask = torch.tensor([[True, True]])
    _, v, _ = merge_gaussians(mean, var, mask, 0.5)
    # (1 − ρ) Σ w²σ² + ρ (Σ w σ)² with w = (2/3, 1/3)
    expect = 0.5 * (4 / 9 * 1 + 1 / 9 * 2) + 0.5 * (2 / 3 * 1 + 1 / 3 * math.sqrt(2)) ** 2
    assert v[0].item() == pytest.approx(expect)
    # ρ → 1 with equal variances: no reduction at all; ρ = 0: divided by K
    eq = torch.full((1, 3), 4.0)
    m3 = torch.zeros(1, 3, 2)
    all3 = torch.ones(1, 3, dtype=torch.bool)
    assert merge_gaussians(m3, eq, all3, 1.0)[1].item() == pytest.approx(4.0)
    assert merge_gaussians(m3, eq, all3, 0.999)[1].item() == pytest.approx(4.0, rel=1e-3)
    assert merge_gaussians(m3, eq, all3, 0.0)[1].item() == pytest.approx(4.0 / 3)
    # masked-out candidates do not count
    m, v, w = merge_gaussians(torch.tensor([[[0.0, 0], [100, 0]]]), torch.tensor([[1.0, 1.0]]),
                              torch.tensor([[True, False]]), 0.5)
    assert m[0].tolist() == [0, 0] and v.item() == pytest.approx(1.0) and w[0, 1] == 0


def test_merge_spread_adds_the_candidates_scatter():
    # w = (3/4, 1/4), merged mean (0, 1); product variance 9/16·1 + 1/16·3 = 3/4; scatter ½(3/4·1² + 1/4·3²) = 3/2
    mean = torch.tensor([[[0.0, 0.0], [0.0, 4.0], [50.0, 50.0]]])
    var = torch.tensor([[1.0, 3.0, 1.0]])
    mask = torch.tensor([[True, True, False]])
    m, v, _ = merge_gaussians(mean, var, mask, 0.0, spread=True)
    assert m[0].tolist() == pytest.approx([0.0, 1.0])
    assert v[0].item() == pytest.approx(0.75 + 1.5)
    assert merge_gaussians(mean, var, mask, 0.0)[1][0].item() == pytest.approx(0.75)
    # agreeing candidates add nothing; the observation merge (ρ = 0) takes the switch too
    same = torch.zeros(1, 2, 2)
    assert merge_gaussians(same, var[:, :2], mask[:, :2], 0.5, spread=True)[1].item() == pytest.approx(
        merge_gaussians(same, var[:, :2], mask[:, :2], 0.5)[1].item())
    one = torch.ones(1, dtype=torch.bool)
    _, v_obs, _, _ = fuse_observation(torch.zeros(1, 2), torch.ones(1), torch.zeros(1), one,
                                      torch.tensor([[4.0, 0.0]]), torch.ones(1), one, spread=True)
    assert v_obs.item() == pytest.approx(0.5 + 0.5 * (0.5 * 4 + 0.5 * 4))


def test_outliers_are_measured_from_the_least_sigma_visible_candidate():
    mean = torch.tensor([[[0.0, 0.0], [9.0, 0.0], [12.0, 0.0], [50.0, 0.0]]])
    var = torch.tensor([[1.0, 2.0, 2.0, 0.1]])        # the least σ overall is not visible
    vis = torch.tensor([[True, True, True, False]])
    assert reject_outliers(mean, var, vis, 10.0)[0].tolist() == [True, True, False, False]


def test_combine_switches():
    xy = torch.tensor([[[0.0, 0.0], [2.0, 0.0], [30.0, 0.0]]])
    var = torch.tensor([[1.0, 1.0, 1.0]])
    occ = torch.zeros(1, 3)
    ok = torch.ones(1, 3, dtype=torch.bool)
    f = FusionConfig(correlation=0.0)
    assert combine(xy, var, occ, ok, 0.5, f, 10.0)[0][0].tolist() == pytest.approx([1.0, 0.0])   # outlier dropped
    f.outlier_removal = False
    assert combine(xy, var, occ, ok, 0.5, f, 10.0)[0][0].tolist() == pytest.approx([32 / 3, 0.0])
    f.probabilistic = False
    assert combine(xy, var, occ, ok, 0.5, f, 10.0)[0][0].tolist() == [0.0, 0.0]                 # least σ (first)


def _occluded_3_to_5(xy, b):
    return np.full(xy.shape[:2], 3 <= b <= 5)


def _run(bank, fusion, obs=None, intervals=(1, 2), use_inf=False):
    return integrate(bank, bank.T, np.array([[5.0, 15.0]], np.float32), np.array([0]), list(intervals), use_inf,
                     0.5, 0.25, fusion, 10.0, obs)


def _observation_at(frame, bank, T, v):
    obs_xy = torch.zeros(1, T, 2)
    obs_xy[0, frame] = torch.tensor([5.0 + v * frame, 15.0])
    obs_var = torch.full((1, T), 1.0)
    obs_ok = torch.zeros(1, T, dtype=torch.bool)
    obs_ok[0, frame] = True
    return obs_xy, obs_var, obs_ok


def test_observation_reinitialises_and_backward_sweep_recovers_the_gap():
    """Frames 3–5 hide the point; the Δ ≤ 2 chains cannot bridge 3 frames, so the forward pass loses it.
    A keypoint observation at frame 9 re-finds it; the backward sweep then recovers frames 6–8."""
    T = 12
    bank = AnalyticBank(T, (30, 40), translate([1.0, 0.0]), _occluded_3_to_5)
    lost = _run(bank, FusionConfig(backward=False))
    assert lost.vis[0].tolist() == [True] * 3 + [False] * 9
    obs = _observation_at(9, bank, T, 1.0)
    fwd = _run(bank, FusionConfig(backward=False), obs)
    assert fwd.vis[0].tolist() == [True] * 3 + [False] * 6 + [True] * 3
    both = _run(bank, FusionConfig(backward=True), obs)
    assert both.vis[0].tolist() == [True] * 3 + [False] * 3 + [True] * 6
    assert np.allclose(both.xy[0, 6:, 0].numpy(), 5 + np.arange(6, T), atol=1e-4)
    # with keypoints switched off (tto.enabled false: no observations at all) the anchored sweep has nothing
    # to carry back
    assert _run(bank, FusionConfig(backward=True)).vis[0].tolist() == lost.vis[0].tolist()


def test_observation_merges_with_a_visible_estimate():
    T = 6
    bank = AnalyticBank(T, (30, 40), translate([1.0, 0.0]))
    obs_xy, obs_var, obs_ok = _observation_at(4, bank, T, 1.0)
    obs_xy[0, 4, 0] += 1.0                                          # observation 1 px off
    plain = _run(bank, FusionConfig(backward=False))
    fused = _run(bank, FusionConfig(backward=False), (obs_xy, obs_var, obs_ok))
    assert fused.var[0, 4] < plain.var[0, 4]
    assert plain.xy[0, 4, 0] < fused.xy[0, 4, 0] < plain.xy[0, 4, 0] + 1.0


def test_sweep_replaces_visible_estimates_only_with_the_switch():
    # the forward chains are visible but noisy (large variance on Δ=1 flows): the sweep's estimates are
    # equally good here, so only the switch lets it replace visible estimates at all
    T = 8
    bank = AnalyticBank(T, (30, 40), translate([1.0, 0.0]))
    a = _run(bank, FusionConfig(backward=True, backward_replace_smaller_sigma=False), intervals=(1,), use_inf=True)
    b = _run(bank, FusionConfig(backward=True, backward_replace_smaller_sigma=True), intervals=(1,), use_inf=True)
    assert a.vis.all() and b.vis.all()
    assert torch.all(b.var <= a.var + 1e-6)


class _ForwardFlowsHideFrames3To5(AnalyticBank):
    """Translation; flows a → b with a < b mark frames 3–5 occluded, backward flows do not."""

    def fields(self, a, b):
        flow, occ, var = super().fields(a, b)
        if a < b and 3 <= b <= 5:
            occ = np.ones_like(occ)
        return flow, occ, var


def test_anchored_sweep_carries_only_keypoint_confirmed_estimates():
    """The forward pass loses frames 3–5 and re-finds the point at 6 (Δ = 4 from frame 2). A sweep over all
    estimates carries frame 6 back into 3–5; the anchored sweep does so only once a keypoint observation
    confirms a later estimate (here frame 7; frame 6 agrees with the anchored chain and passes it on)."""
    T = 10
    bank = _ForwardFlowsHideFrames3To5(T, (30, 40), translate([1.0, 0.0]))
    gap = [True] * 3 + [False] * 3 + [True] * 4
    assert _run(bank, FusionConfig(backward=False), intervals=(1, 2, 4)).vis[0].tolist() == gap
    every = _run(bank, FusionConfig(backward=True, backward_sources="all"), intervals=(1, 2, 4))
    assert every.vis[0].all()
    anchored = _run(bank, FusionConfig(backward=True, backward_sources="anchored"), intervals=(1, 2, 4))
    assert anchored.vis[0].tolist() == gap and not anchored.anchor.any()
    obs = _observation_at(7, bank, T, 1.0)
    confirmed = _run(bank, FusionConfig(backward=True, backward_sources="anchored"), obs, intervals=(1, 2, 4))
    assert confirmed.vis[0].all()
    assert np.allclose(confirmed.xy[0, :, 0].numpy(), 5 + np.arange(T), atol=1e-3)
    assert confirmed.anchor[0, 3:8].all() and not confirmed.anchor[0, 8:].any()


def test_observation_gate_drops_conflicts():
    xy = torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    var = torch.ones(3)
    occ = torch.tensor([0.0, 0.0, 1.0])
    vis = torch.tensor([True, True, False])
    obs_xy = torch.tensor([[2.0, 0.0], [30.0, 0.0], [30.0, 0.0]])
    ok = torch.ones(3, dtype=torch.bool)
    m_xy, m_var, m_occ, m_vis = fuse_observation(xy, var, occ, vis, obs_xy, torch.ones(3), ok, gate=10.0)
    assert m_xy[:, 0].tolist() == pytest.approx([1.0, 0.0, 30.0])   # merged; conflict dropped; re-initialised
    assert m_var.tolist() == pytest.approx([0.5, 1.0, 1.0]) and m_vis.all() and m_occ[2] == 0
    assert fuse_observation(xy, var, occ, vis, obs_xy, torch.ones(3), ok)[0][1, 0] == pytest.approx(15.0)  # no gate


def test_candidate_filter_hook_rejects_candidates():
    """The hook sees each frame's candidates (queries, positions, occlusion, ok) and its returned occlusion is
    what selection uses: rejecting every candidate of frames 3 and 4 occludes the point there; the query-frame
    interval recovers it at frame 5."""
    T = 8
    bank = AnalyticBank(T, (30, 40), translate([1.0, 0.0]))
    calls = []

    def reject_3_4(t, idx, xy, occ, ok):
        calls.append((t, idx.clone(), xy.clone(), occ.clone(), ok.clone()))
        return torch.where(torch.tensor(t in (3, 4)), torch.ones_like(occ), occ)

    def run_(hook):
        return integrate(bank, T, np.array([[5.0, 15.0]], np.float32), np.array([0]), [1], True, 0.5, 0.25, None,
                         candidate_filter=hook)

    plain = run_(None)
    est = run_(reject_3_4)
    assert plain.vis[0].all()
    assert est.vis[0].tolist() == [True, True, True, False, False, True, True, True]
    assert np.allclose(est.xy[0, :, 0].numpy(), 5 + np.arange(T), atol=1e-4)
    t, idx, xy, occ, ok = next(c for c in calls if c[0] == 2)       # frame 2: Δ = 1 and the query frame (Δ = ∞)
    assert idx.tolist() == [0] and xy.shape == (1, 2, 2) and ok.all() and (occ < 0.5).all()
    assert np.allclose(xy[0].numpy(), [[7.0, 15.0], [7.0, 15.0]], atol=1e-4)
    assert sorted({c[0] for c in calls}) == list(range(1, T))
    # a hook that rejects nothing changes nothing
    same = run_(lambda t, idx, xy, occ, ok: occ)
    assert torch.equal(same.xy, plain.xy) and torch.equal(same.vis, plain.vis) and torch.equal(same.var, plain.var)
