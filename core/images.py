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


class ResizedFrames:
    """The frames of a video at the size ``hw`` = (h, w), resized (:func:`resize_video`) when read, so that no
    stage holds a second copy of the whole video. Indexed like the uint8 array [T, h, w, 3] it stands for,
    by a slice or a list of frame indices: ``frames[i:j]``, ``frames[[3, 7]]`` -> uint8 [n, h, w, 3]."""

    def __init__(self, video, hw):
        self.video = video
        self.hw = (int(hw[0]), int(hw[1]))
        self.shape = (int(video.shape[0]),) + self.hw + (3,)

    def __len__(self):
        return self.shape[0]

    def __getitem__(self, idx):
        if isinstance(idx, slice):
            idx = range(*idx.indices(len(self)))
        return resize_video(self.video[list(idx)], self.hw)
