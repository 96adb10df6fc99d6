"""Per-video optimisation: soft-argmax and refinement geometry, trajectories, best buddies, training, resume,
the keypoint provider end to end (random-init DINOv2 and the RAFT encoder)."""
import dataclasses
import math
import os
import warnings

import numpy as np
import pytest
import torch

from analytic import AnalyticBank, moving_square, rotate
from features.grid import FeatureGrid
from pitrack.config import default_section, load_config
from core.coords import to_center
from core.errors import ConfigError
from tto.keypoints import build_model, keypoint_observations, optimise, predict, refined_maps_all, refined_video_maps
from tto.model import ResidualCNN, soft_argmax
from tto.pairs import Trajectories, best_buddies, chain_end, flow_trajectories, trajectory_flow_schedule
from tto.train import TrainData, evaluate_loss, lr_at, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "configs")


def TTOConfig(**changes):
    """configs/default.yaml's tto section with ``changes``."""
    return default_section("tto", **changes)


# --- soft-argmax and the refinement geometry ------------------------------------------------------------

def test_soft_argmax_is_exact_on_synthetic_heatmaps():
    K = 15
    # a bilinear splat of the point (5.3, 8.6): its centre of mass is the point exactly
    p = torch.zeros(K, K)
    x, y = 5.3, 8.6
    x0, y0, fx, fy = 5, 8, 0.3, 0.6
    p[y0, x0], p[y0, x0 + 1], p[y0 + 1, x0], p[y0 + 1, x0 + 1] = (1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy
    logits = torch.log(p.clamp_min(1e-30))[None]
    xy, var = soft_argmax(logits, radius=2)
    assert xy[0].tolist() == pytest.approx([x, y], abs=1e-5)
    # per-axis second moment: (Var_x + Var_y) / 2 of the splat
    assert var[0].item() == pytest.approx((fx * (1 - fx) + fy * (1 - fy)) / 2, abs=1e-5)
    # a symmetric blob around a node; mass outside the radius (a far distractor) is ignored
    ys, xs = torch.meshgrid(torch.arange(K, dtype=torch.float32), torch.arange(K, dtype=torch.float32), indexing="ij")
    g = -((xs - 9.0) ** 2 + (ys - 4.0) ** 2) / 2.0
    g[0, 0] = 5.0 - 1e-3            # a distractor just below the peak's logit (0): outside the radius
    g[4, 9] = 5.0                   # the argmax
    xy, _ = soft_argmax(g[None], radius=3)
    assert xy[0].tolist() == pytest.approx([9.0, 4.0], abs=1e-5)


@pytest.mark.parametrize("stride,offset,image_hw", [(8, 0.0, (96, 128)), (14, 6.5, (98, 140))])
def test_refined_match_and_coordinate_maps_are_exact(stride, offset, image_hw):
    """A cosine map peaked at one cell gives exactly that cell, and the working-px position of its centre."""
    cfg = TTOConfig(window=3, upsample=4, softargmax_radius=5)
    model = build_model(4, cfg, seed=0)
    grid = FeatureGrid(image_hw, stride, offset)
    gh, gw = grid.grid_hw
    working = (240, 320)
    cells = [(6, 4), (2, 2), (gw - 3, gh - 3)]        # interior, and next to borders (window moved inside)
    corr = torch.zeros(len(cells), gh, gw)
    for k, (j, i) in enumerate(cells):
        corr[k, i, j] = 1.0
    m = model.refine(corr)
    assert torch.allclose(m.uv, torch.tensor(cells, dtype=torch.float32), atol=1e-5)
    xy = grid.to_working(m.uv, working)
    H, W = image_hw
    for k, (j, i) in enumerate(cells):
        expect = [(offset + stride * j + 0.5) * working[1] / W - 0.5, (offset + stride * i + 0.5) * working[0] / H - 0.5]
        assert xy[k].tolist() == pytest.approx(expect, abs=1e-4)


def test_residual_starts_at_zero_and_lands_on_the_grid_cells():
    cfg = TTOConfig()
    model = build_model(6, cfg, seed=0)
    frozen = torch.randn(2, 6, 6, 8)
    images = torch.randint(0, 255, (2, 48, 64, 3), dtype=torch.uint8)
    grid8 = FeatureGrid((48, 64), 8, 0.0)
    assert torch.allclose(model.refined_maps(frozen, images, grid8), torch.nn.functional.normalize(frozen, dim=1))
    # another geometry is resampled at the cells' exact positions: stride 16, offset 0 = every other stride-8 cell
    net = ResidualCNN(5)
    torch.nn.init.normal_(net.head.weight)
    x = torch.randn(1, 3, 48, 64)
    direct = net(x, grid8)
    coarse = net(x, FeatureGrid((48, 64), 16, 0.0))
    assert coarse.shape == (1, 5, 3, 4) and torch.allclose(coarse, direct[:, :, ::2, ::2], atol=1e-5)
    half = net(x, FeatureGrid((48, 64), 8, 4.0))      # offset half a cell: the mean of 2x2 neighbours
    assert torch.allclose(half[:, :, 0, 0], direct[:, :, :2, :2].mean((2, 3)), atol=1e-5)


def test_learning_rate_schedule():
    cfg = TTOConfig(lr=1e-3, warmup_steps=10, steps=110, lr_min_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(1e-4) and lr_at(9, cfg) == pytest.approx(1e-3)
    assert lr_at(10, cfg) == pytest.approx(1e-3) and lr_at(60, cfg) == pytest.approx(0.55e-3)
    assert lr_at(110, cfg) == pytest.approx(1e-4) and lr_at(109, cfg) > 1e-4


# --- training pairs -------------------------------------------------------------------------------------

class TranslateBank:
    """A flow bank of a pure translation by ``v`` px/frame (no occlusion, variance 0.1 px²)."""

    def __init__(self, T, hw, v):
        self.num_frames, self.working_hw, self.original_hw, self.key = T, hw, hw, "translate"
        self.v = torch.tensor(v, dtype=torch.float32)
        self.calls = []

    def sample(self, pairs, points):
        self.calls += list(pairs)
        out = torch.zeros(points.shape[0], points.shape[1], 4)
        for g, (a, b) in enumerate(pairs):
            out[g, :, :2] = (b - a) * self.v
            out[g, :, 3] = 0.1
        return out


def test_flow_trajectories_follow_the_motion_and_the_long_range_check_removes_bad_chains():
    T, hw, v = 12, (60, 80), (1.0, 0.5)
    cfg = TTOConfig(traj_anchor_stride=4, traj_grid=10.0, traj_check_intervals=[2, 4, 8])
    bank = TranslateBank(T, hw, v)
    traj, st = flow_trajectories(bank, cfg)
    xy, ok = _dense(traj)
    assert st["traj_count"] == xy.shape[0] > 0 and ok.any(1).all()
    assert {(t, t + 1) for t in range(T - 1)} <= set(bank.calls) and (0, 8) in set(bank.calls)
    # the reads follow trajectory_flow_schedule, in order (a chain that dies early reads fewer)
    it = iter(p for step in trajectory_flow_schedule(T, cfg) for p in step)
    assert all(any(c == p for p in it) for c in bank.calls)
    # every confirmed position is the chain's first position moved by the true translation
    first = ok.float().argmax(1)                                   # each chain's anchor frame
    start = xy[torch.arange(xy.shape[0]), first]
    steps = (torch.arange(T)[None] - first[:, None]).float()       # [K, T]
    truth = start[:, None] + steps[..., None] * torch.tensor(v)
    assert torch.allclose(xy[ok], truth[ok], atol=1e-4)
    inside = (xy[..., 0] >= -0.5) & (xy[..., 0] <= hw[1] - 0.5) & (xy[..., 1] >= -0.5) & (xy[..., 1] <= hw[0] - 0.5)
    assert inside[ok].all()
    # corrupted long-range flows in the top half (horizontal motion: a chain keeps its y): those chains
    # never pass a check
    bad = TranslateBank(T, hw, (1.0, 0.0))
    bad.sample = lambda pairs, points, f=bad.sample: _corrupt_top(f(pairs, points), pairs, points, hw)
    traj2, st2 = flow_trajectories(bad, cfg)
    xy2, ok2 = _dense(traj2)
    assert 0 < st2["traj_checks_passed"] < st["traj_checks_passed"] and ok2.sum() < ok.sum()
    assert (xy2[ok2][:, 1] >= hw[0] / 2).all()


def _dense(traj):
    """The trajectories over all T frames: (xy float32 [K, T, 2], ok bool [K, T]), from their windows."""
    K, L, T = len(traj), traj.xy.shape[1], traj.num_frames
    xy, ok = torch.zeros(K, T, 2), torch.zeros(K, T, dtype=torch.bool)
    for k in range(K):
        a = int(traj.start[k])
        n = min(L, T - a)
        xy[k, a:a + n], ok[k, a:a + n] = traj.xy[k, :n], traj.ok[k, :n]
    assert not traj.ok[torch.arange(L)[None] + traj.start[:, None] >= T].any()          # nothing past the video
    return xy, ok


class _Bank(AnalyticBank):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.original_hw = self.working_hw


def test_trajectory_windows_match_the_dense_layout():
    """valid_at(s, t) is nonzero(ok[:, s] & ok[:, t]) of the trajectories over all frames (same indices, same
    order) and positions(k, s) their positions, for every frame pair; each window holds its chain."""
    T, hw = 30, (32, 40)
    warp, hidden, _ = moving_square(8, 8, 10, (0.7, 0.3))          # background chains die where the square passes
    bank = _Bank(T, hw, warp, hidden=hidden)
    cfg = TTOConfig(traj_anchor_stride=4, traj_grid=4.0, traj_check_intervals=[2, 4, 8])
    traj, st = flow_trajectories(bank, cfg)
    K = len(traj)
    assert isinstance(traj, Trajectories) and K == st["traj_count"] > 0
    assert traj.xy.shape == (K, 9, 2) and traj.ok.shape == (K, 9) and traj.start.shape == (K,)
    assert st["traj_positions"] == traj.positions_count == int(traj.ok.sum())
    xy, ok = _dense(traj)
    assert 0 < int(ok.sum(1).min()) < int(ok.sum(1).max()) <= 9   # chains cut short by the occluder, and whole
    # every trajectory lies in [a, chain end] of its anchor a (its first or last confirmed frame)
    first = ok.float().argmax(1)
    last = T - 1 - ok.flip(1).float().argmax(1)
    assert ((last - first) <= 8).all() and (first >= traj.start).all() and (last < traj.start + 9).all()
    for s in range(T):
        for t in range(T):
            ref = torch.nonzero(ok[:, s] & ok[:, t])[:, 0]
            got = traj.valid_at(s, t)
            assert got.dtype == torch.long and torch.equal(got, ref), (s, t)
            if ref.numel():
                assert torch.equal(traj.positions(got, s), xy[ref, s])
                assert torch.equal(traj.positions(got, t), xy[ref, t])
    # the grid conversion is elementwise: the same as converting the dense positions
    grid = FeatureGrid((64, 80), 8, 0.0)
    uv = traj.map_xy(lambda p: grid.from_working(p, hw))
    assert uv.start.data_ptr() == traj.start.data_ptr() and uv.ok.data_ptr() == traj.ok.data_ptr()   # shared
    sel = traj.valid_at(3, 9)
    assert torch.equal(uv.positions(sel, 9), grid.from_working(xy, hw)[sel, 9])
    with pytest.raises(IndexError):
        traj.positions(torch.tensor([0]), int(traj.start[0]) + 9)          # outside its window
    with pytest.raises(IndexError):
        traj.valid_at(0, T)


def _tensor_bytes(obj):
    """Bytes of every tensor and numpy array held by ``obj``'s attributes."""
    out = 0
    for v in vars(obj).values():
        if isinstance(v, torch.Tensor):
            out += v.element_size() * v.nelement()
        elif isinstance(v, np.ndarray):
            out += v.nbytes
    return out


def test_trajectory_memory_is_linear_in_the_video_length():
    """Each trajectory stores max Δ + 1 = 33 frames, whatever T: at T = 200 the store is a fraction of the
    K × T layout, and its bytes per trajectory do not grow with T."""
    hw, horizon = (32, 32), 32
    cfg = TTOConfig(traj_anchor_stride=8, traj_grid=4.0, traj_check_intervals=[2, 4, 8, 16, horizon])
    per_traj = {}
    for T in (100, 200):
        bank = _Bank(T, hw, rotate(0.004, np.array([15.5, 15.5])))
        traj, st = flow_trajectories(bank, cfg)
        K, seeds = len(traj), 8 * 8
        chains = sum(chain_end(a, d, T, cfg.traj_check_intervals) != a
                     for a in list(range(0, T, 8)) + [T - 1] for d in (1, -1))
        nbytes = _tensor_bytes(traj)
        assert nbytes == traj.nbytes and K > 0.9 * chains * seeds                       # nearly all chains kept
        assert traj.xy.shape[1] == horizon + 1
        assert nbytes <= K * (8 + 9 * (horizon + 1)) + 24 * chains                      # start, xy, ok, run index
        assert nbytes < chains * seeds * (2 * horizon + 1) * 12                         # linear in T (chains ∝ T)
        assert nbytes < K * T * 9 * 0.2 or T < 200                                      # the [K, T] layout: 9 B/frame
        per_traj[T] = nbytes / K
    assert abs(per_traj[200] - per_traj[100]) < 1.0


def _corrupt_top(out, pairs, points, hw):
    for g, (a, b) in enumerate(pairs):
        if abs(b - a) > 1:
            out[g, :, 0] = (b - a) * 1.0 + 5.0 * (points[g, :, 1] < hw[0] / 2)
    return out


def test_best_buddies_are_mutual_nearest_neighbours():
    g = torch.Generator().manual_seed(0)
    fa = torch.nn.functional.normalize(torch.randn(16, 30, generator=g), dim=0)
    perm = torch.randperm(30, generator=g)
    fb = fa[:, perm].clone()                 # b's cell j holds a's cell perm[j] ...
    fb[:, :5] = torch.nn.functional.normalize(torch.randn(16, 5, generator=g), dim=0)   # ... except 0..4: noise
    ia, ib, s = best_buddies(fa, fb, 0.5)
    assert sorted(ib.tolist()) == list(range(5, 30)) and (perm[ib] == ia).all() and (s > 0.999).all()
    ia2, _, _ = best_buddies(fa, fb, 1.01)
    assert ia2.numel() == 0


# --- optimisation on a rendered clip (RAFT-small encoder) ---------------------------------------------

@pytest.fixture(scope="module")
def raft_clip():
    from conftest import raft_small_path
    path = raft_small_path()
    if path is None:
        pytest.skip("raft-small.pth (official RAFT-small checkpoint) not found in $PITRACK_WEIGHTS or ../shared/weights")
    from eval.synthetic import make_clip
    from features.backbones import RaftEncoder
    from features.cache import video_features
    from flow.bank import FlowBank
    video, points, occluded = make_clip(num_frames=10, size_hw=(96, 128), seed=1, num_points=40)
    bank = FlowBank(video, default_section("flow", backend="dis", resolution="native"), None, progress=False)
    fs = video_features(video, default_section("features", resolution="256x192"), None, backbone=RaftEncoder(path))
    cfg = TTOConfig(enabled=True, steps=150, warmup_steps=5, frames_per_step=2, traj_per_pair=32, buddies_per_pair=32,
                    cycle_per_pair=16, traj_grid=8.0, lr=5e-3)
    traj, _ = flow_trajectories(bank, cfg)
    data = TrainData(fs.feats, fs.images, fs.grid,
                     traj.map_xy(lambda xy: fs.grid.from_working(xy, bank.working_hw)))
    return dict(video=video, points=points, occluded=occluded, bank=bank, fs=fs, cfg=cfg, data=data)


def _errors(model, clip):
    fs, bank = clip["fs"], clip["bank"]
    gt = torch.from_numpy(to_center(clip["points"]))               # working px = original px here
    maps = refined_maps_all(model, fs.feats, fs.images, fs.grid)
    uv, sim, _, _ = predict(model, maps, fs.grid.from_working(gt[:, 0], bank.working_hw), np.zeros(len(gt), int))
    err = (fs.grid.to_working(uv, bank.working_hw) - gt).norm(dim=-1)
    vis = torch.from_numpy(~clip["occluded"])
    vis[:, 0] = False
    return err[vis]


def test_optimisation_lowers_the_loss_and_finds_true_positions_better(raft_clip):
    torch.set_num_threads(1)                  # as configs/default.yaml (tto.threads); restored by _threads
    cfg, data = raft_clip["cfg"], raft_clip["data"]
    model = build_model(data.feats.shape[1], cfg, seed=0)
    held_out = range(10_000, 10_008)                               # batches the training never draws
    before = evaluate_loss(model, data, cfg, 0, held_out)
    err0 = _errors(model, raft_clip)
    st = train(model, data, cfg, seed=0)
    after = evaluate_loss(model, data, cfg, 0, held_out)
    err1 = _errors(model, raft_clip)
    # measured (1 thread): held-out loss 17.2 -> 11.5 (position 12.3 -> 7.5), ground-truth error of the
    # matches: mean 17.9 -> 15.4 px, median 1.59 -> 1.31 px, within 1 px 27 % -> 36 %
    assert st["tto_steps"] == 150 and st["tto_loss_last"] < st["tto_loss_first"]
    assert after["loss"] < 0.8 * before["loss"] and after["pos"] < 0.75 * before["pos"]
    assert err1.mean() < 0.92 * err0.mean() and err1.median() < 0.9 * err0.median()
    assert (err1 < 1).float().mean() > (err0 < 1).float().mean() + 0.05


def test_resume_after_interruption_gives_the_same_model(raft_clip, tmp_path):
    torch.set_num_threads(1)
    data = raft_clip["data"]
    cfg = dataclasses.replace(raft_clip["cfg"], steps=4, checkpoint_every=100)
    ref = build_model(data.feats.shape[1], cfg, seed=0)
    train(ref, data, cfg, seed=0)
    ckpt = str(tmp_path / "tto" / "k.pt")

    def interrupt(step):
        if step == 2:
            raise KeyboardInterrupt

    first = build_model(data.feats.shape[1], cfg, seed=0)
    with pytest.raises(KeyboardInterrupt):
        train(first, data, cfg, seed=0, ckpt_path=ckpt, key="k", on_step=interrupt)
    from core.checksum import load_torch
    assert load_torch(ckpt)["step"] == 2
    second = build_model(data.feats.shape[1], cfg, seed=0)         # a new process: fresh model
    st = train(second, data, cfg, seed=0, ckpt_path=ckpt, key="k")
    assert st["tto_resumed"] and st["tto_step_start"] == 2 and st["tto_steps"] == 2
    for (k, a), b in zip(ref.state_dict().items(), second.state_dict().values()):
        assert torch.equal(a, b), k
    # complete: nothing to do; another key or a corrupt file: start over
    assert train(build_model(data.feats.shape[1], cfg, seed=0), data, cfg, seed=0, ckpt_path=ckpt, key="k")["tto_steps"] == 0
    with open(ckpt, "r+b") as f:
        f.truncate(200)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        st = train(build_model(data.feats.shape[1], cfg, seed=0), data, cfg, seed=0, ckpt_path=ckpt, key="k")
    assert any("rejected" in str(x.message) for x in w) and st["tto_steps"] == 4


# --- the entry points: optimise, refined_video_maps, keypoint_observations -----------------------------

def _tiny_config(**tto):
    base = dict(enabled=True, steps=4, warmup_steps=1, frames_per_step=2, traj_per_pair=16, buddies_per_pair=16,
                cycle_per_pair=8, traj_grid=8.0, checkpoint_every=2, similarity_threshold=0.0, cycle_tolerance=0.0,
                threads=1)
    base.update(tto)
    # the filters' sources explicit: 'auto' would pick SAM2 / GeoAware on a machine with their checkpoints
    return load_config({"tracker": "pitrack", "seed": 3, "flow": {"backend": "dis", "resolution": "native"},
                        "features": {"backbone": "dinov2_vits14", "random_init": True, "resolution": "112x84"},
                        "filters": {"mask": {"source": "none"}, "similarity": {"source": "tto"}},
                        "tto": base})


def _keypoints(video, q, tq, bank, config, cache_dir):
    """The keypoint stage as the pipeline runs it: features -> optimise -> refined maps -> observations."""
    from features.cache import video_features
    fs = video_features(video, config.features, cache_dir, seed=config.seed)
    model, st = optimise(fs, bank, config.tto, config.seed, cache_dir)
    maps = refined_video_maps(model, fs, config.tto.threads)
    xy, var, valid, kst = keypoint_observations(model, maps, fs.grid, q, tq, bank.working_hw, video.shape[1:3],
                                                config.tto)
    return xy, var, valid, {**fs.stats, **st, **kst}, model


def test_random_init_dinov2_end_to_end_with_cache(tmp_path):
    from eval.synthetic import make_clip
    from flow.bank import FlowBank
    video, points, _ = make_clip(num_frames=6, size_hw=(60, 80), seed=2, num_points=8)
    config = _tiny_config()
    bank = FlowBank(video, config.flow, None, progress=False)
    q = to_center(points[:, 0])
    tq = np.array([0, 0, 1, 2, 5, 5, 3, 0][:len(q)])
    xy, var, valid, st, model = _keypoints(video, q, tq, bank, config, str(tmp_path))
    N, T = len(q), video.shape[0]
    assert xy.shape == (N, T, 2) and var.shape == (N, T) and valid.shape == (N, T) and valid.dtype == torch.bool
    assert torch.isfinite(xy).all() and (var > 0).all()
    assert not valid[torch.arange(N), torch.as_tensor(tq)].any() and valid.sum() > 0   # threshold 0: all but the query
    floor = 2.0                                                   # sigma_floor (original px = working px here)
    assert (var >= floor ** 2 - 1e-4).all()
    for k in ("tto_s", "tto_steps", "features_s", "keypoints_s", "backbone_evals", "tto_peak_rss_mb", "traj_s"):
        assert k in st
    assert st["tto_steps"] == 4 and st["backbone_evals"] == T and st["feature_grid"] == "8x6"
    assert len(list((tmp_path / "tto").glob("*.pt"))) == 1 and len(list((tmp_path / "features").glob("*.npz"))) == 1
    # a second run: features from the cache, no optimisation step (the checkpoint is complete), the same
    # model bit for bit and the same observations
    xy2, var2, valid2, st2, model2 = _keypoints(video, q, tq, bank, config, str(tmp_path))
    assert st2["backbone_evals"] == 0 and st2["tto_steps"] == 0 and "traj_count" not in st2
    assert st2["tto_resumed"] and st2["tto_step_start"] == 4 and st2["tto_key"] == st["tto_key"]
    for (k, a), b in zip(model.state_dict().items(), model2.state_dict().values()):
        assert torch.equal(a, b), k
    assert torch.equal(xy, xy2) and torch.equal(var, var2) and torch.equal(valid, valid2)
    # without a cache folder the optimisation runs again and lands on the same model (seeded)
    xy4, _, _, st4, _ = _keypoints(video, q, tq, bank, config, None)
    assert st4["tto_steps"] == 4 and torch.equal(xy, xy4)
    # provider-only settings reuse the checkpoint; a training setting does not
    _, _, valid3, st3, _ = _keypoints(video, q, tq, bank, _tiny_config(similarity_threshold=1.0), str(tmp_path))
    assert st3["tto_steps"] == 0 and not valid3.any()
    # the training trajectories read the flows' occlusion: another estimator means another checkpoint
    import dataclasses
    bank5 = FlowBank(video, dataclasses.replace(config.flow, fb_tau=3.0), None, progress=False)
    _, _, _, st5, _ = _keypoints(video, q, tq, bank5, config, str(tmp_path))
    assert st5["tto_key"] != st["tto_key"] and st5["tto_steps"] == 4
    # ... but not their variance: the head's σ with the formulas' occlusion reuses the formulas' checkpoint
    bank6 = FlowBank(video, dataclasses.replace(config.flow, uncertainty="learned_variance"), None, progress=False)
    _, _, _, st6, _ = _keypoints(video, q, tq, bank6, config, str(tmp_path))
    assert st6["tto_key"] == st["tto_key"] and st6["tto_steps"] == 0
    from tto.train import train_key
    assert train_key("f", "d", _tiny_config(lr=5e-4).tto, 3) != train_key("f", "d", config.tto, 3) == \
        train_key("f", "d", _tiny_config(sigma_floor=9.0, device="cpu").tto, 3)
    assert train_key("f", "d", config.tto, 4) != train_key("f", "d", config.tto, 3) != train_key("g", "d", config.tto, 3)


def test_optimise_resumes_an_interrupted_checkpoint(tmp_path, monkeypatch):
    """optimise stopped after step 2 (a checkpoint every 2 steps) and called again continues from step 2 and
    ends on the model of an uninterrupted run."""
    from eval.synthetic import make_clip
    from features.cache import video_features
    from flow.bank import FlowBank
    import tto.train as tto_train
    video, _, _ = make_clip(num_frames=6, size_hw=(60, 80), seed=2, num_points=8)
    config = _tiny_config()
    bank = FlowBank(video, config.flow, None, progress=False)
    fs = video_features(video, config.features, None, seed=config.seed)
    ref, _ = optimise(fs, bank, config.tto, config.seed, None)
    real_train = tto_train.train

    def interrupted(*args, **kwargs):
        def stop(step):
            if step == 2:
                raise KeyboardInterrupt
        return real_train(*args, **kwargs, on_step=stop)

    import tto.keypoints
    monkeypatch.setattr(tto.keypoints, "train", interrupted)
    with pytest.raises(KeyboardInterrupt):
        optimise(fs, bank, config.tto, config.seed, str(tmp_path))
    monkeypatch.setattr(tto.keypoints, "train", real_train)
    model, st = optimise(fs, bank, config.tto, config.seed, str(tmp_path))
    assert st["tto_resumed"] and st["tto_step_start"] == 2 and st["tto_steps"] == 2
    for (k, a), b in zip(ref.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), k


def test_disabled_provider_and_configs():
    from features.cache import FeatureSet
    config = load_config({"tto": {"enabled": False}})
    assert config.tto.enabled is False and config.features.backbone == "raft_small"

    class NoBank:
        """Any use of the bank fails: a disabled optimisation must not touch it."""

    g = torch.Generator().manual_seed(0)
    feats = torch.randn(3, 6, 4, 4, generator=g).half()
    fs = FeatureSet(feats, np.zeros((3, 32, 32, 3), np.uint8), FeatureGrid((32, 32), 8, 0.0), "k", {})
    model, st = optimise(fs, NoBank(), config.tto, config.seed, None)
    assert not model.training and st["tto_enabled"] is False and st["tto_s"] == 0 and st["tto_steps"] == 0
    # untrained: the residual CNN starts at zero, so the refined maps are the normalised backbone features
    maps = refined_video_maps(model, fs, config.tto.threads)
    assert maps.dtype == torch.float16
    assert torch.allclose(maps.float(), torch.nn.functional.normalize(feats.float(), dim=1), atol=1e-3)
    for name in ("default.yaml", "tto_gpu.yaml"):
        c = load_config(os.path.join(CONFIGS, name))
        assert c.tto.enabled and c.tracker == "pitrack" and c.features.backbone == "raft_small"
    off = load_config(os.path.join(CONFIGS, "ablations", "no_keypoints.yaml"))
    assert off.tto.enabled is False
    with pytest.raises(ConfigError, match="tto.stepz"):
        load_config({"tto": {"stepz": 3}})
    with pytest.raises(ConfigError, match="features.batch_size"):
        load_config({"features": {"batch_size": "four"}})
    assert math.isclose(load_config(os.path.join(CONFIGS, "default.yaml")).tto.similarity_threshold, 0.8)
    with pytest.raises(ConfigError, match="backward_sources"):
        load_config({"fusion": {"backward_sources": "some"}})


def test_tracker_wires_keypoints_into_the_integrator():
    """Tracker(config with tto.enabled) runs the optimisation and the keypoints and reports their statistics;
    tto.enabled false skips both (the features for the similarity filter are still computed)."""
    from eval.synthetic import make_clip
    from pitrack import Tracker
    video, points, _ = make_clip(num_frames=6, size_hw=(60, 80), seed=2, num_points=8)
    q = np.concatenate([np.zeros((len(points), 1)), points[:, 0]], 1).astype(np.float32)
    on = Tracker(_tiny_config(), progress=False)
    tracks, visible, sigma = on(video, q)
    assert tracks.shape == (len(q), 6, 2) and on.stats["tto_steps"] == 4 and on.stats["backbone_evals"] == 6
    assert "kp_obs_fraction" in on.stats and on.extras["keypoints"]["valid"].shape == (len(q), 6)
    off = Tracker(_tiny_config(enabled=False), progress=False)
    off(video, q)
    assert off.stats["tto_steps"] == 0 and "traj_count" not in off.stats
    assert "kp_obs_fraction" not in off.stats and "keypoints" not in off.extras


# --- checkpoint integrity and interruptions inside a step ------------------------------------------------

@pytest.fixture(scope="module")
def tiny_train_data():
    """TrainData of a 6-frame rendered clip (random-init DINOv2 features, DIS flows) and _tiny_config's tto."""
    from eval.synthetic import make_clip
    from features.cache import video_features
    from flow.bank import FlowBank
    video, _, _ = make_clip(num_frames=6, size_hw=(60, 80), seed=2, num_points=8)
    config = _tiny_config()
    bank = FlowBank(video, config.flow, None, progress=False)
    fs = video_features(video, config.features, None, seed=config.seed)
    traj, _ = flow_trajectories(bank, config.tto)
    data = TrainData(fs.feats, fs.images, fs.grid, traj.map_xy(lambda xy: fs.grid.from_working(xy, bank.working_hw)))
    return data, config.tto


def _run(data, cfg, ckpt=None, on_step=None):
    """train() on a fresh model (seed 0, one thread). Returns (model, stats)."""
    torch.set_num_threads(1)
    model = build_model(data.feats.shape[1], cfg, seed=0)
    return model, train(model, data, cfg, seed=0, ckpt_path=ckpt, key="k", on_step=on_step)


def _reference(data, cfg, tmp_path):
    """An uninterrupted run: its model after every completed step (step -> state dict) and its final checkpoint."""
    import copy
    states = {}
    model = build_model(data.feats.shape[1], cfg, seed=0)
    states[0] = copy.deepcopy(model.state_dict())
    ckpt = str(tmp_path / "ref" / "k.pt")
    torch.set_num_threads(1)
    train(model, data, cfg, seed=0, ckpt_path=ckpt, key="k",
          on_step=lambda s: states.__setitem__(s, copy.deepcopy(model.state_dict())))
    from core.checksum import load_torch
    return states, load_torch(ckpt)


def _assert_identical(a, b, where=""):
    """Equal nested dicts / lists of tensors and plain values, tensors bit for bit."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for k in a:
            _assert_identical(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_identical(x, y, f"{where}/{i}")
    else:
        assert a == b, where


def _flip_bit_in_tensor_data(path):
    """Flip the lowest bit of the middle byte of the largest tensor in the torch.save zip inside ``path``
    (the zip may follow a header). Returns the file offset changed."""
    import io
    import struct
    import zipfile
    blob = bytearray(open(path, "rb").read())
    z0 = bytes(blob).index(b"PK\x03\x04")                     # the zip's first local header
    with zipfile.ZipFile(io.BytesIO(bytes(blob[z0:]))) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    assert info.compress_type == zipfile.ZIP_STORED and info.file_size >= 64
    h = z0 + info.header_offset
    name_len, extra_len = struct.unpack("<HH", bytes(blob[h + 26:h + 30]))
    pos = h + 30 + name_len + extra_len + info.file_size // 2
    blob[pos] ^= 0x01
    open(path, "wb").write(bytes(blob))
    return pos


def test_a_flipped_bit_in_the_checkpoint_is_detected_and_training_starts_over(tiny_train_data, tmp_path):
    """A checkpoint with one bit of tensor data flipped is rejected (warning, file deleted) and the run trains
    from step 0, landing on the model of a run from scratch, not on one resumed from the corrupt state."""
    data, cfg = tiny_train_data
    ref, _ = _run(data, cfg)
    ckpt = str(tmp_path / "tto" / "k.pt")

    def stop(step):
        if step == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _run(data, cfg, ckpt, on_step=stop)
    _flip_bit_in_tensor_data(ckpt)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        model, st = _run(data, cfg, ckpt)
    assert any("rejected" in str(x.message) and "sha256" in str(x.message) for x in w), [str(x.message) for x in w]
    assert not st["tto_resumed"] and st["tto_step_start"] == 0 and st["tto_steps"] == cfg.steps
    _assert_identical(ref.state_dict(), model.state_dict())
    # the new checkpoint is sound: the next run loads it and has nothing to do
    assert _run(data, cfg, ckpt)[1]["tto_steps"] == 0


def test_checked_files_reject_any_changed_byte(tmp_path):
    from core.checksum import ChecksumError, load_torch, save_torch
    path = str(tmp_path / "c.pt")
    obj = dict(a=torch.arange(100, dtype=torch.float32), n=3)
    assert save_torch(path, obj, "test file")
    _assert_identical(load_torch(path), obj)
    blob = open(path, "rb").read()
    for pos in (0, 15, 16, 47, 48, len(blob) // 2, len(blob) - 1):     # magic, digest, payload
        bad = bytearray(blob)
        bad[pos] ^= 0x10
        open(path, "wb").write(bytes(bad))
        with pytest.raises(ChecksumError):
            load_torch(path)
    open(path, "wb").write(blob[:-1])
    with pytest.raises(ChecksumError):
        load_torch(path)


class _AdamWInterruptedAt(torch.optim.AdamW):
    """AdamW whose update of step ``at`` (0-based; a fresh run) changes the first half of the parameters, then
    ``interrupt()`` runs, then the rest are updated: an interruption inside the update."""

    def __init__(self, params, at, interrupt, **kwargs):
        super().__init__(params, **kwargs)
        self.calls, self.at, self.interrupt = 0, at, interrupt

    def step(self, closure=None):
        n, self.calls = self.calls, self.calls + 1
        if n != self.at:
            return super().step(closure)
        group = self.param_groups[0]
        every = group["params"]
        try:
            group["params"] = every[:len(every) // 2]
            super().step()
            self.interrupt()
            group["params"] = every[len(every) // 2:]
            super().step()
        finally:
            group["params"] = every


def _interrupted_optimizer(patch, at, interrupt):
    """Patch (``patch``: a monkeypatch context) tto.train's optimiser to _AdamWInterruptedAt; the list of those
    made."""
    import tto.train as tto_train
    made = []

    def make(model, cfg):
        made.append(_AdamWInterruptedAt(model.parameters(), at, interrupt, lr=float(cfg.lr),
                                        weight_decay=float(cfg.weight_decay)))
        return made[-1]

    patch.setattr(tto_train, "make_optimizer", make)
    return made


def test_an_interruption_inside_the_update_saves_no_partly_updated_model(tiny_train_data, tmp_path, monkeypatch):
    """KeyboardInterrupt raised in the middle of step 3's update (half the parameters changed): the checkpoint
    left is a step boundary (step 2, the model of an uninterrupted run after 2 steps), and resuming from it
    ends bit for bit on the uninterrupted run's parameters, optimiser state and loss history."""
    data, cfg = tiny_train_data
    cfg = dataclasses.replace(cfg, steps=5, checkpoint_every=2)
    states, ref_ckpt = _reference(data, cfg, tmp_path)
    ckpt = str(tmp_path / "tto" / "k.pt")

    def ctrl_c():
        raise KeyboardInterrupt

    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
        made = _interrupted_optimizer(patch, 3, ctrl_c)
        _run(data, cfg, ckpt)
    assert made[0].calls == 4
    _assert_left_at_step_and_resumes(data, cfg, ckpt, 2, states, ref_ckpt)


def _assert_left_at_step_and_resumes(data, cfg, ckpt, step, states, ref_ckpt):
    """The checkpoint at ``ckpt`` holds the uninterrupted run after ``step`` steps, and resuming from it ends bit
    for bit on the uninterrupted run's model and checkpoint."""
    from core.checksum import load_torch
    left = load_torch(ckpt)
    assert left["step"] == step and left["history"].shape[0] == step
    _assert_identical(states[step], left["model"])
    model, st = _run(data, cfg, ckpt)
    assert st["tto_resumed"] and st["tto_step_start"] == step and st["tto_steps"] == cfg.steps - step
    _assert_identical(states[cfg.steps], model.state_dict())
    _assert_identical(ref_ckpt, load_torch(ckpt))


def test_ctrl_c_inside_a_step_stops_after_the_step_is_complete_and_saved(tiny_train_data, tmp_path, monkeypatch):
    """A real SIGINT delivered in the middle of step 2's update: the step completes, is saved as step 3 (the
    uninterrupted model after 3 steps), then KeyboardInterrupt is raised and the SIGINT handler restored;
    resuming ends bit for bit on the uninterrupted run."""
    import signal
    data, cfg = tiny_train_data
    cfg = dataclasses.replace(cfg, steps=5, checkpoint_every=2)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    states, ref_ckpt = _reference(data, cfg, tmp_path)
    ckpt = str(tmp_path / "tto" / "k.pt")
    seen = []
    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
        made = _interrupted_optimizer(patch, 2, lambda: os.kill(os.getpid(), signal.SIGINT))
        _run(data, cfg, ckpt, on_step=seen.append)
    assert made[0].calls == 3 and seen == [1, 2]              # no later step started, step 3 not reported
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    _assert_left_at_step_and_resumes(data, cfg, ckpt, 3, states, ref_ckpt)


def test_sigint_is_left_alone_under_an_application_handler_and_in_other_threads(tiny_train_data, tmp_path,
                                                                                 monkeypatch):
    """With a SIGINT handler of the application's own, train() neither replaces it nor stops: a SIGINT inside a
    step reaches that handler and the run completes. In a thread other than the main one it runs normally."""
    import signal
    import threading
    data, cfg = tiny_train_data
    got = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: got.append(signum))
    try:
        with monkeypatch.context() as patch:
            _interrupted_optimizer(patch, 1, lambda: os.kill(os.getpid(), signal.SIGINT))
            try:
                _, st = _run(data, cfg, str(tmp_path / "a" / "k.pt"))
            except KeyboardInterrupt:
                pytest.fail("train() replaced the application's SIGINT handler")
        assert got == [signal.SIGINT] and st["tto_steps"] == cfg.steps
        assert signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, previous)
    out = {}
    worker = threading.Thread(target=lambda: out.update(_run(data, cfg, str(tmp_path / "b" / "k.pt"))[1]))
    worker.start()
    worker.join()
    assert out["tto_steps"] == cfg.steps and signal.getsignal(signal.SIGINT) is previous
