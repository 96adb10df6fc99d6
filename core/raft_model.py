"""RAFT networks through torchvision (``raft_small`` / ``raft_large``), loaded from checkpoints; never re-implemented.

Shared by the flow stage (the whole network) and the features stage (RAFT-small's feature encoder).

Checkpoints: an official princeton-vl file (``module.fnet.*``, ``module.cnet.*``, ``module.update_block.*``)
is translated onto torchvision's names; a torchvision-format state dict is used as is; torchvision's
own pretrained weights are downloaded only when no file is found and downloading is allowed. Every
tensor must fit (count and shapes), otherwise a WeightsError names the file, the key and both shapes.
"""
import collections
import re

from core.checkpoints import read_state_dict
from core.errors import ConfigError, WeightsError
from core.paths import resolve_weights

DEFAULT_FILES = {"raft_small": "raft-small.pth", "raft_large": "raft-things.pth"}
DOWNLOAD_ID = "torchvision-download"


def check_raft_name(name):
    """ConfigError unless ``name`` is a RAFT model torchvision has."""
    _builder(name)


def _builder(name):
    from torchvision.models import optical_flow as of
    if name == "raft_small":
        return of.raft_small, of.Raft_Small_Weights
    if name == "raft_large":
        return of.raft_large, of.Raft_Large_Weights
    raise ConfigError(f"unknown RAFT model '{name}' (known: {', '.join(DEFAULT_FILES)})")


# --- official princeton-vl names -> torchvision names ------------------------------------------------

_ENCODERS = {"fnet": "feature_encoder", "cnet": "context_encoder"}


def _official_to_torchvision_name(key, name):
    """torchvision name of official key ``key`` (``module.`` already stripped), or None if unknown.

    Encoder blocks: raft_small uses bottleneck blocks (conv1..3 / norm1..3, the downsample's norm is
    ``norm4``), raft_large residual blocks (conv1..2 / norm1..2, the downsample's norm is ``norm3``).
    That downsample norm is registered twice in the official model (``normK`` and ``downsample.1``);
    both names map to ``downsample.1``.
    """
    ds_norm = "4" if name == "raft_small" else "3"
    m = re.fullmatch(r"(fnet|cnet)\.(.+)", key)
    if m:
        enc, rest = _ENCODERS[m.group(1)], m.group(2)
        for pat, rep in ((r"conv1\.(\w+)", r"convnormrelu.0.\1"),
                         (r"norm1\.(\w+)", r"convnormrelu.1.\1"),
                         (r"conv2\.(\w+)", r"conv.\1"),
                         (r"(layer\d+\.\d+)\.conv(\d)\.(\w+)", r"\1.convnormrelu\2.0.\3"),
                         (r"(layer\d+\.\d+)\.downsample\.(\d)\.(\w+)", r"\1.downsample.\2.\3")):
            mm = re.fullmatch(pat, rest)
            if mm:
                return enc + "." + mm.expand(rep)
        mm = re.fullmatch(r"(layer\d+\.\d+)\.norm(\d)\.(\w+)", rest)
        if mm:
            blk, k, p = mm.groups()
            if k == ds_norm:
                return f"{enc}.{blk}.downsample.1.{p}"
            return f"{enc}.{blk}.convnormrelu{k}.1.{p}"
        return None
    for pat, rep in ((r"update_block\.encoder\.convc(\d)\.(\w+)", r"update_block.motion_encoder.convcorr\1.0.\2"),
                     (r"update_block\.encoder\.convf(\d)\.(\w+)", r"update_block.motion_encoder.convflow\1.0.\2"),
                     (r"update_block\.encoder\.conv\.(\w+)", r"update_block.motion_encoder.conv.0.\1"),
                     (r"update_block\.gru\.conv([zrq])\.(\w+)", r"update_block.recurrent_block.convgru1.conv\1.\2"),
                     (r"update_block\.gru\.conv([zrq])([12])\.(\w+)",
                      r"update_block.recurrent_block.convgru\2.conv\1.\3"),
                     (r"update_block\.flow_head\.(conv\d)\.(\w+)", r"update_block.flow_head.\1.\2"),
                     (r"update_block\.mask\.0\.(\w+)", r"mask_predictor.convrelu.0.\1"),
                     (r"update_block\.mask\.2\.(\w+)", r"mask_predictor.conv.\1")):
        mm = re.fullmatch(pat, key)
        if mm:
            return mm.expand(rep)
    return None


def _mapped_tensors(ckpt, name, path):
    """[(checkpoint key, torchvision key, tensor)] in checkpoint order; detects the checkpoint's layout."""
    stripped = [(k, k[len("module."):] if k.startswith("module.") else k) for k in ckpt]
    official = any(s.startswith(("fnet.", "cnet.")) for _, s in stripped)
    out = []
    for k, s in stripped:
        t = _official_to_torchvision_name(s, name) if official else s
        if t is None:
            raise WeightsError(f"checkpoint {path} does not fit {name}: key '{k}' is not part of an official "
                               f"princeton-vl {name} checkpoint")
        out.append((k, t, ckpt[k]))
    return out


def fit_state_dict(model, ckpt, name, path):
    """The torchvision state dict for ``model`` from checkpoint ``ckpt``; WeightsError if anything does not fit."""
    target = model.state_dict()
    mapped = _mapped_tensors(ckpt, name, path)
    out = collections.OrderedDict()
    for k, t, v in mapped:
        if t not in target:
            raise WeightsError(f"checkpoint {path} does not fit {name}: key '{k}' (-> '{t}') has no counterpart "
                               f"in the model (checkpoint shape {tuple(v.shape)})")
        if tuple(v.shape) != tuple(target[t].shape):
            raise WeightsError(f"checkpoint {path} does not fit {name}: key '{k}' (-> '{t}') has shape "
                               f"{tuple(v.shape)}, the model needs {tuple(target[t].shape)}")
        if t in out:  # an aliased module saved twice (see _official_to_torchvision_name): must be identical
            if not bool((out[t] == v).all()):
                raise WeightsError(f"checkpoint {path}: key '{k}' duplicates '{t}' with different values")
            continue
        out[t] = v
    missing = [t for t in target if t not in out]
    # BatchNorm step counters (old checkpoints lack them) do nothing in eval mode: take the model's own.
    for t in [t for t in missing if t.endswith("num_batches_tracked")]:
        out[t] = target[t]
        missing.remove(t)
    if missing:
        raise WeightsError(f"checkpoint {path} does not fit {name}: it has {len(ckpt)} tensors, the model needs "
                           f"{len(target)}; first missing key '{missing[0]}' (model shape "
                           f"{tuple(target[missing[0]].shape)}, checkpoint shape: absent)")
    return collections.OrderedDict((t, out[t]) for t in target)


def download_weights(name):
    """torchvision's own pretrained weights of RAFT ``name``, fetched into its cache now (a no-op when already
    there), so that no internet is a WeightsError before any work rather than when the model first runs."""
    _, weights_enum = _builder(name)
    try:
        weights_enum.DEFAULT.get_state_dict(progress=False)
    except Exception as e:  # noqa: BLE001 - no internet, a broken download, ...
        raise WeightsError(f"no {DEFAULT_FILES[name]} found and torchvision could not download its {name} "
                           f"weights ({type(e).__name__}: {e}); set $PITRACK_WEIGHTS") from None


def load_raft(name, weights_path=None, allow_download=False, device="cpu"):
    """torchvision RAFT ``name`` (raft_small | raft_large) with weights, in eval mode, gradients off.

    ``weights_path``: an explicit checkpoint (official princeton-vl or torchvision format); else
    ``$PITRACK_WEIGHTS/<raft-small.pth | raft-things.pth>``; else, only if ``allow_download``,
    torchvision's own pretrained weights. The chosen source is in ``model.pitrack_weights``.
    """
    build, weights_enum = _builder(name)
    path = resolve_weights(DEFAULT_FILES[name], explicit=weights_path or None, allow_download=allow_download)
    if path is None:
        download_weights(name)
        model = build(weights=weights_enum.DEFAULT, progress=False)
        source = DOWNLOAD_ID
    else:
        model = build(weights=None, progress=False)
        sd = fit_state_dict(model, read_state_dict(path), name, path)
        model.load_state_dict(sd, strict=True)
        source = path
    model.eval().requires_grad_(False)
    model.to(device)
    model.pitrack_weights = source
    return model


# --- inference ----------------------------------------------------------------------------------------
