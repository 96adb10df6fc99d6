"""OpenCV DIS optical flow (Kroeger et al. 2016) on grayscale frames: the fast, weight-free flow backend."""
import numpy as np

from core.errors import ConfigError

PRESETS = ("ultrafast", "fast", "medium")


def _preset_id(preset):
    import cv2
    ids = {"ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST, "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
           "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM}
    if preset not in ids:
        raise ConfigError(f"unknown flow.dis_preset '{preset}' (known: {', '.join(PRESETS)})")
    return ids[preset]


def _gray(frame):
    import cv2
    frame = np.asarray(frame)
    if frame.ndim == 2:
        return np.ascontiguousarray(frame, dtype=np.uint8)
    return cv2.cvtColor(np.ascontiguousarray(frame, dtype=np.uint8), cv2.COLOR_RGB2GRAY)


def dis_padding(h, w, patch_size, finest_scale):
    """(bottom, right) rows and columns of padding that let DIS compute the flow of an h×w frame.

    OpenCV's DIS fails on frames whose short side is below one patch at its finest level
    (``patch_size · 2^finest_scale``: 16 px for the medium preset, 32 for fast and ultrafast): an error
    below 8 px, and on thin frames (8×40 with medium, 16×100 with ultrafast, random content) a crash of the
    process. Frames with both sides at least that size never failed in a scan of sizes 4…160 px; smaller
    sides are padded up to it, larger frames are left as they are."""
    side = patch_size * 2 ** finest_scale
    return max(0, side - h), max(0, side - w)


class DISFlow:
    """DIS flow backend: ``DISFlow(preset)(frames1, frames2)`` -> float32 [B, 2, h, w] (dx, dy) working px.
    Frames of any size from 1×1 up: small or thin ones are padded for DIS (:func:`dis_padding`)."""

    def __init__(self, preset="medium"):
        import cv2
        self.preset = preset
        self._dis = cv2.DISOpticalFlow_create(_preset_id(preset))
        # the preset's own sizes, read once: OpenCV lowers its finest scale on small frames and keeps it
        self._patch_size, self._finest_scale = self._dis.getPatchSize(), self._dis.getFinestScale()

    def cache_id(self):
        """What determines the flows this backend computes (for cache keys)."""
        return {"backend": "dis", "dis_preset": self.preset}

    def __call__(self, frames1, frames2):
        f1, f2 = np.asarray(frames1), np.asarray(frames2)
        if f1.shape != f2.shape or f1.ndim not in (3, 4) or f1.dtype != np.uint8:
            raise ValueError(f"DIS needs two uint8 [B, h, w, 3] (or [B, h, w]) arrays of one shape, "
                             f"got {f1.shape} {f1.dtype} and {f2.shape} {f2.dtype}")
        import cv2
        h, w = f1.shape[1:3]
        pad_b, pad_r = dis_padding(h, w, self._patch_size, self._finest_scale)
        out = np.empty((f1.shape[0], 2, h, w), np.float32)
        for i in range(f1.shape[0]):
            g1, g2 = _gray(f1[i]), _gray(f2[i])
            if pad_b or pad_r:    # edge pixels repeated below and to the right; the frame keeps its coordinates
                g1, g2 = (cv2.copyMakeBorder(g, 0, pad_b, 0, pad_r, cv2.BORDER_REPLICATE) for g in (g1, g2))
            flow = self._dis.calc(g1, g2, None)  # [h, w, 2], pixel-centre convention
            out[i] = flow[:h, :w].transpose(2, 0, 1)
        return out


def dis_flow(frames1, frames2, preset="medium"):
    """Flow frames1[i] -> frames2[i] (uint8 RGB [B, h, w, 3]) with DIS; float32 [B, 2, h, w] (dx, dy) px."""
    return DISFlow(preset)(frames1, frames2)
