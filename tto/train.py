"""Per-video optimisation of the residual CNN and the heatmap refiner (formulas: tto/model.py, tto/pairs.py).

Each step draws ``frames_per_step`` distinct frames uniformly and uses every ordered pair (s, t) of them
(3 frames: 6 pairs; the residual CNN runs on 3 frames only), and for each pair:
trajectory correspondences (p_s, p_t) valid in both frames, best buddies of the frozen features, and
random points of s. With refined maps F_s, F_t and query features q = n(F_s(p)) (bilinear):

* position: Huber_δ(s·(û_t − u_t)) summed over x, y, where û_t is the refined match of q in F_t (window
  centred on the cosine map's argmax, or on the true cell ± 1 when that argmax is more than R − 1 cells
  away, so the refiner always sees the answer) and u_t the trajectory position, in grid units; s is the
  stride, so the loss is in feature-image px;
* contrastive (InfoNCE): −Σ_j y_j log softmax_j(⟨q, F_t(j)⟩ / τ_c) over all cells j of t, y one-hot at
  the buddy (weight ``w_contrast``) or the bilinear weights of u_t (``w_traj_contrast``);
* cycle: s → t (refined match û_t, similarity ⟨q, n(F_t(û_t))⟩) → s (refined match of n(F_t(û_t)) in
  F_s), Huber on the return error, only where the forward similarity ≥ ``cycle_min_sim`` and the
  return's argmax lies within R − 1 cells of the start (otherwise the point is likely occluded in t).

Loss = w_position·position + contrast terms + w_cycle·cycle (contrast terms averaged over pairs, position
and cycle over all their samples). AdamW; learning rate: linear warm-up over ``warmup_steps``, then
cosine decay to lr·lr_min_ratio at ``steps``. Determinism holds for a fixed CPU thread count
(``tto.threads``): float reductions depend on it.

Resume. All of a step's sampling comes from ``numpy.random.default_rng([seed, step])``,
so step k draws the same data whether the run is fresh or resumed. A checkpoint (model, optimiser,
step, loss history, key) is written atomically every ``checkpoint_every`` steps, at the end, and when
the run is interrupted (KeyboardInterrupt or any error) at a step boundary; a later run with the same
key loads it and continues from its step (a complete one means no training at all). Checkpoints hold
only step boundaries: an interruption inside the optimiser's update (which changes the parameters one
by one) saves nothing, and in the main thread Ctrl-C (SIGINT) is deferred to the end of the step it
arrives in (the step completes, is saved, then KeyboardInterrupt is raised; a second Ctrl-C raises at
once). The file carries the sha256 of its content (core.checksum): a checkpoint that fails that check,
does not load or does not match is deleted and training starts over.
"""
import dataclasses
import math
import os
import signal
import threading
import time
import typing

import numpy as np
import torch
import torch.nn.functional as F

from core.atomic import discard_cache_file
from core.checksum import load_torch, save_torch
from core.paths import json_key
from core.progress import progress_bar
from core.sampling import sample_map
from tto.model import TTOModel
from tto.pairs import Trajectories, best_buddies

CKPT_FORMAT = 1
# TTOConfig fields that do not change training (device, and the keypoint provider's settings)
_NOT_TRAINING = ("enabled", "device", "threads", "similarity_threshold", "cycle_tolerance", "sigma_floor", "sigma_gain",
                 "eval_batch")
LOSS_NAMES = ("loss", "pos", "con", "tcon", "cyc")


class TrainData(typing.NamedTuple):
    feats: torch.Tensor       # float16 [T, C, gh, gw] frozen features (on the training device)
    images: object            # uint8 [T, H_f, W_f, 3], array or core.images.ResizedFrames (read per step)
    grid: object              # features.grid.FeatureGrid
    traj: Trajectories        # training trajectories, positions in grid coordinates (u, v) (CPU)


def training_fields(cfg):
    d = dataclasses.asdict(cfg)
    for k in _NOT_TRAINING:
        d.pop(k, None)
    return d


def train_key(feature_key, data_key, cfg, seed):
    """Checkpoint key: the features, the training data (flows), the training settings and the seed."""
    fields = dict(format=CKPT_FORMAT, features=feature_key, data=data_key, tto=training_fields(cfg), seed=int(seed))
    return json_key(fields)


def lr_at(step, cfg):
    """Learning rate of step ``step`` (0-based): linear warm-up, then cosine to lr·lr_min_ratio."""
    lr, warm, total = float(cfg.lr), int(cfg.warmup_steps), max(1, int(cfg.steps))
    if step < warm:
        return lr * (step + 1) / warm
    frac = min(1.0, (step - warm) / max(1, total - warm))
    lo = lr * float(cfg.lr_min_ratio)
    return lo + 0.5 * (lr - lo) * (1.0 + math.cos(math.pi * frac))


def huber(x, delta):
    a = x.abs()
    return torch.where(a <= delta, 0.5 * a * a, delta * (a - 0.5 * delta))


def _bilinear_target(uv, gh, gw):
    """Four (cell index, weight) pairs per position [M, 2]: the bilinear split of uv over grid cells."""
    u = uv[:, 0].clamp(0, gw - 1)
    v = uv[:, 1].clamp(0, gh - 1)
    x0 = u.floor().clamp(max=gw - 2 if gw > 1 else 0).long()
    y0 = v.floor().clamp(max=gh - 2 if gh > 1 else 0).long()
    fx, fy = u - x0, v - y0
    x1, y1 = (x0 + 1).clamp(max=gw - 1), (y0 + 1).clamp(max=gh - 1)
    idx = torch.stack([y0 * gw + x0, y0 * gw + x1, y1 * gw + x0, y1 * gw + x1], 1)
    w = torch.stack([(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy], 1)
    return idx, w


def sample_step(data, cfg, seed, step):
    """The data of step ``step``: a list of per-pair dicts (frames, positions; CPU tensors). Deterministic."""
    rng = np.random.default_rng([int(seed), int(step)])
    T = data.feats.shape[0]
    gh, gw = data.grid.grid_hw
    out = []
    nf = max(1, min(int(cfg.frames_per_step), T))
    frames = [int(f) for f in rng.choice(T, nf, replace=False)]
    pairs = [(s, t) for s in frames for t in frames if s != t] or [(frames[0], frames[0])]
    for s, t in pairs:
        common = data.traj.valid_at(s, t).numpy()
        m = min(int(cfg.traj_per_pair), common.size)
        pick = np.sort(rng.choice(common, m, replace=False)) if m else np.zeros(0, np.int64)
        pick = torch.from_numpy(pick.astype(np.int64))
        n_cand = min(gh * gw, 4 * int(cfg.buddies_per_pair))
        cand = torch.from_numpy(np.sort(rng.choice(gh * gw, n_cand, replace=False)).astype(np.int64))
        cyc = torch.from_numpy(rng.uniform([0, 0], [gw - 1, gh - 1], (int(cfg.cycle_per_pair), 2)).astype(np.float32))
        jitter = torch.from_numpy(rng.integers(-1, 2, (m, 2)).astype(np.int64))
        bb_rng = int(rng.integers(2 ** 31))
        traj_s, traj_t = data.traj.positions(pick, s), data.traj.positions(pick, t)
        out.append(dict(s=s, t=t, traj_s=traj_s, traj_t=traj_t, cand=cand, cyc=cyc, jitter=jitter, bb_rng=bb_rng))
    return out


def _buddies(data, item, cfg):
    """Best buddies among the candidate cells of s (see tto.pairs.best_buddies), at most buddies_per_pair."""
    gh, gw = data.grid.grid_hw
    fs = F.normalize(data.feats[item["s"]].float().flatten(1), dim=0)
    ft = F.normalize(data.feats[item["t"]].float().flatten(1), dim=0)
    cand = item["cand"].to(fs.device)
    ia_local, ib, _ = best_buddies(fs[:, cand], ft, float(cfg.buddy_min_sim))
    ia = cand[ia_local]
    # mutuality above is only within the candidates; require it against all cells of s as well
    back = (ft[:, ib].t() @ fs).argmax(1)
    keep = back == ia
    ia, ib = ia[keep], ib[keep]
    m = min(int(cfg.buddies_per_pair), ia.numel())
    if m < ia.numel():
        g = torch.Generator().manual_seed(item["bb_rng"])
        sel = torch.randperm(ia.numel(), generator=g)[:m].sort().values.to(ia.device)
        ia, ib = ia[sel], ib[sel]
    to_uv = lambda i: torch.stack([(i % gw).float(), (i // gw).float()], -1)  # noqa: E731
    return to_uv(ia), ib


def step_losses(model, data, cfg, batch):
    """Loss terms of one step's ``batch`` (from :func:`sample_step`). Returns dict of scalar tensors.

    All refiner evaluations of a step are batched: one call for the trajectory matches and the cycles'
    forward matches of every pair, one for the cycles' return matches."""
    dev = data.feats.device
    grid = data.grid
    gh, gw = grid.grid_hw
    stride = float(grid.stride)
    R = model.window_radius((gh, gw))
    P = len(batch)
    frames = sorted({b["s"] for b in batch} | {b["t"] for b in batch})
    slot = {f: i for i, f in enumerate(frames)}
    idx = torch.tensor(frames, device=dev)
    images = torch.as_tensor(data.images[frames], device=dev)                    # [U, H_f, W_f, 3]
    maps = model.refined_maps(data.feats[idx], images, grid)                     # [U, C, gh, gw]
    zero = maps.sum() * 0.0
    parts = {k: zero for k in LOSS_NAMES[1:]}
    traj_corr, traj_centre, traj_targets, cyc_corr, cyc_centre, cyc_info = [], [], [], [], [], []
    use_cycle = float(cfg.w_cycle) > 0
    for b in batch:
        Fs, Ft = maps[slot[b["s"]]], maps[slot[b["t"]]]
        traj_s, traj_t = b["traj_s"].to(dev), b["traj_t"].to(dev)
        bb_s, bb_t = _buddies(data, b, cfg)
        cyc = b["cyc"].to(dev) if use_cycle else b["cyc"][:0].to(dev)
        m1, m2 = traj_s.shape[0], bb_s.shape[0]
        q = F.normalize(sample_map(Fs, torch.cat([traj_s, bb_s, cyc])), dim=1)
        corr = (q @ Ft.flatten(1)).view(-1, gh, gw)
        logp = torch.log_softmax(corr[:m1 + m2].flatten(1) / float(cfg.contrast_temperature), 1)
        if m2:
            parts["con"] = parts["con"] - logp[m1:m1 + m2].gather(1, bb_t[:, None]).mean() / P
        if m1:
            ti, tw = _bilinear_target(traj_t, gh, gw)
            parts["tcon"] = parts["tcon"] - (logp[:m1].gather(1, ti) * tw).sum(1).mean() / P
            a = corr[:m1].detach().flatten(1).argmax(1)
            centre = torch.stack([a % gw, a // gw], -1)
            near = (centre.float() - traj_t).abs().amax(1) <= R - 1
            fallback = traj_t.round().long() + b["jitter"].to(dev)
            traj_corr.append(corr[:m1])
            traj_centre.append(torch.where(near[:, None], centre, fallback))
            traj_targets.append(traj_t)
        if cyc.shape[0]:
            c = corr[m1 + m2:]
            a = c.detach().flatten(1).argmax(1)
            cyc_corr.append(c)
            cyc_centre.append(torch.stack([a % gw, a // gw], -1))
            cyc_info.append((Fs, Ft, q[m1 + m2:], cyc))
    if not traj_corr and not cyc_corr:
        parts["loss"] = float(cfg.w_contrast) * parts["con"] + float(cfg.w_traj_contrast) * parts["tcon"]
        return parts
    # trajectory matches first, then the cycles' forward matches
    match = model.refine(torch.cat(traj_corr + cyc_corr), torch.cat(traj_centre + cyc_centre))
    n_traj = sum(int(t.shape[0]) for t in traj_targets)
    if n_traj:
        err = huber((match.uv[:n_traj] - torch.cat(traj_targets)) * stride, float(cfg.huber_delta)).sum(1)
        parts["pos"] = err.mean()
    if cyc_info:
        fwd_uv = match.uv[n_traj:]
        backs, sims, starts, i = [], [], [], 0
        for Fs, Ft, qc, cyc in cyc_info:
            m = cyc.shape[0]
            ft = F.normalize(sample_map(Ft, fwd_uv[i:i + m]), dim=1)
            sims.append((ft * qc).sum(1))
            backs.append((ft @ Fs.flatten(1)).view(-1, gh, gw))
            starts.append(cyc)
            i += m
        back = model.refine(torch.cat(backs))
        start = torch.cat(starts)
        ok = (torch.cat(sims).detach() >= float(cfg.cycle_min_sim)) & \
            ((back.coarse.float() - start).abs().amax(1) <= R - 1)
        if ok.any():
            parts["cyc"] = huber((back.uv - start) * stride, float(cfg.huber_delta)).sum(1)[ok].mean()
    parts["loss"] = (float(cfg.w_position) * parts["pos"] + float(cfg.w_contrast) * parts["con"]
                     + float(cfg.w_traj_contrast) * parts["tcon"] + float(cfg.w_cycle) * parts["cyc"])
    return parts


def evaluate_loss(model, data, cfg, seed, steps):
    """Mean loss terms over the batches of ``steps`` (no gradients, the model left unchanged)."""
    acc = {k: 0.0 for k in LOSS_NAMES}
    with torch.no_grad():
        for st in steps:
            p = step_losses(model, data, cfg, sample_step(data, cfg, seed, st))
            for k in LOSS_NAMES:
                acc[k] += float(p[k]) / len(steps)
    return acc


def make_optimizer(model, cfg):
    return torch.optim.AdamW(model.parameters(), lr=float(cfg.lr), weight_decay=float(cfg.weight_decay))


def load_checkpoint(path, key, model, opt, steps):
    """(step, history) from a valid checkpoint at ``path`` (model and optimiser loaded), else None (model and
    optimiser as they were: a checkpoint rejected after loading, e.g. for non-finite weights, is undone)."""
    if path is None or not os.path.isfile(path):
        return None
    import copy
    before = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    why = None
    try:
        ck = load_torch(path)                      # ChecksumError when any byte changed
        if not isinstance(ck, dict) or ck.get("format") != CKPT_FORMAT:
            why = "unknown format"
        elif ck.get("key") != key:
            why = f"key {ck.get('key')} != {key}"
        elif not 0 <= int(ck["step"]) <= int(steps):
            why = f"step {ck['step']} outside [0, {steps}]"
        else:
            model.load_state_dict(ck["model"], strict=True)
            opt.load_state_dict(ck["optim"])
            hist = ck["history"]
            if not all(torch.isfinite(p).all() for p in model.state_dict().values()):
                why = "non-finite weights"
    except PermissionError as e:                   # not corrupt: keep it, train from the start
        from core.atomic import cache_unreadable
        return cache_unreadable(path, "TTO checkpoint", e)
    except Exception as e:  # noqa: BLE001 - truncated file, wrong tensors: all mean "corrupt"
        why = f"unreadable ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
    if why is not None:
        model.load_state_dict(before[0])
        opt.load_state_dict(before[1])
        discard_cache_file(path, "TTO checkpoint", why, "training from the start")
        return None
    return int(ck["step"]), hist


def save_checkpoint(path, key, model, opt, step, history):
    """Write the checkpoint atomically with the sha256 of its content (core.checksum.save_torch); False (one
    warning, training goes on) when it cannot be written."""
    return save_torch(path, dict(format=CKPT_FORMAT, key=key, step=int(step), model=model.state_dict(),
                                 optim=opt.state_dict(), history=history), "TTO checkpoint")


class _DeferredSigint:
    """Within ``with``, in the main thread and while SIGINT has Python's default handler: the first SIGINT is
    only recorded (``pending``), to be acted on by the caller at a safe point; a second one raises
    KeyboardInterrupt at once. The previous handler is restored on exit. Elsewhere (another thread, where
    ``signal.signal`` is refused, or a handler installed by the application) nothing changes and
    ``pending`` stays False."""

    def __init__(self):
        self.pending = False
        self._installed = False

    def _record(self, signum, frame):
        if self.pending:
            raise KeyboardInterrupt
        self.pending = True

    def __enter__(self):
        if threading.current_thread() is threading.main_thread() and \
                signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            try:
                signal.signal(signal.SIGINT, self._record)
                self._installed = True
            except ValueError:                     # e.g. a non-main interpreter
                pass
        return self

    def __exit__(self, *exc):
        if self._installed:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            self._installed = False
        return False


def train(model: TTOModel, data: TrainData, cfg, seed=0, ckpt_path=None, key="", progress=False, on_step=None):
    """Optimise ``model`` on ``data`` for ``cfg.steps`` steps (resuming from ``ckpt_path`` when it holds a
    checkpoint of ``key``). ``on_step(step)`` is called after each completed step (tests interrupt with it).
    Returns stats: tto_steps (run now), tto_step_start, tto_s, tto_resumed, tto_loss_first / tto_loss_last
    (mean loss of the first / last ≤ 10 steps run now).

    Interrupted (KeyboardInterrupt or any error), it saves the last completed step unless already saved,
    and re-raises. ``updating`` marks the span from ``opt.step()`` to the step's history row: an interruption
    there leaves a partly updated model, which is never saved (the last checkpoint stays). In the main
    thread a Ctrl-C is deferred to the end of its step (see :class:`_DeferredSigint`)."""
    t0 = time.perf_counter()
    opt = make_optimizer(model, cfg)
    steps = int(cfg.steps)
    start, history = 0, torch.zeros(0, len(LOSS_NAMES) + 1)
    got = load_checkpoint(ckpt_path, key, model, opt, steps)
    if got is not None:
        start, history = got
    model.train()
    step = start                                   # steps completed: model, optimiser and history agree
    updating = False
    saved_at = start if got is not None else -1
    bar = progress_bar(total=steps, initial=start, desc="tto", enabled=progress, leave=False)
    try:
        with _DeferredSigint() as sigint:
            for k in range(start, steps):
                batch = sample_step(data, cfg, seed, k)
                lr = lr_at(k, cfg)
                for g in opt.param_groups:
                    g["lr"] = lr
                parts = step_losses(model, data, cfg, batch)
                opt.zero_grad(set_to_none=True)
                parts["loss"].backward()
                row = torch.tensor([[float(k)] + [float(parts[n].detach()) for n in LOSS_NAMES]])
                updating = True
                opt.step()
                history = torch.cat([history, row])
                step = k + 1
                updating = False
                bar.update(1)
                bar.set_postfix({n: f"{float(v):.3f}" for n, v in zip(LOSS_NAMES, row[0, 1:].tolist())})
                if ckpt_path is not None and (sigint.pending or step == steps
                                              or step % max(1, int(cfg.checkpoint_every)) == 0):
                    save_checkpoint(ckpt_path, key, model, opt, step, history)
                    saved_at = step
                if sigint.pending:
                    raise KeyboardInterrupt
                if on_step is not None:
                    on_step(step)
    except BaseException:
        if ckpt_path is not None and not updating and step > start and step != saved_at:
            save_checkpoint(ckpt_path, key, model, opt, step, history)
        raise
    finally:
        bar.close()
    model.eval()
    h = history[:, 1]
    k = max(1, min(10, h.numel() // 4)) if h.numel() else 0
    return dict(tto_steps=steps - start, tto_step_start=start, tto_resumed=got is not None,
                tto_s=time.perf_counter() - t0,
                tto_loss_first=float(h[:k].mean()) if k else float("nan"),
                tto_loss_last=float(h[-k:].mean()) if k else float("nan"))
