"""Write files atomically: write to a temporary file in the same folder, then rename over the target.

Temporary files are named ``.tmp-<target name>-p<pid>h<host tag>-<random><suffix>``. A run killed while
writing (SIGKILL, power loss) leaves one behind; :func:`remove_stale_temporaries` deletes those whose
process is gone (same host) or that have not been touched for an hour (another host, or an older name),
and every atomic write sweeps the stale temporaries of its own target first. Finished files get the
permissions a plain ``open(path, "w")`` would give (``0o666`` less the umask), not the temporary file's 0600.

Cache files go through :func:`cache_write` / :func:`cache_unreadable`: a cache that cannot be written or read
(read-only folder, a file where a folder should be, disk full, no permission) costs one warning per kind and
folder per process, and the run goes on without it.
"""
import contextlib
import glob
import hashlib
import json
import os
import re
import socket
import tempfile
import time
import warnings

import numpy as np

STALE_AFTER_S = 3600            # a temporary untouched this long is stale whoever wrote it
_HOST_TAG = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
_OWNER = re.compile(r"-p(\d+)h([0-9a-f]{8})-")


def _owner_tag():
    return f"p{os.getpid()}h{_HOST_TAG}"


def _process_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:                 # e.g. EPERM: it exists, owned by someone else
        return True
    return True


def _is_stale(path, now):
    """Whether temporary file ``path`` was left by a writer that is gone."""
    m = _OWNER.search(os.path.basename(path))
    if m and m.group(2) == _HOST_TAG and int(m.group(1)) != os.getpid():
        return not _process_alive(int(m.group(1)))
    try:
        return now - os.stat(path).st_mtime > STALE_AFTER_S
    except OSError:
        return False


def remove_stale_temporaries(folder, pattern=".tmp-*", recursive=False):
    """Delete the stale temporary files matching ``pattern`` in ``folder`` (and below, with ``recursive``).
    Returns how many were removed; files that cannot be removed are left silently."""
    now, removed = time.time(), 0
    pattern = os.path.join(glob.escape(folder), "**", pattern) if recursive else \
        os.path.join(glob.escape(folder), pattern)
    for p in glob.glob(pattern, recursive=recursive, include_hidden=True):
        if os.path.isfile(p) and _is_stale(p, now):
            with contextlib.suppress(OSError):
                os.remove(p)
                removed += 1
    return removed


def _umask():
    """The process's umask (read from /proc where it exists, so no other thread sees it changed)."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path, suffix=None):
    """Yield a temporary path next to ``path``; on success give it the umask's permissions and rename it to
    ``path``, on error delete it.

    ``suffix`` defaults to the target's extension, so writers that look at the extension
    (OpenCV's VideoWriter, ``np.savez``) behave as for the real name.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    if suffix is None:
        suffix = os.path.splitext(path)[1]
    prefix = ".tmp-" + os.path.basename(path) + "-"
    remove_stale_temporaries(folder, glob.escape(prefix) + "*")
    fd, tmp = tempfile.mkstemp(prefix=prefix + _owner_tag() + "-", suffix=suffix, dir=folder)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
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
        fd, tmp = tempfile.mkstemp(prefix=".tmp-probe-" + _owner_tag() + "-", dir=folder)
        os.close(fd)
        os.remove(tmp)
        return True
    except OSError as e:
        _warn_once(("folder", os.path.abspath(folder)),
                   f"{what} {folder} cannot be written ({_reason(e)}); running without the cache")
        return False


def check_writable(path, what="output"):
    """OutputError unless ``path`` can be written as a file: it is not a folder, and the nearest existing
    folder on its way can take a new file (probed with a temporary file, then deleted). For the outputs a
    command will write, checked before its work starts."""
    from core.errors import OutputError
    path = os.path.abspath(os.fspath(path))
    if os.path.isdir(path):
        raise OutputError(f"{what} {path} is a folder; give a file name")
    existing = os.path.dirname(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise OutputError(f"{what} {path} cannot be written: {existing} is a file, not a folder")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".tmp-probe-" + _owner_tag() + "-", dir=existing)
        os.close(fd)
        os.remove(tmp)
    except OSError as e:
        raise OutputError(f"{what} {path} cannot be written: {existing}: {_reason(e)}") from None


def _same_file(a, b):
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)          # hard links, bind mounts
    except OSError:
        return False


def check_not_an_input(path, what, inputs):
    """OutputError when output ``path`` is one of ``inputs`` ({description: path}, None entries skipped), the
    same file by name, symbolic link or hard link: writing it would replace what is being read."""
    from core.errors import OutputError
    for name, src in inputs.items():
        if src is None:
            continue
        src = os.fspath(src)
        if _same_file(path, src):
            raise OutputError(f"{what} {path} is the {name}: it would be overwritten; give another file name")
