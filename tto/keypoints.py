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

:func:`keypoint_observations` is the one entry point: features (cached) -> trajectories from the flow
bank -> optimisation (checkpointed, resumable) -> matches, all keyed in the per-video cache.
"""
import contextlib
import os
import resource
import time

import numpy as np
import torch
import torch.nn.functional as F

from features.backbones import resolve_device
from features.cache import video_features
from pitrack.coords import scale_sigma
from tto.model import TTOModel, sample_map
from tto.pairs import flow_trajectories
from tto.train import TrainData, load_checkpoint, make_optimizer, train, train_key


def build_model(channels, cfg, seed):
    """A freshly initialised TTOModel (its initialisation seeded, the global RNG untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return TTOModel(int(channels), cfg)


@torch.no_grad()
def refined_maps_all(model, feats, images, grid, batch=4):
    """Refined maps of every frame, float32 [T, C, gh, gw] on the model's device."""
    out = []
    for i in range(0, feats.shape[0], batch):
        out.append(model.refined_maps(feats[i:i + batch], images[i:i + batch], grid))
    return torch.cat(out)


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
        flat = maps[t].flatten(1)
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
                    b = model.refine((found[s] @ maps[f].flatten(1)).view(-1, gh, gw))
                    back[s, t] = (b.uv - q_uv[s]).norm(dim=1)
    return uv, sim, var, back


@contextlib.contextmanager
def num_threads(n):
    """torch's intra-op CPU threads set to ``n`` inside the block (``n`` <= 0: unchanged)."""
    old = torch.get_num_threads()
    if int(n) > 0:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def keypoint_observations(video, queries_xy_working, query_frames, bank, config, cache_dir=None, progress=False):
    """Keypoint observations for the Gaussian integrator (fusion.integrate.integrate's ``observations``).

    ``video``: uint8 RGB [T, H, W, 3] at the original resolution; ``queries_xy_working`` [N, 2]: query
    positions in the bank's working px (pixel-centre convention); ``query_frames`` [N]; ``bank``: the
    FlowBank (trajectories for training come from it); ``config``: the full Config (sections ``features``,
    ``tto``, and ``seed``); ``cache_dir``: the per-video cache folder, or None for no cache.

    Returns (xy torch float32 [N, T, 2] working px pixel-centre at bank.working_hw, var [N, T] px²,
    valid bool [N, T], stats). With ``tto.enabled`` false nothing is computed and no observation is valid.
    stats (names chosen not to collide with the flow bank's): features_s, backbone_evals (network
    evaluations: frames through the backbone, 0 when cached), features_loaded, traj_s, traj_count,
    tto_s (optimisation seconds), tto_steps (steps run now; 0 when a complete checkpoint was loaded),
    tto_step_start, tto_loss_first / tto_loss_last, refined_map_evals (frames through the residual CNN), keypoints_s, kp_obs_fraction (valid / (query, frame) pairs off the
    query frame), kp_sim_median, tto_peak_rss_mb (process peak so far), tto_cuda_peak_mb (on a GPU).
    """
    tcfg, fcfg, seed = config.tto, config.features, int(config.seed)
    video = np.asarray(video)
    T, H, W = video.shape[:3]
    q_xy = torch.as_tensor(np.asarray(queries_xy_working), dtype=torch.float32).reshape(-1, 2)
    tq = np.asarray(query_frames).astype(np.int64).reshape(-1)
    N = q_xy.shape[0]
    hw = tuple(bank.working_hw)
    stats = dict(tto_enabled=bool(tcfg.enabled), features_s=0.0, traj_s=0.0, tto_s=0.0, tto_steps=0,
                 keypoints_s=0.0, backbone_evals=0, refined_map_evals=0)
    if not tcfg.enabled:
        return torch.zeros(N, T, 2), torch.full((N, T), float("inf")), torch.zeros(N, T, dtype=torch.bool), stats
    torch.manual_seed(seed)
    device = resolve_device(tcfg.device, "tto.device")
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)

    fs = video_features(video, fcfg, cache_dir, progress, seed=seed)
    stats.update(fs.stats)
    grid = fs.grid
    model = build_model(fs.feats.shape[1], tcfg, seed).to(device)
    feats = fs.feats.to(device)
    images = torch.from_numpy(fs.images).to(device)

    data_key = f"{getattr(bank, 'key', 'no-bank-key')}-{hw[1]}x{hw[0]}"
    key = train_key(fs.key, data_key, tcfg, seed)
    ckpt = os.path.join(os.fspath(cache_dir), "tto", f"{key}.pt") if cache_dir is not None else None
    stats["tto_key"] = key

    def make_data():
        traj_xy, traj_ok, tstats = flow_trajectories(bank, tcfg, (H, W))
        stats.update(tstats)
        return TrainData(feats, images, grid, grid.from_working(traj_xy, hw), traj_ok)

    complete = False
    if ckpt is not None and os.path.isfile(ckpt):
        probe = build_model(fs.feats.shape[1], tcfg, seed).to(device)
        got = load_checkpoint(ckpt, key, probe, make_optimizer(probe, tcfg), tcfg.steps)
        if got is not None and got[0] == int(tcfg.steps):
            model, complete = probe, True
            stats.update(tto_step_start=got[0], tto_resumed=True)
    if not complete:
        data = make_data()
        with num_threads(tcfg.threads):
            stats.update(train(model, data, tcfg, seed, ckpt, key, progress))
        stats["refined_map_evals"] += int(stats["tto_steps"]) * min(int(tcfg.frames_per_step), T)

    t0 = time.perf_counter()
    model.eval()
    q_uv = grid.from_working(q_xy.to(device), hw)
    use_cycle = float(tcfg.cycle_tolerance) > 0
    with num_threads(tcfg.threads):
        maps = refined_maps_all(model, feats, images, grid)
        uv, sim, var_cells, back = predict(model, maps, q_uv, tq, tcfg.eval_batch, cycle=use_cycle)
    stats["refined_map_evals"] += T
    back = back.cpu()
    xy = grid.to_working(uv, hw).cpu()
    cell = grid.cell_size_in(hw)
    floor = float(scale_sigma(tcfg.sigma_floor, (H, W), hw))
    sigma = torch.clamp(float(tcfg.sigma_gain) * var_cells.cpu().clamp(min=0).sqrt() * cell, min=floor)
    sim = sim.cpu()
    not_query = torch.ones(N, T, dtype=torch.bool)
    not_query[torch.arange(N), torch.as_tensor(tq)] = False
    valid = (sim > float(tcfg.similarity_threshold)) & not_query & torch.isfinite(xy).all(-1)
    if use_cycle:
        valid &= back <= float(tcfg.cycle_tolerance)
    stats["keypoints_s"] = time.perf_counter() - t0
    others = sim[not_query]
    stats["kp_obs_fraction"] = float(valid.sum()) / max(1, int(not_query.sum()))
    stats["kp_sim_median"] = float(others.median()) if others.numel() else float("nan")
    stats["tto_peak_rss_mb"] = _peak_rss_mb()
    if device.startswith("cuda"):
        stats["tto_cuda_peak_mb"] = torch.cuda.max_memory_allocated(device) / 2 ** 20
    with contextlib.suppress(Exception):
        stats["tto_params"] = int(sum(p.numel() for p in model.parameters()))
    return xy.float(), (sigma ** 2).float(), valid, stats
