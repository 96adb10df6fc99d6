"""A flow bank of known motion for the tests (shared by test_chain, test_fusion and test_filters).

It has what fusion.integrate.integrate and filters.offline_mask.offline_masks read from a bank:
``working_hw``, ``num_frames`` and ``sample(pairs, points) -> [G, M, 4]`` (dx, dy, occlusion, variance),
here bilinear samples (core.sampling.sample_fields) of whole analytic fields; plus ``flow(a, b)``.
"""
import numpy as np
import torch

from core.sampling import sample_fields


class AnalyticBank:
    """Flow fields of a known motion: ``warp(xy, a, b)`` maps pixel-centre positions [..., 2] of frame a to
    frame b; ``occluded(moved, b)`` -> bool [h, w] marks the pixels of frame a hidden in frame b (``moved``:
    their positions in b), or, instead, ``hidden(xy, a, b)`` -> bool [h, w] with ``xy`` the pixel centres of
    frame a. Every flow has variance ``var`` px². ``calls`` records the pairs read."""

    def __init__(self, T, hw, warp, occluded=None, var=0.1, hidden=None):
        self.T = self.num_frames = int(T)
        self.working_hw = tuple(hw)
        self.warp, self.occluded, self.hidden, self.var = warp, occluded, hidden, var
        h, w = hw
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
        self.grid = np.stack([xs, ys], -1)
        self.calls = []

    def fields(self, a, b):
        """Whole fields of the flow a -> b: (flow float32 [2, h, w], occlusion [h, w], variance [h, w])."""
        self.calls.append((a, b))
        moved = self.warp(self.grid, a, b)
        occ = np.zeros(self.working_hw, np.float32)
        if self.occluded is not None:
            occ = np.asarray(self.occluded(moved, b), np.float32)
        if self.hidden is not None and a != b:
            occ = np.asarray(self.hidden(self.grid, a, b), np.float32)
        flow = (moved - self.grid).transpose(2, 0, 1).astype(np.float32)
        return flow, occ, np.full(self.working_hw, self.var, np.float32)

    def flow(self, a, b):
        return self.fields(a, b)[0]

    def sample(self, pairs, points):
        stack = []
        for a, b in pairs:
            flow, occ, var = self.fields(a, b)
            stack.append(np.concatenate([flow, occ[None], var[None]], 0))
        return sample_fields(torch.from_numpy(np.stack(stack)), torch.as_tensor(points, dtype=torch.float32))


def translate(v):
    return lambda xy, a, b: xy + (b - a) * np.asarray(v)


def rotate(omega, c):
    def warp(xy, a, b):
        th = omega * (b - a)
        R = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
        return (xy - c) @ R.T + c
    return warp


def moving_square(x0, y0, side, v):
    """A square [x0, x0 + side) × [y0, y0 + side) (pixel centres, frame 0) moving by ``v`` px per frame over a
    static background. Returns (warp, hidden, inside(xy, t)) (``hidden`` for AnalyticBank): the background
    covered by the square in frame b is occluded there, and its flow a -> b is the square's motion (what a
    flow estimator reports there: the occluder's); the square itself is never occluded."""
    v = np.asarray(v, np.float64)

    def inside(xy, t):
        x, y = xy[..., 0] - t * v[0], xy[..., 1] - t * v[1]
        return (x >= x0) & (x < x0 + side) & (y >= y0) & (y < y0 + side)

    def hidden(xy, a, b):
        # a background pixel of frame a (it does not move) is hidden in b where the square is in b
        return ~inside(xy, a) & inside(xy, b)

    def warp(xy, a, b):
        moves = (inside(xy, a) | hidden(xy, a, b))[..., None]
        return np.where(moves, xy + (b - a) * v, xy)

    return warp, hidden, inside
