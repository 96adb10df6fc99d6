"""Per-video test-time optimisation of the feature extractor and heatmap refiner (issue 5).

``tto.config.TTOConfig`` (section ``tto``); ``tto.model``: residual CNN + heatmap refiner + soft-argmax;
``tto.pairs``: verified flow trajectories and best buddies; ``tto.train``: the optimisation (resumable);
``tto.keypoints.keypoint_observations``: the entry point the integrator calls.
"""


def keypoint_observations(*args, **kwargs):
    """See :func:`tto.keypoints.keypoint_observations` (imported lazily: torch is not needed for configs)."""
    from tto.keypoints import keypoint_observations as fn
    return fn(*args, **kwargs)
