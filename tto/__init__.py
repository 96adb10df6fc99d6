"""Per-video test-time optimisation of the feature extractor and heatmap refiner.

``tto.config.TTOConfig`` (section ``tto``); ``tto.model``: residual CNN + heatmap refiner + soft-argmax;
``tto.pairs``: verified flow trajectories and best buddies; ``tto.train``: the optimisation (resumable);
``tto.keypoints``: :func:`optimise`, :func:`refined_video_maps`, :func:`keypoint_observations`.
"""
