"""Keypoints on frozen features (``tto.steps: 0``): no optimisation and no training trajectories are read, the
maps are the backbone's normalised features, and the keypoints still observe a clip with known motion."""
import numpy as np
import torch

from eval.datasets import open_video_folder
from pitrack import Tracker
from pitrack.config import load_config


def test_frozen_xfeat_keypoints_observe_without_optimising(synthetic_clip, monkeypatch):
    import pitrack.pipeline as pipeline
    planned = []
    real_flow_bank = pipeline.flow_bank

    def spy(video, queries, config, ctx, chunks=None):
        bank = real_flow_bank(video, queries, config, ctx, chunks)
        planned.extend(bank._segments)
        return bank
    monkeypatch.setattr(pipeline, "flow_bank", spy)
    config = load_config({"features": {"backbone": "xfeat", "resolution": "native"}, "tto": {"steps": 0}})
    assert config.tto.enabled and not config.tto.optimises
    v = open_video_folder(synthetic_clip)
    frames = v.load_frames()
    q, idx = v.queries("first")
    tk = Tracker(config, progress=False)
    result = tk(frames, q)
    assert tk.stats["tto_steps"] == 0 and tk.stats["tto_s"] == 0.0 and "tto_key" not in tk.stats
    assert planned and "trajectories" not in planned
    assert tk.stats["kp_obs_fraction"] > 0.2
    kp = tk.extras["keypoints"]
    gt = v.points[idx]
    ok = kp["valid"] & ~v.occluded[idx]
    assert np.median(np.linalg.norm(kp["xy"][ok] - gt[ok], axis=-1)) < 4.0     # px of the 160x120 clip
    maps, grid = tk.feature_maps(frames)
    from features.backbones import make_backbone
    from features.cache import video_features
    fs = video_features(frames, config.features, backbone=make_backbone(config.features))
    assert torch.allclose(maps.float(), torch.nn.functional.normalize(fs.feats.float(), dim=1), atol=2e-3)
    assert result.tracks.shape == (q.shape[0], frames.shape[0], 2)
