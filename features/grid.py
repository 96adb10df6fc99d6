"""Exact maps between pixel positions and feature-grid positions.

Three rasters are involved:

* the *working* raster of another stage (e.g. the flow bank's ``working_hw`` = (h, w));
* the *feature image*: the frames resized to ``image_hw`` = (H_f, W_f) before the backbone, each side a
  multiple of the stride ``s`` (:func:`feature_image_hw`);
* the *feature grid*: the backbone's output, ``grid_hw`` = (H_f / s, W_f / s) cells.

Cell (i, j) of the grid describes the feature-image point x = offset + s·j, y = offset + s·i in the
pixel-centre convention (index space, see core.coords). ``offset`` is a property of the backbone:

* a patch embedding (kernel = stride = s, no padding, ViT): cell j covers pixels [s·j, s·j + s − 1],
  centre ``offset = (s − 1) / 2`` (6.5 for s = 14);
* a chain of centred stride-2 convolutions (odd kernel k, padding (k − 1)/2; RAFT's encoder, the
  residual CNN): output j sits on input 2j at every level, so ``offset = 0`` for any s = 2^n.

Grid coordinates (u, v) are continuous: u = (x − offset) / s, and back x = offset + s·u. Between the
working raster and the feature image the corner convention scales (x_c' = x_c · W_f / w), i.e. in
pixel-centre terms x_f = (x + 0.5)·W_f/w − 0.5. Composed:

    u = ((x + 0.5)·W_f/w − 0.5 − offset) / s,      x = (s·u + offset + 0.5)·w/W_f − 0.5

(the same with y, H_f, h). Every map here is affine and its inverse is exact (up to float rounding).
"""
import typing

import numpy as np

from core.coords import parse_resolution
from core.errors import ConfigError


def feature_image_hw(spec, original_hw, stride):
    """(H_f, W_f) for frames of ``original_hw``: ``parse_resolution(spec)`` with each side rounded to the
    nearest multiple of ``stride`` (at least one stride). E.g. 512x288, s = 8 -> (288, 512): grid 36×64;
    512x288, s = 14 -> (294, 518): grid 21×37; native 854×480, s = 8 -> (480, 856): grid 60×107."""
    stride = int(stride)
    if stride < 1:
        raise ConfigError(f"feature stride must be >= 1, got {stride}")
    h, w = parse_resolution(spec, original_hw)
    return max(1, int(round(h / stride))) * stride, max(1, int(round(w / stride))) * stride


def _affine(xy, scale, shift):
    """xy[..., 0] * scale[0] + shift[0], xy[..., 1] * scale[1] + shift[1]; numpy or torch in, same type out."""
    try:
        import torch
        if isinstance(xy, torch.Tensor):
            s = torch.tensor(scale, dtype=xy.dtype if xy.is_floating_point() else torch.float32, device=xy.device)
            b = torch.tensor(shift, dtype=s.dtype, device=xy.device)
            return xy * s + b
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    xy = np.asarray(xy, np.float64)
    return (xy * np.asarray(scale) + np.asarray(shift)).astype(np.float32)


class FeatureGrid(typing.NamedTuple):
    """Geometry of one backbone's output on one video (see the module docstring for the formulas)."""
    image_hw: tuple   # (H_f, W_f) of the feature image
    stride: int       # s: feature-image pixels per cell
    offset: float     # pixel-centre position (feature-image px) of cell 0, both axes

    @property
    def grid_hw(self):
        return self.image_hw[0] // self.stride, self.image_hw[1] // self.stride

    def image_to_grid(self, xy):
        """Pixel-centre feature-image (x, y) [..., 2] -> grid (u, v): u = (x − offset)/s."""
        s = 1.0 / self.stride
        return _affine(xy, (s, s), (-self.offset * s, -self.offset * s))

    def grid_to_image(self, uv):
        """Grid (u, v) [..., 2] -> pixel-centre feature-image (x, y): x = offset + s·u."""
        return _affine(uv, (self.stride, self.stride), (self.offset, self.offset))

    def from_working(self, xy, working_hw):
        """Pixel-centre (x, y) in a (h, w) working raster -> grid (u, v)."""
        (H, W), (h, w), s, o = self.image_hw, working_hw, self.stride, self.offset
        ax, ay = W / w / s, H / h / s
        return _affine(xy, (ax, ay), ((0.5 * W / w - 0.5 - o) / s, (0.5 * H / h - 0.5 - o) / s))

    def to_working(self, uv, working_hw):
        """Grid (u, v) -> pixel-centre (x, y) in a (h, w) working raster (exact inverse of from_working)."""
        (H, W), (h, w), s, o = self.image_hw, working_hw, self.stride, self.offset
        return _affine(uv, (s * w / W, s * h / H), ((o + 0.5) * w / W - 0.5, (o + 0.5) * h / H - 0.5))

    def cell_size_in(self, working_hw):
        """One grid cell in working px (geometric mean of the two axes): s·sqrt(w·h / (W_f·H_f))."""
        (H, W), (h, w) = self.image_hw, working_hw
        return float(self.stride * np.sqrt((w / W) * (h / H)))
