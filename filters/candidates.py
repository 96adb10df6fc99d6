"""The candidate-filter hook of the integrator: every filter votes on every candidate; a rejected candidate
is marked occluded (occlusion probability 1), so it takes no part in selection or merging (ProTracker §3.1).

Each filter has a ``name`` and ``valid(t, idx, xy, kind) -> bool [M, K]`` for the candidates ``xy``
[M, K, 2] (working px) of queries ``idx`` [M] in frame t; ``kind`` is 'flow' or 'keypoint'. Rejections
are counted per filter among the candidates that would otherwise have been usable (in the frame and
below the occlusion threshold), and their positions kept, so the evaluation can say how many were
truly wrong.
"""
import numpy as np
import torch


class CandidateFilters:
    def __init__(self, filters, occlusion_threshold):
        self.filters = list(filters)
        self.threshold = float(occlusion_threshold)
        self.rejected = {f.name: [] for f in self.filters}   # name -> list of (idx [R], t, xy [R, 2], kind)

    def __bool__(self):
        return bool(self.filters)

    def _record(self, name, t, idx, xy, rejected, kind):
        m, k = torch.nonzero(rejected, as_tuple=True)
        if m.numel():
            self.rejected[name].append((idx[m].numpy(), t, xy[m, k].numpy(), kind))

    def __call__(self, t, idx, xy, occ, ok):
        """The integrator's hook: occlusion [M, K] of the candidates ``xy`` [M, K, 2], rejected ones set to 1."""
        usable = ok & (occ < self.threshold)
        keep = torch.ones_like(usable)
        for f in self.filters:
            v = f.valid(t, idx, xy, "flow")
            self._record(f.name, t, idx, xy, usable & ~v, "flow")
            keep &= v
        return torch.where(keep, occ, torch.ones_like(occ))

    def observations(self, xy, valid):
        """Keypoint observations ``xy`` [N, T, 2], ``valid`` [N, T] -> valid with the rejected ones removed."""
        valid = valid.clone()
        N, T = valid.shape
        for t in range(T):
            idx = torch.nonzero(valid[:, t])[:, 0]
            if not idx.numel():
                continue
            keep = torch.ones(idx.numel(), dtype=torch.bool)
            for f in self.filters:
                v = f.valid(t, idx, xy[idx, t][:, None], "keypoint")[:, 0]
                self._record(f.name, t, idx, xy[idx, t][:, None], ~v[:, None], "keypoint")
                keep &= v
            valid[idx, t] = keep
        return valid

    def report(self, to_original):
        """Per filter: rejected count and arrays (query [R], frame [R], xy [R, 2] original px via ``to_original``,
        keypoint [R] bool) of every rejection; a candidate rejected in several passes appears each time."""
        out = {}
        for name, rows in self.rejected.items():
            if rows:
                q = np.concatenate([r[0] for r in rows])
                t = np.concatenate([np.full(len(r[0]), r[1]) for r in rows])
                xy = to_original(np.concatenate([r[2] for r in rows]))
                kp = np.concatenate([np.full(len(r[0]), r[3] == "keypoint") for r in rows])
            else:
                q, t, xy, kp = np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 2), np.float32), np.zeros(0, bool)
            out[name] = dict(query=q.astype(np.int64), frame=t.astype(np.int64), xy=np.asarray(xy, np.float32),
                             keypoint=kp.astype(bool))
        return out
