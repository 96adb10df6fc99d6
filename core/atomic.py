"""Write files atomically: write to a temporary file in the same folder, then rename over the target.

Cache files go through :func:`cache_write` / :func:`cache_unreadable`: a cache that cannot be written or read
(read-only folder, a file where a folder should be, disk full, no permission) costs one warning per kind and
folder per process, and the run goes on without it.
"""
import contextlib
import json
import os
import tempfile
import warnings

import numpy as np


@contextlib.contextmanager
def atomic_path(path, suffix=None):
    """Yield a temporary path next to ``path``; on success rename it to ``path``, on error delete it.

    ``suffix`` defaults to the target's extension, so writers that look at the extension
    (OpenCV's VideoWriter, ``np.savez``) behave as for the real name.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    if suffix is None:
        suffix = os.path.splitext(path)[1]
    fd, tmp = tempfile.mkstemp(prefix=".tmp-" + os.path.basename(path) + "-", suffix=suffix, dir=folder)
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def save_npz(path, **arrays):
    """``np.savez`` to ``path`` atomically (the name is kept exactly; no '.npz' is appended)."""
    with atomic_path(path, suffix=".npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)


def save_json(path, obj):
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=1, sort_keys=True)
            f.write("\n")


def save_text(path, text):
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            f.write(text)


def save_bytes(path, data):
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


def discard_cache_file(path, what, why, then="recomputing"):
    """A cache file failed validation: warn (naming it and why) and delete it, so it is never used."""
    warnings.warn(f"{what} {path} rejected ({why}); deleting it and {then}", stacklevel=4)
    with contextlib.suppress(OSError):
        os.remove(path)


_warned = set()


def _warn_once(key, message):
    """``warnings.warn(message)`` the first time ``key`` is seen in this process."""
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, stacklevel=4)


def _reason(err):
    return err.strerror or str(err) or type(err).__name__


def cache_write(path, write_fn, what, suffix=None):
    """Write cache file ``path`` atomically: ``write_fn(tmp)`` writes a temporary path (see :func:`atomic_path`).

    Returns True, or False when it failed with an OSError (read-only folder, a file where a folder should be,
    disk full, permission): the temporary file is removed and one warning per ``what`` and folder per process
    says what was not written, where, why, and that the run goes on without caching it. Any other exception
    propagates.
    """
    try:
        with atomic_path(path, suffix) as tmp:
            write_fn(tmp)
        return True
    except OSError as e:
        folder = os.path.dirname(os.path.abspath(path))
        _warn_once(("write", what, folder), f"{what} {path} cannot be written ({_reason(e)}); "
                                            "continuing without caching it")
        return False


def cache_unreadable(path, what, err):
    """A cache file could not be read for ``err`` (e.g. a PermissionError; not corrupt, so it is kept): warn
    once per ``what`` and folder per process that the run goes on without it. Returns None (a cache miss)."""
    folder = os.path.dirname(os.path.abspath(path))
    _warn_once(("read", what, folder), f"{what} {path} cannot be read ({_reason(err)}); continuing without it")
    return None


def writable_folder(folder, what="cache folder"):
    """Whether ``folder`` can be created and written (probed with a temporary file, then deleted). When not:
    one warning per folder per process, and False."""
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-probe-", dir=folder)
        os.close(fd)
        os.remove(tmp)
        return True
    except OSError as e:
        _warn_once(("folder", os.path.abspath(folder)),
                   f"{what} {folder} cannot be written ({_reason(e)}); running without the cache")
        return False
