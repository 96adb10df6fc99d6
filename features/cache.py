"""Backbone features of every frame of a video, computed once and cached as float16.

File: ``<cache_dir>/features/<key>.npz`` with ``feats`` float16 [T, C, H_f/s, W_f/s], ``key``, ``shape``.
``key`` is a short hash of: the cache format, the backbone's ``cache_id()`` (name and the weights'
sha256, or the random-init seed), the feature image size and a sha256 of the resized frames (the
cache folder is already per video; the frame hash also catches a resize change). A file that does not
load or does not match (key, shape, dtype, finiteness) is deleted and recomputed; files are written
atomically, so an interrupted run leaves no partial file; a cache that cannot be written or read
(core.atomic.cache_write / cache_unreadable) costs one warning and the features are computed.
"""
import hashlib
import os
import time
import typing

import numpy as np
from core.progress import progress_bar

from features.backbones import make_backbone
from features.grid import FeatureGrid, feature_image_hw
from core.images import ResizedFrames
from core.paths import json_key
from core.atomic import cache_unreadable, cache_write, discard_cache_file

CACHE_FORMAT = 1


class FeatureSet(typing.NamedTuple):
    feats: "object"        # torch float16 [T, C, gh, gw] on the CPU: frozen backbone features
    images: "object"       # uint8 [T, H_f, W_f, 3] (core.images.ResizedFrames or an array): frames at the feature image size
    grid: FeatureGrid      # geometry (stride, offset, sizes; see features/grid.py)
    key: str               # cache key (also identifies the features for downstream caches)
    stats: dict            # features_s, backbone_evals (frames through the backbone), features_loaded, ...


def _load(path, key, shape):
    import torch
    why = None
    try:
        with np.load(path, allow_pickle=False) as z:
            k, shp, feats = str(z["key"]), tuple(int(v) for v in z["shape"]), z["feats"]
    except PermissionError as e:                   # not corrupt: keep it, run without it
        return cache_unreadable(path, "feature cache file", e)
    except Exception as e:  # noqa: BLE001 - truncated zip, missing member: all mean "corrupt"
        why = f"unreadable ({type(e).__name__})"
    else:
        if k != key:
            why = f"key {k} != {key}"
        elif shp != shape or feats.shape != shape:
            why = f"shape {feats.shape} != {shape}"
        elif feats.dtype != np.float16:
            why = f"dtype {feats.dtype} != float16"
        elif not np.isfinite(feats).all():
            why = "non-finite values"
    if why is not None:
        discard_cache_file(path, "feature cache file", why)
        return None
    return torch.from_numpy(feats)


def _save(path, feats, key):
    """Write the cache file; False (with one warning) when it cannot be written."""
    def write(tmp):
        with open(tmp, "wb") as f:
            np.savez(f, feats=feats.numpy(), key=np.array(key), shape=np.array(feats.shape, np.int64))
    return cache_write(path, write, "feature cache file", suffix=".npz")


def video_features(video, cfg, cache_dir=None, progress=False, seed=0, backbone=None):
    """Frozen features of every frame of ``video`` (uint8 RGB [T, H, W, 3], original resolution).

    ``cfg``: a FeatureConfig. The frames are resized (INTER_AREA when shrinking) to the feature image
    size (:func:`features.grid.feature_image_hw`) and run through the backbone ``cfg.batch_size`` frames
    at a time. With ``cache_dir`` the result is read from / written to the cache. Returns a FeatureSet.
    """
    import torch
    video = np.asarray(video)
    if video.ndim != 4 or video.shape[-1] != 3 or video.dtype != np.uint8:
        raise ValueError(f"video must be uint8 [T, H, W, 3], got {video.shape} {video.dtype}")
    t_start = time.perf_counter()
    bb = backbone if backbone is not None else make_backbone(cfg, seed)
    image_hw = feature_image_hw(cfg.resolution, video.shape[1:3], bb.stride)
    grid = FeatureGrid(tuple(int(v) for v in image_hw), int(bb.stride), float(bb.offset))
    images = ResizedFrames(video, image_hw)
    h = hashlib.sha256(repr(images.shape).encode())
    for t in range(len(images)):                   # one frame at a time: no copy of the whole video
        h.update(memoryview(images[[t]]).cast("B"))
    fields = dict(bb.cache_id(), format=CACHE_FORMAT, image_hw=list(image_hw), frames=h.hexdigest()[:16])
    key = json_key(fields)
    T = video.shape[0]
    shape = (T, int(bb.channels)) + grid.grid_hw
    path = os.path.join(os.fspath(cache_dir), "features", f"{key}.npz") if cache_dir is not None else None
    stats = dict(backbone=bb.name, feature_grid=f"{grid.grid_hw[1]}x{grid.grid_hw[0]}",
                 feature_image=f"{image_hw[1]}x{image_hw[0]}", backbone_evals=0, features_loaded=False)
    feats = _load(path, key, shape) if path is not None and os.path.isfile(path) else None
    if feats is not None:
        stats["features_loaded"] = True
    else:
        bs = max(1, int(cfg.batch_size))
        out = torch.empty(shape, dtype=torch.float16)
        for i in progress_bar(range(0, T, bs), desc=f"features {bb.name} {image_hw[1]}x{image_hw[0]}",
                              enabled=progress and T > bs, leave=False):
            f = bb(images[i:i + bs])
            if tuple(f.shape[1:]) != shape[1:]:
                raise RuntimeError(f"backbone {bb.name} returned {tuple(f.shape)}, expected [B, {shape[1]}, "
                                   f"{shape[2]}, {shape[3]}]")
            if not torch.isfinite(f).all():
                raise RuntimeError(f"backbone {bb.name} returned non-finite features")
            out[i:i + f.shape[0]] = f.to("cpu", torch.float16)
            stats["backbone_evals"] += int(f.shape[0])
        feats = out
        if path is not None:
            _save(path, feats, key)
    stats["features_s"] = time.perf_counter() - t_start
    stats["features_mb"] = feats.numel() * 2 / 2 ** 20
    return FeatureSet(feats, images, grid, key, stats)
