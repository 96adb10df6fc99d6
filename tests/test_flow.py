"""Flow stage: RAFT checkpoint loading, RAFT/DIS flow on real frames, FB occlusion/variance, the flow bank cache."""
import dataclasses
import os
import warnings

import numpy as np
import pytest
import torch

from flow.bank import FlowBank
from core.errors import ConfigError, WeightsError
from core.checkpoints import read_state_dict
from core.raft_model import _mapped_tensors, load_raft
from core.sampling import sample_fields
from flow.dis import dis_flow
from flow.occlusion import FBUncertainty, bilinear_sample, fb_occlusion_variance, fb_residual
from flow.raft import raft_flow
from pitrack.config import default_section
from pitrack.video import load_video


def FlowConfig(**changes):
    """configs/default.yaml's flow section with ``changes``."""
    return default_section("flow", **changes)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DAVIS = os.path.join(os.path.dirname(REPO), "shared", "data", "tapvid_davis32")


@pytest.fixture
def weights(raft_weights):
    return raft_weights


def _davis(video="blackswan", n=2):
    folder = os.path.join(DAVIS, video, "frames")
    if not os.path.isdir(folder):
        pytest.skip(f"DAVIS frames not found at {folder}")
    return load_video(folder, max_frames=n)


def _resize(frames, w, h):
    import cv2
    return np.stack([cv2.resize(f, (w, h), interpolation=cv2.INTER_AREA) for f in frames])


def _warp_error(f0, f1, flow):
    """Mean |f0(p) − f1(p + flow(p))| (bilinear), over pixels whose target stays inside the frame."""
    import cv2
    h, w = f0.shape[:2]
    gy, gx = np.mgrid[0:h, 0:w].astype(np.float32)
    mx, my = gx + flow[0], gy + flow[1]
    warped = cv2.remap(f1.astype(np.float32), mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    inside = (mx >= 0) & (mx <= w - 1) & (my >= 0) & (my <= h - 1)
    return float(np.abs(warped - f0.astype(np.float32)).mean(-1)[inside].mean())


# --- (a) + (c): checkpoints ------------------------------------------------------------------------------

def test_official_raft_small_loads_strictly(weights):
    model = load_raft("raft_small")
    assert model.pitrack_weights == weights and not model.training
    assert not any(p.requires_grad for p in model.parameters())
    ckpt = read_state_dict(weights)
    sd = model.state_dict()
    assert len(ckpt) == len(sd) == 106
    # the name translation equals the one-to-one in-order mapping, and every tensor arrived unchanged
    mapped = _mapped_tensors(ckpt, "raft_small", weights)
    assert [t for _, t, _ in mapped] == list(sd)
    for (k, v), t in zip(ckpt.items(), sd):
        assert torch.equal(sd[t], v), k


def test_torchvision_format_state_dict_loads(tmp_path):
    from torchvision.models.optical_flow import raft_small
    torch.manual_seed(0)
    sd = raft_small(weights=None).state_dict()
    p = tmp_path / "tv.pth"
    torch.save(sd, p)
    model = load_raft("raft_small", str(p))
    for k, v in model.state_dict().items():
        assert torch.equal(v, sd[k]), k


def test_mismatching_checkpoint_raises(weights, tmp_path):
    ckpt = read_state_dict(weights)
    key = "module.update_block.flow_head.conv1.weight"
    bad = dict(ckpt)
    bad[key] = torch.zeros(64, 96, 3, 3)
    p = tmp_path / "bad.pth"
    torch.save(bad, p)
    with pytest.raises(WeightsError) as e:
        load_raft("raft_small", str(p))
    msg = str(e.value)
    assert str(p) in msg and key in msg and "(64, 96, 3, 3)" in msg and "(128, 96, 3, 3)" in msg
    # one tensor missing: wrong count, named
    short = dict(ckpt)
    del short["module.cnet.conv2.bias"]
    torch.save(short, p)
    with pytest.raises(WeightsError, match=r"105 tensors.*106.*context_encoder\.conv\.bias"):
        load_raft("raft_small", str(p))
    # a raft_small checkpoint is not a raft_large one
    with pytest.raises(WeightsError, match="does not fit raft_large"):
        load_raft("raft_large", weights)
    # a missing explicit file and a non-checkpoint file
    with pytest.raises(WeightsError, match="does not exist"):
        load_raft("raft_small", str(tmp_path / "nope.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="cannot read checkpoint"):
        load_raft("raft_small", str(tmp_path / "junk.pth"))


# --- (b): flows on a real frame pair -----------------------------------------------------------------------

def test_raft_flow_warps_real_frames(weights):
    f = _resize(_davis("blackswan"), 320, 180)   # 180 is not a multiple of 8: padding is exercised
    model = load_raft("raft_small")
    flow = raft_flow(model, f[:1], f[1:], iterations=12)
    assert flow.shape == (1, 2, 180, 320) and flow.dtype == np.float32
    e_flow, e_zero = _warp_error(f[0], f[1], flow[0]), _warp_error(f[0], f[1], np.zeros((2, 180, 320), np.float32))
    assert e_flow < 0.7 * e_zero, (e_flow, e_zero)


def test_dis_flow_warps_real_frames():
    f = _resize(_davis("blackswan"), 320, 180)
    flow = dis_flow(f[:1], f[1:], "medium")
    assert flow.shape == (1, 2, 180, 320) and flow.dtype == np.float32
    e_flow, e_zero = _warp_error(f[0], f[1], flow[0]), _warp_error(f[0], f[1], np.zeros((2, 180, 320), np.float32))
    assert e_flow < 0.7 * e_zero, (e_flow, e_zero)


# --- (d): forward–backward residual, occlusion, variance ----------------------------------------------------

def test_bilinear_sample_is_exact_on_linear_fields():
    h, w = 20, 30
    gy, gx = np.mgrid[0:h, 0:w].astype(np.float32)
    field = np.stack([2 * gx + 1, -gy + 0.5 * gx])
    x, y = np.array([3.25, 10.5, 28.9]), np.array([1.75, 18.0, 0.1])
    np.testing.assert_allclose(bilinear_sample(field, x, y), np.stack([2 * x + 1, -y + 0.5 * x]), atol=1e-4)


def test_fb_residual_zero_for_consistent_pair():
    h, w = 40, 60
    gy, gx = np.mgrid[0:h, 0:w].astype(np.float32)
    # zoom by s about the centre: forward (s−1)(p−c), backward (1/s − 1)(q−c); bilinear is exact on it
    s, c = 1.1, np.array([29.5, 19.5], np.float32)[:, None, None]
    p = np.stack([gx, gy])
    fwd = ((s - 1) * (p - c)).astype(np.float32)
    bwd = ((1 / s - 1) * (p - c)).astype(np.float32)
    r, outside, _ = fb_residual(fwd, bwd)
    assert outside.any() and not outside[10:30, 10:50].any()
    assert r[~outside].max() < 1e-3
    # translation by a non-integer amount
    fwd = np.broadcast_to(np.array([3.5, -2.25], np.float32)[:, None, None], (2, h, w)).copy()
    r, outside, _ = fb_residual(fwd, -fwd)
    assert r[~outside].max() < 1e-5 and outside[:, -3:].all() and outside[:2].all()
    occ, var = fb_occlusion_variance(fwd, -fwd)
    assert occ[~outside].max() < 1e-6 and (occ[outside] == 1).all()
    assert np.allclose(var[~outside], 0.25) and (var[outside] == 1e4).all()


def test_fb_detects_synthetic_occlusion():
    """An object (columns 20..29) moves 10 px right over a static background: in frame b it covers the
    background columns 30..39 of frame a, which are therefore occluded."""
    h, w = 32, 64
    fwd = np.zeros((2, h, w), np.float32)
    fwd[0, :, 20:30] = 10.0                       # object pixels of frame a go to columns 30..39 of b
    bwd = np.zeros((2, h, w), np.float32)
    bwd[0, :, 30:40] = -10.0                      # in frame b, columns 30..39 show the object: back to 20..29
    r, outside, _ = fb_residual(fwd, bwd)
    assert not outside.any()
    assert r[:, 31:39].min() > 9.9                # background under the object: F_ab = 0, F_ba = −10
    assert r[:, :19].max() < 1e-6 and r[:, 21:29].max() < 1e-6 and r[:, 41:].max() < 1e-6
    occ, var = fb_occlusion_variance(fwd, bwd)
    assert occ.dtype == np.float32 and var.dtype == np.float32
    assert occ[:, 31:39].min() > 0.99 and occ[:, :19].max() < 1e-6 and occ[:, 21:29].max() < 1e-6
    assert var[:, 31:39].min() > 20 and np.allclose(var[:, :19], 0.25)
    assert ((occ >= 0) & (occ <= 1)).all()


def test_fb_uncertainty_at_points_is_the_whole_field_formula():
    """FBUncertainty.at_points (what FlowBank.sample uses) gives fb_occlusion_variance's values at pixel centres,
    with the parameters of the flow config; invalid parameters are a ConfigError."""
    rng = np.random.default_rng(3)
    h, w = 16, 24
    fwd = rng.normal(0, 3, (2, h, w)).astype(np.float32)
    bwd = rng.normal(0, 3, (2, h, w)).astype(np.float32)
    cfg = FlowConfig(fb_tau=1.5, fb_alpha=0.02, var_floor=0.5, var_gain=0.3, var_max=50.0)
    unc = FBUncertainty.from_config(cfg)
    assert unc.params == dict(tau=1.5, alpha=0.02, var_floor=0.5, var_gain=0.3, var_max=50.0)
    occ, var = fb_occlusion_variance(fwd, bwd, tau=1.5, alpha=0.02, var_floor=0.5, var_gain=0.3, var_max=50.0)
    r, outside, back = fb_residual(fwd, bwd)
    occ_p, var_p = unc.at_points(fwd.transpose(1, 2, 0), back.transpose(1, 2, 0), outside)
    assert outside.any() and not outside.all()
    np.testing.assert_allclose(occ_p, occ, atol=1e-6)
    np.testing.assert_allclose(var_p, var, rtol=1e-6)
    with pytest.raises(ConfigError, match=r"fb_tau.* > 0"):
        FBUncertainty.from_config(FlowConfig(fb_tau=0.0))


# --- (e): the flow bank and its cache ----------------------------------------------------------------------

def _read(bank, pairs):
    """Read every pair's flow once (computing, loading or reusing it)."""
    for a, b in pairs:
        bank.flow(a, b)


def test_bank_cache_reuse_raft(weights, tmp_path):
    video = _davis("blackswan", 4)
    cfg = FlowConfig(backend="raft_small", resolution="96x64", iterations=4, batch_size=2, weights="")
    bank = FlowBank(video, cfg, str(tmp_path), progress=False)
    assert bank.working_hw == (64, 96) and bank.working_frames([0, 3]).shape == (2, 64, 96, 3)
    _read(bank, [(0, 1), (1, 0), (1, 2), (2, 0), (3, 3)])
    s = bank.stats
    assert s["flow_pairs_computed"] == 3 and s["network_evals"] == 6 and s["flow_pairs_loaded"] == 0
    assert s["flow_s"] > 0 and s["flow_cache_mb"] > 0
    assert len([f for f in os.listdir(bank.cache_folder) if f.endswith(".npz")]) == 3
    f20 = bank.flow(2, 0)
    assert f20.shape == (2, 64, 96) and f20.dtype == np.float32
    samp = bank.sample([(2, 0), (0, 1)], torch.full((2, 5, 2), 20.0))
    assert samp.shape == (2, 5, 4) and samp.dtype == torch.float32
    # a lazily computed pair, computed alone, equals the batched result (up to float16 storage)
    single = FlowBank(video, cfg, None, progress=False).flow(0, 2)
    np.testing.assert_allclose(single, bank.flow(0, 2), atol=0.05)

    bank2 = FlowBank(video, cfg, str(tmp_path), progress=False)
    assert bank2.key == bank.key
    _read(bank2, [(0, 1), (1, 2), (0, 2)])
    for a, b in [(0, 1), (1, 0), (1, 2), (2, 1), (0, 2), (2, 0)]:
        np.testing.assert_array_equal(bank.flow(a, b), bank2.flow(a, b))
    s2 = bank2.stats
    assert s2["flow_pairs_computed"] == 0 and s2["network_evals"] == 0 and s2["flow_pairs_loaded"] == 3
    assert bank2._backend._model is None          # the network was not even loaded
    assert not bank2.flow(1, 1).any()
    z = bank2.sample([(1, 1)], torch.full((1, 3, 2), 10.0))
    assert not z[..., :3].any() and torch.allclose(z[..., 3], torch.tensor(cfg.var_floor))

    # a different iterations setting (or resolution) is a different key and folder
    other = FlowBank(video, dataclasses.replace(cfg, iterations=6), str(tmp_path), progress=False)
    assert other.key != bank.key and other.cache_folder != bank.cache_folder
    assert FlowBank(video, dataclasses.replace(cfg, resolution="64x64"), None, progress=False).key != bank.key


def test_bank_corrupt_cache_is_recomputed(tmp_path):
    video = _resize(_davis("blackswan", 3), 128, 72)
    cfg = FlowConfig(backend="dis", resolution="native", dis_preset="fast", batch_size=4, cache="on")
    bank = FlowBank(video, cfg, str(tmp_path), progress=False)
    _read(bank, [(0, 1), (1, 2), (0, 2)])
    ref = {p: bank.flow(*p) for p in [(0, 1), (1, 2), (0, 2)]}
    folder = bank.cache_folder
    p01, p12 = os.path.join(folder, "000000_000001.npz"), os.path.join(folder, "000001_000002.npz")
    with open(p01, "r+b") as f:                   # truncated file
        f.truncate(os.path.getsize(p01) // 2)
    with np.load(p12) as z:                       # a well-formed file with another key's content
        d = dict(z)
    d["key"] = np.array("0123456789abcdef")
    with open(p12, "wb") as f:
        np.savez_compressed(f, **d)

    bank2 = FlowBank(video, cfg, str(tmp_path), progress=False)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        _read(bank2, [(0, 1), (1, 2), (0, 2)])
    assert sum("rejected" in str(x.message) for x in w) == 2
    s = bank2.stats
    assert s["flow_pairs_computed"] == 2 and s["flow_pairs_loaded"] == 1 and s["cache_files_rejected"] == 2
    for p, field in ref.items():
        np.testing.assert_array_equal(bank2.flow(*p), field)
    # the rewritten files are valid again
    bank3 = FlowBank(video, cfg, str(tmp_path), progress=False)
    _read(bank3, [(0, 1), (1, 2), (0, 2)])
    assert bank3.stats["flow_pairs_loaded"] == 3 and bank3.stats["flow_pairs_computed"] == 0
    # DIS presets are separate keys; a different video is a different key
    assert FlowBank(video, dataclasses.replace(cfg, dis_preset="medium"), None, progress=False).key != bank.key
    assert FlowBank(video[::-1].copy(), cfg, None, progress=False).key != bank.key


def test_bank_lazy_get_and_errors(tmp_path):
    video = _resize(_davis("blackswan", 3), 128, 72)
    bank = FlowBank(video, FlowConfig(backend="dis", dis_preset="ultrafast", resolution="64x48"), None,
                    progress=False)
    assert bank.working_hw == (48, 64)
    f = bank.flow(2, 0)                           # computes pair {0, 2} alone, both directions
    assert bank.stats["flow_pairs_computed"] == 1 and bank.stats["network_evals"] == 2 and bank.has(0, 2)
    assert bank.stats["flow_cache_mb"] == 0
    f[:] = 1234.0                                 # a copy: writing to it leaves the bank's flow alone
    assert not (bank.flow(2, 0) == 1234.0).any()
    with pytest.raises(Exception, match="out of range"):
        bank.flow(0, 3)
    with pytest.raises(Exception, match="out of range"):
        bank.sample([(0, 3)], torch.zeros(1, 1, 2))
    with pytest.raises(ConfigError, match=r"flow\.backend. must be one of"):
        FlowBank(video, FlowConfig(backend="pwc"), None)
    with pytest.raises(ConfigError, match="dis_preset"):
        FlowBank(video, FlowConfig(backend="dis", dis_preset="slow"), None)


def _official_large_keys():
    """Key names of an official princeton-vl RAFT (large) checkpoint, written from its module layout:
    fnet = BasicEncoder(norm 'instance', no parameters), cnet = BasicEncoder(norm 'batch'), residual blocks
    whose stride-2 downsample norm is registered twice (norm3 and downsample.1), BasicUpdateBlock."""
    bn = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    keys = []
    for enc, batch in (("fnet", False), ("cnet", True)):
        keys += [f"{enc}.norm1.{p}" for p in bn] if batch else []
        keys += [f"{enc}.conv1.weight", f"{enc}.conv1.bias"]
        for layer in (1, 2, 3):
            for blk in (0, 1):
                pre = f"{enc}.layer{layer}.{blk}"
                keys += [f"{pre}.conv1.weight", f"{pre}.conv1.bias", f"{pre}.conv2.weight", f"{pre}.conv2.bias"]
                down = layer > 1 and blk == 0
                if batch:
                    keys += [f"{pre}.norm{i}.{p}" for i in ((1, 2, 3) if down else (1, 2)) for p in bn]
                if down:
                    keys += [f"{pre}.downsample.0.weight", f"{pre}.downsample.0.bias"]
                    keys += [f"{pre}.downsample.1.{p}" for p in bn] if batch else []
        keys += [f"{enc}.conv2.weight", f"{enc}.conv2.bias"]
    ub = "update_block"
    for n in ("encoder.convc1", "encoder.convc2", "encoder.convf1", "encoder.convf2", "encoder.conv",
              "gru.convz1", "gru.convr1", "gru.convq1", "gru.convz2", "gru.convr2", "gru.convq2",
              "flow_head.conv1", "flow_head.conv2", "mask.0", "mask.2"):
        keys += [f"{ub}.{n}.weight", f"{ub}.{n}.bias"]
    return ["module." + k for k in keys]


def test_official_raft_large_layout_translates(tmp_path):
    """No raft-things.pth here: check that the official raft_large key layout covers torchvision's
    raft_large exactly and loads strictly (tensors shaped like the model, BatchNorm aliases identical)."""
    from torchvision.models.optical_flow import raft_large
    from core.raft_model import _official_to_torchvision_name
    sd = raft_large(weights=None).state_dict()
    keys = _official_large_keys()
    targets = {k: _official_to_torchvision_name(k[len("module."):], "raft_large") for k in keys}
    assert None not in targets.values()
    assert set(targets.values()) == set(sd)
    torch.manual_seed(0)
    vals = {t: (torch.randn(sd[t].shape) if sd[t].is_floating_point() else sd[t].clone()) for t in sd}
    p = tmp_path / "raft-things.pth"
    torch.save({k: vals[targets[k]] for k in keys}, p)
    model = load_raft("raft_large", str(p))
    for t, v in model.state_dict().items():
        assert torch.equal(v, vals[t]), t


def test_bank_sample_at_points_matches_whole_fields(tmp_path):
    """FlowBank.sample evaluates the FB check at the points only; it must agree with the whole-field path
    (fb_occlusion_variance of bank.flow(a, b) against bank.flow(b, a), sampled bilinearly at the points) where
    the fields are smooth (compare at points whose whole-field occlusion is low)."""
    video = _davis("car-shadow", 3)
    # FB parameters other than fb_occlusion_variance's defaults: the bank must use its config's
    cfg = FlowConfig(backend="dis", resolution="160x96", fb_tau=1.5, fb_alpha=0.02, var_floor=0.3, var_gain=0.5)
    bank = FlowBank(video, cfg, cache_dir=None, progress=False)
    rng = np.random.default_rng(0)
    pts = torch.from_numpy(rng.uniform([5, 5], [150, 86], (2, 40, 2)).astype(np.float32))
    pairs = [(0, 2), (2, 1)]
    fast = bank.sample(pairs, pts)
    fields = []
    for a, b in pairs:
        fab = bank.flow(a, b)
        occ, var = fb_occlusion_variance(fab, bank.flow(b, a), tau=cfg.fb_tau, alpha=cfg.fb_alpha,
                                         var_floor=cfg.var_floor, var_gain=cfg.var_gain, var_max=cfg.var_max)
        fields.append(np.concatenate([fab, occ[None], var[None]], 0))
    slow = sample_fields(torch.from_numpy(np.stack(fields)), pts)
    assert fast.shape == slow.shape == (2, 40, 4)
    assert torch.allclose(fast[..., :2], slow[..., :2], atol=1e-3)          # the flow itself: identical
    calm = (slow[..., 2] < 0.05) & (fast[..., 2] < 0.05)
    assert calm.sum() > 20
    assert torch.allclose(fast[..., 3][calm], slow[..., 3][calm], atol=0.5)
    # at pixel centres the bilinear sample of the whole field is the field's value there, which is the same
    # formula evaluated at that point: both paths agree everywhere (occluded and leaving points included)
    field = torch.from_numpy(np.stack(fields))
    ys, xs = np.mgrid[0:96:3, 0:160:3]
    centres = torch.from_numpy(np.stack([xs.ravel(), ys.ravel()], -1).astype(np.float32))[None].repeat(2, 1, 1)
    fast, slow = bank.sample(pairs, centres), sample_fields(field, centres)
    assert (slow[..., 2] > 0.5).sum() > 10                                 # some occlusion to compare
    assert torch.allclose(fast[..., :3], slow[..., :3], atol=1e-4)
    assert torch.allclose(fast[..., 3], slow[..., 3], rtol=1e-4, atol=1e-4)


def test_bank_sample_formulas_at_points_on_hand_made_flows():
    """FlowBank.sample on flows set by hand (a translation by (2, 3) px and its inverse, except where the
    backward flow is wrong by (0, 4) px): dx, dy, the FB occlusion and variance at each point, and a point
    whose target leaves the frame (downwards) is occluded with variance var_max."""
    video = np.zeros((2, 20, 30, 3), np.uint8)
    cfg = FlowConfig(backend="dis", resolution="native", fb_tau=1.0, fb_alpha=0.0, var_floor=0.25, var_gain=0.25,
                     var_max=100.0)
    bank = FlowBank(video, cfg, None, progress=False)
    fwd = np.zeros((2, 20, 30), np.float16)
    fwd[0], fwd[1] = 2.0, 3.0
    bwd = -fwd.copy()
    bwd[1, :, 21:] = 1.0                          # in frame 1, columns >= 21 point back 4 px off
    bank._held[(0, 1)] = (fwd, bwd, None, None)
    pts = torch.tensor([[[5.0, 5.0], [20.0, 5.0], [5.0, 17.0], [5.0, 15.5]]])
    s = bank.sample([(0, 1)], pts)[0]
    assert s[:, :2].tolist() == [[2.0, 3.0]] * 4
    # p = (5, 5): back to p, r = 0; p = (20, 5): q = (22, 8), r = 4: occ = 1 − exp(−16 / 2), σ² = 0.25 + 0.25·16
    assert s[0, 2].item() == 0.0 and s[0, 3].item() == pytest.approx(0.25)
    assert s[1, 2].item() == pytest.approx(1 - np.exp(-8.0), abs=1e-6) and s[1, 3].item() == pytest.approx(4.25)
    # p = (5, 17): q = (7, 20) lies below y = h − 0.5 = 19.5: left the frame; p = (5, 15.5): q.y = 18.5, inside
    assert s[2, 2].item() == 1.0 and s[2, 3].item() == 100.0
    assert s[3, 2].item() == 0.0 and s[3, 3].item() == pytest.approx(0.25)


def _translating_texture(T, h, w, v=(0.5, 0.25), seed=0):
    """uint8 [T, h, w, 3]: a smooth random texture moving by ``v`` px per frame (bilinear resampling)."""
    import cv2
    rng = np.random.default_rng(seed)
    big = cv2.GaussianBlur(rng.uniform(0, 255, (h + 80, w + 80)).astype(np.float32), (0, 0), 2.0)
    frames = []
    for t in range(T):
        m = np.float32([[1, 0, t * v[0]], [0, 1, t * v[1]]])      # content moves by +t·v
        frames.append(cv2.warpAffine(big, m, (w + 80, h + 80), flags=cv2.INTER_LINEAR)[40:40 + h, 40:40 + w])
    g = np.clip(np.stack(frames), 0, 255).astype(np.uint8)
    return np.repeat(g[..., None], 3, -1)


def test_bank_streams_flows_within_its_budget():
    """Integration through a planned FlowBank: with a budget of 6 pairs the bank never holds more than that (or
    one read's pairs), computes released pairs again, and gives exactly the tracks of an unbounded budget,
    which computes every pair once and releases each after its last read."""
    from fusion.integrate import flow_schedule, integrate
    T, h, w = 24, 40, 56
    video = _translating_texture(T, h, w)
    intervals, fusion = [1, 2, 4, 8], default_section("fusion", backward_sources="all")
    tq = np.array([0] * 4 + [10] * 4)
    q_xy = np.random.default_rng(1).uniform([8, 8], [w - 8, h - 8], (8, 2)).astype(np.float32)
    schedule = flow_schedule(T, tq, intervals, True, fusion)
    unique = {(min(a, b), max(a, b)) for step in schedule for a, b in step}
    widest = max(len({(min(a, b), max(a, b)) for a, b in step}) for step in schedule)
    pair_mb = 8 * h * w / 2 ** 20

    def run(memory_mb):
        cfg = FlowConfig(backend="dis", dis_preset="ultrafast", resolution="native", memory_mb=memory_mb)
        bank = FlowBank(video, cfg, None, progress=False)
        bank.plan([("integration", schedule)])
        est = integrate(bank, T, q_xy, tq, intervals, True, 0.5, 0.25, fusion)
        return est, bank.stats

    big, sb = run(1000.0)
    small, ss = run(6 * pair_mb)
    assert sb["flow_pairs_computed"] == len(unique) and sb["flow_pairs_recomputed"] == 0
    assert sb["memory_mb"] == 0                                  # every pair released after its last read
    assert ss["flow_fields_alive_max"] <= 2 * max(6, widest) < sb["flow_fields_alive_max"]
    assert ss["flow_pairs_recomputed"] > 0
    assert torch.equal(big.xy, small.xy) and torch.equal(big.vis, small.vis) and torch.equal(big.var, small.var)
    # the tracks follow the texture's motion
    err = (big.xy[:4, -1] - (torch.from_numpy(q_xy[:4]) + (T - 1) * torch.tensor([0.5, 0.25]))).norm(dim=-1)
    assert (err < 1.5).all()


def test_dis_is_not_cached_on_disk_unless_asked(tmp_path):
    video = _translating_texture(3, 24, 32)
    auto = FlowBank(video, FlowConfig(backend="dis", dis_preset="ultrafast"), str(tmp_path), progress=False)
    auto.flow(0, 2)
    assert auto.cache_folder is None and not os.path.exists(tmp_path / "flows")
    on = FlowBank(video, FlowConfig(backend="dis", dis_preset="ultrafast", cache="on"), str(tmp_path), progress=False)
    on.flow(0, 2)
    assert len(os.listdir(on.cache_folder)) == 2                 # meta.json and the pair
    with pytest.raises(ConfigError, match="flow.cache"):
        FlowBank(video, FlowConfig(backend="dis", cache="sometimes"), str(tmp_path))
