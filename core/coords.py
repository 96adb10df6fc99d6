"""Coordinate conventions, in one place.

Positions are (x, y) pixels in the TAP-Vid *corner* convention: (0, 0) is the top-left corner of the
top-left pixel, so that pixel's centre is (0.5, 0.5) and a frame of width W spans x in [0, W].
In this convention changing frame size is a pure scale: x' = x · W'/W, y' = y · H'/H.
Array indexing, OpenCV (remap, LK) and ``grid_sample(align_corners=True)`` put pixel centres at
integers; convert with ``to_center`` / ``from_center`` (subtract / add 0.5) right before / after them.
"""
import re

import numpy as np

from core.errors import ConfigError, quoted

MAX_SIDE = 8192          # largest side of a working raster (8K); one float32 RGB frame of it is 0.8 GB

SCORING_SIZE = (256, 256)  # (H, W) of the TAP-Vid scoring raster


def scale_xy(xy, from_hw, to_hw):
    """Map corner-convention (x, y) [..., 2] from a (H, W) frame to a (H', W') frame: x' = x·W'/W, y' = y·H'/H."""
    xy = np.asarray(xy, dtype=np.float64)
    s = np.array([to_hw[1] / from_hw[1], to_hw[0] / from_hw[0]])
    return (xy * s).astype(np.float32)


def to_center(xy):
    """Corner convention -> pixel-centre convention (index space): subtract 0.5."""
    return np.asarray(xy, dtype=np.float32) - 0.5


def from_center(xy):
    """Pixel-centre convention -> corner convention: add 0.5."""
    return np.asarray(xy, dtype=np.float32) + 0.5


def outside_frame(x, y, hw):
    """Whether pixel-centre positions (x, y) (numpy or torch, any equal shapes) lie outside a frame of size
    ``hw`` = (h, w), which spans [-0.5, w - 0.5] × [-0.5, h - 0.5] in that convention (NaN counts as inside)."""
    h, w = hw
    return (x < -0.5) | (x > w - 0.5) | (y < -0.5) | (y > h - 0.5)


def inside_frame(x, y, hw):
    """Whether pixel-centre positions (x, y) lie inside a frame of size ``hw`` = (h, w), borders included
    (NaN counts as outside)."""
    h, w = hw
    return (x >= -0.5) & (x <= w - 0.5) & (y >= -0.5) & (y <= h - 0.5)


def scale_sigma(sigma, from_hw, to_hw):
    """Isotropic σ from one frame size to another, by the geometric mean of the two axis scales."""
    s = np.sqrt((to_hw[1] / from_hw[1]) * (to_hw[0] / from_hw[0]))
    return (np.asarray(sigma, dtype=np.float64) * s).astype(np.float32)


def parse_frame_size(text, min_side=16, option="--size", order="WxH"):
    """(H, W) from a command line's ``WxH`` (e.g. ``854x480``), or ``HxW`` with ``order="HxW"``; InputError
    unless both sides are >= ``min_side``."""
    from core.errors import InputError
    m = re.fullmatch(r"(\d+)x(\d+)", str(text).strip().lower())
    if not m or min(int(m.group(1)), int(m.group(2))) < min_side:
        raise InputError(f"{option} must be {order} with both sides >= {min_side}, got {text!r}")
    first, second = int(m.group(1)), int(m.group(2))
    return (first, second) if order == "HxW" else (second, first)


def parse_resolution(spec, hw):
    """Working (H, W) for a frame of size ``hw`` = (H, W) from a config string.

    ``native`` -> (H, W); ``WxH`` (e.g. ``256x256``, ``512x288``) -> exactly that size;
    ``long<N>`` (e.g. ``long512``) -> the long side scaled to N, aspect kept, each side rounded to
    a multiple of 8 (what RAFT needs); ``short<N>`` likewise for the short side.
    """
    H, W = int(hw[0]), int(hw[1])
    s = str(spec).strip().lower()
    if s == "native":
        return H, W
    m = re.fullmatch(r"(\d{1,9})x(\d{1,9})", s)
    if m:
        w, h = int(m.group(1)), int(m.group(2))
        if w < 8 or h < 8:
            raise ConfigError(f"resolution {spec!r} is too small (each side must be >= 8)")
        if w > MAX_SIDE or h > MAX_SIDE:
            raise ConfigError(f"resolution {spec!r} is too large (each side must be <= {MAX_SIDE})")
        return h, w
    m = re.fullmatch(r"(long|short)(\d{1,9})", s)
    if m:
        n = int(m.group(2))
        if n > MAX_SIDE:
            raise ConfigError(f"resolution {spec!r} is too large (at most {m.group(1)}{MAX_SIDE})")
        side = max(H, W) if m.group(1) == "long" else min(H, W)
        f = n / side
        out = max(8, int(round(H * f / 8)) * 8), max(8, int(round(W * f / 8)) * 8)
        if max(out) > MAX_SIDE:
            raise ConfigError(f"resolution {spec!r} makes the {W}x{H} frames {out[1]}x{out[0]}: each side must be "
                              f"<= {MAX_SIDE}")
        return out
    raise ConfigError(f"resolution {quoted(spec)} not understood: use 'native', 'WxH' (e.g. 256x256), 'long<N>' or 'short<N>'")
