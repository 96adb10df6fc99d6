"""Long-term keypoint observations from the per-video optimised model (the integrator's observation hook).

For query i (feature q_i = n(F_{t_i}(u_i)), F the refined maps, u_i its grid position) and every frame t:
the refined match û_it (tto/model.py), its confidence c_it = ⟨q_i, n(F_t(û_it))⟩ (cosine similarity at
the refined position), and σ_it = max(g · sqrt(v_it) · cell, σ_floor), v_it the soft-argmax window's
per-axis second moment (grid cells²), cell the size of one grid cell in working px, g = ``sigma_gain``
and σ_floor = ``sigma_floor`` (original px) converted to working px. Cycle check: the feature found,
n(F_t(û_it)), is matched back into frame t_i the same way; b_it = |û_back − u_i| (cells). An observation
is valid when c_it > ``similarity_threshold``, b_it ≤ ``cycle_tolerance`` (unless that is 0) and
t ≠ t_i (the query frame is the query itself). The cycle check is what rejects most matches of points
that are occluded in t: their best match is something else, whose best match back is elsewhere.

The pipeline (pitrack/pipeline.py) calls :func:`optimise` (training trajectories from the flow bank ->
optimisation, checkpointed in the per-video cache and resumable), then :func:`refined_video_maps`, then
:func:`keypoint_observations` (the matches of the queries in every frame).
"""
import json
import os
import time

import numpy as np
import torch
import torch.nn.functional as F

from core.devices import num_threads, peak_rss_mb, resolve_device
from core.coords import scale_sigma
from core.sampling import sample_map
from tto.model import TTOModel
from tto.pairs import flow_trajectories
from tto.train import TrainData, load_checkpoint, make_optimizer, train, train_key


def build_model(channels, cfg, seed):
    """A freshly initialised TTOModel (its initialisation seeded, the global RNG untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return TTOModel(int(channels), cfg)


@torch.no_grad()
def refined_maps_all(model, feats, images, grid, batch=4):
    """Refined maps of every frame, float16 [T, C, gh, gw] on the model's device (computed in float32;
    half the memory of float32 maps, which at 1000 frames of 854x480 is 0.6 GB). ``feats`` [T, C, gh, gw];
    ``images`` uint8 [T, H_f, W_f, 3], an array or core.images.ResizedFrames."""
    out = None
    dev = next(model.parameters()).device
    for i in range(0, feats.shape[0], batch):
        m = model.refined_maps(feats[i:i + batch].to(dev), torch.as_tensor(images[i:i + batch], device=dev), grid)
        if out is None:
            out = torch.empty((feats.shape[0],) + tuple(m.shape[1:]), dtype=torch.float16, device=m.device)
        out[i:i + m.shape[0]] = m
    return out


@torch.no_grad()
def predict(model, maps, q_uv, tq, eval_batch=1024, cycle=True):
    """Matches of N queries in every frame. ``maps`` [T, C, gh, gw] refined; ``q_uv`` [N, 2] grid coords;
    ``tq`` [N] query frames. Returns uv [N, T, 2] (grid), sim [N, T], var [N, T] (grid cells², per axis)
    and back [N, T]: the distance (cells) between the query and the refined match of n(F_t(û)) back in
    the query frame (the inference-time cycle check; zeros when ``cycle`` is false)."""
    model.eval()
    T, C, gh, gw = maps.shape
    N = q_uv.shape[0]
    dev = maps.device
    q_uv = torch.as_tensor(q_uv, dtype=torch.float32, device=dev)
    tq = torch.as_tensor(np.asarray(tq), dtype=torch.long, device=dev)
    groups = [(f, torch.nonzero(tq == f)[:, 0]) for f in torch.unique(tq).tolist()]
    Q = torch.zeros(N, C, device=dev)
    for f, sel in groups:
        Q[sel] = F.normalize(sample_map(maps[f], q_uv[sel]), dim=1)
    uv = torch.zeros(N, T, 2, device=dev)
    sim = torch.zeros(N, T, device=dev)
    var = torch.zeros(N, T, device=dev)
    back = torch.zeros(N, T, device=dev)
    bs = max(1, int(eval_batch))
    for t in range(T):
        flat = maps[t].float().flatten(1)
        for i in range(0, N, bs):
            q = Q[i:i + bs]
            m = model.refine((q @ flat).view(-1, gh, gw))
            uv[i:i + bs, t] = m.uv
            var[i:i + bs, t] = m.var
            sim[i:i + bs, t] = (F.normalize(sample_map(maps[t], m.uv), dim=1) * q).sum(1)
        if cycle:
            found = F.normalize(sample_map(maps[t], uv[:, t]), dim=1)            # [N, C]
            for f, sel in groups:
                for i in range(0, sel.numel(), bs):
                    s = sel[i:i + bs]
                    b = model.refine((found[s] @ maps[f].float().flatten(1)).view(-1, gh, gw))
                    back[s, t] = (b.uv - q_uv[s]).norm(dim=1)
    return uv, sim, var, back


def optimise(fs, bank, cfg, seed=0, cache_dir=None, progress=False):
    """The per-video model for the backbone features ``fs`` (features.cache.FeatureSet), optimised on the video.

    ``bank``: the FlowBank its training trajectories come from; ``cfg``: a TTOConfig. With ``cfg.enabled``
    false the model is not optimised: its residual CNN starts at zero, so its refined maps are the
    normalised backbone features; the same with ``steps: 0`` (frozen features). Returns (model in eval mode
    on ``cfg.device``, stats): tto_key, tto_s, tto_steps (steps run now; 0 when a complete checkpoint was loaded), tto_step_start, tto_loss_first /
    tto_loss_last, traj_* (training trajectories), tto_params, tto_peak_rss_mb, tto_cuda_peak_mb (GPU).
    """
    seed = int(seed)
    device = resolve_device(cfg.device, "tto.device")
    model = build_model(fs.feats.shape[1], cfg, seed).to(device)
    stats = dict(tto_enabled=bool(cfg.enabled), tto_s=0.0, tto_steps=0, refined_map_evals=0,
                 tto_params=int(sum(p.numel() for p in model.parameters())))
    if not cfg.optimises:
        return model.eval(), stats
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)
    hw = tuple(bank.working_hw)
    # the training trajectories depend on the flows and on their occlusion estimates (not on their variances)
    data_key = json.dumps([getattr(bank, "flows_key", "no-bank-key"), getattr(bank, "occlusion_id", None), hw],
                          sort_keys=True)
    key = train_key(fs.key, data_key, cfg, seed)
    ckpt = os.path.join(os.fspath(cache_dir), "tto", f"{key}.pt") if cache_dir is not None else None
    stats["tto_key"] = key
    if ckpt is not None and os.path.isfile(ckpt):
        probe = build_model(fs.feats.shape[1], cfg, seed).to(device)
        got = load_checkpoint(ckpt, key, probe, make_optimizer(probe, cfg), cfg.steps)
        if got is not None and got[0] == int(cfg.steps):
            stats.update(tto_step_start=got[0], tto_resumed=True)
            return probe.eval(), stats
    traj, tstats = flow_trajectories(bank, cfg)
    stats.update(tstats)
    feats = fs.feats.to(device)
    data = TrainData(feats, fs.images, fs.grid,
                     traj.map_xy(lambda xy: fs.grid.from_working(xy, hw)))
    del traj
    with num_threads(cfg.threads):
        stats.update(train(model, data, cfg, seed, ckpt, key, progress))
    stats["refined_map_evals"] += int(stats["tto_steps"]) * min(int(cfg.frames_per_step), int(feats.shape[0]))
    stats["tto_peak_rss_mb"] = peak_rss_mb()
    if device.startswith("cuda"):
        stats["tto_cuda_peak_mb"] = torch.cuda.max_memory_allocated(device) / 2 ** 20
    return model.eval(), stats


def refined_video_maps(model, fs, threads=0):
    """Refined, normalised feature maps of every frame: float16 [T, C, gh, gw] on the model's device."""
    dev = next(model.parameters()).device
    with num_threads(threads):
        return refined_maps_all(model, fs.feats, fs.images, fs.grid)


def keypoint_observations(model, maps, grid, q_xy, tq, hw, original_hw, cfg):
    """Keypoint observations for the Gaussian integrator (fusion.integrate.integrate's ``observations``).

    ``maps`` [T, C, gh, gw]: :func:`refined_video_maps`; ``grid``: their features.grid.FeatureGrid;
    ``q_xy`` [N, 2]: query positions in working px (pixel-centre) of the raster ``hw``; ``tq`` [N] query
    frames; ``original_hw``: the video's size (``cfg.sigma_floor`` is in original px); ``cfg``: a TTOConfig.
    Returns (xy float32 [N, T, 2] working px, var [N, T] px², valid bool [N, T], stats): keypoints_s,
    kp_obs_fraction (valid / (query, frame) pairs off the query frame), kp_sim_median.
    """
    t0 = time.perf_counter()
    dev = maps.device
    T = maps.shape[0]
    q_xy = torch.as_tensor(np.asarray(q_xy), dtype=torch.float32).reshape(-1, 2)
    tq = np.asarray(tq).astype(np.int64).reshape(-1)
    N = q_xy.shape[0]
    use_cycle = float(cfg.cycle_tolerance) > 0
    with num_threads(0):            # batched matching: torch's threads (2 threads: 1.6x faster than 1)
        uv, sim, var_cells, back = predict(model, maps, grid.from_working(q_xy.to(dev), hw), tq, cfg.eval_batch,
                                           cycle=use_cycle)
    back, sim = back.cpu(), sim.cpu()
    xy = grid.to_working(uv, hw).cpu()
    floor = float(scale_sigma(cfg.sigma_floor, original_hw, hw))
    sigma = torch.clamp(float(cfg.sigma_gain) * var_cells.cpu().clamp(min=0).sqrt() * grid.cell_size_in(hw), min=floor)
    not_query = torch.ones(N, T, dtype=torch.bool)
    not_query[torch.arange(N), torch.as_tensor(tq)] = False
    valid = (sim > float(cfg.similarity_threshold)) & not_query & torch.isfinite(xy).all(-1)
    if use_cycle:
        valid &= back <= float(cfg.cycle_tolerance)
    others = sim[not_query]
    stats = dict(keypoints_s=time.perf_counter() - t0,
                 kp_obs_fraction=float(valid.sum()) / max(1, int(not_query.sum())),
                 kp_sim_median=float(others.median()) if others.numel() else float("nan"))
    return xy.float(), (sigma ** 2).float(), valid, stats
