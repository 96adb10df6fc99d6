"""Geometry-aware feature-similarity filter (ProTracker §3.1) and the similarity along a trajectory.

Feature maps F_t [C, gh, gw] of every frame (the per-video optimised features, GeoAware-SC, DINOv2 or
RAFT-small's encoder; see the pipeline) and a map ``to_grid`` from working px (pixel-centre) to their
grid. The template of query i is q_i = n(F_{t_i}(u_i)), the feature at the query's own position in its
own frame (n: L2 normalisation, F(u): bilinear sample). A candidate at position x in frame t has the
similarity s = ⟨q_i, n(F_t(to_grid(x)))⟩ ∈ [−1, 1]; a flow candidate with s below the flow threshold and
a keypoint observation below the keypoint threshold is invalid (the paper: 0.3 and 0.5).
"""
import torch
import torch.nn.functional as F

from core.sampling import sample_map


def query_templates(maps, to_grid, q_xy, tq):
    """q_i = n(F_{t_i}(u_i)): ``maps`` [T, C, gh, gw], ``q_xy`` [N, 2] working px, ``tq`` [N] -> [N, C]."""
    tq = torch.as_tensor(tq, dtype=torch.long)
    q_xy = torch.as_tensor(q_xy, dtype=torch.float32)
    out = torch.zeros(q_xy.shape[0], maps.shape[1], device=maps.device)
    for f in torch.unique(tq).tolist():
        sel = torch.nonzero(tq == f)[:, 0]
        out[sel] = sample_map(maps[f], to_grid(q_xy[sel].to(maps.device)))
    return F.normalize(out, dim=1)


def similarity_at(maps, to_grid, templates, t, xy):
    """s = ⟨q, n(F_t(x))⟩ for points ``xy`` [M, K, 2] (working px) in frame ``t`` against ``templates`` [M, C] -> [M, K]."""
    M, K = xy.shape[:2]
    f = sample_map(maps[t], to_grid(xy.reshape(-1, 2).to(maps.device)))
    f = F.normalize(f, dim=1).view(M, K, -1)
    return (f * templates[:, None]).sum(-1).cpu()


def trajectory_similarity(maps, to_grid, templates, xy):
    """Similarity along trajectories ``xy`` [N, T, 2] working px -> [N, T] (the appearance term of visibility)."""
    N, T = xy.shape[:2]
    out = torch.zeros(N, T)
    for t in range(T):
        out[:, t] = similarity_at(maps, to_grid, templates, t, xy[:, t][:, None])[:, 0]
    return out


class SimilarityFilter:
    """Candidate filter: invalid where the similarity to the query's template is below a threshold."""

    name = "similarity"

    def __init__(self, maps, to_grid, templates, flow_threshold, keypoint_threshold):
        self.maps, self.to_grid, self.templates = maps, to_grid, templates
        self.thresholds = {"flow": float(flow_threshold), "keypoint": float(keypoint_threshold)}

    def valid(self, t, idx, xy, kind="flow"):
        """Bool [M, K]: candidates ``xy`` [M, K, 2] (working px) of queries ``idx`` [M] in frame ``t`` that pass."""
        return similarity_at(self.maps, self.to_grid, self.templates[idx], t, xy) >= self.thresholds[kind]
