"""Reference trackers that give every later number a floor: a static tracker and OpenCV pyramidal LK."""
import numpy as np
from core.progress import progress_bar

from core.coords import inside_frame, parse_resolution, scale_sigma, scale_xy, to_center, from_center


def track_static(video, queries, config, ctx):
    """Every point stays at its query position in every frame and is always visible; σ = 1 px."""
    N, T = queries.shape[0], video.shape[0]
    tracks = np.repeat(queries[:, None, 1:3], T, axis=1)
    return tracks, np.ones((N, T), bool), np.ones((N, T), np.float32)


def _gray_frames(video, hw):
    import cv2
    H, W = video.shape[1:3]
    out = []
    for f in video:
        g = cv2.cvtColor(f, cv2.COLOR_RGB2GRAY)
        if (H, W) != tuple(hw):
            g = cv2.resize(g, (hw[1], hw[0]), interpolation=cv2.INTER_AREA)
        out.append(g)
    return out


def _lk_step(g0, g1, pts, cfg, hw):
    """One LK step g0 -> g1 for pts [M, 2] (pixel-centre convention) with a forward–backward check.

    Returns new positions [M, 2], ``moved`` (LK found the point both ways) and ``ok`` (moved, the
    forward–backward error ‖p − LK_back(LK_fwd(p))‖ < fb_threshold and the point is inside the frame),
    and the forward–backward error [M].
    """
    import cv2
    lk = dict(winSize=(cfg.win_size, cfg.win_size), maxLevel=cfg.max_level,
              criteria=(cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 30, 0.01))
    p0 = pts.reshape(-1, 1, 2).astype(np.float32)
    p1, st1, _ = cv2.calcOpticalFlowPyrLK(g0, g1, p0, None, **lk)
    pb, st2, _ = cv2.calcOpticalFlowPyrLK(g1, g0, p1, None, **lk)
    p1, pb = p1.reshape(-1, 2), pb.reshape(-1, 2)
    fb = np.linalg.norm(pb - pts, axis=1)
    moved = (st1.ravel() == 1) & (st2.ravel() == 1) & np.all(np.isfinite(p1), axis=1)
    h, w = hw
    inside = inside_frame(p1[:, 0], p1[:, 1], (h, w))
    ok = moved & (fb < cfg.fb_threshold) & inside
    return np.where(moved[:, None], p1, pts), moved, ok, np.where(moved, fb, np.inf)


def track_klt(video, queries, config, ctx):
    """Pyramidal LK chained frame to frame from each query frame, forward to the end and backward to 0.

    A step's visibility is its forward–backward check; a point keeps being tracked through failed
    checks (it may reappear), and stays put where LK loses it. σ² accumulates along the chain,
    σ²_t = σ²_{t∓1} + 0.25 + fb²/4 (working px², a random walk whose step variance grows with the
    forward–backward error); reported in original pixels.
    """
    cfg = config.klt
    T, H, W = video.shape[:3]
    hw = parse_resolution(cfg.resolution, (H, W))
    gray = _gray_frames(video, hw)
    N = queries.shape[0]
    tq = queries[:, 0].astype(int)
    q_xy = to_center(scale_xy(queries[:, 1:3], (H, W), hw))
    tracks = np.zeros((N, T, 2), np.float32)
    visible = np.zeros((N, T), bool)
    var = np.zeros((N, T), np.float32)
    tracks[np.arange(N), tq] = q_xy
    visible[np.arange(N), tq] = True
    var[np.arange(N), tq] = 0.25
    steps = [(t, t + 1) for t in range(T - 1)] + [(t, t - 1) for t in range(T - 1, 0, -1)]
    for a, b in progress_bar(steps, desc="klt", enabled=ctx.progress, leave=False):
        idx = np.nonzero(tq <= a)[0] if b > a else np.nonzero(tq >= a)[0]
        if idx.size == 0:
            continue
        new, moved, ok, fb = _lk_step(gray[a], gray[b], tracks[idx, a], cfg, hw)
        tracks[idx, b] = new
        visible[idx, b] = ok
        var[idx, b] = var[idx, a] + 0.25 + np.minimum(fb, 1e3) ** 2 / 4
    tracks = scale_xy(from_center(tracks), hw, (H, W))
    sigma = scale_sigma(np.sqrt(var), hw, (H, W))
    ctx.stats["working_resolution"] = f"{hw[1]}x{hw[0]}"
    return tracks, visible, sigma
