"""Frozen backbones: uint8 RGB frames at the feature image size -> feature maps on a known grid.

Every backbone has ``name``, ``stride`` s, ``offset`` (pixel-centre position of cell 0, see
features/grid.py), ``channels``, ``cache_id()`` (what determines its output, for cache keys) and is
called with uint8 [B, H_f, W_f, 3] (H_f, W_f multiples of s) returning float32 [B, C, H_f/s, W_f/s].
Models load lazily, so a video whose features are cached never builds one.

* ``raft_small``: the feature encoder (``fnet``) of RAFT-small, loaded through flow.raft.load_raft from the
  official princeton-vl checkpoint (strictly: every tensor must fit). Inputs in [-1, 1]; 128 channels
  at stride 8. Its convolutions are all centred (kernel 7 / 3 / 1 with padding (k−1)/2), three of them
  of stride 2, so output cell j sits on input pixel 8j: offset 0.
* ``dinov2_vits14`` / ``dinov2_vitb14``: DINOv2 through timm (features/dinov2.py). Stride 14, offset 6.5.
* ``geoaware``: GeoAware-SC (features/geoaware.py): DINOv2 ViT-B/14 block-11 pre-norm tokens through the
  official aggregation network (``best_856.PTH``); PARTIAL here (DINO branch only, no Stable Diffusion).
  Stride 14, offset 6.5, 768 channels.
* ``xfeat``, ``aliked_t16`` / ``aliked_n16`` / ``aliked_n16rot`` / ``aliked_n32``, ``disk``: pretrained
  local-feature networks whose weights ship in registry packages (features/pretrained.py).
"""
import os

from core.devices import resolve_device
from core.errors import ConfigError
from core.images import rgb_tensor
from core.paths import file_sha256, resolve_weights
from core.raft_model import DEFAULT_FILES, DOWNLOAD_ID, download_weights, load_raft
from features.dinov2 import DINO_MODELS, DinoV2
from features.pretrained import PRETRAINED_BACKBONES, RELEASES, make_pretrained


BACKBONES = ("raft_small",) + tuple(DINO_MODELS) + ("geoaware",) + PRETRAINED_BACKBONES


class RaftEncoder:
    """RAFT-small's feature encoder (frozen). Stride 8, offset 0, 128 channels."""
    name = "raft_small"
    stride = 8
    offset = 0.0
    channels = 128

    def __init__(self, weights="", allow_download=False, device="auto"):
        self.weights_path = resolve_weights(DEFAULT_FILES["raft_small"], explicit=weights or None,
                                            allow_download=allow_download)
        if self.weights_path is None:
            download_weights("raft_small")            # no file: torchvision's download, now rather than mid-run
        self.allow_download = allow_download
        self.device = resolve_device(device, "features.device")
        self._net = None

    def cache_id(self):
        return {"backbone": self.name, "weights": DOWNLOAD_ID if self.weights_path is None
                else file_sha256(self.weights_path)}

    @property
    def net(self):
        if self._net is None:
            model = load_raft("raft_small", self.weights_path, self.allow_download, self.device)
            self._net = model.feature_encoder.eval().requires_grad_(False)
            self.source = model.pitrack_weights
        return self._net

    def __call__(self, frames):
        import torch
        x = rgb_tensor(frames, self.device) * (2.0 / 255.0) - 1.0
        with torch.inference_mode():
            return self.net(x).float()


def make_backbone(cfg, seed=0):
    """The backbone of a FeatureConfig (models load on first call)."""
    if cfg.backbone == "raft_small":
        if cfg.random_init:
            raise ConfigError("features.random_init is for the DINOv2 / geoaware backbones (raft_small always loads "
                              "its checkpoint)")
        return RaftEncoder(cfg.weights, cfg.allow_download, cfg.device)
    if cfg.backbone in DINO_MODELS:
        return DinoV2(cfg.backbone, cfg.weights, cfg.random_init, cfg.device, seed)
    if cfg.backbone in PRETRAINED_BACKBONES:
        return make_pretrained(cfg)
    if cfg.backbone == "geoaware":
        from features.geoaware import GeoAware
        return GeoAware(cfg.weights, cfg.aggregation_weights, cfg.random_init, cfg.device, seed)
    raise ConfigError(f"unknown features.backbone '{cfg.backbone}' (known: {', '.join(BACKBONES)})")


def default_weights_file(backbone):
    """The file looked for in $PITRACK_WEIGHTS for ``backbone``."""
    if backbone == "raft_small":
        return "raft-small.pth"
    if backbone == "geoaware":      # its DINOv2; the aggregation network is $PITRACK_WEIGHTS/best_856.PTH
        return DINO_MODELS["dinov2_vitb14"][1]
    if backbone in RELEASES:
        return os.path.basename(RELEASES[backbone].path)
    return DINO_MODELS[backbone][1] if backbone in DINO_MODELS else None


__all__ = ["BACKBONES", "RaftEncoder", "make_backbone", "default_weights_file"]
