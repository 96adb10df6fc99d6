"""Reading videos: a folder of frames (jpg/png, in natural name order) or a video file OpenCV can decode."""
import os
import re

import numpy as np

from core.errors import InputError
from core.images import NativeMessages, decode_image, decoder_line

FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png")
_DIGIT_RUNS = re.compile(r"([0-9]+)")


def natural_key(name):
    """Sort key of a file name: its runs of digits compare as integers, the rest as text ('2.jpg' before
    '10.jpg'; zero-padded names keep their order); names equal by that ('1.jpg', '01.jpg') by their text."""
    parts = _DIGIT_RUNS.split(name)
    return [int(p) if i % 2 else p for i, p in enumerate(parts)], name


def list_frame_files(folder):
    """Frame file names (jpg/jpeg/png) in ``folder``, in natural order (:func:`natural_key`)."""
    return sorted((f for f in os.listdir(folder) if f.lower().endswith(FRAME_EXTENSIONS)), key=natural_key)


def check_max_frames(max_frames):
    """InputError unless ``max_frames`` is None or an integer >= 1."""
    if max_frames is None:
        return
    if isinstance(max_frames, bool) or not isinstance(max_frames, (int, np.integer)) or max_frames < 1:
        raise InputError(f"--max-frames must be >= 1, got {max_frames!r}")


def load_video(path, max_frames=None, allow_damaged=False, notes=None):
    """Video as uint8 RGB [T, H, W, 3] from a frame folder or a video file; its first ``max_frames`` frames
    when given. Raises InputError on bad input: a frame that does not decode completely (a truncated or
    corrupt JPEG/PNG), frames of different sizes, a video file whose frames stop decoding before the count
    its container declares, or one whose decoder reports errors while decoding (FFmpeg conceals them with
    guessed pixels; ``allow_damaged`` accepts such a file, appending a line naming its frames to the list
    ``notes`` where one is given)."""
    check_max_frames(max_frames)
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if not isinstance(path, (str, os.PathLike)):
        raise InputError(f"video must be a path (str or os.PathLike) or an array, got {type(path).__name__}")
    path = os.fspath(path)
    if not os.path.exists(path):
        raise InputError(f"video not found: {path}")
    if os.path.isdir(path):
        frames = _read_folder(path, max_frames)
    elif not os.path.isfile(path):
        raise InputError(f"video {path} is neither a folder nor a regular file")
    elif path.lower().endswith(FRAME_EXTENSIONS):
        frames = [_read_frame(path)]                      # one image: a video of one frame
    else:
        frames = _read_file(path, max_frames, allow_damaged, notes)
    video = np.stack(frames)[..., ::-1]  # BGR -> RGB
    return np.ascontiguousarray(video)


def _read_folder(path, max_frames):
    try:
        names = list_frame_files(path)
    except OSError as e:
        raise InputError(f"cannot list the video folder {path} ({e.strerror or e})") from None
    if max_frames is not None:
        names = names[:max_frames]
    if not names:
        raise InputError(f"video folder has no .jpg/.png frames: {path}")
    frames = []
    with NativeMessages() as messages:
        for name in names:
            img = _read_frame(os.path.join(path, name), messages)
            if frames and img.shape != frames[0].shape:
                raise InputError(f"frame {name} is {img.shape[1]}x{img.shape[0]} but the first frame is "
                                 f"{frames[0].shape[1]}x{frames[0].shape[0]}: all frames must have one size")
            frames.append(img)
    return frames


def _read_frame(file, messages=None):
    """One frame file, BGR, decoded completely (core.images.decode_image, reading the decoder's reports
    from ``messages``, an open NativeMessages) or an InputError naming it."""
    try:
        with open(file, "rb") as f:
            data = f.read()
    except OSError as e:
        raise InputError(f"cannot read frame {file} ({e.strerror or e})") from None
    return decode_image(data, f"frame {file}", messages)


# What FFmpeg's decoders print when a file's data is damaged (and they conceal it with guessed pixels).
# Other messages (e.g. swscaler's "deprecated pixel format used") are not damage.
_VIDEO_DAMAGE = re.compile(r"damaged|error|marker bit missing|concealing|corrupt|invalid|partial file|"
                           r"truncat|illegal|overread|out of range", re.IGNORECASE)
def _read_file(path, max_frames, allow_damaged=False, notes=None):
    """Frames (BGR) of a video file. Its container's frame count, where it declares one, is the number
    expected (up to ``max_frames``); fewer is an InputError quoting the decoder's first message. A decoder
    report of damaged data (:data:`_VIDEO_DAMAGE`) is an InputError naming the frame being read when it came
    (one decoding thread, so the report is that frame's; the frames predicted from it show the damage too but
    report nothing), unless ``allow_damaged`` (then a line for ``notes``)."""
    import cv2
    frames, damage = [], {}                  # frame index -> first damage line reported while reading it
    with NativeMessages() as messages:
        # one decoding thread: FFmpeg's frame threads decode ahead, and a report would come with an earlier frame
        cap = cv2.VideoCapture(path, cv2.CAP_FFMPEG, [cv2.CAP_PROP_N_THREADS, 1])
        if not cap.isOpened():
            cap = cv2.VideoCapture(path)                  # a container only another backend reads
        heard = []
        try:
            if not cap.isOpened():
                raise InputError(f"cannot open video file {path}{_quote(messages.new_lines())}")
            declared = cap.get(cv2.CAP_PROP_FRAME_COUNT)
            declared = int(declared) if np.isfinite(declared) and declared >= 1 else None
            while max_frames is None or len(frames) < max_frames:
                ok, img = cap.read()
                if not ok:
                    break
                if frames and img.shape != frames[0].shape:
                    raise InputError(f"frame {len(frames)} of {path} changes size")
                lines = messages.new_lines()
                heard += lines
                bad = [line for line in lines if _VIDEO_DAMAGE.search(line)]
                if bad:
                    damage[len(frames)] = bad[0]
                frames.append(img)
        finally:
            cap.release()
        said = heard + messages.new_lines()
    expected = declared if max_frames is None or declared is None else min(declared, max_frames)
    n = len(frames)
    if not frames:
        raise InputError(f"video file has zero decodable frames: {path}{_quote(said)}")
    if expected is not None and n < expected:
        clean = min(damage, default=n)               # frames before the first one decoded with errors
        way_out = (f"use --max-frames {clean} to track the {clean} before the damage" if clean else
                   f"even frame 0 reports errors (--allow-damaged --max-frames {n} tracks the {n} as decoded)")
        raise InputError(f"video file {path} is damaged: only {n} of its {declared} frames decode{_quote(said)}; "
                         f"{way_out}")
    if damage:
        what = (f"video file {path} is damaged: its decoder reported errors in frame"
                f"{'s' if len(damage) > 1 else ''} {_frame_list(sorted(damage))} of {n}{_quote([damage[min(damage)]])}")
        if not allow_damaged:
            raise InputError(f"{what}; --allow-damaged tracks it anyway")
        if notes is not None:
            notes.append(f"{what}; tracked as decoded (--allow-damaged)")
    return frames


def _frame_list(frames, most=8):
    text = ", ".join(str(t) for t in frames[:most])
    return text + (f" and {len(frames) - most} more" if len(frames) > most else "")


def _quote(lines):
    line = decoder_line(lines)
    return f" (decoder: {line})" if line else ""


def as_numpy(x):
    """``x`` as a numpy array where it is a torch tensor (detached, copied to the CPU; bfloat16 and other
    dtypes numpy lacks as float32), else ``x`` itself. torch is never imported here."""
    if type(x).__module__.split(".")[0] == "torch" and hasattr(x, "detach"):
        if getattr(getattr(x, "device", None), "type", "") == "meta":
            raise InputError("a tensor on the meta device holds no data: pass one on the CPU or a GPU")
        x = x.detach().cpu()
        try:
            return x.numpy()
        except TypeError:
            return x.float().numpy()
    return x


def _frames_array(frames):
    """A list or tuple of frames as one array; InputError naming the first frame whose shape differs from
    frame 0 (numpy's own error would only say 'inhomogeneous shape')."""
    arrays = []
    for t, f in enumerate(frames):
        try:
            arrays.append(np.asarray(as_numpy(f)))
        except ValueError:
            raise InputError(f"video frame {t} is not an array (its rows differ in length)") from None
    frames = arrays
    for t, f in enumerate(frames[1:], 1):
        if f.shape != frames[0].shape:
            raise InputError(f"video frame {t} has shape {list(f.shape)} but frame 0 has "
                             f"{list(frames[0].shape)}: all frames must have one size")
    return np.stack(frames) if frames else np.zeros((0,), np.uint8)


def _from_cotracker_layout(video):
    """[B, T, 3, H, W] with B = 1, uint8 or float values 0..255 (CoTracker's predictor input) -> uint8
    [T, H, W, 3]."""
    if video.shape[0] != 1:
        raise InputError(f"video has a batch of {video.shape[0]} videos ([B, T, 3, H, W] = {list(video.shape)}): "
                         f"pass one video at a time")
    video = video[0].transpose(0, 2, 3, 1)
    if video.dtype == np.uint8:
        return video
    if video.dtype == bool or not (np.issubdtype(video.dtype, np.floating) or np.issubdtype(video.dtype, np.integer)):
        raise InputError(f"video [1, T, 3, H, W] must be uint8 or float 0..255, got {video.dtype}")
    if video.size and not np.all(np.isfinite(video)):
        raise InputError("video [1, T, 3, H, W] contains NaN or infinity")
    if video.size and (video.min() < 0 or video.max() > 255):
        raise InputError(f"video [1, T, 3, H, W] has values in [{video.min():g}, {video.max():g}]: they must lie in "
                         f"0..255, as for CoTracker")
    if video.size and np.issubdtype(video.dtype, np.floating) and video.max() <= 1.0:
        raise InputError(f"video [1, T, 3, H, W] is float with values in [{video.min():g}, {video.max():g}]: "
                         f"CoTracker's layout takes 0..255 (multiply a 0..1 video by 255)")
    return np.rint(video).astype(np.uint8)


def check_video(video):
    """Validate a video: uint8 [T, H, W, 3] RGB (an array, a torch tensor, or a list of T frames [H, W, 3]),
    or CoTracker's layout [1, T, 3, H, W] (uint8 or float 0..255) converted to it. Returns a contiguous
    uint8 [T, H, W, 3] array with T, H, W >= 1; InputError otherwise."""
    video = as_numpy(video)
    video = _frames_array(video) if isinstance(video, (list, tuple)) else np.asarray(video)
    if video.ndim == 5 and video.shape[2] == 3:
        video = _from_cotracker_layout(video)
    if video.ndim != 4 or video.shape[-1] != 3:
        raise InputError(f"video must have shape [T, H, W, 3] (or CoTracker's [1, T, 3, H, W]), "
                         f"got {list(video.shape)}")
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
