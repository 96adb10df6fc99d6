"""PIPs-style track refiner: the alternative fusion module (PIPs, "Particle Video Revisited"; PIPs++).

A point's whole trajectory through a window of S frames is updated at once by a temporal network that
reads, at every frame, what the frozen features say around the current estimate:

    for each iteration i = 1 … I:
        corr(s)  = ⟨f_s^l(u_s + δ), template⟩ / √C   for δ on a (2r+1)² grid, levels l = 0 … L−1,
                   templates: the query's feature (fixed) and the feature at the estimate two frames back
        Δu, h    = TemporalNet([corr, velocity, u − u_init, log σ²_init, visible_init, locked])
        u       ← u + Δu,  u(frame 0) locked,  detached
    visible, log σ² = heads(h of the last iteration)

Coordinates are cells of the feature grid (level 0, stride 8 for RAFT-small's encoder, pixel-centre
index convention, :mod:`features.grid`); pyramid level l is the average pool by 2^l, whose cell j sits at
level-0 position 2^l·j + (2^l − 1)/2. Positions are detached before every sampling (as PIPs), so the
correlations are constants and are computed without autograd.

Long videos (:func:`refine_tracks`): from each query frame, forward and backward, windows of S frames
overlapping by one; a window's first frame is locked to the query position (first window) or to the
previous window's refined estimate, and the query's template is carried through all windows.
"""
import json
import math
import os

import torch
import torch.nn.functional as F
from torch import nn

from core.errors import WeightsError

REFINER_FORMAT = 1
VIS_LOGIT_INPUT = 20.0                         # the logit refine_tracks reports for a visibility it keeps
LOG_VAR_RANGE = (-8.0, 8.0)                    # log σ² in cells²: σ from 0.02 to 55 cells
WEIGHTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights")
PACKAGED = "refiner.pt"
EXTRA_INPUTS = 7                               # velocity 2, offset from the initial track 2, log σ²_init, visible_init, locked


def pyramid(feats, levels):
    """[T, C, h, w] -> list of ``levels`` maps, level l average-pooled by 2^l (floor), float32."""
    out = [feats.float()]
    for _ in range(levels - 1):
        x = out[-1]
        out.append(F.avg_pool2d(x, 2) if min(x.shape[-2:]) >= 2 else x)
    return out


def level_coords(uv, level):
    """Level-0 cell coordinates [..., 2] -> level ``level`` cells: (u − (2^l − 1)/2) / 2^l."""
    s = 2.0 ** level
    return (uv - (s - 1) / 2) / s


def _offsets(radius):
    r = torch.arange(-radius, radius + 1, dtype=torch.float32)
    dy, dx = torch.meshgrid(r, r, indexing="ij")
    return torch.stack([dx, dy], -1).reshape(-1, 2)            # [(2r+1)², 2] (x, y)


def _sample(fmap, pts):
    """Bilinear samples of ``fmap`` [C, h, w] at index-convention points [M, 2] -> [M, C], zeros outside."""
    C, h, w = fmap.shape
    g = torch.stack([pts[:, 0] * (2.0 / max(w - 1, 1)) - 1.0, pts[:, 1] * (2.0 / max(h - 1, 1)) - 1.0], -1)
    out = F.grid_sample(fmap[None], g[None, None], mode="bilinear", padding_mode="zeros", align_corners=True)
    return out[0, :, 0].t()


class WindowFeatures:
    """The frozen feature pyramid of a video and, per point, the frame of each window slot.

    ``pyr``: :func:`pyramid` of [T, C, h, w]; ``frames`` long [N, S] (a frame index per point and slot);
    ``template`` [N, C]: the query's level-0 feature."""

    def __init__(self, pyr, frames, template, radius):
        self.pyr, self.frames, self.template, self.radius = pyr, frames, template.float(), radius
        self.offsets = _offsets(radius)

    @property
    def channels(self):
        return 2 * len(self.pyr) * self.offsets.shape[0]

    def _per_frame(self, fn):
        """Calls fn(t, sel) for every frame t in ``frames``, sel = bool [N, S] of the slots showing it."""
        for t in torch.unique(self.frames).tolist():
            fn(t, self.frames == t)

    @torch.no_grad()
    def features_at(self, uv):
        """Level-0 features at ``uv`` [N, S, 2] -> [N, S, C]."""
        out = torch.zeros(uv.shape[:2] + (self.pyr[0].shape[1],))

        def fill(t, sel):
            out[sel] = _sample(self.pyr[0][t], uv[sel])
        self._per_frame(fill)
        return out

    @torch.no_grad()
    def correlations(self, uv, recent):
        """Correlations around ``uv`` [N, S, 2] with the query template and ``recent`` [N, S, C] (one template
        per slot) -> [N, S, 2·L·(2r+1)²]: template-major, then level, then offset (row-major y, x)."""
        N, S = uv.shape[:2]
        K, L = self.offsets.shape[0], len(self.pyr)
        C = self.pyr[0].shape[1]
        out = torch.zeros(N, S, 2, L, K)
        templates = torch.stack([self.template[:, None].expand(N, S, C), recent], 2)      # [N, S, 2, C]

        def fill(t, sel):
            tmpl = templates[sel]                                                          # [M, 2, C]
            for level, fmaps in enumerate(self.pyr):
                pts = level_coords(uv[sel], level)[:, None] + self.offsets[None]          # [M, K, 2]
                f = _sample(fmaps[t], pts.reshape(-1, 2)).reshape(pts.shape[0], K, C)
                out[sel, :, level] = torch.einsum("mkc,mjc->mjk", f, tmpl) / math.sqrt(C)
        self._per_frame(fill)
        return out.reshape(N, S, -1)


class ResidualBlock1d(nn.Module):
    def __init__(self, channels, groups=8):
        super().__init__()
        self.net = nn.Sequential(nn.GroupNorm(groups, channels), nn.ReLU(), nn.Conv1d(channels, channels, 3, padding=1),
                                 nn.GroupNorm(groups, channels), nn.ReLU(), nn.Conv1d(channels, channels, 3, padding=1))

    def forward(self, x):
        return x + self.net(x)


class TrackRefiner(nn.Module):
    """The temporal network over a window (1-D residual convolutions over the S frames, as PIPs++'s
    DeltaBlock, much narrower) with a position update, and visibility and log σ² heads."""

    def __init__(self, channels=128, blocks=4, levels=3, radius=3):
        super().__init__()
        self.channels, self.blocks, self.levels, self.radius = channels, blocks, levels, radius
        corr = 2 * levels * (2 * radius + 1) ** 2
        self.inp = nn.Conv1d(corr + EXTRA_INPUTS, channels, 3, padding=1)
        self.body = nn.Sequential(*[ResidualBlock1d(channels) for _ in range(blocks)],
                                  nn.GroupNorm(8, channels), nn.ReLU())
        self.delta = nn.Conv1d(channels, 2, 1)
        self.heads = nn.Conv1d(channels, 2, 1)          # visibility logit, log σ² (cells²)
        for layer in (self.delta, self.heads):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def arch(self):
        return dict(channels=self.channels, blocks=self.blocks, levels=self.levels, radius=self.radius)

    def forward(self, window, uv_init, logvar_init, vis_init, iterations):
        """One window.

        Args:
          window: :class:`WindowFeatures` of N points × S slots (slot 0 is locked).
          uv_init: float [N, S, 2] initial track, level-0 cells; slot 0 is the locked position.
          logvar_init: float [N, S] the initial track's log σ² (cells²).
          vis_init: bool [N, S] the initial track's visibility.
          iterations: I.
        Returns:
          tracks: list of I float [N, S, 2] (cells; slot 0 = uv_init's), visibility logits [N, S],
          log σ² [N, S] (cells², clamped to LOG_VAR_RANGE).
        """
        N, S = uv_init.shape[:2]
        locked = torch.zeros(N, S, 1)
        locked[:, 0] = 1.0
        statics = torch.cat([logvar_init.clamp(*LOG_VAR_RANGE)[..., None] / 4.0,
                             vis_init.float()[..., None] * 2.0 - 1.0, locked], -1)
        uv = uv_init.clone()
        tracks = []
        recent_slot = (torch.arange(S) - 2).clamp(min=0)
        for _ in range(iterations):
            uv = uv.detach()
            recent = window.features_at(uv)[:, recent_slot]
            corr = window.correlations(uv, recent)
            velocity = torch.cat([torch.zeros(N, 1, 2), uv[:, 1:] - uv[:, :-1]], 1)
            x = torch.cat([corr, velocity, uv - uv_init, statics], -1).transpose(1, 2)
            h = self.body(self.inp(x))
            delta = self.delta(h).transpose(1, 2)
            uv = uv + delta * (1.0 - locked)
            tracks.append(uv)
        heads = self.heads(h).transpose(1, 2)
        return tracks, heads[..., 0], heads[..., 1].clamp(*LOG_VAR_RANGE)


def window_slots(start, direction, window, num_frames):
    """Frame of each slot for windows starting at ``start`` [N] going ``direction`` (±1): (frames long [N, S]
    clamped into the video, valid bool [N, S]); a slot past the video's end repeats the last frame."""
    idx = start[:, None] + direction * torch.arange(window)[None]
    valid = (idx >= 0) & (idx < num_frames)
    return idx.clamp(0, num_frames - 1), valid


@torch.no_grad()
def refine_tracks(model, feats, uv, var, vis, tq, window=16, iterations=4):
    """Refine tracks through a whole video, window by window from each query frame, both directions.

    Args:
      model: :class:`TrackRefiner`.
      feats: float [T, C, h, w] level-0 features of every frame.
      uv: float [N, T, 2] initial tracks (cells); var [N, T] their variance (cells²); vis bool [N, T].
      tq: long [N] query frames; uv[n, tq[n]] is the query position and stays fixed.
    Returns:
      tracks float [N, T, 2] (cells), visibility logit [N, T] (visible where > 0; ±VIS_LOGIT_INPUT where the
      input's visibility is kept: the query frames), variance [N, T] (cells²), windows run.
    """
    T = feats.shape[0]
    N = uv.shape[0]
    if window < 2:
        raise ValueError(f"refiner window must be >= 2 frames, got {window}")
    pyr = pyramid(feats, model.levels)
    n = torch.arange(N)
    template = WindowFeatures(pyr, tq[:, None], torch.zeros(N, feats.shape[1]), model.radius).features_at(
        uv[n, tq][:, None])[:, 0]
    out_uv, out_var = uv.clone(), var.clone()
    out_logit = torch.where(vis, VIS_LOGIT_INPUT, -VIS_LOGIT_INPUT)
    logvar_init = torch.log(var.clamp(min=1e-6))
    windows = 0
    for direction in (1, -1):
        start = tq.clone()
        while True:
            frames, valid = window_slots(start, direction, window, T)
            active = valid[:, 1]
            if not active.any():
                break
            a = torch.nonzero(active)[:, 0]
            fr, ok = frames[a], valid[a]
            # padded slots repeat the last valid slot, so the window sees a still point there
            last = ok.sum(1) - 1
            fr = torch.where(ok, fr, fr.gather(1, last[:, None]))
            init = out_uv[a[:, None], fr]
            wf = WindowFeatures(pyr, fr, template[a], model.radius)
            tracks, vis_logit, logvar = model(wf, init, logvar_init[a[:, None], fr], vis[a[:, None], fr], iterations)
            rows, slots = torch.nonzero(ok[:, 1:], as_tuple=True)
            slots = slots + 1
            pts, tt = a[rows], fr[rows, slots]
            out_uv[pts, tt] = tracks[-1][rows, slots]
            out_logit[pts, tt] = vis_logit[rows, slots]
            out_var[pts, tt] = logvar[rows, slots].exp()
            windows += 1
            start = start + direction * (window - 1)
    out_uv[n, tq] = uv[n, tq]
    out_logit[n, tq] = VIS_LOGIT_INPUT
    return out_uv, out_logit, out_var, windows


def save_refiner(path, model, meta):
    """Write the refiner's weights with ``meta`` (command, seed, generator version, training figures)."""
    meta = json.loads(json.dumps(meta, default=float))
    torch.save({"format": REFINER_FORMAT, "arch": model.arch(),
                "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}, "meta": meta}, path)


def refiner_path(path=""):
    """``path``, or the packaged fusion/weights/refiner.pt when empty; WeightsError when the file does not exist."""
    path = path or os.path.join(WEIGHTS_DIR, PACKAGED)
    if not os.path.isfile(path):
        raise WeightsError(f"track refiner: no weights file {path} (train them: python -m training.refiner)")
    return path


def load_refiner(path=""):
    """(model, meta) from ``path`` (empty: the packaged fusion/weights/refiner.pt), checked: format,
    architecture, tensor names and shapes, finite values; anything else is refused with one WeightsError."""
    from core.checkpoints import load_strictly
    path = refiner_path(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - truncated or foreign file
        raise WeightsError(f"track refiner: {path} is not a readable weights file ({type(e).__name__})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != REFINER_FORMAT or "state_dict" not in ckpt:
        raise WeightsError(f"track refiner: {path} is not a format-{REFINER_FORMAT} refiner file")
    arch = ckpt.get("arch")
    try:
        model = TrackRefiner(**arch)
    except (TypeError, ValueError) as e:
        raise WeightsError(f"track refiner: {path} has an unusable architecture {arch!r} ({e})") from None
    load_strictly(model, ckpt["state_dict"], f"track refiner {path}")
    return model.eval(), dict(ckpt.get("meta", {}))
