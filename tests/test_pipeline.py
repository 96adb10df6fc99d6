"""The pipeline (pitrack/pipeline.py) wired stage by stage by hand on a rendered clip, with a config whose values
differ from configs/default.yaml where they matter; the Tracker must give exactly the hand-wired result, and
each of those values must change the result on this clip (so the equality shows that the pipeline uses it)."""
import dataclasses

import numpy as np
import pytest

from core.coords import from_center, scale_sigma, scale_xy, to_center

T, HW, N = 12, (96, 128), 16

CHANGES = {
    "seed": 2,
    "flow": {"backend": "dis", "resolution": "96x64", "dis_preset": "fast"},   # working raster != original
    "chain": {"occlusion_threshold": 0.4, "query_sigma": 0.75},
    "tto": {"enabled": True, "steps": 20, "frames_per_step": 2, "warmup_steps": 2, "traj_per_pair": 16,
            "buddies_per_pair": 16, "cycle_per_pair": 8, "checkpoint_every": 100, "threads": 1,
            "similarity_threshold": 0.3, "cycle_tolerance": 1.0},
    "filters": {"mask": {"source": "offline", "threshold": 0.9,
                         "offline": {"resolution": "long64", "motion_tolerance": 6.0, "min_frames": 2}},
                "similarity": {"enabled": True, "source": "tto", "flow_threshold": 0.35, "keypoint_threshold": 0.85}},
    "fusion": {"correlation": 0.2, "observation_gate": 3.0, "outlier_radius": 3.0},
    "visibility": {"appearance": True, "similarity_threshold": 0.5, "relative_threshold": 0.6},
}


def _config():
    """CHANGES over configs/default.yaml, with a random-init DINOv2 backbone (no checkpoint needed anywhere;
    meaningless features, but the same wiring)."""
    from pitrack.config import load_config
    changes = dict(CHANGES, features={"backbone": "dinov2_vits14", "random_init": True, "resolution": "168x126"})
    return load_config(changes)


def _clip():
    from eval.synthetic import make_clip
    video, points, _ = make_clip(num_frames=T, size_hw=HW, seed=1, num_points=N)
    tq = np.array([0] * 8 + [5] * 4 + [11] * 4)
    queries = np.concatenate([tq[:, None], points[np.arange(N), tq]], 1).astype(np.float32)
    return video, queries


def _integrate(bank, q_xy, tq, config, observations, hook, original_hw):
    """fusion.integrate.integrate with the config's values; radius and gate from original to working px."""
    from fusion.integrate import integrate
    cfg, fusion, hw = config.chain, config.fusion, bank.working_hw
    intervals, use_inf = cfg.parsed_intervals()
    return integrate(bank, T, q_xy, tq, intervals, use_inf, cfg.occlusion_threshold, cfg.query_sigma ** 2, fusion,
                     radius=float(scale_sigma(fusion.outlier_radius, original_hw, hw)),
                     observations=observations, progress=False,
                     gate=float(scale_sigma(fusion.observation_gate, original_hw, hw)),
                     candidate_filter=hook)


class Hand:
    """Every stage called by hand, as pitrack/pipeline.py documents them."""

    def __init__(self, video, queries, config):
        from filters.masks import MaskFilter
        from filters.similarity import query_templates
        from pitrack import pipeline
        from pitrack.tracker import TrackContext
        from tto.keypoints import keypoint_observations
        self.video, self.queries, self.config = video, queries, config
        ctx = TrackContext(video, progress=False, use_cache=False)
        self.original_hw = video.shape[1:3]
        self.tq = queries[:, 0].astype(int)
        self.bank = bank = pipeline.flow_bank(video, queries, config, ctx)
        self.hw = hw = bank.working_hw
        self.q_xy = to_center(scale_xy(queries[:, 1:3], self.original_hw, hw))
        fs, self.model, tto_maps = pipeline.per_video_model(video, bank, config, ctx)
        self.raw_obs = keypoint_observations(self.model, tto_maps, fs.grid, self.q_xy, self.tq, hw, self.original_hw,
                                             config.tto)[:3]
        self.maps, grid = pipeline.similarity_features(video, config, ctx, tto_maps, fs.grid)
        self.to_grid = lambda xy: grid.from_working(xy, hw)
        self.templates = query_templates(self.maps, self.to_grid, self.q_xy, self.tq)
        self.masks = pipeline.object_masks(video, queries, bank, config, ctx)
        self.mask_filter = MaskFilter(self.masks, hw, config.filters.mask.threshold)
        self.run(config)

    def filters(self, config):
        from filters.candidates import CandidateFilters
        from filters.similarity import SimilarityFilter
        s = config.filters.similarity
        return CandidateFilters([self.mask_filter, SimilarityFilter(self.maps, self.to_grid, self.templates,
                                                                    s.flow_threshold, s.keypoint_threshold)],
                                config.chain.occlusion_threshold)

    def run(self, config):
        """Stages 3-5 with ``config``'s values; sets and returns (tracks, visible, sigma) in original px."""
        from filters.similarity import trajectory_similarity
        from fusion.visibility import combined_visibility
        self.hook = self.filters(config)
        xy, var, ok = self.raw_obs
        self.obs = [xy, var, self.hook.observations(xy, ok)]
        self.est = _integrate(self.bank, self.q_xy, self.tq, config, self.obs, self.hook, self.original_hw)
        self.similarity = trajectory_similarity(self.maps, self.to_grid, self.templates, self.est.xy)
        v = config.visibility
        self.visible = combined_visibility(self.est.vis, self.similarity, v.similarity_threshold, v.relative_threshold,
                                           self.tq).numpy()
        self.tracks = self.to_original(self.est.xy.numpy())
        self.sigma = scale_sigma(np.sqrt(self.est.var.numpy()), self.hw, self.original_hw)
        return self.tracks, self.visible, self.sigma

    def to_original(self, xy):
        return scale_xy(from_center(np.asarray(xy)), self.hw, self.original_hw)


@pytest.fixture(scope="module")
def wired():
    from pitrack import Tracker
    video, queries = _clip()
    config = _config()
    tracker = Tracker(config, progress=False, use_cache=False)
    result = tracker(video, queries)
    hand = Hand(video, queries, config)
    return dict(tracker=tracker, result=result, hand=hand, config=config, video=video, queries=queries)


def test_config_differs_from_the_defaults_where_it_matters(wired):
    from pitrack.config import load_config
    c, d = wired["config"], load_config(None)
    for key in SENSITIVE:
        assert _get(c, key) != _get(d, key), key
        section, _, leaf = key.rpartition(".")
        node = CHANGES
        for k in section.split("."):
            node = node[k]
        assert _get(c, key) == node[leaf], key
    assert c.tto.enabled and c.filters.similarity.enabled and c.visibility.appearance
    assert c.filters.mask.source == "offline" and c.filters.similarity.source == "tto"
    assert wired["hand"].hw != tuple(wired["video"].shape[1:3])      # radius and gate need converting


def test_tracker_equals_the_stages_wired_by_hand(wired):
    r, hand, tr = wired["result"], wired["hand"], wired["tracker"]
    assert r.tracks.shape == (N, T, 2) and np.isfinite(r.tracks).all()
    np.testing.assert_array_equal(r.tracks, hand.tracks.astype(np.float32))
    np.testing.assert_array_equal(r.visible, hand.visible)
    np.testing.assert_array_equal(r.sigma, hand.sigma.astype(np.float32))
    ex = tr.extras
    np.testing.assert_array_equal(ex["flow_visible"], hand.est.vis.numpy())
    np.testing.assert_array_equal(ex["appearance_similarity"], hand.similarity.numpy())
    np.testing.assert_array_equal(ex["keypoints"]["valid"], hand.obs[2].numpy())
    np.testing.assert_array_equal(ex["keypoints"]["xy"], hand.to_original(hand.obs[0].numpy()))
    rep = hand.hook.report(hand.to_original)
    assert set(ex["filter_rejections"]) == set(rep) == {"mask", "similarity"}
    for name, r_hand in rep.items():
        for k, v in r_hand.items():
            np.testing.assert_array_equal(ex["filter_rejections"][name][k], v, err_msg=f"{name}.{k}")
    np.testing.assert_array_equal(ex["masks"].packed, hand.masks.packed)
    np.testing.assert_array_equal(ex["masks"].object_of_query, hand.masks.object_of_query)


def test_tracker_reports_the_stage_stats(wired):
    from pitrack import pipeline
    st, ex, hand = wired["tracker"].stats, wired["tracker"].extras, wired["hand"]
    assert wired["tracker"]._backend is pipeline.track_pitrack           # tracker 'pitrack' is the pipeline
    # flow
    assert st["flow_pairs_computed"] > 0 and st["network_evals"] == 2 * st["flow_pairs_computed"]
    assert st["flow_pairs_loaded"] == 0 and st["working_resolution"] == "96x64"
    # features, optimisation, keypoints
    assert st["backbone_evals"] == T and st["tto_steps"] == 20 and st["tto_enabled"] is True
    assert st["traj_count"] > 0 and "tto_loss_last" in st
    assert 0 < st["kp_obs_fraction"] <= 1 and "keypoints_s" in st
    # filters: counts of the rejections in extras
    rep = ex["filter_rejections"]
    assert set(st["filters"]) == {"mask", "similarity"}
    for name, r in rep.items():
        assert st["filters"][name] == dict(rejected=int(r["query"].size), rejected_keypoints=int(r["keypoint"].sum()))
    assert st["filters"]["similarity"]["rejected"] > 0                   # the filters acted on this clip
    assert st["mask_objects"] == hand.masks.num_objects >= 1
    assert {"filter_rejections", "flow_visible", "keypoints", "appearance_similarity", "masks"} <= set(ex)
    assert ex["flow_visible"].shape == (N, T) and ex["flow_visible"].dtype == bool


def _differs(a, b):
    return any(not np.array_equal(x, y) for x, y in zip(a, b))


SENSITIVE = ["fusion.correlation", "fusion.observation_gate", "fusion.outlier_radius", "chain.occlusion_threshold",
             "chain.query_sigma", "filters.similarity.flow_threshold", "filters.similarity.keypoint_threshold",
             "filters.mask.threshold", "visibility.similarity_threshold", "visibility.relative_threshold"]


def _get(config, dotted):
    for k in dotted.split("."):
        config = getattr(config, k)
    return config


@pytest.mark.parametrize("key", SENSITIVE)
def test_each_value_changes_the_result(wired, key):
    """Stages 3-5 by hand with one value set to configs/default.yaml's give a different result on this clip: the
    Tracker's equality with the hand-wired stages therefore shows that it used the config's value."""
    from pitrack.config import load_config
    hand, r = wired["hand"], wired["result"]
    path, _, leaf = key.rpartition(".")
    value = _get(load_config(None), key)
    config = _replace(wired["config"], path, leaf, value)
    hand.mask_filter.threshold = config.filters.mask.threshold
    try:
        other = hand.run(config)
    finally:
        hand.mask_filter.threshold = wired["config"].filters.mask.threshold
        hand.run(wired["config"])
    assert _differs(other, (r.tracks, r.visible, r.sigma)), f"{key} = {value} (default) changes nothing on this clip"


def test_radius_and_gate_are_converted_to_working_pixels(wired, monkeypatch):
    """Passing the original-px radius and gate to the integrator unconverted gives another result."""
    import fusion.integrate
    hand, r = wired["hand"], wired["result"]
    real = fusion.integrate.integrate

    def unconverted(*args, radius, gate, **kw):
        f = wired["config"].fusion
        return real(*args, radius=f.outlier_radius, gate=f.observation_gate, **kw)

    monkeypatch.setattr(fusion.integrate, "integrate", unconverted)
    try:
        other = hand.run(wired["config"])
    finally:
        monkeypatch.undo()
        hand.run(wired["config"])
    assert _differs(other, (r.tracks, r.visible, r.sigma))


def _replace(config, path, key, value):
    """A copy of ``config`` with ``path.key`` (path: 'fusion', 'filters.similarity', ...) set to ``value``."""
    parts = path.split(".")

    def rec(obj, parts):
        if not parts:
            return dataclasses.replace(obj, **{key: value})
        return dataclasses.replace(obj, **{parts[0]: rec(getattr(obj, parts[0]), parts[1:])})

    return rec(config, parts)
