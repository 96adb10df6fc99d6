"""An object mask per query made from the video itself (no SAM2 weights, never ground truth).

For a query frame f, a grid of points p (spacing g working px) is moved into every other frame t by the
direct flow f → t (the Δ = ∞ flows the chains read anyway), with its forward–backward occlusion
probability. A point *moves with* query i when, in every frame where both are visible (occlusion < 0.5),
its displacement stays close to the query's:

    |F_{f→t}(p) − F_{f→t}(q_i)| ≤ τ + β·|p − q_i|     (τ = ``motion_tolerance``, β = 0.1: a part far from
                                                       the query may deform or rotate more)

in at least ``min_frames`` frames and in no frame beyond it. The object of query i is the 4-connected
component of such points that contains q_i. Its mask in frame t is the set of its points visible in t,
splatted at their positions in t and closed by one grid spacing; in frame f it is the component itself.
A query that lies inside an existing object's mask in its own frame shares that object.
"""
import time

import numpy as np
import torch

from core.coords import parse_resolution
from filters.masks import MaskSet

SPREAD = 0.1   # β: extra tolerance per px of distance from the query


def _grid(hw, spacing):
    h, w = hw
    xs = np.arange(spacing / 2 - 0.5, w - 0.5, spacing, dtype=np.float32)
    ys = np.arange(spacing / 2 - 0.5, h - 0.5, spacing, dtype=np.float32)
    gx, gy = np.meshgrid(xs, ys)
    return np.stack([gx, gy], -1)   # [gh, gw, 2] working px, pixel-centre


def _component(member, seed):
    """4-connected component of bool [gh, gw] ``member`` containing cell ``seed`` (row, col)."""
    from scipy import ndimage
    lab, _ = ndimage.label(member)
    k = lab[seed]
    return (lab == k) if k > 0 else np.zeros_like(member)


def _splat(xy, mask_hw, working_hw, spacing):
    """Bool [mh, mw] raster with the points ``xy`` [P, 2] (working px) set, closed by one grid spacing."""
    import cv2
    (mh, mw), (h, w) = mask_hw, working_hw
    out = np.zeros((mh, mw), np.uint8)
    if len(xy):
        mx = np.clip(np.round((xy[:, 0] + 0.5) * mw / w - 0.5).astype(int), 0, mw - 1)
        my = np.clip(np.round((xy[:, 1] + 0.5) * mh / h - 0.5).astype(int), 0, mh - 1)
        out[my, mx] = 1
        r = max(1, int(np.ceil(spacing * max(mw / w, mh / h))))
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
        out = cv2.morphologyEx(out, cv2.MORPH_CLOSE, kernel)
    return out.astype(bool)


def offline_masks(bank, queries, cfg, original_hw):
    """MaskSet for ``queries`` float32 [N, 3] (t, x, y original px) from the flows of ``bank`` (FlowBank).

    ``cfg``: an OfflineMaskConfig (``resolution`` of the stored masks and of the point grid,
    ``motion_tolerance`` τ in original px, ``min_frames``).
    """
    t0 = time.perf_counter()
    T, hw = bank.num_frames, tuple(bank.working_hw)
    mask_hw = tuple(int(v) for v in parse_resolution(cfg.resolution, original_hw))
    spacing = max(1.0, hw[1] / mask_hw[1])
    grid = _grid(hw, spacing)                                         # [gh, gw, 2]
    gh, gw = grid.shape[:2]
    pts = torch.from_numpy(grid.reshape(-1, 2))
    scale = np.sqrt(hw[0] * hw[1] / (original_hw[0] * original_hw[1]))
    tol0 = float(cfg.motion_tolerance) * scale
    q_xy = (queries[:, 1:3] * np.array([hw[1] / original_hw[1], hw[0] / original_hw[0]]) - 0.5).astype(np.float32)
    tq = queries[:, 0].astype(int)
    masks, object_of_query = [], np.full(len(queries), -1, np.int64)
    for f in sorted(set(tq.tolist())):
        others = [t for t in range(T) if t != f]
        sel = np.nonzero(tq == f)[0]
        both = torch.cat([pts, torch.from_numpy(q_xy[sel])])         # grid points, then this frame's queries
        samp = bank.sample([(f, t) for t in others], both[None].expand(len(others), -1, -1).contiguous())
        disp, vis = samp[..., :2].numpy(), (samp[..., 2] < 0.5).numpy()   # [T-1, P+M, 2], [T-1, P+M]
        P = pts.shape[0]
        pos = both.numpy()[None] + disp
        frame_objects = {}
        for j, i in enumerate(sel):
            cell = (int(np.clip(round((q_xy[i, 1] + 0.5) / spacing - 0.5), 0, gh - 1)),
                    int(np.clip(round((q_xy[i, 0] + 0.5) / spacing - 0.5), 0, gw - 1)))
            for k in frame_objects:                                   # inside an existing object's mask
                if masks[k][f][cell]:
                    object_of_query[i] = k
                    break
            if object_of_query[i] >= 0:
                continue
            qv = vis[:, P + j]
            tol = tol0 + SPREAD * np.linalg.norm(grid.reshape(-1, 2) - q_xy[i], axis=-1)      # [P]
            dev = np.linalg.norm(disp[:, :P] - disp[:, P + j][:, None], axis=-1)              # [T-1, P]
            seen = vis[:, :P] & qv[:, None]
            agree = ((dev <= tol) | ~seen).all(0) & (seen.sum(0) >= int(cfg.min_frames))
            agree[cell[0] * gw + cell[1]] = True
            member = _component(agree.reshape(gh, gw), cell).reshape(-1)
            obj = np.zeros((T,) + mask_hw, bool)
            obj[f] = _splat(grid.reshape(-1, 2)[member], mask_hw, hw, spacing)
            for n, t in enumerate(others):
                obj[t] = _splat(pos[n, :P][member & vis[n, :P]], mask_hw, hw, spacing)
            object_of_query[i] = len(masks)
            frame_objects[len(masks)] = True
            masks.append(obj)
    stats = dict(objects=len(masks), offline_mask_s=time.perf_counter() - t0)
    return MaskSet.from_masks(np.stack(masks) if masks else np.zeros((0, T) + mask_hw, bool), object_of_query, stats)
