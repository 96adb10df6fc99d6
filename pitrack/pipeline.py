"""The pitrack pipeline, as in ProTracker's Fig. 2; the only place that wires the stages together.

    video, queries
      │
      ├─ 1. flow bank            flow/      flows t−Δ → t for every Δ the chains read, both directions,
      │                                     each with occlusion probability and variance
      ├─ 2. long-term keypoints  features/  frozen backbone features of every frame (cached)
      │                          tto/       residual CNN + heatmap refiner optimised on the video
      │                                     (checkpointed); refined maps; keypoint observations
      │                          features/  (optional) LightGlue's matches of the queries, fused with them
      ├─ 3. candidate filters    filters/   object masks (SAM2 or the offline mask) and feature
      │                                     similarity to each query's template
      ├─ 4. integration          fusion/    forward and backward passes, candidates filtered, outliers
      │                                     removed, inverse-variance merge, observations fused, sweep
      ├─ 5. visibility           fusion/    flow visibility and appearance (similarity along the track)
      └─ 6. refiner (optional)   fusion/    a PIPs-style network re-estimates each track window by window
                                            from frozen RAFT-small encoder features, with visibility and σ
      │
    tracks, visible, σ

Every stage takes tensors and its config section and can run alone; this module only calls them in
order, converts coordinates between the original frames and the working rasters, and collects stats.
"""
import time

import numpy as np
import torch

from core.coords import from_center, scale_sigma, scale_xy, to_center
from core.devices import peak_rss_mb


def _cache(ctx):
    return ctx.video_cache_dir() if ctx.use_cache else None


def flow_bank(video, queries, config, ctx, chunks=None):
    """Stage 1: the FlowBank, with the order of every read to come (the optimisation's training
    trajectories, then the integration of each chunk of queries: segments 'integration 0', 'integration 1',
    …), so each pair is computed once and held only while needed."""
    from flow.bank import FlowBank
    from fusion.integrate import flow_schedule
    from tto.pairs import trajectory_flow_schedule
    bank = FlowBank(video, config.flow, cache_dir=_cache(ctx), progress=ctx.progress)
    intervals, use_inf = config.chain.parsed_intervals()
    segments = []
    if config.tto.optimises:
        segments.append(("trajectories", trajectory_flow_schedule(video.shape[0], config.tto)))
    for k, sl in enumerate([slice(None)] if chunks is None else chunks):
        segments.append((f"integration {k}", flow_schedule(video.shape[0], queries[sl, 0].astype(int), intervals,
                                                             use_inf, config.fusion)))
    bank.plan(segments)
    return bank


def per_video_model(video, bank, config, ctx, keep_features=False):
    """Stage 2a: backbone features and the per-video model (optimised when ``tto.enabled``);
    returns (features, model, refined maps float16 [T, C, gh, gw]). The backbone features and feature
    images are let go once the refined maps exist (every later stage reads the maps), except the features
    with ``keep_features`` (the refiner reads the same ones)."""
    from features.cache import video_features
    from tto.keypoints import optimise, refined_video_maps
    fs = video_features(video, config.features, _cache(ctx), ctx.progress, seed=config.seed)
    ctx.stats.update(fs.stats)
    model, stats = optimise(fs, bank, config.tto, config.seed, _cache(ctx), ctx.progress)
    ctx.stats.update(stats)
    maps = refined_video_maps(model, fs, config.tto.threads)
    ctx.stats["refined_map_evals"] = ctx.stats.get("refined_map_evals", 0) + int(maps.shape[0])
    return fs._replace(feats=fs.feats if keep_features else None, images=None), model, maps


def feature_maps(video, config, ctx):
    """Stage 2a alone: the maps the keypoints match in (refined by the per-video model when it is optimised,
    else the normalised frozen backbone features), float16 [T, C, gh, gw], and their FeatureGrid (whose
    ``from_working(xy, (H, W))`` takes pixel-centre positions of the original frames)."""
    check_feature_grid(config, video.shape[1:3])
    bank = flow_bank(video, np.zeros((0, 3), np.float32), config, ctx, chunks=[]) if config.tto.optimises else None
    fs, _, maps = per_video_model(video, bank, config, ctx)
    return maps, fs.grid


def _found(filename, explicit=""):
    from core.errors import WeightsError
    from core.paths import resolve_weights
    try:
        resolve_weights(filename, explicit=explicit or None)
        return True
    except WeightsError:
        return False


def similarity_source(sim):
    """``filters.similarity.source``, with 'auto' resolved: geoaware where its two checkpoints are found
    (DINOv2 ViT-B/14 and the aggregation network), else tto."""
    if sim.source != "auto":
        return sim.source
    found = _found("dinov2_vitb14_pretrain.pth", sim.weights) and _found("best_856.PTH", sim.aggregation_weights)
    return "geoaware" if found else "tto"


def mask_source(mcfg):
    """``filters.mask.source``, with 'auto' resolved: sam2 where its checkpoint is found, else none (the
    offline mask is measured to hurt: docs/configs.md)."""
    if mcfg.source != "auto":
        return mcfg.source
    from filters.sam2_masks import checkpoint_path
    from core.errors import WeightsError
    try:
        checkpoint_path(mcfg.sam2.checkpoint)
        return "sam2"
    except WeightsError:
        return "none"


def similarity_feature_config(config, source):
    """The FeatureConfig of the similarity filter's own features (``source`` geoaware, dinov2 or raft_fnet)."""
    import dataclasses
    from core.errors import ConfigError
    sim = config.filters.similarity
    backbones = {"geoaware": "geoaware", "dinov2": "dinov2_vitb14", "raft_fnet": "raft_small"}
    if source not in backbones:
        raise ConfigError(f"filters.similarity.source must be auto, tto, geoaware, dinov2 or raft_fnet, got {source!r}")
    return dataclasses.replace(config.features, backbone=backbones[source], resolution=sim.resolution,
                               weights=sim.weights, aggregation_weights=sim.aggregation_weights,
                               random_init=sim.random_init)


def similarity_features(video, config, ctx, tto_maps, tto_grid):
    """Feature maps [T, C, gh, gw] and their grid for the similarity filter and appearance visibility."""
    source = similarity_source(config.filters.similarity)
    ctx.stats["similarity_source"] = source
    if source == "tto":
        return tto_maps, tto_grid
    from features.cache import video_features
    fs = video_features(video, similarity_feature_config(config, source), _cache(ctx), ctx.progress, seed=config.seed)
    ctx.stats.update({f"similarity_{k}": v for k, v in fs.stats.items()})
    return torch.nn.functional.normalize(fs.feats.float(), dim=1), fs.grid


def check_weights(config):
    """Every checkpoint ``config`` will read, resolved stage by stage before any work (the models themselves
    load on first use): a missing or unusable file is one WeightsError naming it and where it was looked for.
    Returns {what: path} of the files found (a framework download where a config allows one is not listed).
    Files that are loaded here in full to be checked would be loaded twice: the learned uncertainty head and
    the refiner are only found here, and checked when their stage loads them."""
    from features.backbones import make_backbone
    from flow.bank import make_backend
    found = {}

    def note(what, stage):
        for attr, name in (("weights_path", ""), ("aggregation_path", " aggregation")):
            if getattr(stage, attr, None):
                found[what + name] = getattr(stage, attr)

    note("flow", make_backend(config.flow))                                            # 1
    if config.flow.uncertainty in ("learned", "learned_variance"):
        from flow.learned_uncertainty import head_path
        found["flow uncertainty head"] = head_path(config.flow.backend, config.flow.uncertainty_weights)
    need_features = config.filters.similarity.enabled or config.visibility.appearance
    if config.tto.enabled or need_features:                                            # 2
        note("keypoint features", make_backbone(config.features, config.seed))
        source = similarity_source(config.filters.similarity)
        if need_features and source != "tto":                                          # 3
            note("similarity features", make_backbone(similarity_feature_config(config, source), config.seed))
    if config.matcher.enabled:                                                         # 2c
        from features.matcher import EXTRACTORS
        from features.pretrained import release_file
        found["matcher keypoints"] = release_file(config.matcher.features)
        found["matcher"] = release_file(EXTRACTORS[config.matcher.features])
    mcfg = config.filters.mask
    if mask_source(mcfg) == "sam2" and not mcfg.sam2.random_init:
        from filters.sam2_masks import checkpoint_path
        found["sam2"] = checkpoint_path(mcfg.sam2.checkpoint)
    if config.refiner.enabled:                                                         # 6
        from fusion.refiner import refiner_path
        found["refiner"] = refiner_path(config.refiner.weights)
        note("refiner encoder", make_backbone(refiner_feature_config(config), config.seed))
    return found


def object_masks(video, queries, bank, config, ctx):
    """Stage 3a: the object mask of every query (MaskSet), or None."""
    mcfg = config.filters.mask
    source = mask_source(mcfg)
    ctx.stats["mask_source"] = source
    if source == "none":
        return None
    t0 = time.perf_counter()
    if source == "sam2":
        from filters.sam2_masks import sam2_masks
        masks = sam2_masks(video, queries, mcfg.sam2, _cache(ctx), ctx.progress, seed=config.seed)
    elif source == "offline":
        from filters.offline_mask import offline_masks
        masks = offline_masks(bank, queries, mcfg.offline, video.shape[1:3])
    else:
        from core.errors import ConfigError
        raise ConfigError(f"filters.mask.source must be auto, none, sam2 or offline, got {source!r}")
    ctx.stats.update({f"mask_{k}": v for k, v in masks.stats.items()})
    ctx.stats["mask_s"] = time.perf_counter() - t0
    return masks


def check_feature_grid(config, hw):
    """InputError, before any work, when frames of size ``hw`` = (H, W) give the per-video model a feature
    grid under 3×3 cells (its refiner's smallest window): possible with ``features.resolution: native``."""
    from core.errors import InputError
    from features.backbones import make_backbone
    from features.grid import feature_image_hw
    stride = make_backbone(config.features, config.seed).stride
    fh, fw = feature_image_hw(config.features.resolution, hw, stride)
    if fh // stride < 3 or fw // stride < 3:
        raise InputError(f"{hw[1]}x{hw[0]} frames give a {fw // stride}x{fh // stride} feature grid at "
                         f"features.resolution {config.features.resolution} (stride {stride}); the per-video "
                         f"model needs at least 3x3 cells: use larger frames or a fixed features.resolution "
                         f"(e.g. 512x288)")


def query_chunks(num_queries, num_frames, chain):
    """Slices of at most ``chain.query_frames_per_chunk`` / T queries: the stages that keep state per query
    and frame (keypoint observations, filters, integration, visibility; about 80 bytes per query and
    frame) run one chunk at a time."""
    n = max(1, int(chain.query_frames_per_chunk) // max(1, int(num_frames)))
    return [slice(i, min(i + n, num_queries)) for i in range(0, num_queries, n)]


def load_track_refiner(config):
    """The refiner's weights (checked before any long work), or None when ``refiner.enabled`` is off."""
    if not config.refiner.enabled:
        return None
    from fusion.refiner import load_refiner
    return load_refiner(config.refiner.weights)[0]


def refiner_feature_config(config):
    """The FeatureConfig of the frozen RAFT-small encoder features the refiner reads."""
    import dataclasses
    rcfg = config.refiner
    return dataclasses.replace(config.features, backbone="raft_small", resolution=rcfg.resolution,
                               weights=rcfg.encoder_weights, aggregation_weights="", random_init=False)


def refiner_features(video, config, ctx, stage2=None):
    """Stage 6a: the frozen RAFT-small encoder features the refiner reads: (float16 [T, 128, gh, gw], their
    FeatureGrid). ``stage2``'s FeatureSet when its features are these (same config), else computed (cached)."""
    from features.cache import video_features
    if stage2 is not None and stage2.feats is not None:
        return stage2.feats, stage2.grid
    fs = video_features(video, refiner_feature_config(config), _cache(ctx), ctx.progress, seed=config.seed)
    ctx.stats.update({f"refiner_{k}": v for k, v in fs.stats.items()})
    return fs.feats, fs.grid


def refined(refiner, est_xy, est_var, visible, tq, hw, rcfg, ctx):
    """Stage 6b: the refiner on tracks (working px [n, T, 2], variance px² [n, T], visible [n, T]) -> refined
    (xy, variance, visible, visibility logit), working px; visibility per ``refiner.visibility``."""
    from fusion.refiner import refine_tracks
    model, feats, grid = refiner
    t0 = time.perf_counter()
    cell = grid.cell_size_in(hw)
    uv, logit, var, windows = refine_tracks(model, feats, grid.from_working(est_xy, hw), est_var / cell ** 2,
                                            visible, torch.as_tensor(tq, dtype=torch.long), int(rcfg.window),
                                            int(rcfg.iterations))
    vis = logit > 0
    vis = {"refiner": vis, "input": visible, "both": vis & visible}[rcfg.visibility]
    add_stats(ctx.stats, dict(refiner_windows=windows, refiner_s=time.perf_counter() - t0))
    return grid.to_working(uv, hw), var * cell ** 2, vis, logit


def track_pitrack(video, queries, config, ctx):
    """Tracker backend 'pitrack': stages 1-6 above. ``video`` uint8 [T, H, W, 3], ``queries`` float32 [N, 3]
    (t, x, y original px) -> tracks [N, T, 2] original px, visible [N, T], σ [N, T] original px.
    Stages 1-2 and 6a run once per video; stages 2b-6b once per chunk of queries (:func:`query_chunks`), so
    memory is bounded for any number of queries (dense tracking)."""
    T, H, W = video.shape[:3]
    N = queries.shape[0]
    chunks = query_chunks(N, T, config.chain)
    fcfg = config.filters
    need_features = fcfg.similarity.enabled or config.visibility.appearance
    if config.tto.enabled or need_features:
        check_feature_grid(config, (H, W))
    refiner = load_track_refiner(config)

    bank = flow_bank(video, queries, config, ctx, chunks)                              # 1
    hw = bank.working_hw
    t0 = time.perf_counter()
    fs, model, tto_maps, fgrid, maps, to_grid = None, None, None, None, None, None
    if config.tto.enabled or need_features:                                            # 2
        shared = refiner is not None and refiner_feature_config(config) == config.features
        fs, model, tto_maps = per_video_model(video, bank, config, ctx, keep_features=shared)
        fgrid = fs.grid
        if need_features:
            maps, grid = similarity_features(video, config, ctx, tto_maps, fs.grid)
            to_grid = lambda xy: grid.from_working(xy, hw)  # noqa: E731 - working px -> feature grid
    ctx.stats["keypoints_stage_s"] = time.perf_counter() - t0
    ctx.stats["peak_rss_mb_keypoints"] = peak_rss_mb()
    if refiner is not None:                                                            # 6a
        refiner = (refiner,) + refiner_features(video, config, ctx, fs)
    matcher = None
    if config.matcher.enabled:                                                         # 2c: keypoints of every frame
        from features.matcher import VideoMatcher
        matcher = VideoMatcher(video, config.matcher, ctx.progress)

    tracks = np.zeros((N, T, 2), np.float32)
    visible = np.zeros((N, T), bool)
    sigma = np.zeros((N, T), np.float32)
    reports = []
    for k, sl in enumerate(chunks):
        q = queries[sl]
        out = track_chunk(video, q, bank, model, tto_maps, fgrid, maps, to_grid, config, ctx,
                          segment=f"integration {k}", keep_extras=len(chunks) == 1, refiner=refiner,
                          matcher=matcher)
        tracks[sl], visible[sl], sigma[sl] = out[:3]
        reports.append((sl.start, out[3]))
    ctx.stats.update(bank.stats)
    ctx.stats["query_chunks"] = len(chunks)
    ctx.stats["working_resolution"] = f"{hw[1]}x{hw[0]}"
    ctx.stats["peak_rss_mb_integration"] = peak_rss_mb()
    report = merged_reports(reports)
    ctx.stats["filters"] = {name: dict(rejected=int(r["query"].size), rejected_keypoints=int(r["keypoint"].sum()))
                            for name, r in report.items()}
    ctx.extras["filter_rejections"] = report
    return tracks, visible, sigma


def merged_reports(reports):
    """One filter report (filters.candidates.CandidateFilters.report) from the reports of query chunks
    [(index of the chunk's first query, report)]: query indices shifted to the whole query set."""
    out = {}
    for start, report in reports:
        for name, r in report.items():
            out.setdefault(name, []).append(dict(r, query=r["query"] + start))
    return {name: {k: np.concatenate([r[k] for r in rs]) for k in rs[0]} for name, rs in out.items()}


def track_chunk(video, queries, bank, model, tto_maps, fgrid, maps, to_grid, config, ctx, segment, keep_extras,
                refiner=None, matcher=None):
    """Stages 2b-6 for one chunk of queries [n, 3]: keypoint observations, candidate filters, integration
    (reading the bank's planned segment ``segment``), visibility, and the refiner when ``refiner`` = (model,
    features, grid), LightGlue's observations when ``matcher`` (features.matcher.VideoMatcher). Returns
    (tracks [n, T, 2], visible [n, T],
    σ [n, T]) in original px and the filters' report; with ``keep_extras`` also fills ``ctx.extras``."""
    from filters.candidates import CandidateFilters
    from filters.masks import MaskFilter
    from filters.similarity import SimilarityFilter, query_templates, trajectory_similarity
    from fusion.integrate import integrate
    from fusion.visibility import combined_visibility
    T, H, W = video.shape[:3]
    hw = bank.working_hw
    tq = queries[:, 0].astype(int)
    cfg, fusion, fcfg = config.chain, config.fusion, config.filters
    q_xy = to_center(scale_xy(queries[:, 1:3], (H, W), hw))

    observations, templates = None, None
    t0 = time.perf_counter()
    if config.tto.enabled:                                                             # 2b
        from tto.keypoints import keypoint_observations
        obs_xy, obs_var, obs_ok, kp_stats = keypoint_observations(model, tto_maps, fgrid, q_xy, tq, hw, (H, W),
                                                                  config.tto)
        add_stats(ctx.stats, kp_stats)
        observations = [obs_xy, obs_var, obs_ok]
    unmatched = None
    if matcher is not None:                                                            # 2c
        *matched, unmatched, m_stats = matcher.observations(q_xy, tq, hw)
        add_stats(ctx.stats, m_stats)
        if observations is None:
            observations = list(matched)
        else:
            from fusion.gaussian import merge_observation_sources
            gate = float(scale_sigma(fusion.observation_gate, (H, W), hw))
            observations = list(merge_observation_sources([observations, matched], gate))
    if maps is not None:
        templates = query_templates(maps, to_grid, q_xy, tq)
    t1 = time.perf_counter()

    filters = []                                                                       # 3
    masks = object_masks(video, queries, bank, config, ctx)
    if masks is not None:
        filters.append(MaskFilter(masks, hw, fcfg.mask.threshold))
    if fcfg.similarity.enabled:
        filters.append(SimilarityFilter(maps, to_grid, templates, fcfg.similarity.flow_threshold,
                                        fcfg.similarity.keypoint_threshold))
    hook = CandidateFilters(filters, cfg.occlusion_threshold)
    if observations is not None and hook:
        observations[2] = hook.observations(observations[0], observations[2])

    intervals, use_inf = cfg.parsed_intervals()                                        # 4
    est = integrate(bank, T, q_xy, tq, intervals, use_inf, cfg.occlusion_threshold, cfg.query_sigma ** 2, fusion,
                    float(scale_sigma(fusion.outlier_radius, (H, W), hw)), observations, ctx.progress,
                    float(scale_sigma(fusion.observation_gate, (H, W), hw)), hook if hook else None, segment,
                    cfg.drift_var)

    similarity = None                                                                  # 5
    if config.visibility.appearance:
        similarity = trajectory_similarity(maps, to_grid, templates, est.xy)
    flow_visible = est.vis if unmatched is None or not config.matcher.visibility else est.vis & ~unmatched
    visible = combined_visibility(flow_visible, similarity, config.visibility.similarity_threshold,
                                 config.visibility.relative_threshold, tq)
    xy, var, refiner_input = est.xy, est.var, None
    if refiner is not None:                                                            # 6b
        refiner_input = (xy, var, visible)
        xy, var, visible, vis_logit = refined(refiner, xy, var, visible, tq, hw, config.refiner, ctx)

    def to_original(xy):
        return scale_xy(from_center(np.asarray(xy)), hw, (H, W))

    add_stats(ctx.stats, dict(keypoints_stage_s=t1 - t0, track_s=time.perf_counter() - t1))
    if keep_extras:
        ctx.extras["flow_visible"] = est.vis.numpy()
        if similarity is not None:
            ctx.extras["appearance_similarity"] = similarity.numpy()
        if observations is not None:
            ctx.extras["keypoints"] = dict(xy=to_original(observations[0].numpy()), valid=observations[2].numpy(),
                                           sigma=scale_sigma(np.sqrt(observations[1].numpy()), hw, (H, W)))
        if masks is not None:
            ctx.extras["masks"] = masks
        if refiner_input is not None:
            ctx.extras["refiner_input"] = dict(tracks=to_original(refiner_input[0].numpy()),
                                               visible=refiner_input[2].numpy(),
                                               sigma=scale_sigma(np.sqrt(refiner_input[1].numpy()), hw, (H, W)),
                                               visibility_logit=vis_logit.numpy())
    tracks = to_original(xy.numpy())
    sigma = scale_sigma(np.sqrt(var.numpy()), hw, (H, W))
    return tracks, visible.numpy(), sigma, hook.report(to_original)


def add_stats(stats, new):
    """Merge a chunk's stats: seconds (keys ending in _s) add up; other values keep the first chunk's."""
    for k, v in new.items():
        if k.endswith("_s") and isinstance(v, (int, float)):
            stats[k] = stats.get(k, 0.0) + v
        else:
            stats.setdefault(k, v)
