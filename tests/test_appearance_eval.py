"""eval.redetection, eval.drift and eval.default_rule: formulas against hand-computed values, known geometry,
and the rule's verdicts on made-up results."""
import json
import os

import numpy as np
import pytest
import torch

from eval.default_rule import check_rule, halves, main as rule_main
from eval.drift import drift_scores, mask_grid_queries, on_mask
from eval.redetection import occlusion_auc, video_pairs
from features.grid import FeatureGrid


def test_occlusion_auc_by_hand():
    # pairs (vis, occ): (.9,.6) yes, (.9,.1) yes, (.5,.6) no, (.5,.1) yes -> 3/4
    assert occlusion_auc([0.9, 0.5], [0.6, 0.1]) == pytest.approx(0.75)
    assert occlusion_auc([0.5], [0.5]) == pytest.approx(0.5)          # a tie counts one half
    assert occlusion_auc([], [0.2]) is None


def test_redetection_finds_a_known_shift_exactly():
    """Maps whose every cell holds a unique one-hot descriptor, frame 1 = frame 0 moved by (2, 1) cells: the
    global and local matches land on the true position (errors 0 at cell centres), the similarity at the true
    position is 1, and an occluded pair's best similarity near the last visible position is 0."""
    gh, gw, s = 6, 8, 8
    grid = FeatureGrid((gh * s, gw * s), s, 0.0)
    hw = (gh * s, gw * s)                                   # original frames at the feature image size
    eye = torch.eye(gh * gw).reshape(gh * gw, gh, gw)
    m1 = torch.zeros_like(eye)
    m1[:, 1:, 2:] = eye[:, :-1, :-2]
    maps = torch.stack([eye, m1, eye]).half()               # frame 2: back at the start
    q = np.array([[0, 8 * 3 + 0.5, 8 * 2 + 0.5]], np.float32)          # cell (3, 2): pixel centre (24, 16)
    gt = np.array([[[24.5, 16.5], [40.5, 24.5], [24.5, 16.5]]], np.float32)
    from core.coords import SCORING_SIZE, scale_xy
    gt_r = scale_xy(gt, hw, SCORING_SIZE)
    vis = np.array([[True, True, False]])
    scored = np.array([[False, True, True]])
    out = video_pairs(maps, grid, hw, q, gt_r, vis, scored, window=24.0)
    assert out["e_global"] == pytest.approx([0.0], abs=1e-4)
    assert out["e_local"] == pytest.approx([0.0], abs=1e-4)
    assert out["s_vis"] == pytest.approx([1.0], abs=1e-3)
    assert out["s_occ"].shape == (1,)


def test_drift_shares_by_hand():
    masks = np.zeros((3, 4, 4), bool)
    masks[:, 0:2, 0:2] = True                              # the object: the top-left 2x2 pixels
    tracks = np.array([[[0.5, 0.5], [1.5, 1.5], [3.5, 3.5]],          # on, on, off
                       [[1.5, 0.5], [3.5, 0.5], [0.5, 1.5]]], np.float32)  # on, off, on
    visible = np.array([[True, True, True], [True, False, True]])
    r = drift_scores(tracks, visible, masks, from_frame=1, dilate=0)
    # late pairs (t >= 1): 4; visible among them: (0,1), (0,2), (1,2) -> 3/4; of those on the mask: (0,1), (1,2)
    assert r["called_visible_late"] == pytest.approx(0.75)
    assert r["on_object_where_visible_late"] == pytest.approx(2 / 3)
    assert r["on_object_last_frame"] == pytest.approx(0.5)
    assert r["on_object_last_frame_visible"] == pytest.approx(0.5)
    grown = drift_scores(tracks, visible, masks, from_frame=1, dilate=2)     # 2 px of growth reaches (3, 3)
    assert grown["on_object_where_visible_late"] == pytest.approx(1.0)
    assert on_mask(masks, np.array([[[-1.0, 0.5], [4.5, 0.5], [0.9, 1.9]]])).tolist() == [[False, False, True]]
    q = mask_grid_queries(np.pad(masks[0], ((0, 12), (0, 12))), 2)
    assert q.tolist() == [[0.0, 1.5, 1.5]]                 # the grid point (1, 1) is the only one on the object


def _results(folder, kind, mode, values):
    os.makedirs(folder, exist_ok=True)
    for name, metrics in values.items():
        with open(os.path.join(folder, f"{name}.json"), "w") as f:
            json.dump(dict(video=name, kind=kind, mode=mode, metrics=metrics), f)
    return str(folder)


def _set(tmp_path, tag, aj_odd, aj_even, oa, pck):
    names = ["a", "b", "c", "d"]                            # odd half: a, c; even half: b, d
    aj = dict(a=aj_odd, b=aj_even, c=aj_odd, d=aj_even)
    out = []
    for mode in ("first", "strided"):
        out.append(_results(tmp_path / f"{tag}-{mode}", "tapvid", mode,
                            {n: dict(AJ=aj[n], OA=oa) for n in names}))
    out.append(_results(tmp_path / f"{tag}-badja", "badja", "badja", {"dog": dict(PCK_seg=pck)}))
    return out


def test_default_rule_needs_each_half_both_modes_oa_and_badja(tmp_path, capsys):
    assert halves(["c", "a", "d", "b", "e"]) == (["a", "c", "e"], ["b", "d"])
    old = _set(tmp_path, "old", 0.50, 0.50, 0.80, 0.40)
    assert check_rule(_set(tmp_path, "good", 0.52, 0.51, 0.80, 0.40), old)[0]
    assert not check_rule(_set(tmp_path, "one-half", 0.60, 0.49, 0.80, 0.40), old)[0]   # mean up, one half down
    assert not check_rule(_set(tmp_path, "oa", 0.52, 0.51, 0.79, 0.40), old)[0]
    assert not check_rule(_set(tmp_path, "badja", 0.52, 0.51, 0.80, 0.39), old)[0]
    assert not check_rule(_set(tmp_path, "good2", 0.52, 0.51, 0.80, 0.40), old, aj_margin=6.0)[0]
    assert rule_main(["--new", *_set(tmp_path, "g3", 0.52, 0.51, 0.8, 0.4), "--old", *old]) == 0
    assert "rule holds" in capsys.readouterr().out
    assert rule_main(["--new", old[1], old[0], old[2], "--old", *old]) == 2          # modes swapped
    assert "expected query-first" in capsys.readouterr().err


def test_drift_and_redetection_refuse_bad_input_with_one_line(tmp_path, capsys):
    from eval.drift import main as drift_main
    from eval.redetection import main as redetection_main
    assert drift_main(["--config", "configs/mft.yaml", "--data", str(tmp_path / "absent")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    (tmp_path / "v" / "frames").mkdir(parents=True)
    (tmp_path / "v" / "masks").mkdir()
    assert drift_main(["--config", "configs/mft.yaml", "--data", str(tmp_path), "--videos", "w"]) == 2
    assert "no video w" in capsys.readouterr().err
    assert redetection_main(["--config", "configs/mft.yaml", "--data", str(tmp_path), "--window", "0"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
