"""RAFT optical flow (the flow backend ``raft_small`` / ``raft_large``), network loaded by core.raft_model."""
import numpy as np

from core.devices import resolve_device
from core.errors import ConfigError
from core.paths import file_sha256, resolve_weights
from core.raft_model import DEFAULT_FILES, DOWNLOAD_ID, check_raft_name, download_weights, load_raft

MIN_SIDE = 128  # torchvision RAFT's 4-level correlation pyramid needs feature maps >= 16, i.e. inputs >= 128 px


def raft_padding(h, w):
    """(left, right, top, bottom) replicate padding that makes (h, w) multiples of 8 (and at least
    MIN_SIDE, which only very small working resolutions need), split evenly between the two sides."""
    ph = max(MIN_SIDE, h + (-h) % 8) - h
    pw = max(MIN_SIDE, w + (-w) % 8) - w
    return pw // 2, pw - pw // 2, ph // 2, ph - ph // 2


def correlation_bytes(hw, batch):
    """Bytes of RAFT's all-pairs correlation pyramid for ``batch`` pairs at working size ``hw``: N² float32
    for the N = (h/8)(w/8) cells of the padded frame, plus the pooled levels (1/2, 1/4, 1/8 of the second
    frame's side: 1 + 1/4 + 1/16 + 1/64). It dominates the flow stage's memory: 0.2 GB at 854x480, 4 GB at
    1920x1080, 67 GB at 3840x2160, per pair."""
    left, right, top, bottom = raft_padding(int(hw[0]), int(hw[1]))
    n = ((int(hw[0]) + top + bottom) // 8) * ((int(hw[1]) + left + right) // 8)
    return int(4 * n * n * (1 + 1 / 4 + 1 / 16 + 1 / 64)) * int(batch)


def check_correlation_memory(hw, batch):
    """ConfigError before any evaluation when :func:`correlation_bytes` exceeds this machine's memory."""
    from core.config_checks import MACHINE_BYTES
    need = correlation_bytes(hw, batch)
    if need > MACHINE_BYTES:
        raise ConfigError(f"flow.resolution {hw[1]}x{hw[0]} with flow.batch_size {batch}: RAFT's correlation volume "
                          f"needs {need / 2 ** 30:.1f} GB, this machine has {MACHINE_BYTES / 2 ** 30:.1f} GB "
                          f"(use a smaller flow.resolution, e.g. long1024, or flow.batch_size)")


RAFT_FEATURES = {"raft_small": (96, 64, 4 * 7 * 7), "raft_large": (128, 128, 4 * 9 * 9)}   # hidden, context, corr


def raft_feature_channels(name):
    """Channels of :func:`raft_flow`'s features for RAFT model ``name``: hidden + context + corr + 4."""
    return sum(RAFT_FEATURES[name]) + 4


def raft_flow(model, frames1, frames2, iterations=12, features=False):
    """Flow frames1[i] -> frames2[i] with a loaded RAFT ``model``.

    ``frames1``, ``frames2``: uint8 RGB [B, h, w, 3] at working resolution (one array or a sequence
    of frames). Normalised to [-1, 1], replicate-padded to a multiple of 8 (at least 128), ``iterations`` refinement
    steps, the last prediction un-padded. Returns float32 [B, 2, h, w], (dx, dy) in working pixels.

    ``features=True`` also returns, from the same pass, float32 [B, C, H/8, W/8] over the padded frame
    (H, W): the inputs and outputs of the last update step, read by a hook on the update block — its new
    hidden state, the context, the correlation features at the estimate it started from, that estimate
    (1/8 px, divided by 4) and its update (C = :func:`raft_feature_channels`, 360 for RAFT-small).
    """
    import torch
    import torch.nn.functional as F

    f1, f2 = np.asarray(frames1), np.asarray(frames2)
    if f1.shape != f2.shape or f1.ndim != 4 or f1.shape[-1] != 3 or f1.dtype != np.uint8:
        raise ValueError(f"raft_flow needs two uint8 [B, h, w, 3] arrays of one shape, got {f1.shape} {f1.dtype} "
                         f"and {f2.shape} {f2.dtype}")
    B, h, w, _ = f1.shape
    device = next(model.parameters()).device
    l, r, t, b = raft_padding(h, w)

    def prep(f):
        x = torch.from_numpy(np.ascontiguousarray(f)).to(device).permute(0, 3, 1, 2).float()
        x = x * (2.0 / 255.0) - 1.0
        return F.pad(x, (l, r, t, b), mode="replicate") if (l or r or t or b) else x

    last = {}

    def keep_last(module, args, output):        # update_block(hidden, context, corr, flow) -> (hidden, Δflow)
        last["x"] = (output[0], args[1], args[2], args[3] / 4.0, output[1])

    hook = model.update_block.register_forward_hook(keep_last) if features else None
    try:
        with torch.inference_mode():
            preds = model(prep(f1), prep(f2), num_flow_updates=int(iterations))
            flow = preds[-1][:, :, t:t + h, l:l + w].float().cpu().numpy().astype(np.float32, copy=False)
            if not features:
                return flow
            return flow, torch.cat(last["x"], 1).float().cpu().numpy()
    finally:
        if hook is not None:
            hook.remove()


class RaftFlow:
    """A RAFT flow backend for the flow bank: resolves its checkpoint at once, loads the model on first use."""

    def __init__(self, name="raft_small", weights="", iterations=12, allow_download=False, device="auto"):
        check_raft_name(name)
        if int(iterations) < 1:
            raise ConfigError(f"flow.iterations must be >= 1, got {iterations}")
        self.name = name
        self.iterations = int(iterations)
        self.allow_download = allow_download
        self.device = resolve_device(device, "flow.device")
        self.weights_path = resolve_weights(DEFAULT_FILES[name], explicit=weights or None,
                                            allow_download=allow_download)
        if self.weights_path is None:
            download_weights(name)            # no file: torchvision's download, now rather than mid-run
        self._model = None

    def cache_id(self):
        """What determines the flows this backend computes (for cache keys)."""
        w = DOWNLOAD_ID if self.weights_path is None else file_sha256(self.weights_path)
        return {"backend": self.name, "iterations": self.iterations, "weights": w}

    @property
    def model(self):
        if self._model is None:
            self._model = load_raft(self.name, self.weights_path, self.allow_download, self.device)
        return self._model

    def __call__(self, frames1, frames2):
        return raft_flow(self.model, frames1, frames2, self.iterations)

    def flow_and_features(self, frames1, frames2):
        """Flows [B, 2, h, w] and the last update's features [B, C, H/8, W/8] (:func:`raft_flow`)."""
        return raft_flow(self.model, frames1, frames2, self.iterations, features=True)
