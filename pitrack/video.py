"""Reading videos: a folder of frames (jpg/png, sorted by name) or a video file OpenCV can decode."""
import contextlib
import os
import sys

import numpy as np

from core.errors import InputError

FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png")


def list_frame_files(folder):
    """Sorted frame file names (jpg/jpeg/png) in ``folder``."""
    return sorted(f for f in os.listdir(folder) if f.lower().endswith(FRAME_EXTENSIONS))


@contextlib.contextmanager
def _quiet_native_stderr():
    """Silence what native decoders (FFmpeg inside OpenCV) print on file descriptor 2; our own error says it."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def load_video(path, max_frames=None):
    """Video as uint8 RGB [T, H, W, 3] from a frame folder or a video file. Raises InputError on bad input."""
    import cv2

    path = os.fspath(path)
    if not os.path.exists(path):
        raise InputError(f"video not found: {path}")
    frames = []
    if os.path.isdir(path):
        names = list_frame_files(path)
        if max_frames is not None:
            names = names[:max_frames]
        if not names:
            raise InputError(f"video folder has no .jpg/.png frames: {path}")
        for name in names:
            img = cv2.imread(os.path.join(path, name), cv2.IMREAD_COLOR)
            if img is None:
                raise InputError(f"cannot read frame {os.path.join(path, name)}")
            if frames and img.shape != frames[0].shape:
                raise InputError(f"frame {name} is {img.shape[1]}x{img.shape[0]} but the first frame is "
                                 f"{frames[0].shape[1]}x{frames[0].shape[0]}: all frames must have one size")
            frames.append(img)
    else:
        with _quiet_native_stderr():
            cap = cv2.VideoCapture(path)
            try:
                if not cap.isOpened():
                    raise InputError(f"cannot open video file {path}")
                while max_frames is None or len(frames) < max_frames:
                    ok, img = cap.read()
                    if not ok:
                        break
                    if frames and img.shape != frames[0].shape:
                        raise InputError(f"frame {len(frames)} of {path} changes size")
                    frames.append(img)
            finally:
                cap.release()
        if not frames:
            raise InputError(f"video file has zero decodable frames: {path}")
    video = np.stack(frames)[..., ::-1]  # BGR -> RGB
    return np.ascontiguousarray(video)


def check_video(video):
    """Validate a video array: uint8 [T, H, W, 3] with T >= 1. Returns it as a contiguous array."""
    video = np.asarray(video)
    if video.ndim != 4 or video.shape[-1] != 3:
        raise InputError(f"video must have shape [T, H, W, 3], got {list(video.shape)}")
    if video.shape[0] < 1 or video.shape[1] < 1 or video.shape[2] < 1:
        raise InputError(f"video is empty: shape {list(video.shape)}")
    if video.dtype != np.uint8:
        raise InputError(f"video must be uint8 (0..255), got {video.dtype}")
    return np.ascontiguousarray(video)


def resize_video(video, hw):
    """uint8 [T, H, W, 3] -> [T, h, w, 3] for ``hw`` = (h, w), each frame by a Lanczos filter (PIL), the resize
    TAP-Vid's own evaluation applies (mediapy) before tracking at 256×256."""
    from PIL import Image
    h, w = int(hw[0]), int(hw[1])
    if video.shape[1:3] == (h, w):
        return video
    return np.stack([np.asarray(Image.fromarray(f).resize((w, h), resample=Image.Resampling.LANCZOS)) for f in video])
