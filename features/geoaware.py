"""GeoAware-SC features ("Telling Left from Right", CVPR 2024): DINOv2 ViT-B/14 + the trained aggregation network.

Official pipeline (facts, see ../shared/RESEARCH.md §2): a square image; Stable Diffusion 1.5 decoder levels
s3 (640 ch), s4 (1280), s5 (1280) at 960 px, s4 / s5 upsampled bilinearly to s3's 60×60 grid; DINOv2
ViT-B/14 block-11 output (pre final norm, no CLS token) at 840 px → [768, 60, 60]; all concatenated in
that order (3968 ch) and mapped by :class:`AggregationNetwork` to 768 ch, then L2-normalised per cell.
The released checkpoint is ``best_856.PTH`` (SPair-71k, PCK@0.1 85.6), a plain state dict.

**AggregationNetwork.** One ResNet bottleneck block per input level (detectron2 ``BottleneckBlock`` layout,
built by ``ResNet.make_stage`` with one block, hence the ``.0.`` in the key names), in the order
(s3, s4, s5, dino) = branches 0..3:

    conv1 1×1 (C_in → 192) + GN(32) → ReLU → conv2 3×3 pad 1 (192 → 192) + GN(32) → ReLU
    → conv3 1×1 (192 → 768) + GN(32);  + shortcut(x);  → ReLU

The shortcut is a 1×1 conv (C_in → 768) + GN(32) when C_in ≠ 768 and the identity otherwise (branch 3,
DINO). Every conv has no bias; its GroupNorm lives *inside* the conv module (detectron2 ``Conv2d(norm=)``),
so the keys are ``bottleneck_layers.<i>.0.<conv>.weight`` and ``bottleneck_layers.<i>.0.<conv>.norm.{weight,
bias}``. The branch outputs are summed with ``softmax(mixing_weights)`` (4 values, initialised to 1).
``logit_scale`` (init log(1/0.07)) and ``self_logit_scale`` (init log 10) are the training temperatures of
the contrastive losses; they are kept only so that the official file loads strictly. 5,150,214 parameters.

Conventions taken from detectron2 because they are not visible in the checkpoint's key names (the
names and shapes are exact; these are not, though they are detectron2's defaults, which GeoAware-SC's
``model_utils/resnet.py`` copies): the ReLU positions (after conv1 and conv2, and after the residual sum,
so every branch output is >= 0), GroupNorm eps 1e-5, random init = kaiming-normal fan_out (``c2_msra_fill``)
for convs and GN weight 1 / bias 0. The official module's ``forward`` returns the mixture un-normalised;
the L2 normalisation is done by its caller, here by ``normalize=True`` (the default). Feature-map dropout
(training only) is not implemented.

**Backbone ``geoaware`` (:class:`GeoAware`): PARTIAL.** Stable Diffusion is not available here, so branches
0–2 get no input. What is computed, per frame:

    t = DINOv2 ViT-B/14 block-11 tokens, pre final norm, no CLS       [768, H_f/14, W_f/14]
    y = softmax(mixing_weights)[3] · bottleneck_layers[3](t)         (branch 3 alone; branches 0-2 absent)
    f = y / ||y||₂ over channels                                     (= bottleneck_3(t) normalised: the
                                                                      positive scalar cancels)

This is *not* the trained full model's output (the net was trained on the sum of all four branches); the
object says so: ``partial = True``, ``cache_id()["mode"] == "partial-dino-branch"``, and a one-time
warning. Geometry as DINOv2 (features/backbones.py): ImageNet normalisation, stride 14, offset 6.5,
768 channels, any frame size divisible by 14 (the official model uses 840×840; here the tracker's feature
image at its true aspect ratio). Weights: DINOv2 from ``FeatureConfig.weights`` or
``$PITRACK_WEIGHTS/dinov2_vitb14_pretrain.pth`` (loaded by features.backbones.build_dinov2), the
aggregation network from ``FeatureConfig.aggregation_weights`` or ``$PITRACK_WEIGHTS/best_856.PTH``
(:func:`load_aggregation`, strict); ``random_init`` uses seeded random weights for both.
"""
import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from core.checkpoints import check_fits, read_state_dict
from core.devices import resolve_device
from core.paths import file_sha256, resolve_weights
from core.images import rgb_tensor
from features.dinov2 import IMAGENET_MEAN, IMAGENET_STD, DinoV2

AGGREGATION_FILE = "best_856.PTH"          # official GeoAware-SC checkpoint (results_spair/best_856.PTH)
DINO_BACKBONE = "dinov2_vitb14"            # a key of features.backbones.DINO_MODELS
DINO_BLOCK = 11                            # GeoAware takes the output of ViT-B/14's last (12th) block, pre-norm
FEATURE_DIMS = (640, 1280, 1280, 768)      # branch inputs in the official order: SD s3, s4, s5, DINOv2
DINO_BRANCH = 3
PROJECTION_DIM = 768                       # output channels of every branch
BOTTLENECK_DIM = PROJECTION_DIM // 4       # 192
NUM_GROUPS = 32
PARTIAL_MODE = "partial-dino-branch"
NUM_PARAMETERS = 5_150_214

_partial_warned = False


class ConvNorm(nn.Conv2d):
    """A bias-free k×k convolution (padding k//2) followed by the GroupNorm held as its ``norm`` child
    (detectron2's ``Conv2d(..., norm=GroupNorm)``: keys ``<conv>.weight``, ``<conv>.norm.{weight,bias}``)."""

    def __init__(self, cin, cout, k):
        super().__init__(cin, cout, k, padding=k // 2, bias=False)
        self.norm = nn.GroupNorm(NUM_GROUPS, cout)

    def forward(self, x):
        return self.norm(super().forward(x))


class Bottleneck(nn.Module):
    """1×1 → 3×3 → 1×1 residual bottleneck (detectron2 BottleneckBlock layout; see the module docstring)."""

    def __init__(self, cin, width, cout):
        super().__init__()
        self.shortcut = ConvNorm(cin, cout, 1) if cin != cout else None
        self.conv1 = ConvNorm(cin, width, 1)
        self.conv2 = ConvNorm(width, width, 3)
        self.conv3 = ConvNorm(width, cout, 1)

    def forward(self, x):
        y = F.relu(self.conv1(x))
        y = F.relu(self.conv2(y))
        y = self.conv3(y)
        return F.relu(y + (x if self.shortcut is None else self.shortcut(x)))


class AggregationNetwork(nn.Module):
    """GeoAware-SC's post-processor with the official key names (``best_856.PTH`` loads strictly).

    A new instance is randomly initialised from the global torch RNG (see :func:`random_aggregation`)."""

    feature_dims = FEATURE_DIMS

    def __init__(self):
        super().__init__()
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.self_logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))
        self.bottleneck_layers = nn.ModuleList(
            nn.Sequential(Bottleneck(c, BOTTLENECK_DIM, PROJECTION_DIM)) for c in FEATURE_DIMS)
        self.mixing_weights = nn.Parameter(torch.ones(len(FEATURE_DIMS)))
        for m in self.modules():
            if isinstance(m, nn.Conv2d) and not m.weight.is_meta:
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x, normalize=True):
        """``x``: [B, 3968, H, W], the four levels concatenated in the official order (s3, s4, s5, dino), all
        on one grid. Returns [B, 768, H, W]: the softmax(mixing_weights)-weighted sum of the four branches,
        L2-normalised over channels when ``normalize``."""
        if x.shape[1] != sum(FEATURE_DIMS):
            raise ValueError(f"AggregationNetwork needs {sum(FEATURE_DIMS)} input channels {FEATURE_DIMS}, "
                             f"got {x.shape[1]}")
        w = torch.softmax(self.mixing_weights, dim=0)
        out, start = 0, 0
        for i, c in enumerate(FEATURE_DIMS):
            out = out + w[i] * self.bottleneck_layers[i](x[:, start:start + c])
            start += c
        return F.normalize(out, dim=1) if normalize else out

    def forward_levels(self, s3, s4, s5, dino, normalize=True):
        """The official input assembly: SD levels resized bilinearly (align_corners=False) to the DINO grid
        (officially s3 is already 60×60 and s4 / s5 are upsampled), concatenated, then :meth:`forward`."""
        hw = dino.shape[-2:]
        levels = [s if s.shape[-2:] == hw else F.interpolate(s, size=hw, mode="bilinear", align_corners=False)
                  for s in (s3, s4, s5)]
        return self.forward(torch.cat(levels + [dino], dim=1), normalize)

    def dino_branch(self, dino, normalize=True):
        """Branch 3 alone: ``softmax(mixing_weights)[3] · bottleneck_layers[3](dino)``, [B, 768, H, W]
        (L2-normalised when ``normalize``, where the positive scalar weight cancels). The SD branches'
        contributions are absent, not replaced by anything."""
        if dino.shape[1] != FEATURE_DIMS[DINO_BRANCH]:
            raise ValueError(f"the DINO branch needs {FEATURE_DIMS[DINO_BRANCH]} channels, got {dino.shape[1]}")
        y = torch.softmax(self.mixing_weights, dim=0)[DINO_BRANCH] * self.bottleneck_layers[DINO_BRANCH](dino)
        return F.normalize(y, dim=1) if normalize else y


def load_aggregation(path, device="cpu"):
    """AggregationNetwork with the weights of ``path`` (eval mode, gradients off).

    The file is read with ``torch.load(weights_only=True)``: a plain state dict (the official layout) or one
    wrapped under ``state_dict`` / ``model``. Every key must match exactly: a key the network lacks, a
    network tensor the file lacks, or a shape mismatch raises WeightsError naming the file and the first
    bad key.
    """
    path = str(path)
    sd = read_state_dict(path, ("state_dict", "model", "teacher"))
    with torch.device("meta"):
        net = AggregationNetwork()
    target = net.state_dict()
    check_fits(sd, target, f"aggregation checkpoint {path} does not fit the GeoAware AggregationNetwork")
    net.load_state_dict({k: sd[k].to(torch.float32) for k in target}, strict=True, assign=True)
    return net.to(device).eval().requires_grad_(False)


def random_aggregation(seed=0, device="cpu"):
    """A randomly initialised AggregationNetwork (seeded, independent of the global RNG), eval, frozen."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        net = AggregationNetwork()
    return net.to(device).eval().requires_grad_(False)


def dino_block_tokens(net, x, block=DINO_BLOCK):
    """Patch tokens of timm ViT ``net`` after block ``block``, before the final norm, without prefix (CLS)
    tokens, as [B, C, H/14, W/14] (``x``: normalised images [B, 3, H, W])."""
    return net.forward_intermediates(x, indices=[int(block)], norm=False, output_fmt="NCHW",
                                     intermediates_only=True)[0]


def _warn_partial():
    global _partial_warned
    if not _partial_warned:
        _partial_warned = True
        warnings.warn("features backbone 'geoaware' runs in PARTIAL mode (partial-dino-branch): no Stable "
                      "Diffusion features here, so only the aggregation network's DINOv2 branch (3) is applied "
                      "and renormalised; this is not the trained GeoAware-SC feature", stacklevel=3)


class GeoAware:
    """GeoAware-SC features, partial: DINOv2 ViT-B/14 block 11 → aggregation branch 3 → L2 norm.

    Stride 14, offset 6.5, 768 channels. See the module docstring for exactly what is computed.
    """
    name = "geoaware"
    stride = 14
    offset = 6.5
    channels = PROJECTION_DIM
    partial = True
    mode = PARTIAL_MODE

    def __init__(self, weights="", aggregation_weights="", random_init=False, device="auto", seed=0):
        # DINOv2 ViT-B/14 path resolution, cache identity and (lazy) build: the dinov2_vitb14 backbone's own
        self._dino = DinoV2(DINO_BACKBONE, weights, random_init, device, seed)
        self.random_init = self._dino.random_init
        self.seed = self._dino.seed
        self.weights_path = self._dino.weights_path
        self.aggregation_path = None if self.random_init else resolve_weights(
            AGGREGATION_FILE, explicit=aggregation_weights or None)
        self.device = resolve_device(device, "features.device")
        self._agg = None
        _warn_partial()

    def cache_id(self):
        agg = (f"random-init-seed{self.seed}-torch{torch.__version__}" if self.aggregation_path is None
               else file_sha256(self.aggregation_path))
        return {"backbone": self.name, "mode": self.mode, "weights": self._dino.cache_id()["weights"],
                "aggregation": agg}

    @property
    def dino(self):
        """The frozen timm DINOv2 ViT-B/14."""
        return self._dino.net

    @property
    def aggregation(self):
        """The frozen AggregationNetwork (official weights, or seeded random ones with ``random_init``)."""
        if self._agg is None:
            self._agg = (random_aggregation(self.seed, self.device) if self.aggregation_path is None
                         else load_aggregation(self.aggregation_path, self.device))
        return self._agg

    def dino_features(self, frames):
        """DINOv2 block-11 pre-norm patch tokens [B, 768, H_f/14, W_f/14] of uint8 frames [B, H_f, W_f, 3]."""
        x = rgb_tensor(frames, self.device) / 255.0
        x = (x - torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)) / \
            torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
        H, W = x.shape[-2:]
        if H % self.stride or W % self.stride:
            raise ValueError(f"{self.name} needs a frame size divisible by {self.stride}, got {W}x{H}")
        with torch.inference_mode():
            return dino_block_tokens(self.dino, x)

    def __call__(self, frames):
        tokens = self.dino_features(frames)
        with torch.inference_mode():
            return self.aggregation.dino_branch(tokens).float().contiguous()


__all__ = ["AGGREGATION_FILE", "AggregationNetwork", "GeoAware", "NUM_PARAMETERS", "PARTIAL_MODE",
           "dino_block_tokens", "load_aggregation", "random_aggregation"]
