"""Resizing frames between the original and a stage's working resolution."""
import numpy as np


def resize_video(video, hw):
    """uint8 [T, H, W, 3] -> [T, h, w, 3]: INTER_AREA when shrinking (anti-aliased), bilinear when enlarging."""
    import cv2
    h, w = hw
    if video.shape[1:3] == (h, w):
        return np.ascontiguousarray(video)
    interp = cv2.INTER_AREA if (h <= video.shape[1] and w <= video.shape[2]) else cv2.INTER_LINEAR
    out = np.empty((video.shape[0], h, w, 3), np.uint8)
    for i, f in enumerate(video):
        out[i] = cv2.resize(f, (w, h), interpolation=interp)
    return out
