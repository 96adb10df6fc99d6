"""Synthetic clips with exactly known motion, in TAP-Vid format (``frames/``, ``tracks.npz``, ``meta.json``).

``--scene bars`` (the demo and the tests, :func:`make_clip`): a textured background translates; a textured
square in front of it translates and rotates; a textured occluding bar (darker, moving with its own
texture, as real occluders do) sweeps across. Every pixel is rendered by inverse mapping, so
ground-truth tracks and occlusion are exact.

``--scene layers`` (:func:`make_layered_clip`): ``--clips`` random scenes of :mod:`synthetic.layers`, cut from
the unlabelled clips and drawn like the scenes the learned flow head trains on
(``training.flow_uncertainty.TRAINING_SCENE``) but from other seeds; tracks exact. A benchmark with exact
ground truth, e.g. for ``eval.calibration``: what real video adds to the errors shows by comparison.

    python -m eval.synthetic --out DIR [--frames 40] [--size 320x240] [--seed 0]
    python -m eval.synthetic --out DIR --scene layers --clips 8 --frames 32 --size 854x480 [--points 100]
"""
import argparse
import os
import sys

import numpy as np

from core.coords import parse_frame_size
from core.errors import InputError, PitrackError


def smooth_texture(rng, h, w, channels=3):
    """Multi-scale smoothed noise in [0, 255], float32 [h, w, channels]; trackable at every scale."""
    import cv2
    tex = np.zeros((h, w, channels), np.float32)
    for sigma, weight in ((1.0, 0.6), (3.0, 1.0), (8.0, 1.5)):
        n = rng.standard_normal((h, w, channels)).astype(np.float32)
        n = cv2.GaussianBlur(n, (0, 0), sigma)
        tex += weight * n / (n.std() + 1e-6)
    tex -= tex.min()
    return (255 * tex / tex.max()).astype(np.float32)


def _bilinear(tex, x, y):
    import cv2
    return cv2.remap(tex, x.astype(np.float32), y.astype(np.float32), cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_REFLECT101)


def make_clip(num_frames=40, size_hw=(240, 320), seed=0, num_points=64):
    """Render a clip. Returns (video uint8 [T, H, W, 3], points float32 [N, T, 2] corner-convention px,
    occluded bool [N, T]). Half of the points lie on the background, half on the moving square."""
    rng = np.random.default_rng(seed)
    T, (H, W) = num_frames, size_hw
    margin = 64
    bg = smooth_texture(rng, H + 2 * margin + 2 * T, W + 2 * margin + 2 * T)
    side = min(H, W) // 3                     # square's side (px)
    obj = smooth_texture(rng, side, side)
    b_vel = rng.uniform(-1.2, 1.2, 2)         # background translation (px/frame)
    c0 = np.array([W * 0.35, H * 0.5])        # square centre at frame 0 (pixel-centre convention)
    c_vel = rng.uniform(-1.0, 1.0, 2) + np.array([1.2, 0.0])
    omega = rng.uniform(0.01, 0.03) * rng.choice([-1, 1])   # rad/frame
    bar_w = W // 10
    bar_tex = 0.5 * smooth_texture(rng, H, bar_w + 2)
    bar_x0, bar_vel = -bar_w, (W + bar_w) / max(T - 1, 1) * 0.9

    def bg_offset(t):
        return np.array([margin + T, margin + T]) + b_vel * t

    def square(t):
        return c0 + c_vel * t, omega * t

    ys, xs = np.mgrid[0:H, 0:W].astype(np.float32)
    video = np.zeros((T, H, W, 3), np.uint8)
    for t in range(T):
        off = bg_offset(t)
        img = _bilinear(bg, xs + off[0], ys + off[1])
        c, th = square(t)
        dx, dy = xs - c[0], ys - c[1]
        u = np.cos(th) * dx + np.sin(th) * dy            # object coordinates: R(-θ)(p - c)
        v = -np.sin(th) * dx + np.cos(th) * dy
        inside = (np.abs(u) < side / 2) & (np.abs(v) < side / 2)
        o = _bilinear(obj, u + side / 2 - 0.5, v + side / 2 - 0.5)
        img[inside] = o[inside]
        bx = bar_x0 + bar_vel * t
        x0, x1 = int(np.floor(bx)), int(np.floor(bx + bar_w))
        if x1 > 0 and x0 < W:
            # the bar's texture moves with it: column j of the frame shows bar column j − bx
            cols = xs[:, max(0, x0):min(W, x1)] - bx
            img[:, max(0, x0):min(W, x1)] = _bilinear(bar_tex, cols, ys[:, max(0, x0):min(W, x1)])
        video[t] = np.clip(img, 0, 255).astype(np.uint8)

    n_bg, n_obj = num_points // 2, num_points - num_points // 2
    pts = np.zeros((num_points, T, 2), np.float32)
    on_obj = np.zeros(num_points, bool)
    on_obj[n_bg:] = True
    # background points: pixel positions at frame 0 away from the square; object points: object coords
    c_start, _ = square(0)
    bg_xy = []
    while len(bg_xy) < n_bg:
        p = rng.uniform([8, 8], [W - 8, H - 8])
        if np.max(np.abs(p - c_start)) > side * 0.75:
            bg_xy.append(p)
    bg_xy = np.array(bg_xy)
    obj_uv = rng.uniform(-side / 2 + 4, side / 2 - 4, (n_obj, 2))
    occluded = np.zeros((num_points, T), bool)
    for t in range(T):
        pts[:n_bg, t] = bg_xy - b_vel * t
        c, th = square(t)
        R = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
        pts[n_bg:, t] = c + obj_uv @ R.T
        # a background point is hidden by the square
        d = pts[:n_bg, t] - c
        u = d @ R                                   # R(-θ) d
        occluded[:n_bg, t] = np.all(np.abs(u) < side / 2 + 0.5, axis=1)
        bx = bar_x0 + bar_vel * t
        x = pts[:, t, 0]
        occluded[:, t] |= (x >= np.floor(bx) - 0.5) & (x < np.floor(bx + bar_w) + 0.5)
        occluded[:, t] |= (x < -0.5) | (x > W - 0.5) | (pts[:, t, 1] < -0.5) | (pts[:, t, 1] > H - 0.5)
    points = pts + 0.5  # pixel-centre -> corner convention
    keep = ~np.all(occluded, axis=1)
    return video, points[keep], occluded[keep]


LAYERED_SEED_BASE = 5_000_000      # scene k of --seed s is LayeredScene(seed = base + 1000·s + k)


def make_layered_clip(pool, seed, num_frames=32, size_hw=(480, 854), num_points=100):
    """A random layered scene (``TRAINING_SCENE``) rendered with exact tracks of ``num_points`` query points,
    each drawn uniformly over frames and positions. Returns (video uint8 [T, H, W, 3], points float32
    [N, T, 2] corner-convention px, occluded bool [N, T])."""
    from training.flow_uncertainty import TRAINING_SCENE
    from synthetic.layers import LayeredScene, SceneConfig
    H, W = size_hw
    scene = LayeredScene(pool, seed, (H, W), num_frames, SceneConfig(**TRAINING_SCENE))
    rng = np.random.default_rng(seed)
    tq = rng.integers(0, num_frames, num_points)
    xy = rng.uniform([0, 0], [W, H], (num_points, 2))
    points = np.zeros((num_points, num_frames, 2), np.float32)
    occluded = np.zeros((num_points, num_frames), bool)
    for t in np.unique(tq):
        sel = tq == t
        points[sel], visible = scene.track(xy[sel], int(t))
        occluded[sel] = ~visible
    video = np.stack([scene.render(t) for t in range(num_frames)])
    keep = ~np.all(occluded, axis=1)
    return video, points[keep], occluded[keep]


def write_clip(folder, video, points, occluded, name="synthetic"):
    """Write a clip as a TAP-Vid format folder."""
    import cv2
    from core.atomic import save_json, save_npz
    os.makedirs(os.path.join(folder, "frames"), exist_ok=True)
    for t, f in enumerate(video):
        cv2.imwrite(os.path.join(folder, "frames", f"{t:05d}.png"), f[..., ::-1])
    save_npz(os.path.join(folder, "tracks.npz"), points=points, occluded=occluded)
    T, H, W = video.shape[:3]
    save_json(os.path.join(folder, "meta.json"), {"name": name, "width": W, "height": H, "num_frames": T,
                                                   "num_tracks": int(points.shape[0]),
                                                   "source": "pitrack eval.synthetic"})


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m eval.synthetic", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--frames", type=int, default=40)
    p.add_argument("--size", default="320x240", help="WxH")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scene", choices=["bars", "layers"], default="bars")
    p.add_argument("--clips", type=int, default=1, help="layers: clips written as DIR/layersNN")
    p.add_argument("--points", type=int, default=100, help="layers: query points per clip")
    args = p.parse_args(argv)
    try:
        h, w = parse_frame_size(args.size)
        if args.frames < 2 or args.clips < 1 or args.points < 1 or args.seed < 0:
            raise InputError("--frames must be >= 2, --clips and --points >= 1, --seed >= 0")
        if args.scene == "bars":
            video, points, occluded = make_clip(args.frames, (h, w), args.seed)
            write_clip(args.out, video, points, occluded, name=os.path.basename(os.path.normpath(args.out)))
            print(f"wrote {args.out}: {args.frames} frames {w}x{h}, {points.shape[0]} tracks", file=sys.stderr)
            return 0
        from synthetic.layers import TexturePool, default_texture_folders
        pool = TexturePool(default_texture_folders(), seed=args.seed)
        for k in range(args.clips):
            video, points, occluded = make_layered_clip(pool, LAYERED_SEED_BASE + 1000 * args.seed + k, args.frames,
                                                        (h, w), args.points)
            name = f"layers{k:02d}"
            write_clip(os.path.join(args.out, name), video, points, occluded, name=name)
            print(f"wrote {os.path.join(args.out, name)}: {args.frames} frames {w}x{h}, {points.shape[0]} tracks",
                  file=sys.stderr)
    except PitrackError as e:
        print(f"eval.synthetic: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    from core.errors import run_command
    sys.exit(run_command(main, "eval.synthetic"))
