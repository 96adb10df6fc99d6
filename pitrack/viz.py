"""Pictures of tracks, drawn the way point-tracking papers and CoTracker's visualiser show them.

Sparse tracks (:func:`draw_tracks`): each track a dot with a tail over its last ``tail`` frames, coloured
by its position in its query frame (a rainbow over the query's height, so neighbours share a colour and
a rigid part keeps one band); a visible point is filled, an occluded point hollow and its tail not drawn.

Dense results (:func:`draw_dense`): two panels per frame. Left, the frame with a sparse subsample of the
grid drawn as tracks. Right, the displacement of every grid point from its query-frame position to frame t,
in the standard optical-flow colour wheel (hue: direction, saturation: length relative to the video's
largest displacement), laid out on the query frame's grid; pixels occluded in frame t are dimmed.

``write_video`` writes frames as an mp4 (OpenCV 'mp4v'); ``write_overlay`` / ``write_dense_overlay`` are
the two pictures as files. Colours are RGB throughout.
"""
import colorsys
import errno
import os

import numpy as np

from core.atomic import atomic_path
from core.errors import InputError

OCCLUDED_DIM = 0.3   # brightness of occluded pixels in the dense flow panel


def track_colors(queries):
    """One RGB colour per track, uint8 [N, 3]: a rainbow (hue 0 … 0.8) over the queries' y in their query
    frames, from the topmost to the bottommost query."""
    y = np.asarray(queries, np.float64)[:, 2]
    span = max(float(y.max() - y.min()), 1e-6) if y.size else 1.0
    hues = (y - (y.min() if y.size else 0.0)) / span * 0.8
    return np.array([[int(round(255 * c)) for c in colorsys.hsv_to_rgb(h, 0.9, 1.0)] for h in hues], np.uint8)


def draw_tracks(video, tracks, visible, queries, tail=8, colors=None):
    """Frames uint8 [T, H, W, 3] RGB with tracks drawn. ``tracks`` [N, T, 2] original px (corner convention),
    ``visible`` [N, T], ``queries`` [N, 3] (t, x, y); ``tail``: frames of trail behind each point (0: none);
    ``colors`` uint8 [N, 3] (default :func:`track_colors`)."""
    import cv2
    T, H, W = video.shape[:3]
    tracks, visible = np.asarray(tracks, np.float64), np.asarray(visible, bool)
    if tracks.shape[:2] != visible.shape or tracks.shape[1] != T or len(queries) != tracks.shape[0]:
        raise InputError(f"tracks {tracks.shape}, visible {visible.shape} and queries {np.shape(queries)} do not "
                         f"match a video of {T} frames")
    radius = max(2, int(round(min(H, W) / 160)))
    colors = track_colors(queries) if colors is None else np.asarray(colors, np.uint8)
    shift = 4  # sub-pixel drawing: coordinates carry 4 fractional bits
    finite = np.isfinite(tracks).all(-1)
    pts = np.round((np.where(finite[..., None], tracks, -1e4) - 0.5) * (1 << shift)).astype(np.int64)
    out = np.empty_like(video)
    for t in range(T):
        img = np.ascontiguousarray(video[t][..., ::-1])  # RGB -> BGR for OpenCV drawing
        for n in range(pts.shape[0]):
            if not finite[n, t]:
                continue
            c = tuple(int(v) for v in colors[n][::-1])
            for s in range(max(0, t - int(tail)), t):
                if visible[n, s] and visible[n, s + 1] and finite[n, s]:
                    cv2.line(img, tuple(pts[n, s]), tuple(pts[n, s + 1]), c, 1, cv2.LINE_AA, shift)
            filled = -1 if visible[n, t] else max(1, radius // 2)
            cv2.circle(img, tuple(pts[n, t]), radius << shift, c, filled, cv2.LINE_AA, shift)
        out[t] = img[..., ::-1]
    return out


def _color_wheel():
    """The optical-flow colour wheel of Baker et al. (Middlebury): 55 hues, RGB float [55, 3] in 0 … 1,
    red → yellow → green → cyan → blue → magenta → red in segments of 15, 6, 4, 11, 13 and 6 steps."""
    segments = [(15, (1, 0, 0), (1, 1, 0)), (6, (1, 1, 0), (0, 1, 0)), (4, (0, 1, 0), (0, 1, 1)),
                (11, (0, 1, 1), (0, 0, 1)), (13, (0, 0, 1), (1, 0, 1)), (6, (1, 0, 1), (1, 0, 0))]
    rows = []
    for n, a, b in segments:
        f = np.arange(n)[:, None] / n
        rows.append((1 - f) * np.array(a, float) + f * np.array(b, float))
    return np.concatenate(rows)


def flow_colors(flow, max_norm=None):
    """Displacements ``flow`` [..., 2] (dx, dy) -> RGB uint8 [..., 3]: hue from the direction on the colour
    wheel, saturation from the length divided by ``max_norm`` (default: the largest finite length),
    white for no motion."""
    flow = np.asarray(flow, np.float64)
    dx, dy = flow[..., 0], flow[..., 1]
    bad = ~(np.isfinite(dx) & np.isfinite(dy))
    dx, dy = np.where(bad, 0, dx), np.where(bad, 0, dy)
    mag = np.hypot(dx, dy)
    if max_norm is None:
        max_norm = float(mag.max()) if mag.size else 1.0
    r = np.clip(mag / max(float(max_norm), 1e-9), 0, 1)
    wheel = _color_wheel()
    k = (np.arctan2(-dy, -dx) / np.pi + 1) / 2 * (len(wheel) - 1)    # 0 … 54 around the wheel
    k0 = np.floor(k).astype(int)
    k1 = (k0 + 1) % len(wheel)
    f = (k - k0)[..., None]
    col = (1 - f) * wheel[k0] + f * wheel[k1]
    col = 1 - r[..., None] * (1 - col)                                # towards white for short vectors
    return np.round(255 * col).astype(np.uint8)


def dense_displacement(dense):
    """Displacement of every grid point from its query-frame position: float32 [Hs, Ws, T, 2]."""
    Hs, Ws = dense.tracks.shape[:2]
    S = dense.stride
    gx, gy = np.meshgrid(S * np.arange(Ws) + S / 2, S * np.arange(Hs) + S / 2)
    start = np.stack([gx, gy], -1)[:, :, None].astype(np.float32)
    return dense.tracks.astype(np.float32) - start


def trail_subsample(dense, points=400):
    """About ``points`` grid points of a dense result, evenly spaced: (tracks [n, T, 2], visible [n, T],
    queries [n, 3]) for :func:`draw_tracks`."""
    Hs, Ws, T = dense.visible.shape
    step = max(1, int(np.ceil(np.sqrt(Hs * Ws / max(1, points)))))
    ii, jj = np.meshgrid(np.arange(step // 2, Hs, step), np.arange(step // 2, Ws, step), indexing="ij")
    ii, jj = ii.ravel(), jj.ravel()
    S = dense.stride
    queries = np.stack([np.full(ii.size, dense.query_frame), S * jj + S / 2, S * ii + S / 2], 1).astype(np.float32)
    return dense.tracks[ii, jj].astype(np.float32), dense.visible[ii, jj], queries


def draw_dense(video, dense, tail=8, points=400):
    """Frames uint8 [T, H, 2W, 3]: the video with about ``points`` trails (left) next to the flow-colour
    displacement from the query frame, occluded pixels dimmed (right). ``dense``: pitrack.DenseResult."""
    import cv2
    T, H, W = video.shape[:3]
    if dense.tracks.shape[2] != T:
        raise InputError(f"dense result has {dense.tracks.shape[2]} frames, the video {T}")
    disp = dense_displacement(dense)
    vis = np.asarray(dense.visible, bool)
    mag = np.hypot(disp[..., 0], disp[..., 1])[vis]
    max_norm = float(np.percentile(mag[np.isfinite(mag)], 99)) if np.isfinite(mag).any() else 1.0
    left = draw_tracks(video, *trail_subsample(dense, points), tail=tail)
    out = np.empty((T, H, 2 * W, 3), np.uint8)
    for t in range(T):
        col = flow_colors(disp[:, :, t], max(max_norm, 1.0)).astype(np.float32)
        col[~vis[:, :, t]] *= OCCLUDED_DIM
        out[t, :, :W] = left[t]
        out[t, :, W:] = cv2.resize(col.astype(np.uint8), (W, H), interpolation=cv2.INTER_NEAREST)
    return out


def _mp4_writer(path, fps, size):
    import cv2
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    if not writer.isOpened():
        raise InputError(f"cannot write video {path} (OpenCV has no mp4v encoder for it)")
    return writer


def check_video_writer():
    """InputError unless OpenCV can encode an mp4 (a one-frame probe in a temporary folder): checked before
    tracking, so a missing encoder does not cost a run."""
    import tempfile
    with tempfile.TemporaryDirectory(prefix="pitrack-probe-") as folder:
        writer = _mp4_writer(os.path.join(folder, "probe.mp4"), 12, (16, 16))
        writer.write(np.zeros((16, 16, 3), np.uint8))
        writer.release()


def write_video(path, frames, fps=12):
    """Write RGB frames uint8 [T, H, W, 3] as an mp4 (OpenCV 'mp4v'), atomically. OpenCV's writer does not
    report a failed write (a full disk): the file is read back, and fewer frames than written is an OSError
    quoting FFmpeg's first message (what FFmpeg prints goes into that message, not onto the terminal)."""
    import cv2
    from core.errors import shortened
    from core.images import NativeMessages, decoder_line
    H, W = frames.shape[1:3]
    with atomic_path(path) as tmp, NativeMessages() as messages:
        writer = _mp4_writer(tmp, fps, (W, H))
        for f in frames:
            writer.write(np.ascontiguousarray(f[..., ::-1]))
        writer.release()
        cap = cv2.VideoCapture(tmp)
        written = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if cap.isOpened() else 0
        cap.release()
        if written != len(frames):
            said = decoder_line(messages.new_lines())
            raise OSError(errno.EIO, f"the video holds {written} of its {len(frames)} frames (disk full?"
                                     f"{' FFmpeg: ' + shortened(said) if said else ''})")


def write_overlay(path, video, tracks, visible, queries, fps=12, tail=8):
    """Sparse tracks drawn on the video (:func:`draw_tracks`), written to ``path`` (.mp4)."""
    write_video(path, draw_tracks(video, tracks, visible, queries, tail), fps)


def write_dense_overlay(path, video, dense, fps=12, tail=8, points=400):
    """A dense result drawn (:func:`draw_dense`), written to ``path`` (.mp4)."""
    write_video(path, draw_dense(video, dense, tail, points), fps)
