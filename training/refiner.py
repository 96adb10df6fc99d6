"""Train the track refiner (fusion/refiner.py) on synthetic layered videos with exact tracks.

    python -m training.refiner [--minutes 40] [--steps N] [--size 256x384] [--window 16] [--points 96]
                                   [--iterations 4] [--integrator-fraction 0.4] [--seed 0] [--out FILE]

A worker process renders clips (:class:`synthetic.layers.LayeredScene`, ``REFINER_SCENE``: fast sprites
and a big crossing occluder in most clips, so tracks pass through occlusions), runs the frozen RAFT-small
encoder on every frame once, and cuts ``--examples-per-clip`` training windows from each clip: query points
at frame t_q (half of them on sprites), a window of S frames starting at t_q (the first window of a
track) or later (a chained window, whose locked first slot carries an error), the exact tracks and
visibility, and an initial track that is either

* the flow chains' own output on the clip (:func:`fusion.integrate.integrate` through a DIS flow bank,
  config ``--init-config``; a share ``--integrator-fraction`` of the clips), or
* the exact track perturbed: an offset, a random walk, and for a quarter of the points a jump that
  stays (a chain sliding onto another surface), with visibility flipped in 10 % of the frames and a σ
  loosely tied to the true error.

Loss (PIPs): L1 of the position over every unlocked slot, occluded ones too, summed over iterations with
weights γ^(I−i), γ = 0.8; class-balanced cross-entropy of the visibility; Gaussian negative
log-likelihood of the final error under the predicted σ. A fixed validation set (disjoint seeds) is
scored before and after training (median error, share within 1, 2, 4 px, of visible and of occluded
slots; visibility accuracy; P(e < 2σ)). The weights file records the command, seed, generator version
and these figures.
"""
import argparse
import os
import shlex
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from core.coords import parse_frame_size
from core.errors import InputError, PitrackError
from fusion.refiner import PACKAGED, WEIGHTS_DIR, TrackRefiner, WindowFeatures, pyramid, save_refiner

REFINER_SCENE = dict(mean_speed=3.0, max_speed=10.0, big_occluder_prob=0.7, nonrigid_fraction=0.6,
                     camera_max_speed=4.0, blur_prob=0.6, noise_sigma=(0.0, 5.0))
VAL_SEED_OFFSET = 10 ** 9
GAMMA = 0.8
STRIDE = 8                                # RAFT-small encoder: cell u = pixel-centre x / 8


def perturbed_init(rng, gt_uv, gt_vis, chained):
    """An initial track from the exact one [N, S, 2] (cells): (uv, log σ², visible). Slot 0 is exact for a
    first window and perturbed like the rest for a chained one."""
    N, S = gt_vis.shape
    px = 1.0 / STRIDE
    offset = rng.normal(0, rng.uniform(0, 3.0, (N, 1, 1)), (N, 1, 2))
    walk = np.cumsum(rng.normal(0, rng.uniform(0, 1.5, (N, 1, 1)), (N, S, 2)), 1)
    err = (offset + walk) * px
    jump = rng.random(N) < 0.25
    slot = rng.integers(1, S, N)
    angle = rng.uniform(0, 2 * np.pi, N)
    size = rng.uniform(4, 24, N) * px
    step = (np.arange(S)[None] >= slot[:, None]) & jump[:, None]
    err = err + step[..., None] * (size[:, None] * np.stack([np.cos(angle), np.sin(angle)], -1))[:, None]
    if not chained:
        err = err - err[:, :1]
    sigma = np.linalg.norm(err, axis=-1) * np.exp(rng.normal(0, 0.5, (N, S))) + 0.5 * px
    vis = gt_vis ^ (rng.random((N, S)) < 0.1)
    vis[:, 0] = gt_vis[:, 0] if chained else True
    return gt_uv + err.astype(np.float32), np.log(sigma ** 2).astype(np.float32), vis


def integrator_init(frames, points_px, tq, cfg):
    """The flow chains' tracks of query points (pixel-centre px [N, 2], frame ``tq``) through ``frames`` uint8
    [T, H, W, 3]: (uv cells [N, T, 2], log σ² [N, T], visible [N, T])."""
    from flow.bank import FlowBank
    from fusion.integrate import integrate
    bank = FlowBank(frames, cfg.flow, cache_dir=None, progress=False)
    intervals, use_inf = cfg.chain.parsed_intervals()
    fusion = cfg.fusion if cfg.fusion.probabilistic else None
    est = integrate(bank, len(frames), torch.from_numpy(points_px).float(), np.full(len(points_px), tq), intervals,
                    use_inf, cfg.chain.occlusion_threshold, cfg.chain.query_sigma ** 2, fusion,
                    float(cfg.fusion.outlier_radius))
    uv = est.xy.numpy() / STRIDE
    return uv, np.log(np.clip(est.var.numpy(), 1e-4, 1e6) / STRIDE ** 2), est.vis.numpy()


def clip_examples(pool, encoder, seed, size_hw, window, points, examples, init_cfg, integrator_fraction):
    """Training windows cut from one clip. Returns (features float16 [T, C, h, w], [example dicts]); each
    example: frames long [S], t_q, uv_gt [N, S, 2] cells, vis_gt, uv_init, logvar_init, vis_init, query_uv [N, 2]."""
    from synthetic.layers import LayeredScene, SceneConfig
    rng = np.random.default_rng(seed)
    H, W = size_hw
    lead = max(4, window // 2)
    T = window + lead
    scene = LayeredScene(pool, int(rng.integers(2 ** 62)), size_hw, T, SceneConfig(**REFINER_SCENE))
    video = np.stack([scene.render(t) for t in range(T)])
    feats = torch.cat([encoder(video[i:i + 8]) for i in range(0, T, 8)]).to(torch.float16)
    tq = int(rng.integers(0, lead // 2 + 1))
    use_integrator = rng.random() < integrator_fraction
    pts = []
    top = scene.top_layer(tq)
    for _ in range(examples):
        on_sprite = np.argwhere(top > 0)
        n_sprite = points // 2 if len(on_sprite) else 0
        yx = on_sprite[rng.integers(0, len(on_sprite), n_sprite)] if n_sprite else np.zeros((0, 2))
        p = np.concatenate([yx[:, ::-1] + rng.uniform(0, 1, (n_sprite, 2)),
                            rng.uniform(0, 1, (points - n_sprite, 2)) * (W, H)])       # corner convention px
        pts.append(p)
    all_pts = np.concatenate(pts)
    gt_px, gt_vis = scene.track(all_pts, tq)                                             # [N·E, T, 2] corner px
    gt_uv = (gt_px - 0.5) / STRIDE
    if use_integrator:
        init = integrator_init(video, all_pts - 0.5, tq, init_cfg)
    out = []
    for e in range(examples):
        sl = slice(e * points, (e + 1) * points)
        chained = rng.random() < 0.5
        ts = int(rng.integers(tq + 1, T - window + 1)) if chained and T - window > tq else tq
        chained = ts != tq
        fr = np.arange(ts, ts + window)
        g_uv, g_vis = gt_uv[sl][:, fr], gt_vis[sl][:, fr]
        if use_integrator:
            uv, lv, vis = (a[sl][:, fr] for a in init)
            if not chained:
                uv = uv.copy()
                uv[:, 0] = g_uv[:, 0]
        else:
            uv, lv, vis = perturbed_init(rng, g_uv, g_vis, chained)
        out.append(dict(frames=torch.from_numpy(fr), tq=tq, uv_gt=torch.from_numpy(g_uv).float(),
                        vis_gt=torch.from_numpy(g_vis), uv_init=torch.from_numpy(np.asarray(uv, np.float32)),
                        logvar_init=torch.from_numpy(np.asarray(lv, np.float32)), vis_init=torch.from_numpy(vis),
                        query_uv=torch.from_numpy(gt_uv[sl][:, tq]).float(), integrator=use_integrator))
    return feats, out


class ClipStream(torch.utils.data.IterableDataset):
    """Clips from seeds ``base``, ``base`` + 1, … (deterministic order: one worker)."""

    def __init__(self, folders, weights, base, **kw):
        self.folders, self.weights, self.base, self.kw = folders, weights, base, kw

    def __iter__(self):
        from features.backbones import RaftEncoder
        from synthetic.layers import TexturePool
        torch.set_num_threads(1)
        pool = TexturePool(self.folders, seed=self.base % 2 ** 31)
        encoder = RaftEncoder(self.weights, device="cpu")
        i = 0
        while True:
            yield clip_examples(pool, encoder, self.base + i, **self.kw)
            i += 1


def run_example(model, pyr, ex, iterations):
    """The model on one example: (tracks per iteration, visibility logits, log σ²)."""
    N = ex["uv_gt"].shape[0]
    frames = ex["frames"][None].expand(N, -1)
    template = WindowFeatures(pyr, torch.full((N, 1), ex["tq"]), torch.zeros(N, pyr[0].shape[1]), model.radius) \
        .features_at(ex["query_uv"][:, None])[:, 0]
    wf = WindowFeatures(pyr, frames, template, model.radius)
    return model(wf, ex["uv_init"], ex["logvar_init"], ex["vis_init"], iterations)


def example_loss(out, ex):
    """(position L1 summed over iterations with γ weights, visibility cross-entropy, σ NLL), cells."""
    tracks, vis_logit, logvar = out
    gt, vis = ex["uv_gt"][:, 1:], ex["vis_gt"][:, 1:].float()
    I = len(tracks)
    pos = sum(GAMMA ** (I - 1 - i) * (t[:, 1:] - gt).abs().sum(-1).clamp(max=20.0).mean() for i, t in enumerate(tracks))
    frac = vis.mean().clamp(0.05, 0.95)
    weight = torch.where(vis > 0.5, 0.5 / frac, 0.5 / (1 - frac))
    bce = F.binary_cross_entropy_with_logits(vis_logit[:, 1:], vis, weight=weight)
    e2 = ((tracks[-1][:, 1:].detach() - gt) ** 2).sum(-1).clamp(max=400.0)
    nll = (e2 / (2 * logvar[:, 1:].exp()) + logvar[:, 1:]).mean()
    return pos, bce, nll


@torch.no_grad()
def validate(model, val, iterations):
    """Figures over the validation windows (px at the synthetic resolution): init and refined."""
    rows = {"init": [], "refined": []}
    vis_ok = {"init": [], "refined": []}
    cover, occl = [], []
    for feats, examples in val:
        pyr = pyramid(feats, model.levels)
        for ex in examples:
            tracks, vis_logit, logvar = run_example(model, pyr, ex, iterations)
            gt, g_vis = ex["uv_gt"][:, 1:], ex["vis_gt"][:, 1:]
            e_ref = (tracks[-1][:, 1:] - gt).norm(dim=-1) * STRIDE
            e_init = (ex["uv_init"][:, 1:] - gt).norm(dim=-1) * STRIDE
            rows["init"].append(e_init.flatten())
            rows["refined"].append(e_ref.flatten())
            occl.append((~g_vis).flatten())
            vis_ok["init"].append((ex["vis_init"][:, 1:] == g_vis).flatten())
            vis_ok["refined"].append(((vis_logit[:, 1:] > 0) == g_vis).flatten())
            cover.append((e_ref < 2 * logvar[:, 1:].mul(0.5).exp() * STRIDE).flatten())
    occl = torch.cat(occl)
    out = {}
    for name in rows:
        e = torch.cat(rows[name])
        out[name] = {"median_px": e.median().item(), "mean_px": e.clamp(max=100).mean().item(),
                     **{f"<{d}px": (e < d).float().mean().item() for d in (1, 2, 4)},
                     "visible_<2px": (e[~occl] < 2).float().mean().item(),
                     "occluded_<4px": (e[occl] < 4).float().mean().item() if occl.any() else float("nan"),
                     "visibility_accuracy": torch.cat(vis_ok[name]).float().mean().item()}
    out["refined"]["P(e<2σ)"] = torch.cat(cover).float().mean().item()
    return out


def fmt(s):
    return "  ".join(f"{k} {v:.3f}" for k, v in s.items())


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m training.refiner", description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=40.0, help="stop after this much wall time")
    p.add_argument("--steps", type=int, default=100000, help="stop after this many steps")
    p.add_argument("--size", default="256x384", help="HxW of the synthetic frames")
    p.add_argument("--window", type=int, default=16, help="S: frames per window")
    p.add_argument("--points", type=int, default=96, help="query points per example")
    p.add_argument("--examples-per-clip", type=int, default=3)
    p.add_argument("--iterations", type=int, default=4)
    p.add_argument("--integrator-fraction", type=float, default=0.4,
                   help="share of clips whose initial tracks are the flow chains' output")
    p.add_argument("--init-config", default=os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                                          "configs", "mft.yaml"),
                   help="config of the flow chains that give those initial tracks")
    p.add_argument("--channels", type=int, default=128)
    p.add_argument("--blocks", type=int, default=4)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--val-clips", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--weights", default="", help="RAFT-small checkpoint (default: as the tracker finds it)")
    p.add_argument("--textures", nargs="*", help="folders of frames to cut layers from (default: the unlabelled "
                                                 "clips, ../shared/data/videos)")
    p.add_argument("--out", default=None, help="weights file (default: fusion/weights/refiner.pt)")
    args = p.parse_args(argv)
    try:
        from features.backbones import RaftEncoder
        from pitrack.config import load_config
        from synthetic.layers import GENERATOR_VERSION, TexturePool, default_texture_folders
        size_hw = parse_frame_size(args.size, min_side=64, order="HxW")
        if size_hw[0] % STRIDE or size_hw[1] % STRIDE:
            raise InputError(f"--size sides must be multiples of {STRIDE}, got {args.size}")
        if args.window < 2 or args.points < 1 or args.steps < 1 or not args.minutes > 0 or args.iterations < 1:
            raise InputError("--window must be >= 2; --points, --steps, --minutes and --iterations positive")
        if not 0.0 <= args.integrator_fraction <= 1.0:
            raise InputError("--integrator-fraction must be in [0, 1]")
        init_cfg = load_config(args.init_config)
        folders = args.textures or default_texture_folders()
        pool = TexturePool(folders, seed=args.seed)            # fails here, before any training, on bad folders
        encoder = RaftEncoder(args.weights, device="cpu")
        encoder.net                                            # loads (and checks) the checkpoint
        out_path = args.out or os.path.join(WEIGHTS_DIR, PACKAGED)
        os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    except PitrackError as e:
        print(f"training.refiner: error: {e}", file=sys.stderr)
        return 2
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)
    t_start = time.perf_counter()
    kw = dict(size_hw=size_hw, window=args.window, points=args.points, examples=args.examples_per_clip,
              init_cfg=init_cfg, integrator_fraction=args.integrator_fraction)
    val_base = VAL_SEED_OFFSET + args.seed * 10 ** 6
    val = [clip_examples(pool, encoder, val_base + i, **kw) for i in range(args.val_clips)]
    model = TrackRefiner(args.channels, args.blocks)
    before = validate(model, val, args.iterations)
    print(f"validation, initial tracks: {fmt(before['init'])}", flush=True)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-6)
    stream = torch.utils.data.DataLoader(ClipStream(folders, args.weights, args.seed * 10 ** 6, **kw),
                                         batch_size=None, num_workers=1, prefetch_factor=2)
    budget_s = args.minutes * 60.0
    step, history = 0, []
    for feats, examples in stream:
        pyr = pyramid(feats, model.levels)
        for ex in examples:
            elapsed = time.perf_counter() - t_start
            frac = min(1.0, max(step / args.steps, elapsed / budget_s))
            if step >= args.steps or elapsed >= budget_s:
                break
            for g in opt.param_groups:       # one-cycle: linear warm-up over 5 %, then linear decay
                g["lr"] = args.lr * min(frac / 0.05, (1.0 - frac) / 0.95, 1.0) + 1e-6
            pos, bce, nll = example_loss(run_example(model, pyr, ex, args.iterations), ex)
            loss = pos + bce + 0.1 * nll
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            history.append((pos.item(), bce.item(), nll.item()))
            step += 1
            if step % 50 == 0:
                a, b, c = np.mean(history[-50:], 0)
                print(f"step {step} {elapsed / 60:.1f} min  position {a:.4f}  visibility {b:.4f}  σ NLL {c:.4f}",
                      flush=True)
        else:
            continue
        break
    after = validate(model, val, args.iterations)
    wall = time.perf_counter() - t_start
    print(f"validation, refined after {step} steps ({wall / 60:.1f} min): {fmt(after['refined'])}", flush=True)
    meta = {"command": "python -m training.refiner " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
            "seed": args.seed, "generator_version": GENERATOR_VERSION, "steps": step, "size": list(size_hw),
            "window": args.window, "iterations": args.iterations, "points": args.points,
            "integrator_fraction": args.integrator_fraction, "scene": REFINER_SCENE, "wall_s": round(wall, 1),
            "torch": torch.__version__, "encoder": encoder.cache_id(),
            "loss_first_50": np.mean(history[:50], 0).tolist() if history else None,
            "loss_last_50": np.mean(history[-50:], 0).tolist() if history else None,
            "validation": {"clips": args.val_clips, "init": before["init"], "refined": after["refined"]}}
    save_refiner(out_path, model, meta)
    print(f"wrote {out_path}")
    return 0


if __name__ == "__main__":
    from core.errors import run_command
    sys.exit(run_command(main, "training.refiner"))
