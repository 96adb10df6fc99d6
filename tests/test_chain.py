"""Chaining maths of the flow-chain tracker on synthetic flow fields with known answers."""
import numpy as np
import pytest
import torch

from analytic import AnalyticBank, rotate, translate
from core.sampling import sample_fields
from fusion.integrate import combine, flow_schedule, integrate
from pitrack.config import default_section


def run(bank, q, tq, intervals=(1, 2, 4, 8), use_inf=True, fusion=None):
    """Both passes outward from the query frames (least-σ selection when ``fusion`` is None)."""
    est = integrate(bank, bank.T, np.asarray(q, np.float32), np.asarray(tq), list(intervals), use_inf, 0.5, 0.25,
                    fusion)
    return est.xy, est.var, est.occ, est.vis


def test_sample_fields_is_bilinear_at_pixel_centres():
    f = torch.arange(12, dtype=torch.float32).reshape(1, 1, 3, 4)    # value = 4y + x
    pts = torch.tensor([[[0.0, 0.0], [3.0, 2.0], [1.5, 0.5]]])
    assert sample_fields(f, pts)[0, :, 0].tolist() == pytest.approx([0, 11, 3.5])


def test_translation_is_exact_and_variance_adds():
    bank = AnalyticBank(10, (40, 50), translate([1.5, -0.5]))
    xy, var, occ, vis = run(bank, [[10, 30]], [0])
    expect = np.array([10, 30]) + np.arange(10)[:, None] * np.array([1.5, -0.5])
    assert np.allclose(xy[0].numpy(), expect, atol=1e-4)
    assert vis[0].all()
    # least σ² wins: the query-frame interval (∞) gives σ² = 0.25 + 0.1 at every frame
    assert np.allclose(var[0, 1:].numpy(), 0.35)


def test_rotation_from_middle_query_both_directions():
    c = np.array([20.0, 20.0])
    bank = AnalyticBank(12, (41, 41), rotate(0.05, c))
    q = np.array([[30.0, 20.0]])
    xy = run(bank, q, [5])[0]
    for t in range(12):
        expect = rotate(0.05, c)(q, 5, t)[0]
        got = xy[0, t].numpy()
        assert np.allclose(got, expect, atol=1e-3), (t, got, expect)


def test_point_leaving_the_frame_is_occluded():
    bank = AnalyticBank(8, (20, 20), translate([4.0, 0.0]))
    xy, var, occ, vis = run(bank, [[10, 10]], [0])
    inside = xy[0, :, 0].numpy() <= 19.5
    assert vis[0].numpy().tolist() == inside.tolist() and not inside.all()


def test_occluded_stretch_and_recovery_through_the_query_interval():
    # frames 3..5 hide everything right of x = 0 (the whole frame): chained candidates through them stay
    # occluded (occlusion takes the max), the query-frame interval recovers the point at frame 6
    occluded = lambda xy, b: np.full(xy.shape[:2], 3 <= b <= 5)
    bank = AnalyticBank(10, (30, 40), translate([1.0, 0.0]), occluded)
    xy, var, occ, vis = run(bank, [[5, 15]], [0], intervals=(1,), use_inf=True)
    assert vis[0].numpy().tolist() == [True, True, True, False, False, False, True, True, True, True]
    assert np.allclose(xy[0, :, 0].numpy(), 5 + np.arange(10), atol=1e-4)
    # without the query-frame interval the Δ=1 chain cannot come back
    xy, var, occ, vis = run(bank, [[5, 15]], [0], intervals=(1,), use_inf=False)
    assert vis[0].numpy().tolist() == [True, True, True] + [False] * 7


def test_selection_prefers_visible_then_least_variance():
    xy = torch.tensor([[[0.0, 0], [1, 1], [2, 2]]])
    var = torch.tensor([[1.0, 0.5, 0.1]])
    occ = torch.tensor([[0.1, 0.2, 0.9]])       # the least-σ² candidate is occluded
    ok = torch.tensor([[True, True, True]])
    p, v, o, vis = combine(xy, var, occ, ok, 0.5, None, 10.0)
    assert p[0].tolist() == [1, 1] and vis[0]
    p, v, o, vis = combine(xy, var, torch.ones(1, 3), ok, 0.5, None, 10.0)
    assert p[0].tolist() == [2, 2] and not vis[0]


def _is_subsequence(reads, schedule):
    it = iter(schedule)
    return all(any(r == p for p in it) for r in reads)


def test_flow_schedule_lists_the_reads_in_order():
    """flow_schedule is what the flow bank plans with: integrate must read exactly those pairs, in that order
    (a step may read fewer). Query at frame 2 of 6, Δ ∈ {1, 2, ∞}."""
    steps = flow_schedule(6, [2], [1, 2], True, None)
    flat = [p for step in steps for p in step]
    assert steps[0] == [(2, 3)] and steps[1] == [(3, 4), (2, 4)] and (0, 2) not in flat
    assert (1, 2) not in flat and (3, 2) not in flat and (2, 1) in flat and (2, 0) in flat
    bank = AnalyticBank(6, (10, 10), translate([0.0, 0.0]))
    run(bank, [[5, 5]], [2], intervals=(1, 2))
    assert bank.calls == flat
    fusion = default_section("fusion", backward_sources="all")
    flat = [p for step in flow_schedule(6, [2], [1, 2], True, fusion) for p in step]
    bank.calls.clear()
    run(bank, [[5, 5]], [2], intervals=(1, 2), fusion=fusion)
    assert (5, 4) in bank.calls and _is_subsequence(bank.calls, flat) and bank.calls == flat
    # the anchored sweep (the default) reads no pair when nothing is anchored
    bank.calls.clear()
    run(bank, [[5, 5]], [2], intervals=(1, 2), fusion=default_section("fusion"))
    assert _is_subsequence(bank.calls, flat) and (5, 4) not in bank.calls


def test_mft_tracks_known_motion_and_reuses_its_cache(synthetic_clip):
    """End to end on a rendered clip: the DIS flow-chain tracker beats KLT; DIS flows are not stored (a second
    run computes them again, identically); with ``flow.cache: on`` a second run computes no flow."""
    import dataclasses
    import os
    from conftest import ROOT
    from eval.datasets import open_video_folder
    from pitrack import Tracker, load_config
    video = open_video_folder(synthetic_clip)
    frames, (q, _) = video.load_frames(), video.queries("strided")
    mft = Tracker.from_config(os.path.join(ROOT, "configs", "mft.yaml"), progress=False)
    r = mft(frames, q)
    s_mft = video.score(r.tracks, r.visible, "strided")
    assert mft.stats["flow_pairs_computed"] > 0 and mft.stats["network_evals"] == 2 * mft.stats["flow_pairs_computed"]
    assert mft.stats["flow_cache_mb"] == 0
    klt = Tracker.from_config(os.path.join(ROOT, "configs", "baselines", "klt.yaml"), progress=False)(frames, q)
    s_klt = video.score(klt.tracks, klt.visible, "strided")
    assert s_mft["AJ"] > s_klt["AJ"] + 0.05, (s_mft, s_klt)
    cfg = load_config(os.path.join(ROOT, "configs", "mft.yaml"))
    cfg = dataclasses.replace(cfg, flow=dataclasses.replace(cfg.flow, cache="on"))
    first = Tracker(cfg, progress=False)
    r1 = first(frames, q)
    assert first.stats["flow_pairs_computed"] > 0 and first.stats["flow_cache_mb"] > 0
    again = Tracker(cfg, progress=False)
    r2 = again(frames, q)
    assert again.stats["flow_pairs_computed"] == 0 and again.stats["flow_pairs_loaded"] > 0
    assert np.array_equal(r1.tracks, r.tracks) and np.array_equal(r1.visible, r.visible)
    assert np.array_equal(r2.tracks, r.tracks) and np.array_equal(r2.visible, r.visible)


def test_process_noise_grows_the_variance_with_the_frames_spanned():
    """drift_var q adds q·Δ to each link of Δ frames: from the query frame (Δ = ∞, the least σ² here) frame t
    gets 0.25 + 0.1 + q·t; a chain of Δ = 1 links alone gets 0.25 + t·(0.1 + q)."""
    bank = AnalyticBank(10, (40, 50), translate([1.5, -0.5]))
    t = np.arange(1, 10)
    est = integrate(bank, bank.T, np.array([[10.0, 30.0]], np.float32), np.array([0]), [1, 2, 4, 8], True, 0.5, 0.25,
                    None, drift_var=0.3)
    assert np.allclose(est.var[0, 1:].numpy(), 0.35 + 0.3 * t)
    est = integrate(bank, bank.T, np.array([[10.0, 30.0]], np.float32), np.array([0]), [1], False, 0.5, 0.25,
                    None, drift_var=0.3)
    assert np.allclose(est.var[0, 1:].numpy(), 0.25 + 0.4 * t)
    from core.errors import ConfigError
    with pytest.raises(ConfigError, match="drift_var"):
        default_section("chain", drift_var=-1.0)
