"""Frozen backbones: exact grid geometry, strict checkpoint loading (RAFT encoder, DINOv2 layouts), feature cache."""
import copy
import os
import warnings

import numpy as np
import pytest
import torch

from features.backbones import RaftEncoder
from features.dinov2 import DinoV2, build_dinov2
from features.cache import video_features
from features.grid import FeatureGrid, feature_image_hw
from core.errors import WeightsError
from core.paths import WEIGHTS_ENV
from pitrack.config import default_section

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def FeatureConfig(**changes):
    """configs/default.yaml's features section with ``changes``."""
    return default_section("features", **changes)


def _support_centre(net, hw, cell, out_index=None):
    """Centre (x, y) of the input pixels that output cell ``cell`` = (i, j) depends on (gradient support)."""
    x = torch.randn(1, 3, *hw, requires_grad=True)
    y = net(x)
    if out_index is not None:
        y = out_index(y)
    y[0, :, cell[0], cell[1]].sum().backward()
    nz = torch.nonzero(x.grad[0].abs().sum(0) > 0)
    return ((nz[:, 1].min() + nz[:, 1].max()).item() / 2, (nz[:, 0].min() + nz[:, 0].max()).item() / 2)


def _no_norms(module):
    """A copy of ``module`` with its normalisation layers replaced by identities (they mix all positions)."""
    m = copy.deepcopy(module).float().requires_grad_(True)
    for name, child in list(m.named_modules()):
        for cname, c in list(child.named_children()):
            if isinstance(c, (torch.nn.InstanceNorm2d, torch.nn.BatchNorm2d)):
                setattr(child, cname, torch.nn.Identity())
    return m


# --- geometry ------------------------------------------------------------------------------------------

def test_feature_image_size_is_a_multiple_of_the_stride():
    assert feature_image_hw("512x288", (480, 854), 8) == (288, 512)
    assert feature_image_hw("512x288", (480, 854), 14) == (294, 518)       # 20.6 -> 21 and 36.6 -> 37 patches
    assert feature_image_hw("native", (480, 854), 8) == (480, 856)
    assert feature_image_hw("long256", (480, 854), 14) == (140, 252)


@pytest.mark.parametrize("stride,offset", [(8, 0.0), (14, 6.5)])
def test_grid_maps_are_exact_both_ways(stride, offset):
    g = FeatureGrid(feature_image_hw("512x288", (480, 854), stride), stride, offset)
    H, W = g.image_hw
    work = (480, 854)
    # the centre of cell (i, j) in working px (pixel-centre convention), from the formula in the docstring
    i, j = 7, 11
    x = (offset + stride * j + 0.5) * 854 / W - 0.5
    y = (offset + stride * i + 0.5) * 480 / H - 0.5
    uv = g.from_working(np.array([x, y]), work)
    assert uv == pytest.approx([j, i], abs=1e-5)
    # both ways, numpy and torch, many points
    pts = np.random.default_rng(0).uniform([-0.5, -0.5], [853.5, 479.5], (100, 2))
    back = g.to_working(g.from_working(pts, work), work)
    assert np.abs(back - pts).max() < 1e-3
    tp = torch.from_numpy(pts).float()
    assert torch.allclose(g.to_working(g.from_working(tp, work), work), tp, atol=1e-3)
    assert torch.allclose(g.from_working(tp, work), torch.from_numpy(g.from_working(pts, work)), atol=1e-4)
    # image <-> grid
    assert g.image_to_grid(np.array([offset + stride * 3.25, offset])) == pytest.approx([3.25, 0.0])
    assert g.grid_to_image(np.array([2.0, 1.0])) == pytest.approx([offset + 2 * stride, offset + stride])
    # corner convention is a pure scale: the frame's corners map to the feature image's corners
    corner_w = g.from_working(np.array([-0.5, -0.5]), work)
    assert g.grid_to_image(corner_w) == pytest.approx([-0.5, -0.5], abs=1e-5)
    assert g.cell_size_in(work) == pytest.approx(stride * np.sqrt(854 / W * 480 / H))


# --- RAFT-small encoder --------------------------------------------------------------------------------

def test_raft_encoder_loads_strictly_from_the_official_checkpoint(raft_weights):
    from core.checkpoints import read_state_dict
    from core.raft_model import _mapped_tensors
    enc = RaftEncoder()
    net = enc.net
    assert enc.weights_path == raft_weights and enc.source == raft_weights
    assert not net.training and not any(p.requires_grad for p in net.parameters())
    sd = net.state_dict()
    mapped = [(k, t, v) for k, t, v in _mapped_tensors(read_state_dict(raft_weights), "raft_small", raft_weights)
              if t.startswith("feature_encoder.")]
    names = {t[len("feature_encoder."):] for _, t, _ in mapped}
    assert names == {k for k in sd if not k.endswith("num_batches_tracked")} and len(names) > 10
    for k, t, v in mapped:
        assert torch.equal(sd[t[len("feature_encoder."):]], v), k
    assert enc.cache_id()["weights"] == "c7d41b9cc88442bb8aa911dbb33086dac55a226394b142937ff22d5578717332" or \
        len(enc.cache_id()["weights"]) == 64
    f = enc(np.random.default_rng(0).integers(0, 255, (2, 48, 64, 3), dtype=np.uint8))
    assert f.shape == (2, 128, 6, 8) and f.dtype == torch.float32 and torch.isfinite(f).all()


def test_raft_encoder_cell_j_sits_on_pixel_8j(raft_weights):
    net = _no_norms(RaftEncoder().net)
    assert _support_centre(net, (96, 96), (5, 6)) == (48.0, 40.0)      # (x, y) = (8·6, 8·5): offset 0


def test_missing_raft_weights_name_the_file(monkeypatch, tmp_path):
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path))
    with pytest.raises(WeightsError, match="raft-small.pth"):
        RaftEncoder()


# --- DINOv2 --------------------------------------------------------------------------------------------

def _official_layout(sd, chunks=0, prefix=""):
    """An official DINOv2 checkpoint from a timm state dict: plus mask_token, optional block chunks / prefix."""
    out = {}
    for k, v in sd.items():
        if chunks and k.startswith("blocks."):
            i = int(k.split(".")[1])
            k = f"blocks.{i // chunks}.{i}." + k.split(".", 2)[2]
        out[prefix + k] = v.clone()
    out[prefix + "mask_token"] = torch.zeros(1, sd["cls_token"].shape[-1])
    return out


@pytest.fixture(scope="module")
def vits_source():
    return build_dinov2("dinov2_vits14", None, seed=3)


def test_dinov2_random_init_geometry():
    bb = DinoV2("dinov2_vits14", random_init=True, seed=0)
    assert (bb.stride, bb.offset, bb.channels) == (14, 6.5, 384)
    f = bb(np.random.default_rng(0).integers(0, 255, (2, 42, 56, 3), dtype=np.uint8))
    assert f.shape == (2, 384, 3, 4) and torch.isfinite(f).all()
    assert bb.cache_id()["weights"].startswith("random-init-seed0")
    # a patch covers pixels [14j, 14j + 13]: centre 14j + 6.5
    pe = copy.deepcopy(bb.net.patch_embed).requires_grad_(True)
    c = _support_centre(lambda x: pe(x).permute(0, 3, 1, 2), (42, 56), (1, 2))     # timm's NHWC patch grid
    assert c == (14 * 2 + 6.5, 14 * 1 + 6.5)
    big = DinoV2("dinov2_vitb14", random_init=True)
    assert big.channels == 768 and big(np.zeros((1, 28, 28, 3), np.uint8)).shape == (1, 768, 2, 2)


@pytest.mark.parametrize("layout", ["official", "official-chunked-prefixed", "timm-safetensors"])
def test_dinov2_checkpoint_layouts_load_exactly(layout, vits_source, tmp_path, monkeypatch):
    sd = vits_source.state_dict()
    if layout == "official":
        path = tmp_path / "dinov2_vits14_pretrain.pth"
        torch.save(_official_layout(sd), path)
        monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path))       # found by its official name
        bb = DinoV2("dinov2_vits14")
    elif layout == "official-chunked-prefixed":
        path = tmp_path / "teacher.pth"
        torch.save({"model": _official_layout(sd, chunks=4, prefix="module.backbone.")}, path)
        bb = DinoV2("dinov2_vits14", weights=str(path))
    else:
        from safetensors.torch import save_file
        path = tmp_path / "model.safetensors"
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
        bb = DinoV2("dinov2_vits14", weights=str(path))
    assert bb.weights_path == str(path)
    for k, v in bb.net.state_dict().items():
        assert torch.equal(v, sd[k]), k
    frames = np.random.default_rng(1).integers(0, 255, (1, 28, 42, 3), dtype=np.uint8)
    ref = DinoV2("dinov2_vits14", random_init=True, seed=3)
    ref._net = vits_source                                   # the same model, already built
    assert torch.allclose(bb(frames), ref(frames), atol=1e-5)


def test_dinov2_misfit_and_missing_checkpoints(vits_source, tmp_path, monkeypatch):
    sd = _official_layout(vits_source.state_dict())
    sd["blocks.0.attn.qkv.weight"] = sd["blocks.0.attn.qkv.weight"][:-1]
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(WeightsError, match="blocks.0.attn.qkv.weight"):
        DinoV2("dinov2_vits14", weights=str(tmp_path / "bad.pth")).net
    sd = _official_layout(vits_source.state_dict())
    del sd["norm.weight"]
    torch.save(sd, tmp_path / "short.pth")
    with pytest.raises(WeightsError, match="missing"):
        DinoV2("dinov2_vits14", weights=str(tmp_path / "short.pth")).net
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path))
    with pytest.raises(WeightsError, match="dinov2_vitb14_pretrain.pth"):
        DinoV2("dinov2_vitb14")


# --- cache ---------------------------------------------------------------------------------------------

class TinyBackbone:
    """A stand-in backbone for the cache logic: 4×4 average pooling of the frame (stride 4, offset 1.5)."""
    name, stride, offset, channels = "tiny", 4, 1.5, 3

    def __init__(self):
        self.calls = 0

    def cache_id(self):
        return {"backbone": self.name, "weights": "none"}

    def __call__(self, frames):
        self.calls += 1
        x = torch.from_numpy(np.asarray(frames)).permute(0, 3, 1, 2).float()
        return torch.nn.functional.avg_pool2d(x, 4)


def test_feature_cache_reuses_validates_and_recomputes(tmp_path):
    video = np.random.default_rng(0).integers(0, 255, (5, 40, 60, 3), dtype=np.uint8)
    cfg = FeatureConfig(resolution="64x48", batch_size=2)
    bb = TinyBackbone()
    a = video_features(video, cfg, tmp_path, backbone=bb)
    assert a.feats.dtype == torch.float16 and a.feats.shape == (5, 3, 12, 16)
    assert a.images.shape == (5, 48, 64, 3) and a.grid == FeatureGrid((48, 64), 4, 1.5)
    assert a.stats["backbone_evals"] == 5 and bb.calls == 3 and not a.stats["features_loaded"]
    b = video_features(video, cfg, tmp_path, backbone=bb)
    assert b.stats["backbone_evals"] == 0 and b.stats["features_loaded"] and torch.equal(a.feats, b.feats)
    files = list((tmp_path / "features").glob("*.npz"))
    assert len(files) == 1 and a.key in files[0].name
    files[0].write_bytes(files[0].read_bytes()[:100])                  # truncated: rejected, recomputed
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        c = video_features(video, cfg, tmp_path, backbone=bb)
    assert any("rejected" in str(x.message) for x in w)
    assert c.stats["backbone_evals"] == 5 and torch.equal(a.feats, c.feats)
    # another resolution or another video is another key; no cache folder: nothing written
    d = video_features(video, FeatureConfig(resolution="32x24"), tmp_path, backbone=bb)
    e = video_features(video[::-1].copy(), cfg, tmp_path, backbone=bb)
    assert len({a.key, d.key, e.key}) == 3 and d.feats.shape == (5, 3, 6, 8)
    assert len(list((tmp_path / "features").glob("*.npz"))) == 3
    video_features(video, cfg, None, backbone=bb)
    assert len(list((tmp_path / "features").glob("*.npz"))) == 3


def test_resized_frames_read_like_the_resized_array():
    from core.images import ResizedFrames, resize_video
    rng = np.random.default_rng(0)
    video = rng.integers(0, 256, (6, 40, 60, 3), dtype=np.uint8)
    frames, full = ResizedFrames(video, (20, 30)), resize_video(video, (20, 30))
    assert frames.shape == full.shape == (6, 20, 30, 3) and len(frames) == 6
    np.testing.assert_array_equal(frames[1:4], full[1:4])
    np.testing.assert_array_equal(frames[[5, 0, 2]], full[[5, 0, 2]])
    np.testing.assert_array_equal(frames[::2], full[::2])
