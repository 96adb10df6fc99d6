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
