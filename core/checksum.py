"""Files checked on reading: a header (a magic string, then the sha256 of the payload) followed by the payload.

``torch.load`` reads a ``torch.save`` zip without checking its members' CRC-32s, so a flipped bit in a tensor
loads silently as a different value. :func:`save_torch` writes the ``torch.save`` bytes in this layout
(atomically, through :func:`core.atomic.cache_write`) and :func:`load_torch` verifies the digest before
unpickling: any change to the file (a flipped bit, a truncation, a file of another layout) is a
:class:`ChecksumError`. The whole file is read into memory, which suits small files (checkpoints of a few MB).

Layout: ``MAGIC`` (16 bytes) | sha256(payload) (32 bytes) | payload.
"""
import hashlib
import io

MAGIC = b"pitrack:sha256:1"
_DIGEST_BYTES = 32
_HEADER_BYTES = len(MAGIC) + _DIGEST_BYTES


class ChecksumError(ValueError):
    """A checked file lacks the header, or its payload does not match the digest in its header."""


def pack(payload):
    """The file's bytes for ``payload`` (bytes): header, then the payload."""
    payload = bytes(payload)
    return MAGIC + hashlib.sha256(payload).digest() + payload


def unpack(blob):
    """The payload of a file's bytes ``blob``, after checking the header and the digest (ChecksumError)."""
    if len(blob) < _HEADER_BYTES or blob[:len(MAGIC)] != MAGIC:
        raise ChecksumError("no checksum header")
    payload = blob[_HEADER_BYTES:]
    if hashlib.sha256(payload).digest() != blob[len(MAGIC):_HEADER_BYTES]:
        raise ChecksumError(f"sha256 of the {len(payload)}-byte content does not match the header's")
    return payload


def read_checked(path):
    """The verified payload of checked file ``path``. OSError when it cannot be read (missing, no permission),
    ChecksumError when its content is not what was written."""
    with open(path, "rb") as f:
        return unpack(f.read())


def save_torch(path, obj, what):
    """``torch.save(obj)`` to cache file ``path`` in the checked layout, atomically. True, or False when it
    cannot be written (one warning naming ``what``; see core.atomic.cache_write)."""
    import torch
    from core.atomic import cache_write

    def write(tmp):
        buf = io.BytesIO()
        torch.save(obj, buf)
        with open(tmp, "wb") as f:
            f.write(pack(buf.getvalue()))

    return cache_write(path, write, what)


def load_torch(path, map_location="cpu"):
    """The object saved by :func:`save_torch` at ``path``, read with ``weights_only=True`` once its digest is
    verified: OSError or ChecksumError as :func:`read_checked`, and torch.load's errors for a payload that
    is not a loadable ``torch.save`` file."""
    import torch
    return torch.load(io.BytesIO(read_checked(path)), map_location=map_location, weights_only=True)
