"""Visibility from flow and appearance: one formula, in one function.

DINO-Tracker's occlusion rule, as ProTracker uses it: a point is occluded where the feature at its
estimated position is unlike the query's template (cosine similarity s below a threshold). The flow
chains give a second, independent opinion: the fused estimate is visible when at least one of its
candidates passed the forward–backward check and the filters. The two are combined by

    visible(i, t) = flow_visible(i, t)  and  s(i, t) ≥ max(τ, r · m_i),
    m_i = median of s(i, t') over the frames t' ≠ t_i where the flow calls point i visible (for an even
          count the lower of the two middle values, as torch.median),

so a point is visible only where both the motion and the appearance say so. The per-point part r · m_i
makes the appearance test relative: features of a textured point stay similar along its track, those of
a point on a plain or deforming surface less so, and one absolute threshold either misses the occlusions
of the first kind or calls the second kind occluded everywhere (measured: docs/configs.md, "Visibility"). τ is an
absolute floor. The query frame itself is always visible.
"""
import torch


def combined_visibility(flow_visible, similarity, threshold, relative, tq):
    """``flow_visible`` bool [N, T], ``similarity`` [N, T] (None: flow only), τ ``threshold``, r ``relative``,
    ``tq`` [N] query frames -> visible bool [N, T]."""
    vis = flow_visible.clone()
    rows = torch.arange(vis.shape[0])
    tq = torch.as_tensor(tq, dtype=torch.long)
    if similarity is not None:
        s = similarity.float()
        seen = flow_visible.clone()
        seen[rows, tq] = False
        med = torch.stack([s[i][seen[i]].median() if seen[i].any() else s.new_tensor(1.0) for i in rows.tolist()])
        vis &= s >= torch.clamp(float(relative) * med, min=float(threshold))[:, None]
    vis[rows, tq] = True
    return vis
