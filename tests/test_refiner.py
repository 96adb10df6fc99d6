"""The PIPs-style track refiner (fusion/refiner.py, training/refiner.py): correlation sampling by hand,
window chaining on a long clip, the locked query position, training, strict weight loading, the packaged
weights on a clip of known motion, and the pipeline's stage 6."""
import math

import numpy as np
import pytest
import torch

from fusion.refiner import (LOG_VAR_RANGE, VIS_LOGIT_INPUT, TrackRefiner, WindowFeatures, level_coords, load_refiner,
                            pyramid, refine_tracks, save_refiner, window_slots)


def test_level_coords_by_hand():
    # level-1 cell j averages level-0 cells 2j, 2j+1: its centre is at u0 = 2j + 0.5
    assert level_coords(torch.tensor([2.5, 0.5]), 1).tolist() == [1.0, 0.0]
    assert level_coords(torch.tensor([5.5]), 2).tolist() == [(5.5 - 1.5) / 4]


def test_correlations_by_hand():
    T, C, h, w = 2, 4, 8, 10
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(T, C, h, w, generator=g)
    template = torch.randn(1, C, generator=g)
    recent = torch.randn(1, 1, C, generator=g)
    wf = WindowFeatures(pyramid(feats, 2), torch.tensor([[1]]), template, radius=1)
    corr = wf.correlations(torch.tensor([[[4.0, 3.0]]]), recent).reshape(2, 2, 9)   # template, level, offset
    # level 0, query template, offset (dx, dy) = (1, -1): slot 2 of the row-major 3×3 grid
    assert corr[0, 0, 2].item() == pytest.approx((feats[1, :, 2, 5] @ template[0]).item() / math.sqrt(C), abs=1e-5)
    # level 1 at u0 = (4, 3) -> (1.75, 1.25), centre offset: bilinear between four level-1 cells
    f1 = torch.nn.functional.avg_pool2d(feats, 2)[1]
    bil = (f1[:, 1, 1] * 0.25 * 0.75 + f1[:, 1, 2] * 0.75 * 0.75 + f1[:, 2, 1] * 0.25 * 0.25 + f1[:, 2, 2] * 0.75 * 0.25)
    assert corr[1, 1, 4].item() == pytest.approx((bil @ recent[0, 0]).item() / math.sqrt(C), abs=1e-5)


class Shifter(torch.nn.Module):
    """A stand-in refiner: every slot s of a window becomes slot 0's position + s·(1, 0.5) cells."""
    levels, radius = 2, 1

    def forward(self, window, uv_init, logvar_init, vis_init, iterations):
        S = uv_init.shape[1]
        uv = uv_init[:, :1] + torch.arange(S)[None, :, None] * torch.tensor([1.0, 0.5])
        n = uv_init.shape[:2]
        return [uv], torch.ones(n), torch.zeros(n)


def test_windows_chain_through_a_long_clip():
    T, N, S = 50, 3, 8
    feats = torch.zeros(T, 4, 6, 6)
    tq = torch.tensor([0, 20, 49])
    q = torch.tensor([[1.0, 2.0], [3.0, 1.0], [2.0, 2.0]])
    uv = torch.zeros(N, T, 2)
    uv[torch.arange(N), tq] = q
    out, vis, var, windows = refine_tracks(Shifter(), feats, uv, torch.ones(N, T), torch.zeros(N, T, dtype=torch.bool),
                                           tq, window=S)
    t = torch.arange(T)[None, :, None].float()
    # each window's first slot is the previous window's last: the shift accumulates exactly over all windows
    expected = q[:, None] + (t - tq[:, None, None]).abs() * torch.tensor([1.0, 0.5])
    assert torch.allclose(out, expected)
    assert (vis > 0).all()
    # forward: ceil(49/7) windows for query 0, ceil(29/7) for query 1; backward: ceil(20/7), ceil(49/7)
    assert windows == max(7, 5, 0) + max(0, 3, 7)


def test_window_slots_clamp_and_flag_the_end():
    frames, valid = window_slots(torch.tensor([3, 1]), -1, 4, 10)
    assert frames.tolist() == [[3, 2, 1, 0], [1, 0, 0, 0]]
    assert valid.tolist() == [[True] * 4, [True, True, False, False]]


def _random_model():
    torch.manual_seed(0)
    model = TrackRefiner(channels=16, blocks=1, levels=2, radius=1)
    for layer in (model.delta, model.heads):        # non-zero updates, so that a lock is really tested
        torch.nn.init.normal_(layer.weight, std=0.5)
    return model.eval()


def test_query_position_stays_fixed_and_outputs_are_in_range():
    T, N = 20, 5
    g = torch.Generator().manual_seed(1)
    feats = torch.randn(T, 8, 12, 16, generator=g)
    uv = torch.rand(N, T, 2, generator=g) * torch.tensor([15.0, 11.0])
    tq = torch.tensor([0, 3, 10, 19, 7])
    out, vis, var, _ = refine_tracks(_random_model(), feats, uv, torch.ones(N, T), torch.ones(N, T, dtype=torch.bool),
                                     tq, window=6, iterations=3)
    n = torch.arange(N)
    assert torch.equal(out[n, tq], uv[n, tq])
    assert (vis[n, tq] > 0).all()
    assert (out - uv).abs().amax() > 0.1                          # the rest moved
    assert ((var >= math.exp(LOG_VAR_RANGE[0]) * 0.99) & (var <= math.exp(LOG_VAR_RANGE[1]) * 1.01)).all()
    # inside a window, slot 0 (the query, or the previous window's end) is locked at every iteration
    wf = WindowFeatures(pyramid(feats, 2), torch.arange(6)[None].expand(N, -1), torch.randn(N, 8, generator=g), 1)
    tracks, _, _ = _random_model()(wf, uv[:, :6], torch.zeros(N, 6), torch.ones(N, 6, dtype=torch.bool), 3)
    assert all(torch.equal(t[:, 0], uv[:, 0]) for t in tracks)
    assert (tracks[-1][:, 1:] - uv[:, 1:6]).abs().amax() > 0.1


def test_a_short_training_run_lowers_the_loss():
    from training.refiner import example_loss, perturbed_init, run_example
    rng = np.random.default_rng(0)
    T, S, N = 10, 8, 24
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(T, 16, 12, 16, generator=g)
    start = rng.uniform(2, 10, (N, 1, 2))
    gt = (start + np.arange(S)[None, :, None] * 0.3).astype(np.float32)
    vis = rng.random((N, S)) < 0.8
    vis[:, 0] = True
    uv, lv, vi = perturbed_init(rng, gt, vis, chained=False)
    ex = dict(frames=torch.arange(S), tq=0, uv_gt=torch.from_numpy(gt), vis_gt=torch.from_numpy(vis),
              uv_init=torch.from_numpy(uv), logvar_init=torch.from_numpy(lv), vis_init=torch.from_numpy(vi),
              query_uv=torch.from_numpy(gt[:, 0]))
    torch.manual_seed(0)
    model = TrackRefiner(channels=16, blocks=1, levels=2, radius=1)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    pyr = pyramid(feats, model.levels)
    losses = []
    for _ in range(30):
        pos, bce, nll = example_loss(run_example(model, pyr, ex, 2), ex)
        loss = pos + bce + 0.1 * nll
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])


def test_weights_load_strictly_and_bad_files_are_refused(tmp_path):
    from core.errors import WeightsError
    model = _random_model()
    path = str(tmp_path / "r.pt")
    save_refiner(path, model, {"command": "test"})
    loaded, meta = load_refiner(path)
    assert meta["command"] == "test"
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    with open(path, "rb") as f:
        data = f.read()
    bad = tmp_path / "truncated.pt"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="not a readable weights file") as e:
        load_refiner(str(bad))
    assert "\n" not in str(e.value)
    ckpt = torch.load(path, weights_only=True)
    ckpt["state_dict"]["extra.weight"] = torch.zeros(1)
    torch.save(ckpt, str(tmp_path / "extra.pt"))
    with pytest.raises(WeightsError, match="extra.weight"):
        load_refiner(str(tmp_path / "extra.pt"))
    ckpt = torch.load(path, weights_only=True)
    ckpt["arch"]["channels"] = 32
    torch.save(ckpt, str(tmp_path / "arch.pt"))
    with pytest.raises(WeightsError, match="shape"):
        load_refiner(str(tmp_path / "arch.pt"))
    with pytest.raises(WeightsError, match="no weights file"):
        load_refiner(str(tmp_path / "missing.pt"))


def test_packaged_weights_improve_perturbed_tracks_on_a_clip_of_known_motion(raft_weights):
    from features.backbones import RaftEncoder
    from training.refiner import REFINER_SCENE, STRIDE, perturbed_init
    from synthetic.layers import LayeredScene, SceneConfig, TexturePool
    model, meta = load_refiner()
    assert meta["generator_version"] >= 1 and meta["command"].startswith("python -m training.refiner")
    rng = np.random.default_rng(5)
    frames = [np.full((64, 96, 3), c, np.uint8) for c in (60, 120, 200)]
    frames = [f + rng.integers(0, 50, f.shape, dtype=np.uint8) for f in frames]
    pool = TexturePool.from_arrays([np.ascontiguousarray(np.kron(f, np.ones((4, 4, 1), np.uint8))) for f in frames])
    T, S = 24, 16
    scene = LayeredScene(pool, 3, (128, 192), T, SceneConfig(**REFINER_SCENE))
    video = np.stack([scene.render(t) for t in range(T)])
    feats = RaftEncoder(raft_weights, device="cpu")(video)
    pts = rng.uniform(0, 1, (48, 2)) * (192, 128)
    gt, vis = scene.track(pts, 0)
    gt_uv = (gt - 0.5) / STRIDE
    uv, lv, vi = perturbed_init(rng, gt_uv, vis, chained=False)
    out, _, _, _ = refine_tracks(model, feats, torch.from_numpy(uv), torch.from_numpy(np.exp(lv)),
                                 torch.from_numpy(vi), torch.zeros(48, dtype=torch.long), window=S)
    e_init = np.linalg.norm(uv - gt_uv, axis=-1)[vis].mean()
    e_out = np.linalg.norm(out.numpy() - gt_uv, axis=-1)[vis].mean()
    assert e_out < 0.8 * e_init


def test_zero_update_refiner_leaves_the_pipeline_tracks_unchanged(synthetic_clip, tmp_path, raft_weights):
    """Stage 6 with a refiner that never moves a point and keeps the input visibility gives the integrator's
    tracks and visibility exactly (so the coordinate conversions to the feature grid and back are exact)."""
    from eval.datasets import TapVidVideo
    from pitrack.config import load_config
    from pitrack.tracker import Tracker
    path = str(tmp_path / "zero.pt")
    save_refiner(path, TrackRefiner(channels=16, blocks=1, levels=2, radius=1), {"command": "test"})
    clip = TapVidVideo.from_folder(synthetic_clip)
    video = clip.load_frames()
    queries = np.concatenate([np.zeros((8, 1)), clip.points[:8, 0]], 1).astype(np.float32)
    base = {"tracker": "pitrack", "tto": {"enabled": False}, "filters": {"similarity": {"enabled": False},
                                                                        "mask": {"source": "none"}},
            "visibility": {"appearance": False}}
    plain = Tracker(load_config(base), progress=False)(video, queries)
    tracker = Tracker(load_config(dict(base, refiner={"enabled": True, "weights": path, "visibility": "input",
                                                      "resolution": "160x120"})), progress=False)
    refined = tracker(video, queries)
    assert np.allclose(plain.tracks, refined.tracks, atol=1e-4)
    assert np.array_equal(plain.visible, refined.visible)
    assert tracker.stats["refiner_windows"] >= 2
    # the refiner's input is exposed as it was handed over; the zero heads give logit 0 off the query frame
    given = tracker.extras["refiner_input"]
    assert np.allclose(given["tracks"], plain.tracks, atol=1e-4) and np.array_equal(given["visible"], plain.visible)
    assert np.allclose(given["sigma"], plain.sigma, rtol=1e-4)
    assert (given["visibility_logit"][:, 0] == VIS_LOGIT_INPUT).all() and (given["visibility_logit"][:, 1:] == 0).all()


def test_refiner_variants_clamp_and_fuse_by_hand():
    from eval.refiner_variants import clamped, fused
    a, b = np.array([[0.0, 0.0], [1.0, 1.0]]), np.array([[3.0, 4.0], [1.5, 1.0]])
    # a 5 px move is cut to 2 px along its direction; a 0.5 px move stays whole
    assert np.allclose(clamped(a, b, 2.0), [[1.2, 1.6], [1.5, 1.0]])
    # σ 2 and 4: weights 1/4 and 1/16, so the mean lies 1/5 of the way to the second position
    assert np.allclose(fused(a, np.array([2.0, 2.0]), b, np.array([4.0, 4.0])), [[0.6, 0.8], [1.1, 1.0]])
