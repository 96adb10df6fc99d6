"""Gaussian integration: each formula against hand-computed values, then the passes on known motion."""
import math

import numpy as np
import pytest
import torch

from fusion.config import FusionConfig
from fusion.gaussian import chain_gaussian, merge_gaussians, reject_outliers
from fusion.integrate import combine, integrate
from test_chain import AnalyticFlows, translate


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
    bank = AnalyticFlows(T, (30, 40), translate([1.0, 0.0]), _occluded_3_to_5)
    lost = _run(bank, FusionConfig(backward=False))
    assert lost.vis[0].tolist() == [True] * 3 + [False] * 9
    obs = _observation_at(9, bank, T, 1.0)
    fwd = _run(bank, FusionConfig(backward=False), obs)
    assert fwd.vis[0].tolist() == [True] * 3 + [False] * 6 + [True] * 3
    both = _run(bank, FusionConfig(backward=True), obs)
    assert both.vis[0].tolist() == [True] * 3 + [False] * 3 + [True] * 6
    assert np.allclose(both.xy[0, 6:, 0].numpy(), 5 + np.arange(6, T), atol=1e-4)
    # with keypoints switched off the observation is ignored
    assert _run(bank, FusionConfig(backward=True, keypoints=False), obs).vis[0].tolist() == lost.vis[0].tolist()


def test_observation_merges_with_a_visible_estimate():
    T = 6
    bank = AnalyticFlows(T, (30, 40), translate([1.0, 0.0]))
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
    bank = AnalyticFlows(T, (30, 40), translate([1.0, 0.0]))
    a = _run(bank, FusionConfig(backward=True, backward_replace_smaller_sigma=False), intervals=(1,), use_inf=True)
    b = _run(bank, FusionConfig(backward=True, backward_replace_smaller_sigma=True), intervals=(1,), use_inf=True)
    assert a.vis.all() and b.vis.all()
    assert torch.all(b.var <= a.var + 1e-6)
