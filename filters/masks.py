"""Object masks per query, and the mask filter (ProTracker §3.1): a candidate outside its object's mask is invalid.

A :class:`MaskSet` holds K object masks over the whole video and which object each query belongs to.
Masks are stored bit-packed at a reduced raster covering the whole frame (corner convention scales
exactly between rasters, core.coords). Both mask sources (SAM2, filters/sam2_masks.py; the offline mask,
filters/offline_mask.py) produce one.
"""
import typing

import numpy as np
import torch

from core.sampling import sample_fields


class MaskSet(typing.NamedTuple):
    packed: np.ndarray          # uint8 [K, T, h, ceil(w/8)]: np.packbits(mask, axis=-1) of bool [K, T, h, w]
    mask_hw: tuple              # (h, w) of the stored masks
    object_of_query: np.ndarray  # int64 [N]: the object (0..K-1) of each query, -1 for a query without one
    stats: dict                 # how the masks were made (seconds, network evaluations, objects, ...)

    @property
    def num_objects(self):
        return int(self.packed.shape[0])

    def frame(self, k, t):
        """Bool [h, w] mask of object k in frame t."""
        return np.unpackbits(self.packed[k, t], axis=-1, count=self.mask_hw[1]).astype(bool)

    @classmethod
    def from_masks(cls, masks, object_of_query, stats=None):
        """From bool [K, T, h, w] masks."""
        masks = np.asarray(masks, bool)
        return cls(np.packbits(masks, axis=-1), tuple(int(v) for v in masks.shape[2:]),
                   np.asarray(object_of_query, np.int64), dict(stats or {}))


class MaskFilter:
    """Candidate filter: invalid where the query's object mask, sampled bilinearly at the candidate, is below
    ``threshold`` (ProTracker: 0.01, i.e. entirely outside the binary mask). Queries without an object pass."""

    name = "mask"

    def __init__(self, masks: MaskSet, working_hw, threshold):
        self.masks, self.working_hw, self.threshold = masks, tuple(working_hw), float(threshold)
        self._frames = {}

    def _frame(self, k, t):
        if (k, t) not in self._frames:
            if len(self._frames) > 256:
                self._frames.clear()
            self._frames[(k, t)] = torch.from_numpy(self.masks.frame(k, t).astype(np.float32))
        return self._frames[(k, t)]

    def valid(self, t, idx, xy, kind="flow"):
        """Bool [M, K] for candidates ``xy`` [M, K, 2] (working px, pixel-centre) of queries ``idx`` [M] in frame t."""
        obj = torch.as_tensor(self.masks.object_of_query)[idx]
        ok = torch.ones(xy.shape[:2], dtype=torch.bool)
        (h, w), (mh, mw) = self.working_hw, self.masks.mask_hw
        # pixel-centre working px -> pixel-centre mask px (corner convention scales exactly)
        mxy = torch.stack([(xy[..., 0] + 0.5) * (mw / w) - 0.5, (xy[..., 1] + 0.5) * (mh / h) - 0.5], -1)
        for k in torch.unique(obj[obj >= 0]).tolist():
            sel = torch.nonzero(obj == k)[:, 0]
            v = sample_fields(self._frame(k, t)[None, None], mxy[sel].reshape(1, -1, 2))[0, :, 0]
            ok[sel] = v.view(sel.numel(), -1) >= self.threshold
        return ok
