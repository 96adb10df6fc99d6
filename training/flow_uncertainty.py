"""Train the learned occlusion and uncertainty head of a flow backend on synthetic layered videos.

    python -m training.flow_uncertainty --backend dis|raft_small [--minutes 50] [--steps N] [--batch 8]
                                     [--size 384x640] [--seed 0] [--footage] [--prior none|fb] [--textures DIR ...]
                                     [--out FILE]

Each step draws ``batch`` frame pairs from :func:`synthetic.layers.sample_pair` (a fresh scene per
pair, drawn from ``TRAINING_SCENE``; gaps 1 … 32 and 48 for the long gaps of the Δ = ∞ chains), computes
the backend's flows in both directions (RAFT: with its features, the network frozen; its checkpoint is
found as the tracker finds it, ``--weights`` or $PITRACK_WEIGHTS), and fits the head
(flow/learned_uncertainty.py) to the exact flow
error and occlusion with MFT's losses. Pairs are generated in a worker process while the head trains. A
fixed validation set (seeds disjoint from training) then sets the head's occlusion-logit offset (p = 0.5
becomes the decision of highest F1, :func:`decision_offset`) and scores the head and, beside it, the
forward–backward formulas: negative log-likelihood, P(e < σ), P(e < 2σ) (2-D error e = ‖F − F*‖, σ per
axis: 0.39 and 0.86 when calibrated), Spearman's ρ of σ and e, and occlusion precision, recall and F1.
The weights file records the command, seed, generator version and these figures.
"""
import argparse
import math
import os
import shlex
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from core.coords import outside_frame, parse_frame_size
from core.errors import InputError, PitrackError
from eval.calibration import occlusion_scores, spearman
from flow.learned_uncertainty import (LOG_VAR_RANGE, PACKAGED, PRIORS, WEIGHTS_DIR, MapGeometry, add_prior,
                                      dis_head_inputs, fb_prior_maps, make_head, pixel_grid, save_head, upsample_to)

GAPS = (1, 2, 4, 8, 16, 32, 48)
# Scenes for training: the generator's defaults made harder, so that DIS errs on them about as often as on
# real video (faster and more non-rigid motion, more blur and noise than synthetic.layers.SceneConfig()).
TRAINING_SCENE = dict(mean_speed=3.0, max_speed=10.0, nonrigid_fraction=0.8, nonrigid_max_px=6.0,
                      camera_max_speed=4.0, blur_prob=0.7, blur_sigma=(0.0, 1.5), noise_sigma=(0.0, 6.0))
# --footage adds the effects of real footage that break brightness constancy (finite shutter, turning
# shading, moving lights and shadows, JPEG); measured in docs/training.md, not used by the packaged weights.
FOOTAGE_EFFECTS = dict(motion_blur_prob=0.5, shading_gradient=0.4, light_blobs=(0, 3), jpeg_prob=0.7)
VAL_SEED_OFFSET = 10 ** 9            # validation pairs: seeds from here on; training pairs below
MAX_ERROR = 100.0                    # px: larger flow errors count as this much in the loss
OUTSIDE_LOGIT = 20.0                 # occlusion logit where the flow leaves the frame (the integrator's p = 1)


def make_flow(backend, preset, weights=""):
    if backend == "dis":
        from flow.dis import DISFlow
        return DISFlow(preset)
    from flow.raft import RaftFlow
    return RaftFlow(backend, weights, allow_download=False, device="cpu")


def pair_batch(pool, flow, seeds, size_hw, scene):
    """Head inputs, estimated flows, GT flows and GT occlusion of both directions of the pairs ``seeds``:
    x [2B, C, h', w'] (DIS: 14 channels at half resolution; RAFT: its features at 1/8), flow [2B, 2, h, w],
    gt [2B, 2, h, w], occ [2B, h, w] (float32 tensors). Row i ^ 1 is the other direction of row i."""
    from synthetic.layers import sample_pair
    fa, fb, gt, occ = [], [], [], []
    for s in seeds:
        d = sample_pair(pool, int(s), size_hw=size_hw, gaps=GAPS, config=scene)
        fa += [d["frame1"], d["frame2"]]
        fb += [d["frame2"], d["frame1"]]
        gt += [d["flow_fwd"], d["flow_bwd"]]
        occ += [d["occ_fwd"], d["occ_bwd"]]
    fa, fb = np.stack(fa), np.stack(fb)
    if hasattr(flow, "flow_and_features"):
        est, x = flow.flow_and_features(fa, fb)
        x = torch.from_numpy(x)
    else:
        est = np.concatenate([flow(fa[i:i + 1], fb[i:i + 1]) for i in range(len(fa))])
        x = dis_head_inputs(fa, fb, est, est[np.arange(len(est)) ^ 1])
    return x, torch.from_numpy(est), torch.from_numpy(np.stack(gt)), torch.from_numpy(np.stack(occ))


class PairStream(torch.utils.data.IterableDataset):
    """Batches of training pairs, step ``start`` on; batch k uses seeds seed·10⁶ + k·B … (deterministic)."""

    def __init__(self, texture_folders, backend, preset, weights, batch, size_hw, seed, start, scene):
        self.args = (texture_folders, backend, preset, weights, batch, size_hw, seed, start, scene)

    def __iter__(self):
        from synthetic.layers import TexturePool
        folders, backend, preset, weights, batch, size_hw, seed, start, scene = self.args
        torch.set_num_threads(1)
        pool, flow = TexturePool(folders, seed=seed), make_flow(backend, preset, weights)
        k = start
        while True:
            base = seed * 10 ** 6 + k * batch
            yield pair_batch(pool, flow, range(base, base + batch), size_hw, scene)
            k += 1


def full_outputs(head, x, est, geometry, device="cpu"):
    """The head's occlusion logit and α at every working pixel, float32 [2B, 2, h, w] on the CPU, its prior added
    (the forward–backward formulas of each flow ``est`` [2B, 2, h, w] against the other direction, row i ^ 1).
    Where the flow leaves the frame they are what the integrator uses there (occluded, largest variance)."""
    out = upsample_to(head(x.to(device)), est.shape[-2:], geometry).cpu()
    if head.prior == "fb":
        out = add_prior(out, fb_prior_maps(est, est[np.arange(len(est)) ^ 1]))
    h, w = est.shape[-2:]
    q = pixel_grid(h, w).T.reshape(1, 2, h, w) + est
    outside = outside_frame(q[:, 0], q[:, 1], (h, w))[:, None]
    return torch.where(outside, torch.tensor([OUTSIDE_LOGIT, LOG_VAR_RANGE[1]]).reshape(1, 2, 1, 1), out)


def hard_labels(occ):
    """Pixels whose soft occlusion ``occ`` is a hard label (below 0.01 or above 0.99; MFT leaves the rest out)."""
    return (occ < 0.01) | (occ > 0.99)


def losses(out, est, gt, occ):
    """MFT's losses (flow/learned_uncertainty.py) from head outputs at working resolution ``out`` [B, 2, h, w]:
    (occlusion BCE on hard labels, uncertainty NLL on visible pixels)."""
    logit, alpha = out[:, 0], out[:, 1]
    hard = hard_labels(occ)
    l_occ = F.binary_cross_entropy_with_logits(logit[hard], (occ[hard] > 0.5).float())
    visible = occ < 0.01
    e2 = ((est - gt) ** 2).sum(1).clamp(max=MAX_ERROR ** 2)
    l_unc = (alpha + e2 / (2 * alpha.exp()))[visible].mean()
    return l_occ, l_unc


def scores(occ_prob, var, est, gt, occ):
    """Validation figures of predicted occlusion probability [B, h, w] and per-axis variance [B, h, w]."""
    e = ((est - gt) ** 2).sum(1).sqrt().numpy()
    visible = (occ < 0.01).numpy()
    sig = np.sqrt(var.numpy())[visible]
    ev = e[visible]
    hard = hard_labels(occ).numpy()
    sub = np.random.default_rng(0).choice(ev.size, min(ev.size, 200000), replace=False)
    nll = float(np.mean(np.log(2 * np.pi * sig ** 2) + np.minimum(ev, MAX_ERROR) ** 2 / (2 * sig ** 2)))
    return {"nll": nll, "median_sigma": float(np.median(sig)), "median_error": float(np.median(ev)),
            "within_1sigma": float(np.mean(ev < sig)), "within_2sigma": float(np.mean(ev < 2 * sig)),
            "spearman": spearman(sig[sub], ev[sub]),
            **occlusion_scores((occ.numpy() > 0.5)[hard], (occ_prob.numpy() > 0.5)[hard])}


def decision_offset(logit, label):
    """The occlusion-logit offset b that makes sigmoid(logit + b) > 0.5 the decision of highest F1 for
    ``label`` (bool), over logits ``logit`` (same shape): b = −(the best threshold on the logit)."""
    order = np.argsort(-logit)
    tp = np.cumsum(label[order])                          # calling the k + 1 largest logits occluded
    f1 = 2 * tp / (np.arange(1, logit.size + 1) + label.sum())
    k = int(np.argmax(f1))
    cut = logit[order[k]] if k + 1 == logit.size else 0.5 * (logit[order[k]] + logit[order[k + 1]])
    return float(-cut)


def fb_predictions(est):
    """Occlusion probability and variance of the forward–backward formulas (default parameters) for the
    directed flows ``est`` [2B, 2, h, w] (row i ^ 1 is the other direction of row i)."""
    from flow.occlusion import fb_occlusion_variance
    pairs = [fb_occlusion_variance(est[i].numpy(), est[i ^ 1].numpy()) for i in range(est.shape[0])]
    return tuple(torch.from_numpy(np.stack(v)) for v in zip(*pairs))


def predict(head, val, device, geometry):
    """The head's occlusion logits [N, h, w] and variances [N, h, w] over the validation batches ``val``."""
    head.eval()
    logits, vars_ = [], []
    with torch.no_grad():
        for x, est, _, _ in val:
            out = full_outputs(head, x, est, geometry, device)
            logits.append(out[:, 0])
            vars_.append(out[:, 1].exp())
    head.train()
    return torch.cat(logits), torch.cat(vars_)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m training.flow_uncertainty", description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", default="dis", choices=sorted(PACKAGED))
    p.add_argument("--dis-preset", default="medium")
    p.add_argument("--minutes", type=float, default=50.0, help="stop after this much wall time")
    p.add_argument("--steps", type=int, default=100000, help="stop after this many steps")
    p.add_argument("--batch", type=int, default=8, help="frame pairs per step (both directions are used)")
    p.add_argument("--size", default="384x640", help="HxW of the synthetic frames (about the working resolution "
                                                      "of 480p video, where the head is used)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--w-occ", type=float, default=1.0, help="weight of the occlusion loss")
    p.add_argument("--channels", type=int, default=None, help="head width (default: 32 for dis, 64 for RAFT)")
    p.add_argument("--prior", default="none", choices=PRIORS, help="none: the head predicts alone; fb: it corrects "
                                                                  "the forward–backward formulas (starts from them)")
    p.add_argument("--weights", default="", help="RAFT checkpoint (default: as the tracker finds raft-small.pth)")
    p.add_argument("--val-pairs", type=int, default=48)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--footage", action="store_true", help="train on scenes with the footage effects "
                                                          "(finite shutter, turning shading, moving lights, JPEG)")
    p.add_argument("--textures", nargs="*", help="folders of frames to cut layers from (default: the unlabelled "
                                                 "clips, ../shared/data/videos)")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default=None, help="weights file (default: flow/weights/<backend>_uncertainty.pt)")
    args = p.parse_args(argv)
    try:
        from core.devices import resolve_device
        from synthetic.layers import GENERATOR_VERSION, SceneConfig, TexturePool, default_texture_folders
        size_hw = parse_frame_size(args.size, min_side=64, order="HxW")
        if args.batch < 1 or args.steps < 1 or not args.minutes > 0:
            raise InputError("--batch, --steps and --minutes must be positive")
        folders = args.textures or default_texture_folders()
        pool = TexturePool(folders, seed=args.seed)           # fails here, before any training, on bad folders
        flow = make_flow(args.backend, args.dis_preset, args.weights)
        geometry = MapGeometry.for_backend(args.backend, size_hw)
        device = resolve_device(args.device, "--device")
        out_path = args.out or os.path.join(WEIGHTS_DIR, PACKAGED[args.backend])
        os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
        if args.backend != "dis":
            flow.model                                         # loads (and checks) the checkpoint before any work
    except PitrackError as e:
        print(f"training.flow_uncertainty: error: {e}", file=sys.stderr)
        return 2
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)
    t_start = time.perf_counter()
    val_seeds = range(VAL_SEED_OFFSET + args.seed * 10 ** 6, VAL_SEED_OFFSET + args.seed * 10 ** 6 + args.val_pairs)
    scene_args = dict(TRAINING_SCENE, **(FOOTAGE_EFFECTS if args.footage else {}))
    scene = SceneConfig(**scene_args)
    val = [pair_batch(pool, flow, val_seeds[i:i + 8], size_hw, scene) for i in range(0, args.val_pairs, 8)]
    truth = [torch.cat(v) for v in zip(*[(b[1], b[2], b[3]) for b in val])]     # estimated flow, GT flow, GT occlusion
    fb = scores(*fb_predictions(truth[0]), *truth)
    print(f"validation, forward-backward formulas: {fmt(fb)}", flush=True)
    head = make_head(args.backend, args.channels, prior=args.prior).to(device)
    opt = torch.optim.AdamW(head.parameters(), lr=args.lr, weight_decay=1e-4)
    stream = torch.utils.data.DataLoader(
        PairStream(folders, args.backend, args.dis_preset, args.weights, args.batch, size_hw, args.seed, 0, scene),
        batch_size=None, num_workers=1, prefetch_factor=4)
    budget_s = args.minutes * 60.0
    step, history = 0, []
    for x, est, gt, occ in stream:
        elapsed = time.perf_counter() - t_start
        frac = min(1.0, max(step / args.steps, elapsed / budget_s))
        if step >= args.steps or elapsed >= budget_s:
            break
        for g in opt.param_groups:
            g["lr"] = args.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac))) * min(1.0, (step + 1) / 50)
        l_occ, l_unc = losses(full_outputs(head, x, est, geometry, device), est, gt, occ)
        loss = l_unc + args.w_occ * l_occ
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(head.parameters(), 1.0)
        opt.step()
        history.append((l_occ.item(), l_unc.item()))
        step += 1
        if step % 100 == 0:
            o, u = np.mean(history[-100:], 0)
            print(f"step {step} {elapsed / 60:.1f} min  occlusion BCE {o:.4f}  uncertainty NLL {u:.4f}", flush=True)
    logits, var = predict(head, val, device, geometry)
    hard = hard_labels(truth[2])
    offset = decision_offset(logits[hard].numpy(), (truth[2][hard] > 0.5).numpy())
    head.occlusion_offset.fill_(offset)
    raw = scores(torch.sigmoid(logits), var, *truth)
    learned = scores(torch.sigmoid(logits + offset), var, *truth)
    wall = time.perf_counter() - t_start
    print(f"validation, learned head after {step} steps ({wall / 60:.1f} min), occlusion logit offset "
          f"{head.occlusion_offset.item():+.3f}: {fmt(learned)}", flush=True)
    meta = {"command": "python -m training.flow_uncertainty " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
            "seed": args.seed, "generator_version": GENERATOR_VERSION, "steps": step, "batch": args.batch,
            "size": list(size_hw), "gaps": list(GAPS), "flow": flow.cache_id(), "wall_s": round(wall, 1),
            "device": device, "torch": torch.__version__, "loss_first_100": np.mean(history[:100], 0).tolist(),
            "loss_last_100": np.mean(history[-100:], 0).tolist(),
            "scene": scene_args, "occlusion_offset": head.occlusion_offset.item(),
            "validation": {"pairs": args.val_pairs, "learned": learned, "learned_without_offset": raw, "fb": fb}}
    save_head(out_path, head.cpu(), args.backend, meta)
    print(f"wrote {out_path}")
    return 0


def fmt(s):
    return "  ".join(f"{k} {v:.3f}" for k, v in s.items())


if __name__ == "__main__":
    from core.errors import run_command
    sys.exit(run_command(main, "training.flow_uncertainty"))
