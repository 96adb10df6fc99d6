"""pitrack: a test-time-optimisation point tracker (probabilistic integration of flows and keypoints).

Public API::

    from pitrack import Tracker, load_video
    tracker = Tracker.from_config("configs/baselines/klt.yaml")
    tracks, visible, sigma = tracker(video, queries)
    dense = tracker.dense(video, query_frame=0, stride=4)   # every 4th pixel of frame 0 (DenseResult)

``video`` is uint8 [T, H, W, 3] RGB; ``queries`` float32 [N, 3] rows (t, x, y) in pixels of the
original frames (TAP-Vid corner convention). ``tracks`` float32 [N, T, 2] (x, y) original pixels,
``visible`` bool [N, T], ``sigma`` float32 [N, T] position uncertainty in original pixels. Dense:
``dense.tracks`` float16 [Hs, Ws, T, 2], ``dense.visible`` bool [Hs, Ws, T], ``dense.sigma`` float16
[Hs, Ws, T]; grid point (i, j) starts at x = S·j + S/2, y = S·i + S/2.
"""
from core.errors import InputError, ConfigError, WeightsError
from pitrack.config import load_config
from pitrack.video import load_video
from pitrack.tracker import DenseResult, Tracker, TrackResult, dense_queries, grid_queries

__all__ = ["Tracker", "TrackResult", "DenseResult", "load_video", "load_config", "grid_queries", "dense_queries",
           "InputError", "ConfigError", "WeightsError"]
