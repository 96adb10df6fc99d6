import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.abspath(os.path.join(ROOT, "..", "shared"))
DAVIS = os.path.join(SHARED, "data", "tapvid_davis32")
BADJA = os.path.join(SHARED, "data", "badja")

if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
if "PITRACK_WEIGHTS" not in os.environ and os.path.isdir(os.path.join(SHARED, "weights")):
    os.environ["PITRACK_WEIGHTS"] = os.path.join(SHARED, "weights")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Every test gets its own cache root, so no test reads another's cache."""
    monkeypatch.setenv("PITRACK_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="session")
def synthetic_clip(tmp_path_factory):
    """A TAP-Vid-format folder with a rendered clip of known motion."""
    from eval.synthetic import make_clip, write_clip
    folder = tmp_path_factory.mktemp("clip") / "synthetic"
    video, points, occluded = make_clip(num_frames=24, size_hw=(120, 160), seed=1, num_points=32)
    write_clip(str(folder), video, points, occluded)
    return str(folder)


def need(path):
    if not os.path.exists(path):
        pytest.skip(f"{path} is not present on this machine")
    return path


def raft_small_path():
    """The official RAFT-small checkpoint: $PITRACK_WEIGHTS/raft-small.pth, else ../shared/weights; None if absent."""
    for d in (os.environ.get("PITRACK_WEIGHTS"), os.path.join(SHARED, "weights")):
        if d and os.path.isfile(os.path.join(d, "raft-small.pth")):
            return os.path.join(d, "raft-small.pth")
    return None


@pytest.fixture
def raft_weights(monkeypatch):
    """Path of raft-small.pth, with $PITRACK_WEIGHTS pointing at its folder; skips where it is absent."""
    path = raft_small_path()
    if path is None:
        pytest.skip("raft-small.pth (official RAFT-small checkpoint) not found in $PITRACK_WEIGHTS or ../shared/weights")
    monkeypatch.setenv("PITRACK_WEIGHTS", os.path.dirname(path))
    return path


@pytest.fixture(autouse=True)
def _torch_threads():
    """At most 2 torch threads in every test (the machine's size), restored afterwards."""
    import torch
    n = torch.get_num_threads()
    torch.set_num_threads(min(n, 2))
    yield
    torch.set_num_threads(n)
