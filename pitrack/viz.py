"""Overlay video: each track drawn with a short tail; visible points filled, occluded points hollow."""
import colorsys

import numpy as np

from core.atomic import atomic_path
from core.errors import InputError


def track_colors(queries, width):
    """One RGB colour per track, hue by the query's x position (so neighbours get similar colours)."""
    hues = np.clip(np.asarray(queries)[:, 1] / max(width, 1), 0, 1) * 0.85
    return [tuple(int(255 * c) for c in colorsys.hsv_to_rgb(h, 0.9, 1.0)) for h in hues]


def draw_overlay(video, tracks, visible, queries, tail=8):
    """Frames uint8 [T, H, W, 3] RGB with tracks drawn. ``tracks`` [N, T, 2] original px (corner convention)."""
    import cv2
    T, H, W = video.shape[:3]
    radius = max(2, int(round(min(H, W) / 160)))
    colors = track_colors(queries, W)
    shift = 4  # sub-pixel drawing: coordinates carry 4 fractional bits
    pts = np.round((np.asarray(tracks) - 0.5) * (1 << shift)).astype(np.int64)
    tq = np.asarray(queries)[:, 0].astype(int)
    out = np.empty_like(video)
    for t in range(T):
        img = np.ascontiguousarray(video[t][..., ::-1])  # RGB -> BGR for OpenCV drawing
        for n in range(pts.shape[0]):
            c = colors[n][::-1]
            lo = max(0, t - tail)
            for s in range(lo, t):
                if visible[n, s] and visible[n, s + 1] and tq[n] <= s:
                    cv2.line(img, tuple(pts[n, s]), tuple(pts[n, s + 1]), c, 1, cv2.LINE_AA, shift)
            filled = -1 if visible[n, t] else max(1, radius // 2)
            cv2.circle(img, tuple(pts[n, t]), radius << shift, c, filled, cv2.LINE_AA, shift)
        out[t] = img[..., ::-1]
    return out


def write_overlay(path, video, tracks, visible, queries, fps=12, tail=8):
    """Write the overlay as an mp4 (OpenCV 'mp4v'), atomically."""
    import cv2
    frames = draw_overlay(video, tracks, visible, queries, tail)
    H, W = frames.shape[1:3]
    with atomic_path(path) as tmp:
        writer = cv2.VideoWriter(tmp, cv2.VideoWriter_fourcc(*"mp4v"), fps, (W, H))
        if not writer.isOpened():
            raise InputError(f"cannot write video {path} (OpenCV has no mp4v encoder for it)")
        for f in frames:
            writer.write(np.ascontiguousarray(f[..., ::-1]))
        writer.release()
