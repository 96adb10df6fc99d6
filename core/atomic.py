"""Write files atomically: write to a temporary file in the same folder, then rename over the target."""
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
        with contextlib.suppress(FileNotFoundError):
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


def discard_cache_file(path, what, why, then="recomputing"):
    """A cache file failed validation: warn (naming it and why) and delete it, so it is never used."""
    warnings.warn(f"{what} {path} rejected ({why}); deleting it and {then}", stacklevel=4)
    with contextlib.suppress(OSError):
        os.remove(path)
