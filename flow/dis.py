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


class DISFlow:
    """DIS flow backend: ``DISFlow(preset)(frames1, frames2)`` -> float32 [B, 2, h, w] (dx, dy) working px."""

    def __init__(self, preset="medium"):
        import cv2
        self.preset = preset
        self._dis = cv2.DISOpticalFlow_create(_preset_id(preset))

    def cache_id(self):
        """What determines the flows this backend computes (for cache keys)."""
        return {"backend": "dis", "dis_preset": self.preset}

    def __call__(self, frames1, frames2):
        f1, f2 = np.asarray(frames1), np.asarray(frames2)
        if f1.shape != f2.shape or f1.ndim not in (3, 4) or f1.dtype != np.uint8:
            raise ValueError(f"DIS needs two uint8 [B, h, w, 3] (or [B, h, w]) arrays of one shape, "
                             f"got {f1.shape} {f1.dtype} and {f2.shape} {f2.dtype}")
        out = np.empty((f1.shape[0], 2) + f1.shape[1:3], np.float32)
        for i in range(f1.shape[0]):
            flow = self._dis.calc(_gray(f1[i]), _gray(f2[i]), None)  # [h, w, 2], pixel-centre convention
            out[i] = flow.transpose(2, 0, 1)
        return out


def dis_flow(frames1, frames2, preset="medium"):
    """Flow frames1[i] -> frames2[i] (uint8 RGB [B, h, w, 3]) with DIS; float32 [B, 2, h, w] (dx, dy) px."""
    return DISFlow(preset)(frames1, frames2)
