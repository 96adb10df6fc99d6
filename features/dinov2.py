"""DINOv2 through timm: the model, its checkpoint loading and the frozen backbone, shared by the
``dinov2_*`` backbones (features/backbones.py) and GeoAware-SC (features/geoaware.py).

``dinov2_vits14`` / ``dinov2_vitb14``: timm's ``vit_{small,base}_patch14_dinov2`` (img_size 518, the
checkpoints' 37×37 position grid, resampled by timm to the actual patch grid: ``dynamic_img_size``).
ImageNet mean/std normalisation; the last block's normalised patch tokens (384 / 768 channels) at
stride 14; patch j covers pixels [14j, 14j + 13]: offset 6.5. Weights: the official DINOv2 file
(``dinov2_vits14_pretrain.pth`` layout: ``cls_token``, ``pos_embed`` [1, 1370, C], ``mask_token``,
``patch_embed.proj.*``, ``blocks.<i>.{norm1,attn.qkv,attn.proj,ls1.gamma,norm2,mlp.fc1,mlp.fc2,ls2.gamma}.*``,
``norm.*``; chunked ``blocks.<c>.<i>.*`` and ``module.`` / ``backbone.`` / ``teacher.backbone.``
prefixes accepted) or a timm-format file (.pth/.bin/.safetensors with timm's names); ``mask_token``
and a classifier ``head.*`` are ignored, everything else must fit exactly.
"""
import collections
import re

from core.checkpoints import check_fits, read_state_dict
from core.devices import resolve_device
from core.errors import ConfigError, WeightsError
from core.images import rgb_tensor
from core.paths import file_sha256, resolve_weights

DINO_MODELS = {
    # backbone name: (timm model, default checkpoint file (official DINOv2 name), channels)
    "dinov2_vits14": ("vit_small_patch14_dinov2", "dinov2_vits14_pretrain.pth", 384),
    "dinov2_vitb14": ("vit_base_patch14_dinov2", "dinov2_vitb14_pretrain.pth", 768),
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_IGNORED = re.compile(r"(mask_token|head\.(weight|bias))")


def dinov2_state_dict(ckpt, model, path):
    """timm state dict for ``model`` from an official DINOv2 or timm-format checkpoint; WeightsError on misfit."""
    from timm.layers import resample_abs_pos_embed
    keys = list(ckpt)
    if any(k.startswith("teacher.") for k in keys):       # a DINOv2 training checkpoint: take the teacher
        ckpt = collections.OrderedDict((k[len("teacher."):], v) for k, v in ckpt.items() if k.startswith("teacher."))
    out = collections.OrderedDict()
    for k, v in ckpt.items():
        t = k
        for prefix in ("module.", "backbone."):
            if t.startswith(prefix):
                t = t[len(prefix):]
        t = re.sub(r"^blocks\.\d+\.(\d+)\.", r"blocks.\1.", t)   # chunked blocks (block_chunks > 0)
        if _IGNORED.fullmatch(t):
            continue
        if t in out:
            raise WeightsError(f"checkpoint {path}: two tensors map to '{t}'")
        out[t] = v
    target = model.state_dict()
    if "register_tokens" in out or "reg_token" in out:
        raise WeightsError(f"checkpoint {path} has register tokens (a '_reg4' DINOv2); use dinov2_vits14 / "
                           f"dinov2_vitb14 without registers")
    pe = out.get("pos_embed")
    if pe is not None and pe.ndim == 3 and pe.shape != target["pos_embed"].shape and pe.shape[-1] == target["pos_embed"].shape[-1]:
        prefix = model.num_prefix_tokens
        n_old, n_new = pe.shape[1] - prefix, target["pos_embed"].shape[1] - prefix
        old, new = int(round(n_old ** 0.5)), int(round(n_new ** 0.5))
        if old * old == n_old and new * new == n_new:
            out["pos_embed"] = resample_abs_pos_embed(pe, new_size=(new, new), old_size=(old, old),
                                                      num_prefix_tokens=prefix)
    check_fits(out, target, f"checkpoint {path} does not fit {type(model).__name__}")
    return collections.OrderedDict((k, out[k].to(target[k].dtype)) for k in target)


def build_dinov2(name, weights_path=None, seed=0):
    """timm DINOv2 ``name`` (a key of DINO_MODELS), eval mode, gradients off; random init seeded when no path."""
    import timm
    import torch
    arch = DINO_MODELS[name][0]
    kwargs = dict(pretrained=False, num_classes=0, img_size=518, dynamic_img_size=True)
    if weights_path is not None:
        # built on the meta device (no random initialisation of ~22 M / 86 M parameters), then every
        # tensor is taken from the checkpoint (strict; the model has no buffers a checkpoint lacks)
        ckpt = read_state_dict(weights_path, ("state_dict", "model", "teacher"))
        with torch.device("meta"):
            model = timm.create_model(arch, **kwargs)
        model.load_state_dict(dinov2_state_dict(ckpt, model, weights_path), strict=True, assign=True)
        left = [k for k, v in list(model.named_parameters()) + list(model.named_buffers()) if v.is_meta]
        if left:
            raise WeightsError(f"checkpoint {weights_path} left '{left[0]}' of {arch} unset")
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            model = timm.create_model(arch, **kwargs)
    return model.eval().requires_grad_(False)


class DinoV2:
    """DINOv2 ViT-S/14 or ViT-B/14 (frozen). Stride 14, offset 6.5."""
    stride = 14
    offset = 6.5

    def __init__(self, name, weights="", random_init=False, device="auto", seed=0):
        if name not in DINO_MODELS:
            raise ConfigError(f"unknown DINOv2 backbone '{name}' (known: {', '.join(DINO_MODELS)})")
        self.name = name
        self.channels = DINO_MODELS[name][2]
        self.random_init = bool(random_init)
        self.seed = int(seed)
        self.weights_path = None if self.random_init else resolve_weights(DINO_MODELS[name][1],
                                                                           explicit=weights or None)
        self.device = resolve_device(device, "features.device")
        self._net = None

    def cache_id(self):
        import timm
        w = f"random-init-seed{self.seed}-timm{timm.__version__}" if self.random_init else file_sha256(self.weights_path)
        return {"backbone": self.name, "weights": w}

    @property
    def net(self):
        if self._net is None:
            self._net = build_dinov2(self.name, self.weights_path, self.seed).to(self.device)
        return self._net

    def __call__(self, frames):
        import torch
        x = rgb_tensor(frames, self.device) / 255.0
        mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
        x = (x - mean) / std
        B, _, H, W = x.shape
        if H % self.stride or W % self.stride:
            raise ValueError(f"{self.name} needs a frame size divisible by {self.stride}, got {W}x{H}")
        with torch.inference_mode():
            tokens = self.net.forward_features(x)[:, self.net.num_prefix_tokens:]
        gh, gw = H // self.stride, W // self.stride
        return tokens.reshape(B, gh, gw, -1).permute(0, 3, 1, 2).float().contiguous()
