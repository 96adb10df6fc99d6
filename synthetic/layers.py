"""Procedural 2.5-D layered synthetic video with exact ground truth, generated on the fly from a seed.

A scene is a stack of layers, back to front: a background (a real frame, magnified, moving like a
camera; mirrored beyond its edges) and K sprites (crops of other frames cut out by an ellipse, polygon/star
or noise-blob alpha mask; drawn independently, so their depth order is random), optionally topped by a big
occluder (40-80% of the frame side) that crosses the frame. Everything is drawn from
``np.random.default_rng(seed)`` when the scene is built; every frame, flow and track is then a
closed-form function of t, so any (even fractional) t renders on its own. Used to train occlusion /
uncertainty heads for optical flow and a track refiner on CPU, without stored clips.

Coordinates. Layer maps and flows use the pixel-centre convention (pixel (i, j) has its centre at
x = j, y = i; the frame spans [-0.5, W-0.5] x [-0.5, H-0.5]), as ``flow/occlusion.py``. Tracks and
query points use the corner convention of ``core/coords.py`` (centre of pixel (i, j) at (j+0.5, i+0.5)).
Canonical coordinates are a layer's texture pixel coordinates (pixel-centre convention).

Layer map. Layer l sends canonical u to the image at time t by
    Phi_l(u, t) = A_l(t) . (u + D_l(u, t)),
    A_l(t) = T(position(t)) . P . R(angle(t)) . S(exp(log_scale(t))) . Sh(shear) . T(-anchor)
(3x3 homogeneous; P = [[1,0,0],[0,1,0],[gx,gy,1]] a mild perspective about the sprite centre). With
d = t - t_mid (t_mid the middle of the clip): position(t) = p_mid + v d + a d^2 + w (sin(f d + phi) - sin phi),
angle(t) = angle_mid + omega d, log_scale(t) = (rate / f_s) sin(f_s d). D_l is an optional smooth
non-rigid displacement (a cubic Bezier surface on a 4x4 grid of control displacements oscillating in t,
at most ``nonrigid_max_px``); its inverse is found by fixed-point iteration u <- A^-1 x - D(u, t).

Ground truth (exact up to float32 rounding and the fixed-point inverse: < 1e-3 px):
  top(t, x)   the front-most layer whose alpha at x exceeds 0.5 (background where none);
  flow        F(x) = Phi_l(Phi_l^-1(x, t1), t2) - x for l = top(t1, x);
  occlusion   1 if x + F(x) leaves the frame, else min(1, sum of alpha_m(t2, x + F(x)) over layers m in
              front of l) -- a soft value in [0, 1]; a background pixel right next to a sprite's
              soft edge gets that edge's alpha (< 0.5) even in a static scene;
  tracks      the same map for query points, visible = inside the frame and front alpha < 0.5.
Layer alpha at an image point is its canonical mask sampled bilinearly at Phi^-1(x); rendering samples
texture and alpha the same way (cv2.remap) and composites back to front, then (if photometric
effects are on) applies per-layer brightness/contrast drift, a per-scene Gaussian blur and noise. Switched
on by their ``SceneConfig`` fields, real footage's other departures from brightness constancy: a finite
shutter (the frame is the mean of renders over the exposure centred on t, so fast layers smear along their
motion), a shading across each layer whose direction turns (a surface turning under a fixed light), soft
lights and shadows moving over the image independently of the layers, and JPEG compression. None of them
moves a layer, so the ground truth is the same with and without them.

Cost at 256x256, default config, real textures, one thread, measured on a slow 2-core VM that was also
running a benchmark (CPU time): about 10 ms per frame rendered at a new t (2.4 ms of it drawing the
Gaussian noise), 5 ms per scene construction, 40 ms per ``sample_pair`` (scene, two renders, flow and
occlusion both ways; a quarter of it the exact occlusion). A ``TexturePool`` of the three 100-frame clips at
long side 384 holds about 75 MB.

    python -m synthetic.layers --out preview.mp4 [--seed 0] [--frames 48] [--size 256x256] [--textures DIR ...]
"""
import argparse
import dataclasses
import math
import os
import sys

import cv2
import numpy as np

from core.coords import parse_frame_size
from core.errors import InputError, PitrackError

GENERATOR_VERSION = 2        # 2: finite shutter, rotating layer shading, moving light blobs, JPEG (all off by default)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
DEFAULT_GAPS = (1, 2, 4, 8, 16, 32, 48)
DEFAULT_NUM_FRAMES = 64
_REMAP_COLS = 256          # cv2.remap maps must be < 32767 on a side: point lists go through as rows of 256
_CHUNK = 8192              # points per block of the fixed-point iteration
_FAR = -1.0e4              # canonical position given to points behind a homography's horizon (alpha 0 there)


def default_texture_folders():
    """Frame folders under ``$PITRACK_DATA``, else ``<repo>/../shared/data/videos`` (unlabelled clips only)."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    root = os.path.abspath(os.environ.get("PITRACK_DATA") or os.path.join(repo, "..", "shared", "data", "videos"))
    folders = sorted(os.path.join(root, d) for d in os.listdir(root)) if os.path.isdir(root) else []
    folders = [f for f in folders if os.path.isdir(f)]
    if not folders:
        raise InputError(f"no texture folders under {root}; set $PITRACK_DATA to a folder of frame folders")
    return folders


class TexturePool:
    """uint8 RGB frames [h, w, 3] that textures are cut from, each resized so its long side is ``long_side``.

    ``max_frames_per_folder`` bounds memory: a folder with more images keeps every k-th one
    (k = ceil(n / max)), starting at an offset drawn from ``seed``. About 250 KB per frame at 384x216.
    """

    def __init__(self, folders, long_side=384, max_frames_per_folder=None, seed=0):
        rng = np.random.default_rng(seed)
        folders = list(folders)
        if not folders:
            raise InputError("no texture folders given")
        self.frames = []
        for folder in folders:
            names = sorted(n for n in os.listdir(folder) if n.lower().endswith(IMAGE_EXTENSIONS)) \
                if os.path.isdir(folder) else []
            if not names:
                raise InputError(f"texture folder {folder} has no .jpg/.png images")
            if max_frames_per_folder and len(names) > max_frames_per_folder:
                step = -(-len(names) // int(max_frames_per_folder))
                names = names[int(rng.integers(step))::step]
            for name in names:
                bgr = cv2.imread(os.path.join(folder, name), cv2.IMREAD_COLOR)
                if bgr is None:
                    raise InputError(f"cannot read image {os.path.join(folder, name)}")
                rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                f = long_side / max(rgb.shape[:2])
                size = (max(1, round(rgb.shape[1] * f)), max(1, round(rgb.shape[0] * f)))
                self.frames.append(cv2.resize(rgb, size, interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR))

    @classmethod
    def from_arrays(cls, frames):
        """A pool holding ``frames`` (uint8 [h, w, 3] RGB arrays) as they are."""
        pool = cls.__new__(cls)
        pool.frames = [np.ascontiguousarray(f) for f in frames]
        if not pool.frames or any(f.dtype != np.uint8 or f.ndim != 3 or f.shape[2] != 3 for f in pool.frames):
            raise InputError("TexturePool.from_arrays needs a non-empty list of uint8 [h, w, 3] arrays")
        return pool

    def __len__(self):
        return len(self.frames)


@dataclasses.dataclass(frozen=True)
class SceneConfig:
    """Ranges the scene's parameters are drawn from. Speeds and distances are for a 256-px frame side and
    scale with min(H, W); a zero maximum switches the effect off."""
    num_sprites: tuple = (2, 8)               # inclusive range of K
    sprite_size: tuple = (0.1, 0.5)           # sprite side / frame side
    big_occluder_prob: float = 0.4
    big_occluder_size: tuple = (0.4, 0.8)
    mean_speed: float = 2.0                   # px/frame; speeds ~ Gamma(2), capped at max_speed along the path
    max_speed: float = 6.0
    max_acceleration: float = 0.015           # px/frame^2
    wobble_px: float = 6.0                    # amplitude of the sinusoidal part of the path
    max_rotation_deg: float = 2.0             # per frame
    max_log_scale_rate: float = 0.015         # per frame
    max_shear: float = 0.1
    max_perspective: float = 0.08             # |gx x + gy y| at the sprite's edge
    nonrigid_fraction: float = 0.5            # share of sprites with a non-rigid warp
    nonrigid_max_px: float = 3.0
    camera_max_speed: float = 2.0
    camera_max_rotation_deg: float = 0.2
    camera_max_zoom_rate: float = 0.01        # log-scale per frame
    photometric: bool = True                  # master switch of the four effects below
    brightness_drift: float = 10.0            # grey levels
    contrast_drift: float = 0.1               # log-gain
    noise_sigma: tuple = (0.0, 4.0)           # grey levels
    blur_prob: float = 0.5
    blur_sigma: tuple = (0.0, 1.0)            # px
    # Effects of real footage that break brightness constancy or smear along the motion; off by default, so
    # version-1 scenes render unchanged. Their parameters come from a second stream, rng([seed, 1]).
    motion_blur_prob: float = 0.0             # share of scenes filmed with a finite shutter
    shutter: tuple = (0.3, 1.0)               # exposure, as a fraction of the frame interval
    motion_blur_samples: int = 5              # renders averaged over the exposure
    shading_gradient: float = 0.0             # max log-gain across a layer of a linear shading whose direction turns
    light_blobs: tuple = (0, 0)               # inclusive range of soft lights/shadows moving over the image
    light_blob_gain: float = 0.5              # max |log-gain| at a blob's centre
    jpeg_prob: float = 0.0                    # share of scenes JPEG-compressed
    jpeg_quality: tuple = (50, 95)


def _apply_homography(m, x, y):
    """3x3 ``m`` applied to points (x, y) (arrays that broadcast, e.g. a row and a column of a pixel box).
    Points at or behind the horizon (w <= 1e-6) go to _FAR. Keeps the points' float dtype."""
    m = np.asarray(m, np.float64).tolist()                      # Python floats: float32 stays float32
    qx = m[0][0] * x + (m[0][1] * y + m[0][2])
    qy = m[1][0] * x + (m[1][1] * y + m[1][2])
    if m[2][0] == 0 and m[2][1] == 0:
        return qx * (1.0 / m[2][2]), qy * (1.0 / m[2][2])
    w = m[2][0] * x + (m[2][1] * y + m[2][2])
    bad = w <= 1e-6
    if bad.any():
        w = np.where(bad, 1.0, w)
        return np.where(bad, _FAR, qx / w), np.where(bad, _FAR, qy / w)
    return qx / w, qy / w


def _sample(image, ux, uy, interpolation=cv2.INTER_LINEAR):
    """Samples of the one-channel ``image`` [h, w] at canonical (ux, uy) (equal shapes; 0 outside), by cv2.remap."""
    shape, n = np.shape(ux), np.size(ux)
    rows = max(1, -(-n // _REMAP_COLS))
    maps = np.full((2, rows * _REMAP_COLS), _FAR, np.float32)
    maps[0, :n], maps[1, :n] = np.ravel(ux), np.ravel(uy)
    out = cv2.remap(image, maps[0].reshape(rows, -1), maps[1].reshape(rows, -1), interpolation,
                    borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return out.ravel()[:n].reshape(shape)


_BERNSTEIN_TO_POWER = np.array([[1.0, 0, 0, 0], [-3, 3, 0, 0], [3, -6, 3, 0], [-1, 3, -3, 1]])  # [power, index]


class NonRigidWarp:
    """Displacement D(u, t) in canonical px: a cubic Bezier surface over the texture rectangle whose
    4x4 control displacements are a_ij sin(f t + phi_ij), |a_ij| <= amplitude per axis, so |D| <= amplitude.
    The Jacobian norm is at most 12 amplitude / (min side - 1) <= 0.3, so u <- v - D(u) contracts."""

    def __init__(self, rng, texture_hw, max_px):
        h, w = texture_hw
        self.size = np.array([w - 1.0, h - 1.0])
        self.amplitude = min(max_px / math.sqrt(2), (min(h, w) - 1) / 40.0)
        self.coeff = rng.uniform(-1, 1, (2, 4, 4)) * self.amplitude      # [axis, row (y), column (x)]
        self.freq = rng.uniform(0.05, 0.25)
        self.phase = rng.uniform(0, 2 * np.pi, (2, 4, 4))

    def displacement(self, ux, uy, t):
        """(dx, dy) at canonical (ux, uy) (equal-shape arrays), in the power basis:
        D_k = sum_ab r^a M_k[a, b] s^b with M_k = B C_k(t) B^T and (s, r) = u / size clipped to [0, 1]."""
        s = np.clip(ux * (1.0 / float(self.size[0])), 0.0, 1.0)
        r = np.clip(uy * (1.0 / float(self.size[1])), 0.0, 1.0)
        m = _BERNSTEIN_TO_POWER @ (self.coeff * np.sin(self.freq * t + self.phase)) @ _BERNSTEIN_TO_POWER.T
        s2 = s * s
        powers = np.stack([np.ones_like(s), s, s2, s2 * s])                          # [4 (b), ...]
        q = np.tensordot(m.reshape(8, 4).astype(s.dtype), powers, 1)                 # [8 (axis, a), ...]
        return tuple(((q[4 * k + 3] * r + q[4 * k + 2]) * r + q[4 * k + 1]) * r + q[4 * k] for k in range(2))


@dataclasses.dataclass
class LayerMotion:
    """A(t) = T(position(t)) P R(angle(t)) S(exp(log_scale(t))) Sh(shear) T(-anchor); see the module docstring."""
    anchor: np.ndarray              # canonical point carried along position(t)
    t_mid: float
    position_mid: np.ndarray        # image position of the anchor at t_mid (pixel centres)
    velocity: np.ndarray            # px/frame at t_mid
    acceleration: np.ndarray        # position += acceleration d^2
    wobble_amp: np.ndarray
    wobble_freq: float
    wobble_phase: np.ndarray
    angle_mid: float                # rad
    angular_velocity: float         # rad/frame
    log_scale_rate: float           # d log_scale / dt at t_mid
    log_scale_freq: float
    shear: float
    perspective: np.ndarray         # (gx, gy), in 1/px of the centred, rotated and scaled sprite

    def position(self, t):
        d = t - self.t_mid
        wobble = self.wobble_amp * (np.sin(self.wobble_freq * d + self.wobble_phase) - np.sin(self.wobble_phase))
        return self.position_mid + self.velocity * d + self.acceleration * d * d + wobble

    def velocity_at(self, t):
        d = t - self.t_mid
        return self.velocity + 2 * self.acceleration * d + \
            self.wobble_amp * self.wobble_freq * np.cos(self.wobble_freq * d + self.wobble_phase)

    def log_scale(self, t):
        return self.log_scale_rate / self.log_scale_freq * math.sin(self.log_scale_freq * (t - self.t_mid))

    def angle(self, t):
        return self.angle_mid + self.angular_velocity * (t - self.t_mid)

    def matrix(self, t):
        """A(t): canonical -> image, 3x3 float64."""
        c, s = math.cos(self.angle(t)), math.sin(self.angle(t))
        k = math.exp(self.log_scale(t))
        linear = np.array([[c, -s], [s, c]]) @ np.array([[k, k * self.shear], [0.0, k]])
        m = np.zeros((3, 3))                                  # P applied to the centred affine part, then T
        m[:2, :2] = linear
        m[:2, 2] = -linear @ self.anchor
        m[2] = np.concatenate([self.perspective @ linear, [1.0 - self.perspective @ linear @ self.anchor]])
        m[:2] += np.outer(self.position(t), m[2])
        return m


def _random_motion(rng, *, anchor, position_mid, t_mid, span, unit, mean_speed, max_speed, max_acceleration,
                   wobble_px, max_rotation_deg, max_log_scale_rate, max_shear, max_perspective, half_extent,
                   angle_mid=None, speed=None):
    """A random LayerMotion; translation speed along the whole clip is capped at ``max_speed`` (x ``unit``)."""
    direction = rng.uniform(0, 2 * np.pi)
    speed = rng.gamma(2.0, mean_speed / 2.0) if speed is None else speed
    motion = LayerMotion(
        anchor=np.asarray(anchor, float), t_mid=t_mid, position_mid=np.asarray(position_mid, float),
        velocity=unit * speed * np.array([math.cos(direction), math.sin(direction)]),
        acceleration=unit * rng.uniform(-1, 1, 2) * max_acceleration,
        wobble_amp=unit * rng.uniform(0, 1, 2) * wobble_px, wobble_freq=rng.uniform(0.05, 0.3),
        wobble_phase=rng.uniform(0, 2 * np.pi, 2),
        angle_mid=rng.uniform(-np.pi, np.pi) if angle_mid is None else angle_mid,
        angular_velocity=math.radians(rng.uniform(-1, 1) * max_rotation_deg),
        log_scale_rate=rng.uniform(-1, 1) * max_log_scale_rate,
        log_scale_freq=rng.uniform(0.03, 0.12), shear=rng.uniform(-1, 1) * max_shear,
        perspective=rng.uniform(-1, 1, 2) * max_perspective / (math.sqrt(2) * half_extent))
    ts = np.arange(0.0, span + 0.25, 0.25)
    peak = max(np.linalg.norm(motion.velocity_at(ts[:, None]), axis=1).max(), 1e-9)
    if peak > unit * max_speed:
        f = unit * max_speed / peak
        motion.velocity, motion.acceleration, motion.wobble_amp = \
            motion.velocity * f, motion.acceleration * f, motion.wobble_amp * f
    return motion


@dataclasses.dataclass
class LayerAppearance:
    """Slow photometric drift: colour -> (colour - 128) exp(c sin(f t + phi0)) + 128 + b sin(f t + phi1), then
    times the shading exp(s (cos θ(t) û + sin θ(t) v̂)), θ(t) = θ0 + ω t, with (û, v̂) the canonical position
    scaled to [-1, 1] over the texture: a surface turning under a fixed light (s = 0: none)."""
    contrast_amp: float
    brightness_amp: float
    freq: float
    phase: np.ndarray
    shading_amp: float = 0.0
    shading_angle: float = 0.0
    shading_rate: float = 0.0

    def shading(self, map_x, map_y, texture_hw, t):
        """Multiplicative gain float32 [...] at canonical (map_x, map_y), or None when there is no shading."""
        if self.shading_amp == 0:
            return None
        h, w = texture_hw
        angle = self.shading_angle + self.shading_rate * t
        cx = 2.0 * self.shading_amp * math.cos(angle) / max(w - 1, 1)
        cy = 2.0 * self.shading_amp * math.sin(angle) / max(h - 1, 1)
        return np.exp(cx * map_x + cy * map_y - self.shading_amp * (math.cos(angle) + math.sin(angle)))

    def gain_offset(self, t):
        """(g, o) with colour -> g colour + o at time t."""
        gain = math.exp(self.contrast_amp * math.sin(self.freq * t + self.phase[0]))
        return gain, 128.0 * (1.0 - gain) + self.brightness_amp * math.sin(self.freq * t + self.phase[1])


class Layer:
    """A texture (float32 [h, w, 3]) and alpha (float32 [h, w]; None = opaque everywhere) in canonical
    coordinates, moved by ``motion`` and an optional ``warp``. Image points are pixel-centre (x, y) arrays."""

    def __init__(self, texture, alpha, motion, warp=None, appearance=None, border=cv2.BORDER_REPLICATE):
        self.texture, self.alpha, self.motion, self.warp = texture, alpha, motion, warp
        self.appearance, self.border = appearance, border
        if warp is not None:   # canonical pixels within reach of the alpha through the warp (and bilinear taps)
            reach = 2 * math.ceil(warp.amplitude) + 5
            self.warp_support = cv2.dilate((alpha > 0).astype(np.uint8), np.ones((reach, reach), np.uint8))

    def matrix(self, t):
        return self.motion.matrix(t)

    def to_image(self, ux, uy, t):
        """Phi(u, t) = A(t) (u + D(u, t)) for canonical (ux, uy) arrays; returns image (x, y)."""
        if self.warp is not None:
            dx, dy = self.warp.displacement(ux, uy, t)
            ux, uy = ux + dx, uy + dy
        return _apply_homography(self.matrix(t), ux, uy)

    def to_canonical(self, x, y, t, only_near_alpha=False, tolerance=1e-4, max_iterations=30):
        """Phi^-1(x, t) for image (x, y) arrays (broadcasting): v = A(t)^-1 x, then u <- v - D(u, t) until no
        point moves more than ``tolerance`` (steps shrink by the contraction factor <= 0.3, so the remaining
        error is below tolerance / 2). Returns canonical (ux, uy). ``only_near_alpha`` (rendering): points
        whose v is too far from the alpha mask for the warp to bring them onto it are left at v (their alpha
        is 0 either way)."""
        vx, vy = _apply_homography(np.linalg.inv(self.matrix(t)), x, y)
        if self.warp is None:
            return vx, vy
        vx, vy = np.broadcast_arrays(vx, vy)
        near = _sample(self.warp_support, vx, vy, cv2.INTER_NEAREST) > 0 if only_near_alpha else \
            np.ones(vx.shape, bool)
        wx, wy = vx[near], vy[near]
        ux, uy = vx.copy(), vy.copy()
        px, py = wx.copy(), wy.copy()
        for start in range(0, len(wx), _CHUNK):          # chunks stay in cache and converge on their own
            part = slice(start, start + _CHUNK)
            for _ in range(max_iterations):
                dx, dy = self.warp.displacement(px[part], py[part], t)
                step = max(np.abs(wx[part] - dx - px[part]).max(), np.abs(wy[part] - dy - py[part]).max())
                px[part], py[part] = wx[part] - dx, wy[part] - dy
                if step < tolerance:
                    break
        ux[near], uy[near] = px, py
        return ux, uy

    def alpha_at(self, x, y, t):
        """Alpha at image points (x, y) [N]: the canonical mask sampled bilinearly at Phi^-1(x, t)."""
        if self.alpha is None:
            return np.ones(len(x), np.float32)
        return _sample(self.alpha, *self.to_canonical(x, y, t, only_near_alpha=True))

    def image_extent(self, t):
        """(x_min, x_max, y_min, y_max) of the image region where the alpha can be non-zero; None if unbounded."""
        if self.alpha is None:
            return None
        h, w = self.alpha.shape
        pad = 1.0 + (self.warp.amplitude if self.warp is not None else 0.0)
        qx, qy = _apply_homography(self.matrix(t), np.array([-pad, w - 1 + pad, w - 1 + pad, -pad]),
                                   np.array([-pad, -pad, h - 1 + pad, h - 1 + pad]))
        return qx.min(), qx.max(), qy.min(), qy.max()


@dataclasses.dataclass
class _LayerSample:
    box: tuple                 # (y0, y1, x0, x1) pixel box of the frame
    alpha: np.ndarray          # float32 [y1 - y0, x1 - x0]
    map_x: np.ndarray          # float32 [y1 - y0, x1 - x0]: canonical x, y of each box pixel (cv2.remap maps)
    map_y: np.ndarray


def _crop_texture(rng, frame, out_hw, zoom):
    """A random crop of ``frame`` resized to ``out_hw`` (float32 RGB); crops larger than the frame are clamped to it."""
    h, w = out_hw
    ch, cw = min(frame.shape[0], max(2, round(h / zoom))), min(frame.shape[1], max(2, round(w / zoom)))
    y0, x0 = rng.integers(0, frame.shape[0] - ch + 1), rng.integers(0, frame.shape[1] - cw + 1)
    interp = cv2.INTER_AREA if ch > h else cv2.INTER_LINEAR
    return cv2.resize(frame[y0:y0 + ch, x0:x0 + cw], (w, h), interpolation=interp).astype(np.float32)


def _sprite_mask(rng, h, w):
    """Soft alpha float32 [h, w]: an ellipse, a polygon/star or a thresholded smoothed-noise blob, blurred by
    1 px (values below 1e-3 cut to 0), 0 on the border."""
    margin = 3.0
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    rx, ry = (w - 1) / 2 - margin, (h - 1) / 2 - margin
    nx, ny = (xs - (w - 1) / 2) / rx, (ys - (h - 1) / 2) / ry          # [-1, 1] inside the margin
    kind = rng.integers(3)
    if kind == 0:                                                        # ellipse
        a, b = rng.uniform(0.7, 1.0, 2)
        inside = (nx / a) ** 2 + (ny / b) ** 2 <= 1.0
    elif kind == 1:                                                      # polygon or star
        n = int(rng.integers(5, 13))
        angles = np.sort(rng.uniform(0, 2 * np.pi, n))
        radii = rng.uniform(0.5, 1.0, n)
        if rng.random() < 0.5:
            radii[::2] *= rng.uniform(0.35, 0.6)
        pts = np.stack([(w - 1) / 2 + rx * radii * np.cos(angles), (h - 1) / 2 + ry * radii * np.sin(angles)], 1)
        canvas = np.zeros((h, w), np.uint8)
        cv2.fillPoly(canvas, [np.round(pts * 16).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=4)
        inside = canvas > 0
    else:                                                                # noise blob
        noise = cv2.GaussianBlur(rng.standard_normal((h, w)).astype(np.float32), (0, 0), max(1.0, min(h, w) / 8))
        score = noise / (noise.std() + 1e-6) + 2.0 * (1.0 - nx ** 2 - ny ** 2)
        disc = nx ** 2 + ny ** 2 < 1.0
        inside = disc & (score > np.quantile(score[disc], 0.4))
    if inside.sum() < 4:
        inside = nx ** 2 + ny ** 2 <= 1.0
    mask = cv2.GaussianBlur(inside.astype(np.float32), (0, 0), 1.0)
    mask[mask < 1e-3] = 0                                                # a clean edge to the support
    mask[0], mask[-1], mask[:, 0], mask[:, -1] = 0, 0, 0, 0
    return mask


class LayeredScene:
    """A random layered scene; see the module docstring. ``layers[0]`` is the background, the rest are
    sprites back to front (the big occluder, if any, last). Index = depth rank: i hides every j < i."""

    def __init__(self, pool, seed, size_hw=(256, 256), num_frames=DEFAULT_NUM_FRAMES, config=SceneConfig()):
        H, W = (int(v) for v in size_hw)
        if H < 16 or W < 16 or num_frames < 1:
            raise InputError(f"a scene needs a frame of at least 16x16 and >= 1 frame, got {W}x{H} and {num_frames}")
        self.size_hw, self.num_frames, self.config, self.seed = (H, W), int(num_frames), config, seed
        cfg, rng = config, np.random.default_rng(seed)
        side, unit, t_mid, span = min(H, W), min(H, W) / 256.0, (num_frames - 1) / 2.0, num_frames - 1.0
        frames = pool.frames
        background_index = int(rng.integers(len(frames)))
        others = [i for i in range(len(frames)) if i != background_index] or [background_index]

        def appearance():
            a = LayerAppearance(rng.uniform(0, cfg.contrast_drift), rng.uniform(0, cfg.brightness_drift),
                                rng.uniform(0.02, 0.1), rng.uniform(0, 2 * np.pi, 2))
            return a if cfg.photometric else None

        # background: the whole frame magnified to cover the output; reflect101 beyond its edges
        frame = frames[background_index]
        zoom = rng.uniform(1.0, 1.6) * max(H / frame.shape[0], W / frame.shape[1])
        bg_hw = (max(2, round(frame.shape[0] * zoom)), max(2, round(frame.shape[1] * zoom)))
        texture = cv2.resize(frame, bg_hw[::-1], interpolation=cv2.INTER_LINEAR).astype(np.float32)
        anchor = np.array([bg_hw[1], bg_hw[0]]) * rng.uniform(0.35, 0.65, 2)
        camera = _random_motion(
            rng, anchor=anchor, position_mid=((W - 1) / 2, (H - 1) / 2), t_mid=t_mid, span=span, unit=unit,
            mean_speed=cfg.camera_max_speed / 2, max_speed=cfg.camera_max_speed, max_acceleration=0.0,
            wobble_px=cfg.camera_max_speed, max_rotation_deg=cfg.camera_max_rotation_deg,
            max_log_scale_rate=cfg.camera_max_zoom_rate, max_shear=0.0, max_perspective=0.0, half_extent=1.0,
            angle_mid=rng.uniform(-0.05, 0.05))
        self.layers = [Layer(texture, None, camera, None, appearance(), cv2.BORDER_REFLECT101)]

        def sprite(size, **motion_args):
            aspect = math.exp(rng.uniform(math.log(0.6), math.log(1.6)))
            h, w = max(12, round(size / math.sqrt(aspect))), max(12, round(size * math.sqrt(aspect)))
            texture = _crop_texture(rng, frames[others[int(rng.integers(len(others)))]], (h, w), rng.uniform(0.7, 1.4))
            mask = _sprite_mask(rng, h, w)
            warp = NonRigidWarp(rng, (h, w), cfg.nonrigid_max_px) \
                if rng.random() < cfg.nonrigid_fraction and cfg.nonrigid_max_px > 0 else None
            motion_args = dict(dict(
                mean_speed=cfg.mean_speed, max_speed=cfg.max_speed, max_acceleration=cfg.max_acceleration,
                wobble_px=cfg.wobble_px, max_rotation_deg=cfg.max_rotation_deg,
                max_log_scale_rate=cfg.max_log_scale_rate, max_shear=cfg.max_shear,
                max_perspective=cfg.max_perspective), **motion_args)
            if "position_mid" not in motion_args:
                motion_args["position_mid"] = rng.uniform(0, 1, 2) * (W - 1, H - 1)
            motion = _random_motion(rng, anchor=((w - 1) / 2, (h - 1) / 2), t_mid=t_mid, span=span, unit=unit,
                                    half_extent=max(h, w) / 2, **motion_args)
            return Layer(texture, mask, motion, warp, appearance())

        for _ in range(int(rng.integers(cfg.num_sprites[0], cfg.num_sprites[1] + 1))):
            self.layers.append(sprite(side * rng.uniform(*cfg.sprite_size)))
        self.has_big_occluder = bool(rng.random() < cfg.big_occluder_prob)
        if self.has_big_occluder:      # crosses the frame: near the centre at t_mid, about one frame side travelled
            size = side * rng.uniform(*cfg.big_occluder_size)
            speed = min(cfg.max_speed, 256.0 * rng.uniform(0.8, 1.3) / max(span, 1.0))
            centre = np.array([(W - 1) / 2, (H - 1) / 2]) + rng.uniform(-0.15, 0.15, 2) * side
            self.layers.append(sprite(size, speed=speed, position_mid=centre, max_acceleration=0.0,
                                      wobble_px=min(cfg.wobble_px, 2.0), max_rotation_deg=min(cfg.max_rotation_deg, 0.5)))
        photometric = cfg.photometric
        self.noise_sigma = rng.uniform(*cfg.noise_sigma) if photometric else 0.0
        self.blur_sigma = rng.uniform(*cfg.blur_sigma) if photometric and rng.random() < cfg.blur_prob else 0.0
        self._noise_key = int(rng.integers(2 ** 62))
        self._cache = {}
        # effects drawn from their own stream, so that switching them on leaves everything above unchanged
        extra = np.random.default_rng([int(seed) % 2 ** 63, 1])
        self.shutter = extra.uniform(*cfg.shutter) if photometric and extra.random() < cfg.motion_blur_prob else 0.0
        for layer in self.layers:
            s = extra.uniform(0, cfg.shading_gradient)
            angle, rate = extra.uniform(0, 2 * np.pi), extra.uniform(0.02, 0.1) * extra.choice([-1, 1])
            if layer.appearance is not None and s > 0:
                layer.appearance.shading_amp = s
                layer.appearance.shading_angle, layer.appearance.shading_rate = angle, rate
        n = int(extra.integers(cfg.light_blobs[0], cfg.light_blobs[1] + 1)) if photometric else 0
        self.light_blobs = [dict(centre=extra.uniform(0, 1, 2) * (W - 1, H - 1), radius=side * extra.uniform(0.1, 0.4),
                                 velocity=unit * extra.uniform(0.5, 3.0) * np.array([math.cos(a), math.sin(a)]),
                                 gain=extra.uniform(-1.0, 0.6) * cfg.light_blob_gain, t_mid=t_mid)
                            for a in extra.uniform(0, 2 * np.pi, n)]
        self.jpeg_quality = int(extra.integers(cfg.jpeg_quality[0], cfg.jpeg_quality[1] + 1)) \
            if photometric and extra.random() < cfg.jpeg_prob else 0

    # ----------------------------------------------------------------- sampling the layers at one time
    def _layer_samples(self, t, cache=True):
        """Per layer: its pixel box at t, the canonical position and alpha of every box pixel (None if off-frame).
        The last four times asked with ``cache`` are kept (a training pair renders and differentiates the same
        two; the other instants of an exposure are not kept)."""
        key = float(t)
        if key in self._cache:
            return self._cache[key]
        H, W = self.size_hw
        samples = []
        for layer in self.layers:
            extent = layer.image_extent(t)
            if extent is None:
                box = (0, H, 0, W)
            else:
                x0, x1 = max(0, math.ceil(extent[0])), min(W, math.floor(extent[1]) + 1)
                y0, y1 = max(0, math.ceil(extent[2])), min(H, math.floor(extent[3]) + 1)
                box = (y0, y1, x0, x1)
            if box[0] >= box[1] or box[2] >= box[3]:
                samples.append(None)
                continue
            xs, ys = np.arange(box[2], box[3], dtype=np.float32), np.arange(box[0], box[1], dtype=np.float32)
            map_x, map_y = np.broadcast_arrays(*layer.to_canonical(xs[None, :], ys[:, None], t, only_near_alpha=True))
            alpha = np.ones(map_x.shape, np.float32) if layer.alpha is None else \
                cv2.remap(layer.alpha, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
            samples.append(_LayerSample(box, alpha, map_x, map_y))
        if cache:
            if len(self._cache) >= 4:
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = samples
        return samples

    def _layer_alpha(self, m, x, y, t, candidates):
        """Alpha of layer m at pixel-centre points (x, y) [N] where ``candidates`` (bool [N]); 0 elsewhere."""
        alpha = np.zeros(len(x), np.float32)
        x0, x1, y0, y1 = self.layers[m].image_extent(t)
        sel = np.flatnonzero(candidates & (x >= x0) & (x <= x1) & (y >= y0) & (y <= y1))
        if len(sel):
            alpha[sel] = self.layers[m].alpha_at(x[sel], y[sel], t)
        return alpha

    def _front_alpha(self, x, y, owner, t):
        """Sum of alpha_m(t) over the layers m > owner (in front of it) at pixel-centre (x, y) [N]; unclipped."""
        total = np.zeros(len(x), np.float32)
        for m in range(1, len(self.layers)):
            total += self._layer_alpha(m, x, y, t, owner < m)
        return total

    def _inside(self, x, y):
        H, W = self.size_hw
        return (x >= -0.5) & (x <= W - 0.5) & (y >= -0.5) & (y <= H - 0.5)

    # ----------------------------------------------------------------- public
    def composite(self, t, cache=True):
        """The layers composited at instant t, before the camera's effects: float32 RGB [H, W, 3]."""
        H, W = self.size_hw
        image = np.zeros((H, W, 3), np.float32)
        for index, (layer, sample) in enumerate(zip(self.layers, self._layer_samples(t, cache))):
            if sample is None:
                continue
            y0, y1, x0, x1 = sample.box
            colour = cv2.remap(layer.texture, sample.map_x, sample.map_y, cv2.INTER_LINEAR, borderMode=layer.border)
            if layer.appearance is not None:
                gain, offset = layer.appearance.gain_offset(t)
                colour *= gain
                colour += offset
                shading = layer.appearance.shading(sample.map_x, sample.map_y, layer.texture.shape[:2], t)
                if shading is not None:
                    colour *= shading[..., None]
            if index == 0:
                image[y0:y1, x0:x1] = colour
            else:
                image[y0:y1, x0:x1] = cv2.blendLinear(colour, image[y0:y1, x0:x1], sample.alpha, 1.0 - sample.alpha)
        return image

    def exposure_instants(self, t):
        """The instants averaged into frame t: t alone, or ``motion_blur_samples`` evenly over the shutter
        interval centred on t (the ground truth of frame t is the scene at t, the middle of the exposure)."""
        n = self.config.motion_blur_samples
        if self.shutter == 0 or n < 2:
            return [float(t)]
        return [float(t) + self.shutter * (k / (n - 1) - 0.5) for k in range(n)]

    def light(self, t):
        """Gain float32 [H, W] of the moving lights and shadows at t: exp(sum_b g_b exp(-|x - c_b(t)|^2 / 2 r_b^2))."""
        H, W = self.size_hw
        xs, ys = np.arange(W, dtype=np.float32)[None, :], np.arange(H, dtype=np.float32)[:, None]
        log_gain = np.zeros((H, W), np.float32)
        for b in self.light_blobs:
            cx, cy = b["centre"] + b["velocity"] * (float(t) - b["t_mid"])
            log_gain += b["gain"] * np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * b["radius"] ** 2))
        return np.exp(log_gain)

    def render(self, t):
        """Frame t: uint8 RGB [H, W, 3]. The composite averaged over the exposure, lit, blurred, with noise,
        rounded, and JPEG-compressed where the scene has a quality."""
        instants = self.exposure_instants(t)
        image = self.composite(t) if len(instants) == 1 else \
            sum(self.composite(s, cache=s == float(t)) for s in instants) * (1.0 / len(instants))
        if self.light_blobs:
            image *= self.light(t)[..., None]
        if self.blur_sigma > 0:
            image = cv2.GaussianBlur(image, (0, 0), self.blur_sigma)
        if self.noise_sigma > 0:
            noise_rng = np.random.default_rng([self._noise_key, int(round(float(t) * 1000)) + 2 ** 40])
            image += self.noise_sigma * noise_rng.standard_normal(image.shape, dtype=np.float32)
        image = cv2.addWeighted(image, 1.0, image, 0.0, 0.0, dtype=cv2.CV_8U)     # round and saturate
        if self.jpeg_quality:
            ok, data = cv2.imencode(".jpg", image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality])
            image = np.ascontiguousarray(cv2.imdecode(data, cv2.IMREAD_COLOR)[..., ::-1])
        return image

    def top_layer(self, t):
        """int64 [H, W]: index of the front-most layer with alpha > 0.5 at each pixel (0 = background)."""
        top = np.zeros(self.size_hw, np.int64)
        for index, sample in enumerate(self._layer_samples(t)):
            if sample is not None and index > 0:
                y0, y1, x0, x1 = sample.box
                top[y0:y1, x0:x1][sample.alpha > 0.5] = index
        return top

    def top_layer_at(self, points, t):
        """int64 [N]: the front-most layer with alpha > 0.5 at corner-convention points [N, 2] at time t."""
        xy = np.asarray(points, np.float64).reshape(-1, 2) - 0.5
        owner = np.zeros(len(xy), np.int64)
        for m in range(1, len(self.layers)):
            owner[self._layer_alpha(m, xy[:, 0], xy[:, 1], t, np.ones(len(xy), bool)) > 0.5] = m
        return owner

    def flow(self, t1, t2):
        """(flow float32 [2, H, W] pixel-centre displacement t1 -> t2, occlusion float32 [H, W] in [0, 1])."""
        H, W = self.size_hw
        top = self.top_layer(t1)
        xs, ys = np.arange(W, dtype=np.float32)[None, :], np.arange(H, dtype=np.float32)[:, None]
        background = self.layers[0].matrix(t2) @ np.linalg.inv(self.layers[0].matrix(t1))
        target_x, target_y = (np.ascontiguousarray(a)
                              for a in np.broadcast_arrays(*_apply_homography(background, xs, ys)))
        for index, sample in enumerate(self._layer_samples(t1)):
            if index == 0 or sample is None:
                continue
            y0, y1, x0, x1 = sample.box
            mine = top[y0:y1, x0:x1] == index
            if mine.any():
                x2, y2 = self.layers[index].to_image(sample.map_x[mine], sample.map_y[mine], t2)
                target_x[y0:y1, x0:x1][mine], target_y[y0:y1, x0:x1][mine] = x2, y2
        occlusion = np.ones(H * W, np.float32)
        inside = np.flatnonzero(self._inside(target_x, target_y))
        front = self._front_alpha(target_x.ravel()[inside], target_y.ravel()[inside], top.ravel()[inside], t2)
        occlusion[inside] = np.minimum(front, 1.0)
        return np.stack([target_x - xs, target_y - ys]), occlusion.reshape(H, W)

    def track(self, points, t_query, frames=None):
        """Tracks of corner-convention query points [N, 2] of frame ``t_query``: (tracks float32 [N, F, 2]
        corner convention, visible bool [N, F]) over ``frames`` (default: every frame)."""
        points = np.asarray(points, np.float64)
        if points.ndim != 2 or points.shape[1] != 2:
            raise InputError(f"points must be [N, 2], got shape {points.shape}")
        frames = np.arange(self.num_frames) if frames is None else frames
        frames = np.asarray(frames, np.float64).ravel()
        x, y = points[:, 0] - 0.5, points[:, 1] - 0.5
        owner = self.top_layer_at(points, t_query)
        groups = [(l, owner == l) for l in np.unique(owner)]
        ux, uy = np.empty_like(x), np.empty_like(y)
        for l, sel in groups:
            ux[sel], uy[sel] = self.layers[l].to_canonical(x[sel], y[sel], t_query)
        tracks = np.empty((len(x), len(frames), 2), np.float32)
        visible = np.empty((len(x), len(frames)), bool)
        for i, t in enumerate(frames):
            px, py = np.empty_like(x), np.empty_like(y)
            for l, sel in groups:
                px[sel], py[sel] = self.layers[l].to_image(ux[sel], uy[sel], t)
            tracks[:, i, 0], tracks[:, i, 1] = px + 0.5, py + 0.5
            visible[:, i] = self._inside(px, py) & (self._front_alpha(px, py, owner, t) < 0.5)
        return tracks, visible


def sample_pair(pool, seed, size_hw=(256, 256), gap=None, gaps=DEFAULT_GAPS, config=None):
    """A training pair from a random scene, deterministic in ``seed``: a dict with ``frame1``, ``frame2`` (uint8
    [H, W, 3]), ``flow_fwd`` (1 -> 2), ``flow_bwd`` (2 -> 1) (float32 [2, H, W], pixel centres), ``occ_fwd``,
    ``occ_bwd`` (float32 [H, W] in [0, 1]), ``gap`` (drawn from ``gaps`` unless given), ``t1``, ``t2`` (|t2 - t1|
    = gap, either order) and ``scene_seed`` (``LayeredScene(pool, scene_seed, size_hw, max(64, gap + 1),
    config)`` is the scene, for tracks or more frames)."""
    rng = np.random.default_rng(seed)
    gap = int(rng.choice(gaps)) if gap is None else int(gap)
    if gap < 1:
        raise InputError(f"gap must be >= 1, got {gap}")
    num_frames = max(DEFAULT_NUM_FRAMES, gap + 1)
    scene_seed = int(rng.integers(2 ** 62))
    scene = LayeredScene(pool, scene_seed, size_hw, num_frames, config or SceneConfig())
    t1 = int(rng.integers(0, num_frames - gap))
    t2 = t1 + gap
    if rng.random() < 0.5:
        t1, t2 = t2, t1
    flow_fwd, occ_fwd = scene.flow(t1, t2)
    flow_bwd, occ_bwd = scene.flow(t2, t1)
    return dict(frame1=scene.render(t1), frame2=scene.render(t2), flow_fwd=flow_fwd, flow_bwd=flow_bwd,
                occ_fwd=occ_fwd, occ_bwd=occ_bwd, gap=gap, t1=t1, t2=t2, scene_seed=scene_seed)


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit code 2
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(2)


def main(argv=None):
    p = _Parser(prog="python -m synthetic.layers", description="Write a preview video of one synthetic scene.")
    p.add_argument("--out", required=True, help="output .mp4")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--frames", type=int, default=48)
    p.add_argument("--size", default="256x256", help="WxH")
    p.add_argument("--textures", nargs="+", help="frame folders (default: default_texture_folders())")
    args = p.parse_args(argv)
    try:
        h, w = parse_frame_size(args.size)
        if args.frames < 1 or args.seed < 0:
            raise InputError(f"--frames must be >= 1 and --seed >= 0, got {args.frames} and {args.seed}")
        if not args.out.endswith(".mp4"):
            raise InputError(f"--out must end in .mp4, got {args.out}")
        scene = LayeredScene(TexturePool(args.textures or default_texture_folders()), args.seed, (h, w), args.frames)
        writer = cv2.VideoWriter(args.out, cv2.VideoWriter_fourcc(*"mp4v"), 12, (w, h))
        if not writer.isOpened():
            raise InputError(f"cannot write {args.out}")
        for t in range(args.frames):
            writer.write(np.ascontiguousarray(scene.render(t)[..., ::-1]))
        writer.release()
    except PitrackError as e:
        print(f"{p.prog}: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}: {args.frames} frames {w}x{h}, {len(scene.layers)} layers", file=sys.stderr)
    return 0


if __name__ == "__main__":
    from core.errors import run_command
    sys.exit(run_command(main, "synthetic.layers"))
