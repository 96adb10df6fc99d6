"""The one place that wires a tracker together: config -> backend, input checks, output checks.

Usage (shapes and units are those of the package docstring)::

    tracker = Tracker.from_config("configs/baselines/klt.yaml")
    tracks, visible, sigma = tracker(video, queries)
"""
import hashlib
import importlib
import os
import time
import typing

import numpy as np

from pitrack.config import Config, load_config
from core.errors import ConfigError, InputError
from core.atomic import remove_stale_temporaries, writable_folder
from core.paths import cache_root, folder_mb
from pitrack.video import as_numpy, check_video

# tracker name -> "module:function" with signature fn(video, queries, config, context) -> (tracks, visible, sigma)
BACKENDS = {
    "static": "pitrack.baselines:track_static",
    "klt": "pitrack.baselines:track_klt",
    "pitrack": "pitrack.pipeline:track_pitrack",
}


class TrackResult(typing.NamedTuple):
    tracks: np.ndarray   # float32 [N, T, 2] (x, y) pixels of the original frames, corner convention
    visible: np.ndarray  # bool [N, T]
    sigma: np.ndarray    # float32 [N, T] position uncertainty (1-σ) in original pixels


class DenseResult(typing.NamedTuple):
    tracks: np.ndarray   # float16 [Hs, Ws, T, 2] (x, y) original pixels of grid point (i, j) of the query frame
    visible: np.ndarray  # bool [Hs, Ws, T]
    sigma: np.ndarray    # float16 [Hs, Ws, T] position uncertainty (1-σ), original pixels
    query_frame: int     # the frame whose pixels are tracked
    stride: int          # S: grid point (i, j) starts at x = S·j + S/2, y = S·i + S/2 (corner convention)


def dense_grid(stride, height, width):
    """Pixel centres of every S-th pixel: xs [Ws], ys [Hs] with x = S·j + S/2 < W, y = S·i + S/2 < H
    (corner convention: S = 1 gives the centre of every pixel, j + 0.5)."""
    if isinstance(stride, bool) or not isinstance(stride, (int, np.integer)) or stride < 1:
        raise InputError(f"dense stride must be an integer >= 1, got {stride!r}")
    if stride > min(height, width):
        raise InputError(f"dense stride {stride} is larger than the {width}x{height} frame")
    xs = np.arange(stride / 2, width, stride, dtype=np.float64)
    ys = np.arange(stride / 2, height, stride, dtype=np.float64)
    return xs.astype(np.float32), ys.astype(np.float32)


def dense_queries(frame, stride, height, width):
    """Queries [Hs·Ws, 3] (t, x, y) of :func:`dense_grid`, row-major (i, then j)."""
    xs, ys = dense_grid(stride, height, width)
    gx, gy = np.meshgrid(xs, ys)
    return np.stack([np.full(gx.size, frame, np.float32), gx.ravel(), gy.ravel()], 1)


FRAME_INDEX_TOLERANCE = 1e-6   # a query's frame index may differ this much from an integer (float rounding)


def check_queries(queries, video_shape):
    """Validate queries [N, 3] rows (t, x, y) (integer or real numbers; an array, a torch tensor, or
    CoTracker's [1, N, 3]) against a video of shape [T, H, W, 3]; returns float32 [N, 3]."""
    T, H, W = video_shape[:3]
    q = as_numpy(queries)
    try:
        q = np.asarray(q)
    except ValueError:
        raise InputError("queries must be an [N, 3] array: its rows differ in length") from None
    if q.ndim == 3 and q.shape[2] == 3:
        if q.shape[0] != 1:
            raise InputError(f"queries have a batch of {q.shape[0]} ([B, N, 3] = {list(q.shape)}): "
                             f"pass the queries of one video at a time")
        q = q[0]
    if q.ndim != 2 or q.shape[1] != 3:
        raise InputError(f"queries must have shape [N, 3] with rows (t, x, y), got {list(q.shape)}")
    if q.shape[0] == 0:
        raise InputError("queries are empty (N = 0)")
    if q.dtype == bool or not (np.issubdtype(q.dtype, np.integer) or np.issubdtype(q.dtype, np.floating)):
        raise InputError(f"queries must be real numbers (integer or float), got dtype {q.dtype}")
    q = q.astype(np.float64)                   # checked before float32, where 1e300 would become infinity
    if not np.all(np.isfinite(q)):
        raise InputError("queries contain NaN or infinity")
    t = q[:, 0]
    bad = np.nonzero((np.abs(t - np.round(t)) > FRAME_INDEX_TOLERANCE) | (t < 0) | (t > T - 1))[0]
    if bad.size:
        raise InputError(f"query {bad[0]} has frame index {t[bad[0]]:.10g}: must be an integer in [0, {T - 1}]")
    bad = np.nonzero((q[:, 1] < 0) | (q[:, 1] > W) | (q[:, 2] < 0) | (q[:, 2] > H))[0]
    if bad.size:
        i = bad[0]
        raise InputError(f"query {i} at (x={q[i, 1]:g}, y={q[i, 2]:g}) lies outside the {W}x{H} frame")
    q[:, 0] = np.round(t)
    return q.astype(np.float32)


def grid_queries(k, frame, height, width):
    """K×K queries at frame ``frame``: cell centres x = (i + 0.5)·W/K, y = (j + 0.5)·H/K (original pixels). [K², 3]."""
    if k < 1:
        raise InputError(f"--grid must be >= 1, got {k}")
    xs = (np.arange(k) + 0.5) * width / k
    ys = (np.arange(k) + 0.5) * height / k
    gx, gy = np.meshgrid(xs, ys)
    return np.stack([np.full(k * k, frame, np.float64), gx.ravel(), gy.ravel()], 1).astype(np.float32)


def video_digest(video):
    """Content key of a video array (shape + bytes), 16 hex digits."""
    h = hashlib.sha256(repr(video.shape).encode())
    h.update(memoryview(np.ascontiguousarray(video)).cast("B"))
    return h.hexdigest()[:16]


class TrackContext:
    """What a backend gets besides video, queries and config: progress switch, cache folder, stats, and
    ``extras``: intermediate results a backend chooses to expose (e.g. 'keypoints', see track_pitrack)."""

    def __init__(self, video, progress=True, use_cache=True, cache_dir=None):
        self._video = video
        self.progress = progress
        self.use_cache = use_cache
        self._cache_dir = cache_dir
        self._cache_ok = None          # None: not probed yet (see video_cache_dir)
        self.stats = {}
        self.extras = {}

    def video_cache_dir(self):
        """This video's cache folder (one compact folder per video, keyed by content), created; or None when
        it cannot be created or written (one warning): then the whole call runs without the cache. A folder
        that is readable but not writable is not read either (simple and safe: no half-cached runs). Temporary
        files that killed runs left in it are removed (core.atomic.remove_stale_temporaries)."""
        if self._cache_ok is None:
            if self._cache_dir is None:
                self._cache_dir = os.path.join(cache_root(), video_digest(self._video))
            self._cache_ok = writable_folder(self._cache_dir)
            if self._cache_ok:
                remove_stale_temporaries(self._cache_dir, recursive=True)
        return self._cache_dir if self._cache_ok else None

    def cache_dir_in_use(self):
        """The cache folder this call used (None when it used none)."""
        return self._cache_dir if self.use_cache and self._cache_ok else None


class Tracker:
    """A point tracker built from a config. Call it with a video and queries (see TrackResult)."""

    def __init__(self, config=None, progress=True, use_cache=True, cache_dir=None):
        self.config: Config = load_config(config)
        if self.config.tracker not in BACKENDS:
            raise ConfigError(f"unknown tracker '{self.config.tracker}' (known: {', '.join(sorted(BACKENDS))})")
        mod, fn = BACKENDS[self.config.tracker].split(":")
        module = importlib.import_module(mod)
        self._backend = getattr(module, fn)
        # every checkpoint the config reads, found now (a missing one fails here, before any video is read)
        self.weights = module.check_weights(self.config) if hasattr(module, "check_weights") else {}
        self.progress = progress
        self.use_cache = use_cache
        self.cache_dir = cache_dir
        self.stats = {}
        self.extras = {}

    @classmethod
    def from_config(cls, path, **kwargs):
        return cls(load_config(path), **kwargs)

    def __call__(self, video, queries):
        """Track ``queries`` [N, 3] (t, x, y original px) through ``video`` uint8 [T, H, W, 3] RGB -> TrackResult.
        Also takes CoTracker's layout: ``video`` [1, T, 3, H, W] (uint8, or float 0..255) and ``queries``
        [1, N, 3]; numpy arrays or torch tensors (see :func:`pitrack.video.check_video`, :func:`check_queries`).
        The result is always [N, T, 2] / [N, T] (no batch axis), corner-convention pixels."""
        video = check_video(video)
        queries = check_queries(queries, video.shape)
        ctx = TrackContext(video, self.progress, self.use_cache, self.cache_dir)
        t0 = time.perf_counter()
        tracks, visible, sigma = self._backend(video, queries, self.config, ctx)
        ctx.stats["seconds"] = time.perf_counter() - t0
        cache = ctx.cache_dir_in_use()
        if cache:
            ctx.stats["cache_mb"] = folder_mb(cache)
        self.stats = ctx.stats
        self.extras = ctx.extras
        N, T = queries.shape[0], video.shape[0]
        tracks = np.asarray(tracks, np.float32)
        visible = np.asarray(visible, bool)
        sigma = np.asarray(sigma, np.float32)
        assert tracks.shape == (N, T, 2) and visible.shape == (N, T) and sigma.shape == (N, T), \
            f"backend {self.config.tracker} returned wrong shapes"
        return TrackResult(tracks, visible, sigma)

    def feature_maps(self, video):
        """The appearance maps the long-term keypoints match in, for ``video`` uint8 [T, H, W, 3] (or CoTracker's
        layout): (float16 [T, C, gh, gw] unit-norm per cell, features.grid.FeatureGrid). The per-video model is
        optimised (or read from the cache) when the config optimises it (``tto.enabled``, ``steps`` > 0);
        ``stats`` as for a call."""
        if self.config.tracker != "pitrack":
            raise ConfigError(f"tracker '{self.config.tracker}' has no feature maps")
        from pitrack.pipeline import feature_maps
        video = check_video(video)
        ctx = TrackContext(video, self.progress, self.use_cache, self.cache_dir)
        t0 = time.perf_counter()
        maps, grid = feature_maps(video, self.config, ctx)
        ctx.stats["seconds"] = time.perf_counter() - t0
        self.stats, self.extras = ctx.stats, ctx.extras
        return maps, grid

    def dense(self, video, query_frame=0, stride=4):
        """Track every ``stride``-th pixel of frame ``query_frame`` through ``video`` uint8 [T, H, W, 3] (or
        CoTracker's [1, T, 3, H, W], as for :meth:`__call__`), both directions, through the same stages as
        sparse queries (in chunks of queries: bounded memory).
        Returns a :class:`DenseResult`; ``stats["dense_points"]`` counts the points."""
        video = check_video(video)
        T, H, W = video.shape[:3]
        if isinstance(query_frame, bool) or not isinstance(query_frame, (int, np.integer)) \
                or not 0 <= query_frame < T:
            raise InputError(f"dense query frame {query_frame!r} is not a frame of the video (0 … {T - 1})")
        xs, ys = dense_grid(stride, H, W)
        result = self(video, dense_queries(int(query_frame), stride, H, W))
        self.stats["dense_points"] = int(xs.size * ys.size)
        shape = (ys.size, xs.size, T)
        return DenseResult(result.tracks.reshape(shape + (2,)).astype(np.float16),
                           result.visible.reshape(shape), result.sigma.reshape(shape).astype(np.float16),
                           int(query_frame), int(stride))
