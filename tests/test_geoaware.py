"""GeoAware-SC: the aggregation network's official key layout (strict loading), the partial (DINO-branch) backbone."""
import collections
import os

import numpy as np
import pytest
import torch

import features.geoaware as geoaware
from core.errors import WeightsError
from core.paths import WEIGHTS_ENV
from features.backbones import BACKBONES, make_backbone
from features.dinov2 import DinoV2, build_dinov2
from features.cache import video_features
from features.geoaware import (AggregationNetwork, GeoAware, dino_block_tokens, load_aggregation,
                               random_aggregation)
from pitrack.config import default_section

# The official GeoAware-SC AggregationNetwork state dict (results_spair/best_856.PTH), names and shapes written out
# from ../shared/RESEARCH.md §2 (branches 0-2: SD s3 640 ch, s4 1280, s5 1280 with a 1×1 shortcut; branch 3:
# DINOv2 768 ch, identity shortcut; bottleneck 192, output 768; GroupNorm affine under <conv>.norm).
OFFICIAL_SHAPES = collections.OrderedDict([
    ("logit_scale", ()),
    ("self_logit_scale", ()),
    ("bottleneck_layers.0.0.shortcut.weight", (768, 640, 1, 1)),
    ("bottleneck_layers.0.0.shortcut.norm.weight", (768,)),
    ("bottleneck_layers.0.0.shortcut.norm.bias", (768,)),
    ("bottleneck_layers.0.0.conv1.weight", (192, 640, 1, 1)),
    ("bottleneck_layers.0.0.conv1.norm.weight", (192,)),
    ("bottleneck_layers.0.0.conv1.norm.bias", (192,)),
    ("bottleneck_layers.0.0.conv2.weight", (192, 192, 3, 3)),
    ("bottleneck_layers.0.0.conv2.norm.weight", (192,)),
    ("bottleneck_layers.0.0.conv2.norm.bias", (192,)),
    ("bottleneck_layers.0.0.conv3.weight", (768, 192, 1, 1)),
    ("bottleneck_layers.0.0.conv3.norm.weight", (768,)),
    ("bottleneck_layers.0.0.conv3.norm.bias", (768,)),
    ("bottleneck_layers.1.0.shortcut.weight", (768, 1280, 1, 1)),
    ("bottleneck_layers.1.0.shortcut.norm.weight", (768,)),
    ("bottleneck_layers.1.0.shortcut.norm.bias", (768,)),
    ("bottleneck_layers.1.0.conv1.weight", (192, 1280, 1, 1)),
    ("bottleneck_layers.1.0.conv1.norm.weight", (192,)),
    ("bottleneck_layers.1.0.conv1.norm.bias", (192,)),
    ("bottleneck_layers.1.0.conv2.weight", (192, 192, 3, 3)),
    ("bottleneck_layers.1.0.conv2.norm.weight", (192,)),
    ("bottleneck_layers.1.0.conv2.norm.bias", (192,)),
    ("bottleneck_layers.1.0.conv3.weight", (768, 192, 1, 1)),
    ("bottleneck_layers.1.0.conv3.norm.weight", (768,)),
    ("bottleneck_layers.1.0.conv3.norm.bias", (768,)),
    ("bottleneck_layers.2.0.shortcut.weight", (768, 1280, 1, 1)),
    ("bottleneck_layers.2.0.shortcut.norm.weight", (768,)),
    ("bottleneck_layers.2.0.shortcut.norm.bias", (768,)),
    ("bottleneck_layers.2.0.conv1.weight", (192, 1280, 1, 1)),
    ("bottleneck_layers.2.0.conv1.norm.weight", (192,)),
    ("bottleneck_layers.2.0.conv1.norm.bias", (192,)),
    ("bottleneck_layers.2.0.conv2.weight", (192, 192, 3, 3)),
    ("bottleneck_layers.2.0.conv2.norm.weight", (192,)),
    ("bottleneck_layers.2.0.conv2.norm.bias", (192,)),
    ("bottleneck_layers.2.0.conv3.weight", (768, 192, 1, 1)),
    ("bottleneck_layers.2.0.conv3.norm.weight", (768,)),
    ("bottleneck_layers.2.0.conv3.norm.bias", (768,)),
    ("bottleneck_layers.3.0.conv1.weight", (192, 768, 1, 1)),
    ("bottleneck_layers.3.0.conv1.norm.weight", (192,)),
    ("bottleneck_layers.3.0.conv1.norm.bias", (192,)),
    ("bottleneck_layers.3.0.conv2.weight", (192, 192, 3, 3)),
    ("bottleneck_layers.3.0.conv2.norm.weight", (192,)),
    ("bottleneck_layers.3.0.conv2.norm.bias", (192,)),
    ("bottleneck_layers.3.0.conv3.weight", (768, 192, 1, 1)),
    ("bottleneck_layers.3.0.conv3.norm.weight", (768,)),
    ("bottleneck_layers.3.0.conv3.norm.bias", (768,)),
    ("mixing_weights", (4,)),
])

pytestmark = pytest.mark.filterwarnings("ignore:features backbone 'geoaware' runs in PARTIAL mode")


def official_state_dict(seed=0):
    """A state dict in the official layout with random values (GroupNorm weights around 1)."""
    g = torch.Generator().manual_seed(seed)
    out = collections.OrderedDict()
    for k, shape in OFFICIAL_SHAPES.items():
        v = torch.randn(shape, generator=g) * (0.05 if k.endswith(".weight") and len(shape) == 4 else 0.2)
        if k.endswith("norm.weight"):
            v = v + 1.0
        out[k] = v
    return out


def _frames(n, h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 255, (n, h, w, 3), dtype=np.uint8)


# --- AggregationNetwork --------------------------------------------------------------------------------

def test_official_layout_loads_strictly_and_round_trips(tmp_path):
    sd = official_state_dict()
    net = AggregationNetwork()
    net.load_state_dict(sd, strict=True)
    assert {k: tuple(v.shape) for k, v in net.state_dict().items()} == dict(OFFICIAL_SHAPES)
    path = tmp_path / "best_856.PTH"
    torch.save(sd, path)
    got = load_aggregation(path)
    assert not got.training and not any(p.requires_grad for p in got.parameters())
    for k, v in got.state_dict().items():
        assert torch.equal(v, sd[k]), k
    # a wrapped state dict loads too
    torch.save({"state_dict": sd, "epoch": 2}, tmp_path / "wrapped.PTH")
    assert torch.equal(load_aggregation(tmp_path / "wrapped.PTH").mixing_weights, sd["mixing_weights"])


def test_parameter_count_matches_the_official_network():
    net = AggregationNetwork()
    n = sum(p.numel() for p in net.parameters())
    assert n == 5_150_214 == geoaware.NUM_PARAMETERS
    assert sum(int(np.prod(s)) for s in OFFICIAL_SHAPES.values()) == n
    assert not list(net.buffers())                   # GroupNorm only: the file holds everything


@pytest.mark.parametrize("fault", ["missing", "shape", "unexpected"])
def test_a_misfitting_checkpoint_names_file_and_key(fault, tmp_path):
    sd = official_state_dict()
    key = "bottleneck_layers.3.0.conv2.norm.bias"
    if fault == "missing":
        del sd[key]
    elif fault == "shape":
        sd[key] = torch.zeros(191)
    else:
        key = "bottleneck_layers.3.0.shortcut.weight"       # the DINO branch has no shortcut
        sd[key] = torch.zeros(768, 768, 1, 1)
    path = tmp_path / "bad_856.PTH"
    torch.save(sd, path)
    with pytest.raises(WeightsError, match=r"bad_856\.PTH.*" + key.replace(".", r"\.")):
        load_aggregation(path)


def test_mixture_dino_branch_and_residual_structure():
    torch.manual_seed(0)
    net = AggregationNetwork().eval()
    net.load_state_dict(official_state_dict(1))
    s3, s4, s5 = torch.randn(1, 640, 4, 6), torch.randn(1, 1280, 2, 3), torch.randn(1, 1280, 1, 2)
    dino = torch.randn(1, 768, 4, 6)
    with torch.no_grad():
        full = net.forward_levels(s3, s4, s5, dino)
        assert full.shape == (1, 768, 4, 6)
        assert torch.allclose(full.norm(dim=1), torch.ones(1, 4, 6), atol=1e-5)
        # the mixture is softmax(mixing_weights)-weighted, branch by branch, in the order s3, s4, s5, dino
        up = [torch.nn.functional.interpolate(s, size=(4, 6), mode="bilinear", align_corners=False) for s in (s4, s5)]
        w = torch.softmax(net.mixing_weights, 0)
        parts = [net.bottleneck_layers[i](x) for i, x in enumerate([s3] + up + [dino])]
        manual = sum(w[i] * parts[i] for i in range(4))
        assert torch.allclose(net.forward_levels(s3, s4, s5, dino, normalize=False), manual, atol=1e-5)
        # with the SD branches weighted out, the full mixture is the DINO branch
        net.mixing_weights.copy_(torch.tensor([-1e4, -1e4, -1e4, 0.0]))
        assert torch.allclose(net.forward_levels(s3, s4, s5, dino), net.dino_branch(dino), atol=1e-5)
        # DINO branch = bottleneck_3(dino), L2-normalised; identity shortcut + final ReLU: conv3 = 0 -> relu(input)
        b3 = net.bottleneck_layers[3][0]
        assert b3.shortcut is None
        assert torch.allclose(net.dino_branch(dino), torch.nn.functional.normalize(b3(dino), dim=1), atol=1e-6)
        b3.conv3.norm.weight.zero_()
        b3.conv3.norm.bias.zero_()
        assert torch.allclose(b3(dino), dino.clamp(min=0))


# --- the partial GeoAware backbone ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def vitb():
    return build_dinov2("dinov2_vitb14", None, seed=0)


def test_block11_prenorm_tokens_equal_a_manual_block_loop(vitb):
    x = torch.randn(1, 3, 70, 98)
    with torch.no_grad():
        got = dino_block_tokens(vitb, x)
        t = vitb.norm_pre(vitb.patch_drop(vitb._pos_embed(vitb.patch_embed(x))))
        for blk in vitb.blocks[:12]:
            t = blk(t)
        manual = t[:, vitb.num_prefix_tokens:].reshape(1, 5, 7, 768).permute(0, 3, 1, 2)
        normed = vitb.forward_features(x)[:, vitb.num_prefix_tokens:].reshape(1, 5, 7, 768).permute(0, 3, 1, 2)
    assert len(vitb.blocks) == 12 and got.shape == (1, 768, 5, 7)
    assert torch.allclose(got, manual, atol=1e-5)
    assert not torch.allclose(got, normed, atol=1e-2)          # pre-norm: not the final-norm output


def test_random_init_geoaware_partial_features(monkeypatch):
    monkeypatch.setattr(geoaware, "_partial_warned", False)
    with pytest.warns(UserWarning, match="PARTIAL"):
        bb = make_backbone(default_section("features", backbone="geoaware", random_init=True), seed=0)
    assert "geoaware" in BACKBONES and isinstance(bb, GeoAware)
    assert (bb.name, bb.stride, bb.offset, bb.channels, bb.partial) == ("geoaware", 14, 6.5, 768, True)
    cid = bb.cache_id()
    assert cid["mode"] == "partial-dino-branch" and cid["backbone"] == "geoaware"
    frames = _frames(2, 70, 98)
    f = bb(frames)
    assert f.shape == (2, 768, 5, 7) and f.dtype == torch.float32 and torch.isfinite(f).all()
    assert torch.allclose(f.norm(dim=1), torch.ones(2, 5, 7), atol=1e-5)
    # exactly: branch 3 of the aggregation network on the block-11 pre-norm tokens, renormalised
    with torch.no_grad():
        tokens = bb.dino_features(frames)
        expect = torch.nn.functional.normalize(bb.aggregation.bottleneck_layers[3](tokens), dim=1)
    assert torch.allclose(f, expect, atol=1e-5)
    assert torch.equal(bb.aggregation.state_dict()["mixing_weights"], random_aggregation(0).mixing_weights)
    # seeded: the same seed gives the same features, another seed others
    assert torch.allclose(GeoAware(random_init=True, seed=0)(frames), f, atol=1e-6)
    assert GeoAware(random_init=True, seed=1).cache_id() != cid
    assert DinoV2("dinov2_vitb14", random_init=True).cache_id() != cid     # never confused with raw DINOv2
    with pytest.raises(ValueError, match="divisible by 14"):
        bb(_frames(1, 70, 100))


def test_video_features_with_geoaware_random_init(tmp_path):
    video = _frames(3, 60, 80, seed=2)
    cfg = default_section("features", backbone="geoaware", random_init=True, resolution="112x84", batch_size=2)
    a = video_features(video, cfg, tmp_path, seed=0)
    assert a.feats.shape == (3, 768, 6, 8) and a.feats.dtype == torch.float16
    assert a.grid.stride == 14 and a.grid.offset == 6.5 and a.stats["backbone_evals"] == 3
    assert torch.allclose(a.feats.float().norm(dim=1), torch.ones(3, 6, 8), atol=2e-3)
    b = video_features(video, cfg, tmp_path, seed=0)
    assert b.stats["features_loaded"] and b.stats["backbone_evals"] == 0 and torch.equal(a.feats, b.feats)


def test_missing_aggregation_weights_name_the_file(monkeypatch, tmp_path):
    (tmp_path / "dinov2_vitb14_pretrain.pth").write_bytes(b"")  # only its existence is checked up front
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path))
    with pytest.raises(WeightsError, match=r"best_856\.PTH"):
        GeoAware()
    with pytest.raises(WeightsError, match=r"best_856\.PTH"):
        make_backbone(default_section("features", backbone="geoaware"))
    with pytest.raises(WeightsError, match=r"elsewhere\.PTH"):
        GeoAware(aggregation_weights=str(tmp_path / "elsewhere.PTH"))


def test_official_files_are_used(vitb, tmp_path, monkeypatch):
    """Both checkpoints found by their official names in $PITRACK_WEIGHTS: features = branch 3 of *that* file."""
    sd = {k: v.half() for k, v in vitb.state_dict().items()}            # timm layout, fp16: a small file
    torch.save(sd, tmp_path / "dinov2_vitb14_pretrain.pth")
    agg_sd = official_state_dict(3)
    torch.save(agg_sd, tmp_path / "best_856.PTH")
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path))
    bb = GeoAware()
    assert bb.aggregation_path == os.path.join(str(tmp_path), "best_856.PTH")
    assert bb.cache_id()["aggregation"] == geoaware.file_sha256(bb.aggregation_path)
    assert torch.equal(bb.aggregation.bottleneck_layers[3][0].conv1.weight,
                       agg_sd["bottleneck_layers.3.0.conv1.weight"])
    frames = _frames(1, 42, 56)
    f = bb(frames)
    with torch.no_grad():
        expect = load_aggregation(tmp_path / "best_856.PTH").dino_branch(bb.dino_features(frames))
    assert f.shape == (1, 768, 3, 4) and torch.allclose(f, expect, atol=1e-6)
