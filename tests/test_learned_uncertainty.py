"""Learned flow occlusion and uncertainty: head shapes, training, weight files, the flow bank with the head."""
import dataclasses
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from core.errors import ConfigError, WeightsError
from eval.synthetic import smooth_texture
from flow.learned_uncertainty import (FB_PRIOR_LOGIT, LearnedUncertainty, MapGeometry, UncertaintyHead, dis_head_inputs,
                                      fb_prior, load_head, make_head, save_head, upsample_to)
from pitrack.config import default_section
from synthetic.layers import SceneConfig, TexturePool, sample_pair

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGED = os.path.join(REPO, "flow", "weights", "dis_uncertainty.pt")


def _pool():
    rng = np.random.default_rng(0)
    return TexturePool.from_arrays([smooth_texture(rng, 96, 128).astype(np.uint8) for _ in range(3)])


def _batch(pool, seeds, size_hw=(64, 96)):
    from flow.dis import DISFlow
    from training.flow_uncertainty import pair_batch
    return pair_batch(pool, DISFlow("ultrafast"), seeds, size_hw, SceneConfig())


def test_head_shapes_and_half_resolution_inputs():
    frames = np.random.default_rng(0).integers(0, 255, (3, 37, 50, 3), dtype=np.uint8)
    flow = np.zeros((3, 2, 37, 50), np.float32)
    x = dis_head_inputs(frames, frames, flow, flow)
    assert x.shape == (3, 14, 19, 25)
    out = UncertaintyHead(8)(x)
    assert out.shape == (3,) + MapGeometry.for_backend("dis", (37, 50)).shape == (3, 2, 10, 13)
    assert upsample_to(out, (37, 50)).shape == (3, 2, 37, 50)
    # identical frames and zero flow: no photometric difference, no residual, nothing leaves the frame
    assert float(x[:, 6].abs().max()) < 1e-5 and float(x[:, 13].max()) == 0.0
    # a flow pointing out of the frame sets the 'outside' channel
    flow[:, 0] = 100.0
    assert float(dis_head_inputs(frames, frames, flow, -flow)[:, 13].min()) == 1.0


def test_warp_inputs_follow_the_flow():
    """Frame b = frame a shifted right by 4 px; with the true flow (+4) the warped b equals a inside."""
    rng = np.random.default_rng(1)
    a = smooth_texture(rng, 40, 64).astype(np.uint8)[None]
    b = np.zeros_like(a)
    b[:, :, 4:] = a[:, :, :-4]
    flow = np.zeros((1, 2, 40, 64), np.float32)
    flow[:, 0] = 4.0
    good = dis_head_inputs(a, b, flow, -flow)[0, 6, :, 2:-4].mean()
    bad = dis_head_inputs(a, b, np.zeros_like(flow), np.zeros_like(flow))[0, 6, :, 2:-4].mean()
    assert float(good) < 0.01 < float(bad)


def test_a_short_training_run_lowers_the_loss():
    from training.flow_uncertainty import losses
    torch.manual_seed(0)
    pool = _pool()
    batch = _batch(pool, range(4))
    head = UncertaintyHead(8)
    opt = torch.optim.Adam(head.parameters(), lr=3e-3)
    x, est, gt, occ = batch
    first = None
    for _ in range(60):
        l_occ, l_unc = losses(upsample_to(head(x), est.shape[-2:]), est, gt, occ)
        loss = l_occ + l_unc
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.7 * first


def test_uncertainty_loss_by_hand():
    """NLL α + e²/(2e^α) on visible pixels, BCE on hard occlusion labels; soft labels are left out."""
    from training.flow_uncertainty import losses
    out = torch.zeros(1, 2, 1, 3)
    out[0, 1] = torch.tensor([[0.0, np.log(2.0), 0.0]])
    est = torch.zeros(1, 2, 1, 3)
    gt = torch.zeros(1, 2, 1, 3)
    gt[0, 0, 0, 1] = 2.0                          # error 2 px at the second pixel
    occ = torch.tensor([[[0.0, 0.0, 0.5]]])       # third pixel: soft label, in neither loss
    l_occ, l_unc = losses(out, est, gt, occ)
    assert float(l_unc) == pytest.approx((0.0 + np.log(2.0) + 4.0 / 4.0) / 2, abs=1e-6)
    assert float(l_occ) == pytest.approx(np.log(2.0), abs=1e-6)   # logit 0 on two visible pixels


def test_decision_offset_by_hand():
    """Logits 3, 2, 1, 0 with labels T, F, T, F: calling the top 1, 2, 3, 4 occluded gives F1 2/3, 1/2, 4/5,
    2/3, so the cut lies between 1 and 0 and the offset is −0.5; the head adds it to its occlusion logit."""
    from training.flow_uncertainty import decision_offset
    b = decision_offset(np.array([3.0, 2.0, 1.0, 0.0]), np.array([True, False, True, False]))
    assert b == pytest.approx(-0.5)
    head = UncertaintyHead(8)
    x = torch.randn(1, 14, 8, 8)
    before = head(x)
    head.occlusion_offset.fill_(b)
    after = head(x)
    assert torch.allclose(after[:, 0], before[:, 0] - 0.5) and torch.equal(after[:, 1], before[:, 1])


def test_weights_round_trip_and_refusals(tmp_path):
    head = UncertaintyHead(8)
    head.occlusion_offset.fill_(-0.7)
    path = str(tmp_path / "h.pt")
    save_head(path, head, "dis", {"seed": 3})
    loaded, meta = load_head(path, "dis")
    assert meta == {"seed": 3}
    for a, b in zip(head.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(WeightsError, match="trained for flow backend 'dis', not 'raft_small'"):
        load_head(path, "raft_small")
    with open(path, "rb") as f:
        data = f.read()
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="not a readable weights file") as e:
        load_head(str(bad), "dis")
    assert "\n" not in str(e.value)
    ckpt = torch.load(path, weights_only=True)
    ckpt["state_dict"]["body.0.weight"] = ckpt["state_dict"]["body.0.weight"][:4]
    torch.save(ckpt, str(tmp_path / "shape.pt"))
    with pytest.raises(WeightsError, match="body.0.weight"):
        load_head(str(tmp_path / "shape.pt"), "dis")
    ckpt = torch.load(path, weights_only=True)
    ckpt["state_dict"]["body.0.bias"][0] = float("nan")
    torch.save(ckpt, str(tmp_path / "nan.pt"))
    with pytest.raises(WeightsError, match="non-finite"):
        load_head(str(tmp_path / "nan.pt"), "dis")
    with pytest.raises(WeightsError, match="no weights file"):
        load_head(str(tmp_path / "missing.pt"), "dis")
    with pytest.raises(WeightsError, match="trained for flow backend 'dis', not 'raft_small'"):
        LearnedUncertainty("raft_small", path)
    with pytest.raises(ConfigError, match="no packaged head for flow backend 'raft_large'"):
        LearnedUncertainty("raft_large")


@pytest.mark.parametrize("backend", ["dis", "raft_small"])
def test_packaged_weights_record_how_they_were_made(backend):
    path = os.path.join(REPO, "flow", "weights", f"{backend}_uncertainty.pt")
    if not os.path.isfile(path):
        pytest.fail(f"{path} missing: make uncertainty-weights")
    _, meta = load_head(path, backend)
    assert meta["command"].startswith(f"python -m training.flow_uncertainty --backend {backend}")
    for k in ("seed", "generator_version", "steps", "wall_s", "scene", "occlusion_offset", "validation"):
        assert k in meta
    from synthetic.layers import GENERATOR_VERSION, SceneConfig
    assert 1 <= meta["generator_version"] <= GENERATOR_VERSION      # later versions render earlier scenes unchanged
    SceneConfig(**meta["scene"])                                    # the recorded scene is one this generator draws


def test_bank_samples_the_learned_maps(tmp_path):
    """FlowBank with flow.uncertainty learned: occlusion and variance at points are the head's maps, sampled
    bilinearly; the same with the flows from the disk cache; another head is another TTO data key."""
    from flow.bank import FlowBank
    head = UncertaintyHead(8)
    torch.manual_seed(0)
    for p in head.parameters():
        p.data.normal_(0, 0.4)
    path = str(tmp_path / "h.pt")
    save_head(path, head, "dis", {})
    d = sample_pair(_pool(), 5, size_hw=(48, 64), gap=2, config=SceneConfig(photometric=False))
    video = np.stack([d["frame1"], d["frame2"], d["frame1"]])
    cfg = default_section("flow", backend="dis", dis_preset="ultrafast", uncertainty="learned",
                          uncertainty_weights=path, cache="on")
    bank = FlowBank(video, cfg, str(tmp_path / "cache"), progress=False)
    ys, xs = torch.meshgrid(torch.arange(0, 48, 3.0), torch.arange(0, 64, 3.0), indexing="ij")
    pts = torch.stack([xs.flatten(), ys.flatten()], -1)[None]
    got = bank.sample([(0, 1)], pts)[0]
    fwd, bwd = bank.flow(0, 1), bank.flow(1, 0)
    with torch.no_grad():
        full = upsample_to(head(dis_head_inputs(video[:1], video[1:2], fwd[None], bwd[None])), (48, 64))[0]
    at = full[:, ys.flatten().long(), xs.flatten().long()]
    inside = got[:, 2] < 1                                     # points whose flow leaves the frame: occlusion 1
    assert inside.sum() > 200 and float(at[1].std()) > 0.05   # the maps vary: a misplaced sample shows
    assert torch.allclose(got[inside, 2], torch.sigmoid(at[0, inside]), atol=2e-3)
    assert torch.allclose(got[inside, 3], at[1, inside].exp(), rtol=1e-2)     # maps are held as float16
    assert bank.uncertainty_id["uncertainty"] == "learned"
    again = FlowBank(video, cfg, str(tmp_path / "cache"), progress=False)
    got2 = again.sample([(0, 1)], pts)[0]
    assert again.stats["flow_pairs_loaded"] == 1 and torch.allclose(got, got2)
    # the frame to itself: not occluded
    assert float(bank.sample([(2, 2)], pts)[0, :, 2].max()) < 1e-6
    fb = FlowBank(video, dataclasses.replace(cfg, uncertainty="fb"), None, progress=False)
    assert fb.uncertainty_id != bank.uncertainty_id
    with pytest.raises(ConfigError, match="unknown flow.uncertainty"):
        FlowBank(video, dataclasses.replace(cfg, uncertainty="magic"), None, progress=False)
    # learned_variance: the head's variance, the formulas' occlusion; the optimisation's data key is the formulas'
    mixed = FlowBank(video, dataclasses.replace(cfg, uncertainty="learned_variance"), None, progress=False)
    got_mixed, got_fb = mixed.sample([(0, 1)], pts)[0], fb.sample([(0, 1)], pts)[0]
    assert torch.equal(got_mixed[:, 2], got_fb[:, 2]) and torch.equal(got_mixed[:, 3], got[:, 3])
    assert float((got_mixed[:, 2] - got[:, 2]).abs().max()) > 0.1
    assert (mixed.flows_key, mixed.occlusion_id) == (fb.flows_key, fb.occlusion_id) == (fb.key, fb.uncertainty_id)
    assert (bank.flows_key, bank.occlusion_id) != (fb.flows_key, fb.occlusion_id)
    assert mixed.uncertainty_id not in (fb.uncertainty_id, bank.uncertainty_id)


def test_fb_prior_by_hand():
    """r² = 4, no motion: τ² = 1, x = 2, p = 1 − e⁻² so logit = log((1 − e⁻²) / e⁻²) = log(e² − 1) = 1.8546, and
    α = log(0.25 + 0.25·4) = log 1.25; motion² 100 doubles τ²: x = 1, logit log(e − 1) = 0.5413; a residual of
    10 px saturates at the clamp."""
    logit, alpha = fb_prior(torch.tensor([4.0, 4.0, 100.0]), torch.tensor([0.0, 100.0, 0.0]))
    assert logit.tolist() == pytest.approx([np.log(np.e ** 2 - 1), np.log(np.e - 1), FB_PRIOR_LOGIT], abs=1e-4)
    assert alpha[0].item() == pytest.approx(np.log(1.25), abs=1e-6)


def test_a_fresh_prior_head_is_the_forward_backward_formulas(tmp_path):
    """A head with the FB prior starts with a zero last layer: through the flow bank its occlusion and variance at
    points are the formulas' (occlusion up to the ±8 logit clamp); a head with an unknown prior is refused."""
    from flow.bank import FlowBank
    head = make_head("dis", 8, prior="fb")
    path = str(tmp_path / "prior.pt")
    save_head(path, head, "dis", {})
    d = sample_pair(_pool(), 7, size_hw=(48, 64), gap=3, config=SceneConfig())
    video = np.stack([d["frame1"], d["frame2"]])
    cfg = default_section("flow", backend="dis", dis_preset="ultrafast", uncertainty="learned",
                          uncertainty_weights=path, cache="off")
    ys, xs = torch.meshgrid(torch.arange(0.5, 48, 2.5), torch.arange(0.5, 64, 2.5), indexing="ij")
    pts = torch.stack([xs.flatten(), ys.flatten()], -1)[None]
    got = FlowBank(video, cfg, None, progress=False).sample([(0, 1)], pts)[0]
    fb = FlowBank(video, dataclasses.replace(cfg, uncertainty="fb"), None, progress=False).sample([(0, 1)], pts)[0]
    assert torch.allclose(got[:, :2], fb[:, :2])
    assert torch.allclose(got[:, 3], fb[:, 3], rtol=1e-4)
    mid = (fb[:, 2] > 1e-3) & (fb[:, 2] < 0.999)
    assert mid.sum() > 5 and torch.allclose(got[mid, 2], fb[mid, 2], atol=1e-4)
    assert torch.allclose(got[:, 2], fb[:, 2], atol=4e-4)
    ckpt = torch.load(path, weights_only=True)
    ckpt["prior"] = "magic"
    torch.save(ckpt, str(tmp_path / "bad.pt"))
    with pytest.raises(WeightsError, match="unknown prior 'magic'"):
        load_head(str(tmp_path / "bad.pt"), "dis")


def test_training_cli_refuses_bad_input_before_work(tmp_path):
    env = dict(os.environ, PYTHONPATH=REPO)
    for args, needle in ((["--size", "big"], "--size"), (["--textures", str(tmp_path)], "no .jpg"),
                         (["--batch", "0"], "positive")):
        r = subprocess.run([sys.executable, "-m", "training.flow_uncertainty", *args, "--out", str(tmp_path / "x.pt")],
                           cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
        assert r.returncode == 2, r.stderr
        assert r.stderr.count("\n") == 1 and needle in r.stderr, r.stderr
        assert not (tmp_path / "x.pt").exists()


def test_raft_features_come_from_the_flow_pass(raft_weights):
    """RAFT-small with features: the same flow as without, 360 channels at 1/8 of the padded frame, in the
    documented order (…, the estimate / 4, its last update): 8 × (estimate + update) is the flow."""
    from flow.raft import RaftFlow, raft_feature_channels
    rng = np.random.default_rng(2)
    tex = smooth_texture(rng, 120, 176).astype(np.uint8)
    a, b = tex[None, 8:104, 8:136], tex[None, 8:104, 0:128]          # b = a moved right by 8 px
    raft = RaftFlow("raft_small", raft_weights)
    flow, feats = raft.flow_and_features(a, b)
    np.testing.assert_array_equal(flow, raft(a, b))
    assert feats.shape == (1, raft_feature_channels("raft_small"), 128 // 8, 128 // 8) == (1, 360, 16, 16)
    assert not raft.model.update_block._forward_hooks
    low = 8 * (4 * feats[0, 356:358] + feats[0, 358:360])
    assert abs(float(np.median(flow[0, 0])) - 8.0) < 0.5
    assert abs(float(np.median(low[0])) - float(np.median(flow[0, 0]))) < 0.3
    assert abs(float(np.median(low[1]))) < 0.3


def test_bank_with_a_raft_head_samples_its_maps_and_caches_them(tmp_path, raft_weights):
    """FlowBank, RAFT-small, flow.uncertainty learned: the integrator's samples are the head's maps over the
    padded frame at the right offset; the maps are stored with the flows, so a second bank runs no network."""
    from flow.bank import FlowBank
    from flow.raft import RaftFlow
    torch.manual_seed(0)
    head = make_head("raft_small", 8)
    for p in head.parameters():
        p.data.normal_(0, 0.3)
    path = str(tmp_path / "raft_head.pt")
    save_head(path, head, "raft_small", {})
    d = sample_pair(_pool(), 5, size_hw=(72, 100), gap=2, config=SceneConfig(photometric=False))
    video = np.stack([d["frame1"], d["frame2"]])
    cfg = default_section("flow", backend="raft_small", weights=raft_weights, uncertainty="learned",
                          uncertainty_weights=path, cache="on", device="cpu")
    bank = FlowBank(video, cfg, str(tmp_path / "cache"), progress=False)
    ys, xs = torch.meshgrid(torch.arange(0, 72, 5.0), torch.arange(0, 100, 5.0), indexing="ij")
    pts = torch.stack([xs.flatten(), ys.flatten()], -1)[None]
    got = bank.sample([(0, 1)], pts)[0]
    _, feats = RaftFlow("raft_small", raft_weights).flow_and_features(video[:1], video[1:])
    geometry = MapGeometry.for_backend("raft_small", (72, 100))
    assert (geometry.left, geometry.top) == (14, 28)                  # 100 x 72 padded to 128 x 128
    with torch.no_grad():
        full = upsample_to(head(torch.from_numpy(feats)), (72, 100), geometry)[0]
    at = full[:, ys.flatten().long(), xs.flatten().long()]
    q = pts[0] + got[:, :2]
    inside = (q[:, 0] >= -0.5) & (q[:, 0] <= 99.5) & (q[:, 1] >= -0.5) & (q[:, 1] <= 71.5)
    assert inside.sum() > 150 and float(at[1].std()) > 0.05
    assert torch.allclose(got[inside, 2], torch.sigmoid(at[0, inside]), atol=2e-3)
    assert torch.allclose(got[inside, 3], at[1, inside].exp().clamp(max=1e4), rtol=1e-2)   # var_max
    again = FlowBank(video, cfg, str(tmp_path / "cache"), progress=False)
    assert torch.equal(again.sample([(0, 1)], pts)[0], got)
    assert again.stats["flow_pairs_loaded"] == 1 and again.stats["network_evals"] == 0
    fb = FlowBank(video, dataclasses.replace(cfg, uncertainty="fb"), str(tmp_path / "cache"), progress=False)
    assert fb.key != bank.key                                          # flows with maps are another cache entry
