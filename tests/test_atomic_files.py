"""Atomic writes: finished files honour the umask; temporaries that killed runs leave behind are removed."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from core.atomic import atomic_path, remove_stale_temporaries, save_json, save_npz
from pitrack.tracker import TrackContext

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_written_files_honour_the_umask(tmp_path, mask):
    old = os.umask(mask)
    try:
        save_npz(str(tmp_path / "a.npz"), x=np.zeros(3))
        save_json(str(tmp_path / "b.json"), {"a": 1})
    finally:
        os.umask(old)
    for name in ("a.npz", "b.json"):
        assert os.stat(tmp_path / name).st_mode & 0o777 == 0o666 & ~mask


def _killed_writer(target):
    """A process that opens an atomic write of ``target`` and is killed with SIGKILL before finishing it."""
    code = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {ROOT!r})
        from core.atomic import atomic_path
        with atomic_path({str(target)!r}) as tmp:
            open(tmp, "wb").write(b"half")
            print(tmp, flush=True)
            time.sleep(60)
    """)
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    tmp = p.stdout.readline().strip()
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert os.path.exists(tmp)
    return tmp


def test_a_rewrite_removes_the_temporary_a_killed_writer_left(tmp_path):
    target = tmp_path / "flow.npz"
    tmp = _killed_writer(target)
    save_npz(str(target), x=np.ones(2))
    assert not os.path.exists(tmp)
    assert sorted(os.listdir(tmp_path)) == ["flow.npz"]


def test_opening_a_video_cache_removes_stale_temporaries_and_keeps_live_ones(tmp_path):
    video = np.zeros((2, 8, 8, 3), np.uint8)
    ctx = TrackContext(video, progress=False, cache_dir=str(tmp_path / "cache"))
    sub = tmp_path / "cache" / "features"
    sub.mkdir(parents=True)
    dead = _killed_writer(sub / "a.npz")
    old = sub / ".tmp-b.npz-x1y2z3.npz"                         # no owner in the name: judged by age
    old.write_bytes(b"old")
    two_hours_ago = time.time() - 7200
    os.utime(old, (two_hours_ago, two_hours_ago))
    recent = sub / ".tmp-c.npz-k9k9k9.npz"
    recent.write_bytes(b"recent")
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        mine = sub / f".tmp-d.npz-p{live.pid}h{__import__('core.atomic').atomic._HOST_TAG}-q1.npz"
        mine.write_bytes(b"being written")
        assert ctx.video_cache_dir() == str(tmp_path / "cache")
        assert not os.path.exists(dead) and not old.exists()
        assert recent.exists() and mine.exists()
    finally:
        live.kill()
        live.wait()
    assert remove_stale_temporaries(str(sub)) == 1                # its writer is gone now
    assert not mine.exists() and recent.exists()


def test_a_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_path(str(tmp_path / "x.npz")) as tmp:
            open(tmp, "wb").write(b"part")
            raise RuntimeError("writer failed")
    assert os.listdir(tmp_path) == []
