"""Where weights and caches live. The one place that resolves model checkpoints.

Weights: an explicit path in the config, else ``$PITRACK_WEIGHTS/<file>``, else the framework's own
download (needs internet). Caches: ``$PITRACK_CACHE`` or ``~/.cache/pitrack``.
"""
import hashlib
import os

from core.errors import WeightsError

WEIGHTS_ENV = "PITRACK_WEIGHTS"
CACHE_ENV = "PITRACK_CACHE"


def json_key(fields):
    """The form of every cache key: 16 hex digits of the sha256 of ``fields`` (plain types) as sorted JSON."""
    import json
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def resolve_weights(filename, explicit=None, allow_download=False):
    """Path of checkpoint ``filename``, or None when the caller may use its framework's download.

    Order: ``explicit`` (a config value; must exist), ``$PITRACK_WEIGHTS/filename``, then — only if
    ``allow_download`` — None, meaning "let the framework download its own weights". Otherwise a
    WeightsError names the file and every place looked at.
    """
    looked = []
    if explicit:
        p = os.path.expanduser(os.fspath(explicit))
        if os.path.isfile(p):
            return p
        raise WeightsError(f"weights file {p} (set in the config) does not exist")
    d = os.environ.get(WEIGHTS_ENV)
    if d:
        p = os.path.join(os.path.expanduser(d), filename)
        if os.path.isfile(p):
            return p
        looked.append(p)
    else:
        looked.append(f"${WEIGHTS_ENV} (not set)")
    if allow_download:
        return None
    raise WeightsError(f"weights '{filename}' not found; looked in: {', '.join(looked)}. "
                       f"Set {WEIGHTS_ENV} to the folder holding it or give its path in the config")


def cache_root():
    """Root folder of per-video caches."""
    d = os.environ.get(CACHE_ENV)
    if d:
        return os.path.expanduser(d)
    base = os.environ.get("XDG_CACHE_HOME", os.path.join(os.path.expanduser("~"), ".cache"))
    return os.path.join(base, "pitrack")


def file_sha256(path, _memo={}):
    """sha256 hex digest of a file (memoised on path, size and mtime)."""
    st = os.stat(path)
    k = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
    if k not in _memo:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _memo[k] = h.hexdigest()
    return _memo[k]


def folder_mb(folder):
    """Size of the files under ``folder`` (recursively), MB."""
    total = 0
    for root, _, files in os.walk(folder):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(root, f))
            except OSError:
                pass
    return total / 2 ** 20
