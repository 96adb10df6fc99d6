"""Resizing frames between the original and a stage's working resolution; decoding image files, with
what the native decoders report about them."""
import os
import re
import sys
import tempfile

import numpy as np

from core.errors import InputError


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


def rgb_tensor(frames, device):
    """uint8 RGB frames [B, H, W, 3] (numpy or torch) -> float32 torch [B, 3, H, W], values 0..255, on
    ``device``: every backbone's input. ValueError for anything else."""
    import torch
    x = frames if isinstance(frames, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(frames))
    if x.ndim != 4 or x.shape[-1] != 3 or x.dtype != torch.uint8:
        raise ValueError(f"backbone input must be uint8 [B, H, W, 3], got {tuple(x.shape)} {x.dtype}")
    return x.to(device).permute(0, 3, 1, 2).float()


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


# ---------------------------------------------------------------------------------------------------------------
# Decoding image files, and what the native decoders say about them

JPEG_START, JPEG_END = b"\xff\xd8", b"\xff\xd9"
PNG_START, PNG_END = b"\x89PNG\r\n\x1a\n", b"IEND\xaeB`\x82"


def image_format(data):
    """'JPEG' or 'PNG' by the file's first bytes (its signature), else None."""
    if data.startswith(JPEG_START):
        return "JPEG"
    if data.startswith(PNG_START):
        return "PNG"
    return None


def is_complete_image(data):
    """Whether a JPEG file holds its end-of-image marker (anywhere after its start: phones' motion photos
    append a video after it, and 0xFFD9 cannot occur inside JPEG's entropy-coded data), or a PNG file ends
    with its IEND chunk (zero bytes after it allowed: padding). A file cut short lacks the end; the check
    reads no pixel data (a JPEG cut after an embedded thumbnail's end marker is found when decoded:
    libjpeg's "Premature end of JPEG file")."""
    fmt = image_format(data)
    if fmt == "JPEG":
        return data.find(JPEG_END, len(JPEG_START)) >= 0
    return fmt == "PNG" and data.rstrip(b"\x00").endswith(PNG_END)


class NativeMessages:
    """Context manager: while the block runs, what native code (libjpeg, libpng, FFmpeg inside OpenCV)
    writes on file descriptor 2 goes to a temporary file instead of the terminal; ``new_lines()`` returns
    the lines written since its previous call. Where fd 2 cannot be redirected, nothing is captured and
    ``new_lines()`` returns []. Not for use from several threads at once (fd 2 is process-wide)."""

    READ_LIMIT = 1 << 16      # bytes read per call (a damaged video can make FFmpeg print thousands of lines)

    def __init__(self):
        self._saved, self._file, self._pos = None, None, 0

    def __enter__(self):
        try:
            sys.stderr.flush()
        except (AttributeError, OSError, ValueError):
            pass
        try:
            self._file = tempfile.TemporaryFile()
            self._saved = os.dup(2)
            os.dup2(self._file.fileno(), 2)
        except (OSError, ValueError):
            if self._saved is not None:
                os.close(self._saved)
            if self._file is not None:
                self._file.close()
            self._saved, self._file = None, None
        return self

    def __exit__(self, *exc):
        if self._saved is not None:
            os.dup2(self._saved, 2)
            os.close(self._saved)
            self._file.close()
            self._saved, self._file = None, None
        return False

    def new_lines(self):
        if self._file is None:
            return []
        fd = self._file.fileno()
        end = os.fstat(fd).st_size
        if end <= self._pos:
            return []
        os.lseek(fd, self._pos, os.SEEK_SET)
        data = os.read(fd, min(end - self._pos, self.READ_LIMIT))
        self._pos = end
        return [line.strip() for line in data.decode("utf-8", "replace").splitlines() if line.strip()]


def decoder_line(lines):
    """The first of ``lines`` (native decoder output), without FFmpeg's object address
    ('[mpeg4 @ 0x55d…] header damaged' -> 'mpeg4: header damaged'); '' when there is none."""
    if not lines:
        return ""
    return re.sub(r"^\[(\S+) @ 0x[0-9a-fA-F]+\]\s*", r"\1: ", lines[0])


def _damage_lines(lines):
    """The libjpeg messages that mean pixels were not decoded from the file: data cut short or corrupt
    (libjpeg fills what it cannot decode with grey and goes on). Extra bytes before the end marker (0xd9)
    are left out: every pixel was decoded before them."""
    return [line for line in lines
            if line.startswith("Premature end of JPEG file")
            or (line.startswith("Corrupt JPEG data") and "before marker 0xd9" not in line)]


def decode_image(data, what, messages=None, fmt_expected=None):
    """uint8 BGR [H, W, 3] decoded (OpenCV) from the bytes of a JPEG or PNG file. InputError, naming
    ``what`` (e.g. the file), unless the file is complete (:func:`is_complete_image`), decodes, and libjpeg
    reports no damaged data while decoding it. ``messages``: an open :class:`NativeMessages` to read the
    decoder's reports from (else one is opened for this call). ``fmt_expected``: 'JPEG' or 'PNG' to refuse
    the other format."""
    import cv2
    fmt = image_format(data)
    if fmt is None or (fmt_expected and fmt != fmt_expected):
        kind = fmt_expected or "JPEG or PNG"
        raise InputError(f"{what} is empty" if not data else f"{what} is not a {kind} image")
    if not is_complete_image(data):
        raise InputError(f"{what} is truncated: the {fmt} file ends before its end marker")
    if messages is None:
        with NativeMessages() as own:
            return decode_image(data, what, own, fmt_expected)
    messages.new_lines()                                # anything printed before this image is not its own
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    lines = messages.new_lines()
    if img is None:
        raise InputError(f"{what} does not decode as a {fmt}")
    damage = _damage_lines(lines)
    if damage:
        raise InputError(f"{what} does not decode completely (decoder: {damage[0]})")
    return img
