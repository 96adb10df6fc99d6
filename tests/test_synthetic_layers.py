"""synthetic.layers: the layered scene generator's frames agree with its ground-truth flow, tracks and occlusion."""
import dataclasses
import math
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from eval.synthetic import smooth_texture
from synthetic.layers import LayeredScene, SceneConfig, TexturePool, sample_pair

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = (112, 128)                                   # (H, W): small, so the tests stay fast
STILL = SceneConfig(photometric=False)
TRANSLATION = dataclasses.replace(              # every sprite: position = p_mid + v (t - t_mid), nothing else
    STILL, max_acceleration=0.0, wobble_px=0.0, max_rotation_deg=0.0, max_log_scale_rate=0.0, max_shear=0.0,
    max_perspective=0.0, nonrigid_fraction=0.0, big_occluder_prob=0.0)


@pytest.fixture(scope="module")
def pool():
    rng = np.random.default_rng(0)
    return TexturePool.from_arrays([smooth_texture(rng, 120, 160).astype(np.uint8) for _ in range(6)])


def same_layer_around(top, radius):
    """bool [H, W]: the (2r+1)^2 window around each pixel holds one layer only."""
    kernel = np.ones((2 * radius + 1, 2 * radius + 1), np.uint8)
    t = top.astype(np.uint8)
    low = cv2.erode(t, kernel, borderType=cv2.BORDER_REPLICATE)
    return low == cv2.dilate(t, kernel, borderType=cv2.BORDER_REPLICATE)


def warp_back(frame2, flow):
    """Frame 2 sampled bilinearly at x + flow(x): float32 [H, W, 3]."""
    H, W = flow.shape[1:]
    ys, xs = np.mgrid[0:H, 0:W].astype(np.float32)
    return cv2.remap(frame2.astype(np.float32), xs + flow[0], ys + flow[1], cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_REPLICATE)


def layer_at_target(scene, t2, flow, radius):
    """Layer at the rounded target pixel in t2, and whether its neighbourhood there holds that layer only."""
    H, W = flow.shape[1:]
    ys, xs = np.mgrid[0:H, 0:W]
    ty = np.clip(np.rint(ys + flow[1]).astype(int), 0, H - 1)
    tx = np.clip(np.rint(xs + flow[0]).astype(int), 0, W - 1)
    top2 = scene.top_layer(t2)
    return top2[ty, tx], same_layer_around(top2, radius)[ty, tx]


@pytest.mark.parametrize("gap", [1, 16])
def test_frames_agree_with_flow(pool, gap):
    config = dataclasses.replace(STILL, big_occluder_prob=1.0, nonrigid_fraction=0.5)
    scene = LayeredScene(pool, 3, SIZE, 40, config)
    t1, t2 = 12, 12 + gap
    frame1 = scene.render(t1).astype(np.float32)
    frame2 = scene.render(t2)
    flow, occlusion = scene.flow(t1, t2)
    top1 = scene.top_layer(t1)
    layer2, clean2 = layer_at_target(scene, t2, flow, 2)
    clean = (occlusion == 0) & same_layer_around(top1, 2) & clean2 & (layer2 == top1)
    error = np.abs(warp_back(frame2, flow) - frame1).mean(-1)
    assert clean.sum() > 2000
    assert error[clean].mean() < 3.0, error[clean].mean()
    # the check can fail: the same pixels with a flow 3 px off, and the occluded pixels, disagree
    wrong = np.abs(warp_back(frame2, flow + np.array([3.0, -2.0], np.float32)[:, None, None]) - frame1).mean(-1)
    assert wrong[clean].mean() > 10.0, wrong[clean].mean()
    H, W = SIZE
    ys, xs = np.mgrid[0:H, 0:W]
    inside = (xs + flow[0] >= 0) & (xs + flow[0] <= W - 1) & (ys + flow[1] >= 0) & (ys + flow[1] <= H - 1)
    hidden = (occlusion > 0.99) & inside & same_layer_around(top1, 2)
    if gap >= 16:                                   # one frame apart, few pixels are hidden
        assert hidden.sum() > 200, hidden.sum()
        assert error[hidden].mean() > 10.0, error[hidden].mean()


def sprite_points(scene, t, layer, count=20, seed=0):
    """Corner-convention points of frame t well inside ``layer``."""
    top = scene.top_layer(t)
    ys, xs = np.nonzero((top == layer) & same_layer_around(top, 2))
    pick = np.random.default_rng(seed).choice(len(xs), min(count, len(xs)), replace=False)
    return np.stack([xs[pick], ys[pick]], 1) + 0.5


def visible_sprites(scene, t):
    top = scene.top_layer(t)
    return [l for l in range(1, len(scene.layers)) if ((top == l) & same_layer_around(top, 2)).sum() >= 20]


def test_translating_sprite_tracks_follow_their_velocity(pool):
    scene = LayeredScene(pool, 5, SIZE, 32, TRANSLATION)
    tq = 10
    layers = visible_sprites(scene, tq)
    assert layers
    frames = np.arange(0, 32, 3)
    for layer in layers:
        points = sprite_points(scene, tq, layer)
        assert (scene.top_layer_at(points, tq) == layer).all()
        tracks, _ = scene.track(points, tq, frames)
        v = scene.layers[layer].motion.velocity
        expected = points[:, None, :] + v[None, None, :] * (frames - tq)[None, :, None]
        np.testing.assert_allclose(tracks, expected, atol=1e-3)


def test_rotating_zooming_sprite_tracks_match_hand_computed_motion(pool):
    config = dataclasses.replace(TRANSLATION, max_rotation_deg=2.0, max_log_scale_rate=0.015)
    scene = LayeredScene(pool, 6, SIZE, 32, config)
    tq, frames = 8, np.array([0.0, 5.0, 8.0, 13.5, 31.0])
    for layer in visible_sprites(scene, tq):
        m = scene.layers[layer].motion
        assert abs(m.angular_velocity) > 0 and abs(m.log_scale_rate) > 0

        def centre(t):
            return m.position_mid + m.velocity * (t - m.t_mid)

        def angle(t):
            return m.angle_mid + m.angular_velocity * (t - m.t_mid)

        def scale(t):
            return math.exp(m.log_scale_rate / m.log_scale_freq * math.sin(m.log_scale_freq * (t - m.t_mid)))

        points = sprite_points(scene, tq, layer)
        tracks, _ = scene.track(points, tq, frames)
        for i, t in enumerate(frames):
            a = angle(t) - angle(tq)
            rotation = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
            # pixel-centre convention: subtract 0.5, rotate and scale about the sprite's centre, add 0.5
            expected = centre(t) + (points - 0.5 - centre(tq)) @ rotation.T * (scale(t) / scale(tq)) + 0.5
            np.testing.assert_allclose(tracks[:, i], expected, atol=1e-3)


def test_tracks_follow_the_full_homography(pool):
    scene = LayeredScene(pool, 7, SIZE, 32, dataclasses.replace(STILL, nonrigid_fraction=0.0))
    tq, frames = 16, np.arange(32)
    for layer in visible_sprites(scene, tq):
        assert np.any(scene.layers[layer].motion.perspective != 0)
        points = sprite_points(scene, tq, layer)
        tracks, _ = scene.track(points, tq, frames)
        for i, t in enumerate(frames):
            h = scene.layers[layer].matrix(t) @ np.linalg.inv(scene.layers[layer].matrix(tq))
            p = np.concatenate([points - 0.5, np.ones((len(points), 1))], 1) @ h.T
            np.testing.assert_allclose(tracks[:, i], p[:, :2] / p[:, 2:] + 0.5, atol=1e-3)


def test_big_occluder_hides_points_and_leaving_points_are_invisible(pool):
    scene = LayeredScene(pool, 11, SIZE, 40, dataclasses.replace(STILL, big_occluder_prob=1.0))
    assert scene.has_big_occluder
    occluder = len(scene.layers) - 1
    ys, xs = np.mgrid[4:SIZE[0]:8, 4:SIZE[1]:8]
    points = np.stack([xs.ravel(), ys.ravel()], 1) + 0.5
    points = points[scene.top_layer_at(points, 0) == 0]                  # background points of frame 0
    tracks, visible = scene.track(points, 0)
    hidden_by_occluder = 0
    H, W = SIZE
    inside = (tracks[..., 0] >= 0) & (tracks[..., 0] <= W) & (tracks[..., 1] >= 0) & (tracks[..., 1] <= H)
    for t in range(scene.num_frames):
        top = scene.top_layer(t)
        own = same_layer_around(top, 2)
        ix = np.clip(np.floor(tracks[:, t, 0]).astype(int), 0, W - 1)
        iy = np.clip(np.floor(tracks[:, t, 1]).astype(int), 0, H - 1)
        under = inside[:, t] & own[iy, ix] & (top[iy, ix] == occluder)
        assert not visible[under, t].any()
        hidden_by_occluder += under.sum()
        clear = inside[:, t] & own[iy, ix] & (top[iy, ix] == 0)
        assert visible[clear, t].all()
    assert hidden_by_occluder > 20
    assert (~inside).any() and not visible[~inside].any()


def test_points_leaving_the_frame_are_invisible_but_tracked(pool):
    scene = LayeredScene(pool, 2, SIZE, 40, TRANSLATION)
    tq, frames = 20, np.arange(-400.0, 400.0, 8.0)                 # any t is allowed: far enough to leave
    layer = visible_sprites(scene, tq)[0]
    points = sprite_points(scene, tq, layer, 5)
    tracks, visible = scene.track(points, tq, frames)
    H, W = SIZE
    outside = (tracks[..., 0] < 0) | (tracks[..., 0] > W) | (tracks[..., 1] < 0) | (tracks[..., 1] > H)
    assert outside[:, 0].all() and outside[:, -1].all() and not visible[outside].any()
    assert visible.any()
    v = scene.layers[layer].motion.velocity                          # positions stay exact out there
    np.testing.assert_allclose(tracks[:, -1], points + v * (frames[-1] - tq), atol=1e-3)


def test_static_scene_without_overlap_has_no_occlusion(pool):
    config = dataclasses.replace(TRANSLATION, mean_speed=0.0, camera_max_speed=0.0, camera_max_zoom_rate=0.0,
                                 camera_max_rotation_deg=0.0, num_sprites=(1, 1))
    scene = LayeredScene(pool, 4, SIZE, 16, config)
    flow, occlusion = scene.flow(3, 12)
    top = scene.top_layer(3)
    assert (top == 1).sum() > 50
    assert np.abs(flow).max() < 1e-3
    assert occlusion[top == 1].max() == 0
    # background pixels are only covered by the sprite's soft edge (alpha <= 0.5), and not at all 5 px away
    assert occlusion.max() <= 0.5
    assert occlusion[same_layer_around(top, 5)].max() == 0


def test_same_seed_same_scene(pool):
    a, b = (LayeredScene(pool, 9, SIZE, 20) for _ in range(2))
    c = LayeredScene(pool, 10, SIZE, 20)
    for t in (0, 7, 12.5):
        assert np.array_equal(a.render(t), b.render(t))
    assert not np.array_equal(a.render(7), c.render(7))
    fa, fb = a.flow(3, 9), b.flow(3, 9)
    assert np.array_equal(fa[0], fb[0]) and np.array_equal(fa[1], fb[1])
    points = np.array([[10.5, 20.5], [60.0, 50.0], [100.2, 90.7]])
    ta, tb = a.track(points, 5), b.track(points, 5)
    assert np.array_equal(ta[0], tb[0]) and np.array_equal(ta[1], tb[1])
    p, q, r = sample_pair(pool, 1, SIZE), sample_pair(pool, 1, SIZE), sample_pair(pool, 2, SIZE)
    assert all(np.array_equal(p[k], q[k]) for k in p)
    assert not np.array_equal(p["frame1"], r["frame1"])


def test_nonrigid_warp_inverse(pool):
    scene = LayeredScene(pool, 12, SIZE, 32, dataclasses.replace(STILL, nonrigid_fraction=1.0))
    rng = np.random.default_rng(0)
    warped = [layer for layer in scene.layers[1:] if layer.warp is not None]
    assert warped
    largest = 0.0
    for layer in warped:
        h, w = layer.alpha.shape
        for t in (0.0, 9.0, 23.5):
            ux, uy = rng.uniform(0, w - 1, 500), rng.uniform(0, h - 1, 500)
            dx, dy = layer.warp.displacement(ux, uy, t)
            largest = max(largest, np.hypot(dx, dy).max())
            assert np.hypot(dx, dy).max() <= 3.0
            x, y = layer.to_image(ux, uy, t)
            bx, by = layer.to_canonical(x, y, t)
            fx, fy = layer.to_image(bx, by, t)
            assert np.hypot(fx - x, fy - y).max() < 0.05
            assert np.hypot(bx - ux, by - uy).max() < 0.05
    assert largest > 0.3                                 # the warp is really there


def test_sample_pair_contract_and_forward_backward_consistency(pool):
    pair = sample_pair(pool, 21, SIZE, gap=4, config=STILL)
    H, W = SIZE
    for key in ("frame1", "frame2"):
        assert pair[key].shape == (H, W, 3) and pair[key].dtype == np.uint8
    for key in ("flow_fwd", "flow_bwd"):
        assert pair[key].shape == (2, H, W) and pair[key].dtype == np.float32
    for key in ("occ_fwd", "occ_bwd"):
        assert pair[key].shape == (H, W) and pair[key].dtype == np.float32
        assert pair[key].min() >= 0 and pair[key].max() <= 1
    assert pair["gap"] == 4 and abs(pair["t2"] - pair["t1"]) == 4
    drawn = sample_pair(pool, 22, SIZE)
    assert drawn["gap"] in (1, 2, 4, 8, 16, 32, 48) and abs(drawn["t2"] - drawn["t1"]) == drawn["gap"]

    scene = LayeredScene(pool, pair["scene_seed"], SIZE, 64, STILL)
    assert np.array_equal(scene.render(pair["t1"]), pair["frame1"])
    fwd, bwd = pair["flow_fwd"], pair["flow_bwd"]
    top1 = scene.top_layer(pair["t1"])
    layer2, clean2 = layer_at_target(scene, pair["t2"], fwd, 1)
    ys, xs = np.mgrid[0:H, 0:W].astype(np.float32)
    on_grid = (xs + fwd[0] >= 0) & (xs + fwd[0] <= W - 1) & (ys + fwd[1] >= 0) & (ys + fwd[1] <= H - 1)
    clean = (pair["occ_fwd"] == 0) & same_layer_around(top1, 1) & clean2 & (layer2 == top1) & on_grid
    assert clean.sum() > 2000
    back = np.stack([cv2.remap(np.ascontiguousarray(b), xs + fwd[0], ys + fwd[1], cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_REPLICATE) for b in bwd])
    residual = np.hypot(*(fwd + back))
    assert residual[clean].max() < 0.05, residual[clean].max()
    hidden = (pair["occ_fwd"] > 0.99) & on_grid & (layer2 != top1)
    assert hidden.sum() > 20 and np.median(residual[hidden]) > 1.0    # hidden pixels do not come back


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "synthetic.layers", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("args", [["--size", "0x5"], ["--frames", "-3"], ["--frames", "many"],
                                  ["--textures", "/nonexistent/folder"], ["--seed", "1"], ["--out", "x.avi"]])
def test_cli_bad_input_one_line_exit_2(tmp_path, args):
    out = ["--out", str(tmp_path / "p.mp4")] if "--out" not in args and args != ["--seed", "1"] else []
    r = run_cli(*out, *args, *(["--textures", str(tmp_path)] if "--textures" not in args else []))
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_cli_writes_preview(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(3):
        cv2.imwrite(str(tmp_path / f"{i:05d}.png"), smooth_texture(rng, 90, 120).astype(np.uint8))
    out = tmp_path / "preview.mp4"
    r = run_cli("--out", str(out), "--frames", "4", "--size", "64x48", "--textures", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert out.stat().st_size > 0


def test_layered_tapvid_clip_tracks_agree_with_its_flow(pool, tmp_path):
    """eval.synthetic's layered clip: each query sits on its drawn position at its own frame, and a track's
    step between two frames where it stays visible is the scene's exact flow at that point; the TAP-Vid
    folder reads back unchanged."""
    from eval.datasets import TapVidVideo
    from eval.synthetic import make_layered_clip, write_clip
    from flow.occlusion import bilinear_sample
    from training.flow_uncertainty import TRAINING_SCENE
    video, points, occluded = make_layered_clip(pool, 11, num_frames=6, size_hw=SIZE, num_points=40)
    assert video.shape == (6,) + SIZE + (3,) and points.shape[1:] == (6, 2) and occluded.shape == points.shape[:2]
    rng = np.random.default_rng(11)                            # the clip's draws: query frames, then positions
    tq, xy = rng.integers(0, 6, 40), rng.uniform([0, 0], [SIZE[1], SIZE[0]], (40, 2))
    assert len(points) == 40
    np.testing.assert_allclose(points[np.arange(40), tq], xy, atol=1e-4)
    assert not occluded[np.arange(40), tq].any()
    scene = LayeredScene(pool, 11, SIZE, 6, SceneConfig(**TRAINING_SCENE))
    flow, _ = scene.flow(1, 3)
    both = ~occluded[:, 1] & ~occluded[:, 3]
    assert both.sum() >= 10
    p = points[both, 1] - 0.5                                  # pixel-centre convention
    step = bilinear_sample(flow, p[:, 0], p[:, 1]).T
    assert np.median(np.linalg.norm(points[both, 3] - points[both, 1] - step, axis=1)) < 0.05
    write_clip(str(tmp_path / "clip"), video, points, occluded)
    back = TapVidVideo.from_folder(str(tmp_path / "clip"))
    np.testing.assert_array_equal(back.points, points)
    np.testing.assert_array_equal(back.occluded, occluded)
    np.testing.assert_array_equal(back.load_frames(), video)


@pytest.mark.parametrize("args", [["--size", "5x5"], ["--size", "wide"], ["--scene", "layers", "--clips", "0"],
                                  ["--scene", "layers", "--frames", "1"]])
def test_eval_synthetic_bad_input_one_line_exit_2(tmp_path, args):
    r = subprocess.run([sys.executable, "-m", "eval.synthetic", "--out", str(tmp_path / "c"), *args], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "c").exists()


FOOTAGE = dict(motion_blur_prob=1.0, shutter=(0.8, 0.8), shading_gradient=0.5, light_blobs=(2, 2), jpeg_prob=1.0)


def test_footage_effects_leave_ground_truth_and_layers_unchanged(pool):
    """Finite shutter, turning shading, moving lights and JPEG change the pixels but not one layer: flow,
    occlusion and tracks of a scene with them equal those of the same seed without them."""
    plain = dataclasses.replace(STILL, photometric=True, noise_sigma=(0.0, 0.0), blur_prob=0.0)
    a, b = LayeredScene(pool, 7, SIZE, 8, plain), LayeredScene(pool, 7, SIZE, 8, dataclasses.replace(plain, **FOOTAGE))
    assert b.shutter == 0.8 and len(b.light_blobs) == 2 and b.jpeg_quality >= 50
    for (fa, oa), (fb, ob) in zip([a.flow(1, 5), a.flow(5, 1)], [b.flow(1, 5), b.flow(5, 1)]):
        np.testing.assert_array_equal(fa, fb)
        np.testing.assert_array_equal(oa, ob)
    q = np.array([[20.5, 30.5], [64.0, 56.0]])
    np.testing.assert_array_equal(a.track(q, 2)[0], b.track(q, 2)[0])
    assert np.abs(a.render(3).astype(float) - b.render(3)).mean() > 2.0


def test_finite_shutter_frame_is_the_mean_over_the_exposure(pool):
    """With a shutter s, frame t is the mean of the composites at t + s (k / (n - 1) - 1/2), k = 0 … n - 1."""
    fast = dataclasses.replace(STILL, mean_speed=15.0, max_speed=30.0)
    cfg = dataclasses.replace(fast, photometric=True, noise_sigma=(0.0, 0.0), blur_prob=0.0,
                              brightness_drift=0.0, contrast_drift=0.0, motion_blur_prob=1.0, shutter=(0.6, 0.6))
    scene = LayeredScene(pool, 3, SIZE, 8, cfg)
    instants = scene.exposure_instants(4)
    np.testing.assert_allclose(instants, [3.7, 3.85, 4.0, 4.15, 4.3])
    mean = np.mean([LayeredScene(pool, 3, SIZE, 8, fast).composite(s) for s in instants], 0)
    assert np.abs(scene.render(4) - mean).max() <= 0.51
    assert np.abs(scene.render(4).astype(float) - scene.composite(4)).max() > 5    # the sprites do smear


def test_moving_light_and_turning_shading_are_the_stated_gains(pool):
    """A light blob multiplies the frame by exp(g exp(-|x - c(t)|² / 2r²)) around its moving centre; a layer's
    shading is exp(s (cos θ û + sin θ v̂)) over its texture scaled to [-1, 1] (1 at the centre, e^±s at edges)."""
    from synthetic.layers import LayerAppearance
    cfg = dataclasses.replace(STILL, photometric=True, noise_sigma=(0.0, 0.0), blur_prob=0.0, light_blobs=(1, 1))
    scene = LayeredScene(pool, 5, SIZE, 8, cfg)
    b = scene.light_blobs[0]
    cx, cy = b["centre"] + b["velocity"] * (6.0 - b["t_mid"])
    light = scene.light(6)
    i, j = int(round(cy)), int(round(cx))
    if 0 <= i < SIZE[0] and 0 <= j < SIZE[1]:
        d2 = (j - cx) ** 2 + (i - cy) ** 2
        assert light[i, j] == pytest.approx(math.exp(b["gain"] * math.exp(-d2 / (2 * b["radius"] ** 2))), rel=1e-4)
    assert light[0, 0] == pytest.approx(math.exp(b["gain"] * math.exp(-(cx ** 2 + cy ** 2) / (2 * b["radius"] ** 2))), rel=1e-4)
    unlit = LayeredScene(pool, 5, SIZE, 8, dataclasses.replace(cfg, light_blobs=(0, 0))).composite(6)
    assert np.abs(scene.render(6) - np.clip(unlit * light[..., None], 0, 255)).max() <= 0.51
    a = LayerAppearance(0.0, 0.0, 0.1, np.zeros(2), shading_amp=0.3, shading_angle=0.0, shading_rate=0.1)
    x, y = np.array([0.0, 50.0, 100.0]), np.array([20.0, 20.0, 20.0])
    np.testing.assert_allclose(a.shading(x, y, (41, 101), 0.0), np.exp([-0.3, 0.0, 0.3]), rtol=1e-6)
    g = a.shading(np.array([50.0]), np.array([40.0]), (41, 101), 5 * math.pi)          # θ = π/2: along v̂, at the bottom
    np.testing.assert_allclose(g, [math.exp(0.3)], rtol=1e-6)
