"""Visibility from flow and appearance: one formula, in one function.

DINO-Tracker's occlusion rule, as ProTracker uses it: a point is occluded where the feature at its
estimated position is unlike the query's template (cosine similarity s below a threshold τ). The flow
chains give a second, independent opinion (the fused estimate is visible when at least one of its
candidates passed the forward–backward check and the filters). The two are combined by

    visible(i, t) = flow_visible(i, t)  and  s(i, t) ≥ τ,

i.e. a point is visible only where both the motion and the appearance say so; τ = −1 switches the
appearance term off. The query frame itself is always visible.
"""
import torch


def combined_visibility(flow_visible, similarity, threshold, tq):
    """``flow_visible`` bool [N, T], ``similarity`` [N, T] (None: flow only), ``threshold`` τ, ``tq`` [N] -> bool [N, T]."""
    vis = flow_visible.clone()
    if similarity is not None:
        vis &= similarity >= float(threshold)
    vis[torch.arange(vis.shape[0]), torch.as_tensor(tq, dtype=torch.long)] = True
    return vis
