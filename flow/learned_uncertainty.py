"""Learned occlusion probability and flow variance of a flow field (``flow.uncertainty: learned``).

A small convolutional head looks at one directed flow a → b and returns, per pixel, the logit of the
occlusion probability and α = log σ² (per-axis variance, working px²). It is trained here, on the
synthetic layered videos of :mod:`synthetic.layers` (``python -m training.flow_uncertainty``), with the
losses of MFT (Neoral et al. 2024, Sec. 3.2):

    occlusion    L_occ = BCE(sigmoid(logit), o*)                  on pixels with a hard label o* ∈ {0, 1}
    uncertainty  L_unc = α + ‖F − F*‖² / (2·e^α)                 on visible pixels (o* = 0) inside the frame

L_unc is the negative log-likelihood (less a constant) of the 2-D flow error under an isotropic
Gaussian of per-axis variance σ² = e^α; its minimiser is σ² = E‖F − F*‖²/2, the per-axis variance the
integrator expects.

Head input for the DIS backend (:func:`dis_head_inputs`, 14 channels at the working resolution): frame
a and frame b warped to a by F_ab (RGB, centred), their mean absolute difference, the flow F_ab / 16,
the forward–backward residual vector (F_ab + F_ba(p + F_ab(p))) / 4, log(1 + ‖residual‖),
log(1 + ‖F_ab‖) and whether p + F_ab(p) left the frame. The photometric terms see what the
forward–backward check cannot: a flow that slid onto an occluder agrees in both directions but lands
on different colours. The input is average-pooled ×2, the head downsamples ×2 again and outputs at a
quarter of the working resolution.

Head input for a RAFT backend (as MFT's heads, on the frozen network; :func:`flow.raft.raft_flow` with
``features=True``, at 1/8 of the padded frame): the last update's hidden state, the context, the
correlation features looked up at the last-but-one estimate, that estimate (1/8 px, / 4) and the last
update of it — 360 channels for RAFT-small. Nothing is computed twice: the features come out of the
flow's own forward pass. The head keeps their resolution.

Either head's outputs are sampled bilinearly at the points the integrator asks for (:class:`MapGeometry`).

A head with the forward–backward prior (``prior="fb"``, ``training.flow_uncertainty --prior fb``) outputs corrections: its
occlusion logit and α are added to those of the forward–backward formulas (flow/occlusion.py, default
parameters) evaluated exactly at each pixel or point (:func:`fb_prior`), and its last layer starts at
zero, so training starts from the formulas and the head's quarter-resolution maps only have to say where
they are wrong — not to redraw the occlusion boundaries the full-resolution check already places.
"""
import json
import os

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from core.coords import outside_frame
from core.errors import ConfigError, WeightsError
from core.paths import file_sha256
from core.sampling import sample_fields

HEAD_FORMAT = 1
DIS_INPUT_CHANNELS = 14
LOG_VAR_RANGE = (-6.0, 10.0)          # α is clamped here: σ from 0.05 px to 148 px
PACKAGED = {"dis": "dis_uncertainty.pt", "raft_small": "raft_small_uncertainty.pt"}
HEAD_CHANNELS = {"dis": 32, "raft_small": 64, "raft_large": 64}
PRIORS = ("none", "fb")
FB_PRIOR_LOGIT = 8.0                  # the prior's occlusion logit is clamped to ±8, so that the head can overrule it


def fb_prior(r2, motion2):
    """The forward–backward formulas (flow/occlusion.py, FBUncertainty's default parameters τ0 = 1, α = 0.01,
    σ0² = k = 0.25) as a head's prior, from the squared FB residual ``r2`` = r² and ``motion2`` =
    ‖F_ab(p)‖² + ‖F_ba(q)‖² (torch tensors, px²): occlusion logit log(p / (1 − p)) of p = 1 − exp(−x),
    x = r² / (2τ²), τ² = τ0² + α·motion2 (= log(1 − e^−x) + x, clamped to ±FB_PRIOR_LOGIT), and
    α = log(σ0² + k·r²) (the variance cap is left to the integrator). Returns (logit, α)."""
    from flow.occlusion import FBUncertainty
    p = FBUncertainty().params
    x = (r2 / (2.0 * (p["tau"] ** 2 + p["alpha"] * motion2))).clamp_min(1e-6)
    logit = (torch.log(-torch.expm1(-x)) + x).clamp(-FB_PRIOR_LOGIT, FB_PRIOR_LOGIT)
    return logit, torch.log(p["var_floor"] + p["var_gain"] * r2)


def fb_prior_maps(flow_ab, flow_ba):
    """:func:`fb_prior` at every pixel of the directed flows ``flow_ab`` [B, 2, h, w] against ``flow_ba`` (numpy or
    torch, working px): float32 [B, 2, h, w] (occlusion logit, α)."""
    from flow.occlusion import fb_residual
    out = []
    for fab, fba in zip(np.asarray(flow_ab, np.float32), np.asarray(flow_ba, np.float32)):
        r, _, back = fb_residual(fab, fba)
        motion2 = (fab ** 2).sum(0) + (back ** 2).sum(0)
        out.append(torch.stack(fb_prior(torch.from_numpy(r * r), torch.from_numpy(motion2))))
    return torch.stack(out)


def add_prior(out, prior):
    """Head outputs ``out`` [B, 2, ...] (corrections to the occlusion logit and α) plus ``prior`` [B, 2, ...]
    (:func:`fb_prior`), α clamped to LOG_VAR_RANGE."""
    logit, alpha = out.unbind(1)
    return torch.stack([logit + prior[:, 0], (alpha + prior[:, 1]).clamp(*LOG_VAR_RANGE)], 1)


class MapGeometry:
    """Where the head's output cells lie in working pixels: cell (i, j) is centred on working pixel
    (stride·j + (stride − 1)/2 − left, stride·i + (stride − 1)/2 − top), pixel-centre convention. DIS: stride 4,
    no offset; RAFT: stride 8 over the frame padded by (left, top) to a multiple of 8."""

    def __init__(self, stride, left=0, top=0, shape=None):
        self.stride, self.left, self.top, self.shape = int(stride), float(left), float(top), shape

    @classmethod
    def for_backend(cls, backend, hw):
        h, w = (int(v) for v in hw)
        if backend == "dis":
            return cls(4, 0, 0, (2, -(-h // 4), -(-w // 4)))
        from flow.raft import raft_padding
        l, r, t, b = raft_padding(h, w)
        return cls(8, l, t, (2, (h + t + b) // 8, (w + l + r) // 8))

    def cells(self, points):
        """Working-pixel points (x, y) [..., 2], pixel-centre convention -> positions on the output grid."""
        off = torch.tensor([self.left, self.top], dtype=points.dtype)
        return (points + off - (self.stride - 1) / 2) / self.stride


DIS_GEOMETRY = MapGeometry(4)
WEIGHTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights")


def warp_backward(image, flow):
    """``image`` float [B, C, h, w] sampled at p + flow(p) (pixel-centre convention, border clamp): frame b
    seen from frame a. ``flow`` float [B, 2, h, w]."""
    B, _, h, w = flow.shape
    return sample_fields(image, pixel_grid(h, w) + flow.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(B, -1, h, w)


def pixel_grid(h, w):
    """(x, y) of every pixel centre, row by row: float32 [h·w, 2]."""
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    return torch.stack([xs.flatten(), ys.flatten()], -1)


def dis_head_inputs(frames_a, frames_b, flow_ab, flow_ba):
    """The DIS head's input: float32 [B, 14, ⌈h/2⌉, ⌈w/2⌉] (module docstring), at half the working resolution.

    ``frames_a``, ``frames_b``: uint8 [B, h, w, 3] working frames; ``flow_ab``, ``flow_ba``: float [B, 2, h, w]
    working px, pixel-centre convention (numpy or torch). Frames and flows are average-pooled ×2 first
    (4× fewer pixels to warp); flows and residuals stay in working px.
    """
    def pool(x):
        return F.avg_pool2d(x, 2, ceil_mode=True)

    ia = pool(torch.as_tensor(np.asarray(frames_a)).permute(0, 3, 1, 2).float()) / 255.0 - 0.5
    ib = pool(torch.as_tensor(np.asarray(frames_b)).permute(0, 3, 1, 2).float()) / 255.0 - 0.5
    fab = pool(torch.as_tensor(np.asarray(flow_ab, dtype=np.float32)))
    fba = pool(torch.as_tensor(np.asarray(flow_ba, dtype=np.float32)))
    h, w = np.asarray(flow_ab).shape[-2:]
    hh, ww = fab.shape[-2:]
    warped_b, back = warp_backward(torch.cat([ib, fba], 1), fab * 0.5).split([3, 2], 1)
    residual = fab + back
    q = 2 * pixel_grid(hh, ww).T.reshape(2, hh, ww) + 0.5 + fab          # pooled cell centres in working px, moved
    qx, qy = q[:, 0], q[:, 1]
    outside = outside_frame(qx, qy, (h, w)).float()[:, None]
    return torch.cat([ia, warped_b, (ia - warped_b).abs().mean(1, keepdim=True), fab / 16.0, residual / 4.0,
                      torch.log1p(residual.norm(dim=1, keepdim=True)), torch.log1p(fab.norm(dim=1, keepdim=True)),
                      outside], 1)


class UncertaintyHead(nn.Module):
    """Head input [B, C, h', w'] -> [B, 2, h'/first_stride, w'/first_stride] (occlusion logit, α = log σ²).
    DIS: C = 14 at half the working resolution, first_stride 2; RAFT: the network's features at 1/8,
    first_stride 1.

    ``occlusion_offset`` (a buffer, 0 while training) is added to the occlusion logit: training sets it
    so that p = 0.5, the integrator's threshold, is the decision of highest occlusion F1 on the
    synthetic validation pairs (:func:`training.flow_uncertainty.decision_offset`). With ``prior="fb"`` the
    outputs are corrections to :func:`fb_prior` (:func:`add_prior`) and the last layer starts at zero.
    """

    def __init__(self, channels=32, in_channels=DIS_INPUT_CHANNELS, first_stride=2, prior="none"):
        super().__init__()
        c = int(channels)
        if prior not in PRIORS:
            raise ValueError(f"unknown head prior {prior!r} (known: {', '.join(PRIORS)})")
        self.channels, self.in_channels, self.first_stride, self.prior = c, int(in_channels), int(first_stride), prior
        self.body = nn.Sequential(
            nn.Conv2d(self.in_channels, c, 3, stride=self.first_stride, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(c, c, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(c, c, 3, padding=2, dilation=2), nn.ReLU(inplace=True),
            nn.Conv2d(c, c, 3, padding=4, dilation=4), nn.ReLU(inplace=True),
            nn.Conv2d(c, c, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(c, 2, 1))
        if prior == "fb":
            nn.init.zeros_(self.body[-1].weight)
            nn.init.zeros_(self.body[-1].bias)
        self.register_buffer("occlusion_offset", torch.zeros(()))

    def forward(self, x):
        out = self.body(x)
        return torch.cat([out[:, :1] + self.occlusion_offset, out[:, 1:].clamp(*LOG_VAR_RANGE)], 1)


def make_head(backend, channels=None, in_channels=None, prior="none"):
    """A fresh head for flow backend ``backend`` (``in_channels``: RAFT's feature channels; ``prior``: PRIORS)."""
    c = HEAD_CHANNELS[backend] if channels is None else channels
    if backend == "dis":
        return UncertaintyHead(c, DIS_INPUT_CHANNELS if in_channels is None else int(in_channels), prior=prior)
    if in_channels is None:
        from flow.raft import raft_feature_channels
        in_channels = raft_feature_channels(backend)
    return UncertaintyHead(c, in_channels, first_stride=1, prior=prior)


def upsample_to(maps, hw, geometry=DIS_GEOMETRY):
    """Head outputs [B, 2, h', w'] -> [B, 2, h, w] at every working pixel, sampled as the integrator samples
    them at its points (``geometry``: :class:`MapGeometry`)."""
    h, w = hw
    pts = geometry.cells(pixel_grid(h, w))[None].expand(maps.shape[0], -1, -1)
    return sample_fields(maps, pts).transpose(1, 2).reshape(maps.shape[0], -1, h, w)


def save_head(path, head, backend, meta):
    """Write the head's weights with ``meta`` (command, seed, generator version, training figures)."""
    meta = json.loads(json.dumps(meta, default=float))      # plain types only: loadable with weights_only=True
    torch.save({"format": HEAD_FORMAT, "backend": backend, "channels": head.channels,
                "in_channels": head.in_channels, "prior": head.prior,
                "state_dict": {k: v.detach().cpu() for k, v in head.state_dict().items()}, "meta": meta}, path)


def load_head(path, backend):
    """(head, meta) from ``path``, checked: format, backend, tensor names and shapes, finite values.
    Anything else is refused with one WeightsError line."""
    from core.checkpoints import load_strictly
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise WeightsError(f"learned flow uncertainty: no weights file {path} (train them: "
                           f"python -m training.flow_uncertainty --backend {backend})") from None
    except Exception as e:  # noqa: BLE001 - truncated or foreign file
        raise WeightsError(f"learned flow uncertainty: {path} is not a readable weights file "
                           f"({type(e).__name__})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != HEAD_FORMAT or "state_dict" not in ckpt:
        raise WeightsError(f"learned flow uncertainty: {path} is not a format-{HEAD_FORMAT} head file")
    if ckpt.get("backend") != backend:
        raise WeightsError(f"learned flow uncertainty: {path} was trained for flow backend "
                           f"'{ckpt.get('backend')}', not '{backend}'")
    if backend not in HEAD_CHANNELS:
        raise WeightsError(f"learned flow uncertainty: no head for flow backend '{backend}'")
    if ckpt.get("prior", "none") not in PRIORS:
        raise WeightsError(f"learned flow uncertainty: {path} has an unknown prior '{ckpt.get('prior')}'")
    head = make_head(backend, int(ckpt.get("channels", HEAD_CHANNELS[backend])), ckpt.get("in_channels"),
                     ckpt.get("prior", "none"))
    load_strictly(head, ckpt["state_dict"], f"learned flow uncertainty {path}")
    return head.eval(), dict(ckpt.get("meta", {}))


def head_path(backend, weights=""):
    """The head file of flow backend ``backend``: ``weights`` when given, else the packaged one (flow/weights/).
    ConfigError when there is no packaged head for the backend, WeightsError when the file does not exist."""
    if not weights and backend not in PACKAGED:
        raise ConfigError(f"flow.uncertainty: learned has no packaged head for flow backend '{backend}' "
                          f"(packaged: {', '.join(PACKAGED)}; or give flow.uncertainty_weights)")
    path = weights or os.path.join(WEIGHTS_DIR, PACKAGED[backend])
    if not os.path.isfile(path):
        raise WeightsError(f"learned flow uncertainty: no weights file {path} (train them: "
                           f"python -m training.flow_uncertainty --backend {backend})")
    return path


class LearnedUncertainty:
    """Occlusion and variance from a trained head: :meth:`maps` when a pair's flows are computed,
    :meth:`at_points` when the integrator samples them."""

    needs_maps = True

    def __init__(self, backend, weights="", var_max=1.0e4):
        self.backend = backend
        self.from_features = backend != "dis"      # RAFT: the head reads the network's own features
        self.path = head_path(backend, weights)
        self.head, self.meta = load_head(self.path, backend)
        self.var_max = float(var_max)
        self.sha = file_sha256(self.path)[:16]
        self.geometry = None

    def set_working_size(self, hw):
        """Fix the working resolution; returns the maps' shape (2, h', w')."""
        self.geometry = MapGeometry.for_backend(self.backend, hw)
        return self.geometry.shape

    def cache_id(self):
        return {"uncertainty": "learned", "head": self.sha}

    def occlusion_id(self):
        return self.cache_id()

    def still_map(self, shape):
        """The map of a frame to itself: not occluded, least variance. float16 ``shape`` = (2, h', w')."""
        m = np.empty(shape, np.float16)
        m[0], m[1] = -20.0, LOG_VAR_RANGE[0]
        return m

    def maps(self, frames_a, frames_b, flow_ab, flow_ba):
        """DIS: float16 [B, 2, ⌈h/4⌉, ⌈w/4⌉] (occlusion logit, α) of the directed flows a → b."""
        with torch.inference_mode():
            return self.head(dis_head_inputs(frames_a, frames_b, flow_ab, flow_ba)).half().numpy()

    def maps_from_features(self, features):
        """RAFT: float16 [B, 2, h/8, w/8] (occlusion logit, α) from the flows' features [B, C, h/8, w/8]."""
        with torch.inference_mode():
            return self.head(torch.as_tensor(features).float()).half().numpy()

    def at_points(self, maps, points, outside, d_ab, d_ba):
        """``maps`` torch [G, 2, h', w'] of G directed flows, ``points`` torch [G, M, 2] working px (pixel-centre)
        in their first frames, ``outside`` bool [G, M], ``d_ab`` = F_ab(p) and ``d_ba`` = F_ba(p + F_ab(p)) torch
        [G, M, 2] (for the prior). Returns occlusion [G, M] and variance [G, M] (numpy)."""
        s = sample_fields(maps.float(), self.geometry.cells(points))
        if self.head.prior == "fb":
            prior = fb_prior(((d_ab + d_ba) ** 2).sum(-1), (d_ab ** 2).sum(-1) + (d_ba ** 2).sum(-1))
            s = add_prior(s.permute(0, 2, 1), torch.stack(prior, 1)).permute(0, 2, 1)
        occ = torch.sigmoid(s[..., 0]).numpy()
        var = np.minimum(np.exp(s[..., 1].numpy()), self.var_max)
        return (np.where(outside, np.float32(1.0), occ).astype(np.float32),
                np.where(outside, np.float32(self.var_max), var).astype(np.float32))


class LearnedVariance(LearnedUncertainty):
    """``flow.uncertainty: learned_variance``: the head's variance with the occlusion probability of the
    forward–backward formulas ``fb`` (an :class:`flow.occlusion.FBUncertainty`), evaluated exactly at each point."""

    def __init__(self, backend, weights, fb):
        super().__init__(backend, weights, fb.params["var_max"])
        self.fb = fb

    def cache_id(self):
        return {"uncertainty": "learned_variance", "head": self.sha, "occlusion": self.fb.cache_id()}

    def occlusion_id(self):
        return self.fb.occlusion_id()

    def at_points(self, maps, points, outside, d_ab, d_ba):
        _, var = super().at_points(maps, points, outside, d_ab, d_ba)
        occ, _ = self.fb.at_points(d_ab.numpy(), d_ba.numpy(), outside)
        return occ, var
