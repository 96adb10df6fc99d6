"""The metrics against hand-computed cases."""
import numpy as np
import pytest

from eval.metrics import badja_pck, evaluation_frames, tapvid_metrics


def test_evaluation_frames_first_and_strided():
    assert evaluation_frames([1], 4, "first").tolist() == [[False, False, True, True]]
    assert evaluation_frames([1], 4, "strided").tolist() == [[True, False, True, True]]
    with pytest.raises(ValueError):
        evaluation_frames([0], 3, "middle")


def _one_track():
    """One query at frame 0; gt visible at (10, 10) in frames 0..3. Prediction: frame 1 exact, frame 2 off by
    exactly 1 px (so not < 1 but < 2), frame 3 off by 3 px and predicted occluded."""
    gt = np.full((1, 4, 2), 10.0)
    occ = np.zeros((1, 4), bool)
    pred = gt.copy()
    pred[0, 2, 0] += 1.0
    pred[0, 3, 1] += 3.0
    pocc = np.array([[False, False, False, True]])
    return gt, occ, pred, pocc


def test_tapvid_metrics_hand_computed():
    gt, occ, pred, pocc = _one_track()
    m = tapvid_metrics([0], gt, occ, pred, pocc, "first")
    # eval frames 1, 2, 3 (all gt-visible)
    assert m["delta_1"] == pytest.approx(1 / 3)      # strict <: the 1.0 px error is not within 1
    assert m["delta_2"] == pytest.approx(2 / 3)
    assert m["delta_4"] == pytest.approx(1.0)        # position counts even where predicted occluded
    assert m["delta_avg"] == pytest.approx((1 / 3 + 2 / 3 + 1 + 1 + 1) / 5)
    # δ=1: TP = frame 1; FP = frame 2 (visible, too far); FN = frames 2, 3 -> 1 / (3 + 1)
    assert m["jaccard_1"] == pytest.approx(0.25)
    # δ≥2: TP = frames 1, 2; frame 3 is a FN (predicted occluded) -> 2 / 3
    for d in (2, 4, 8, 16):
        assert m[f"jaccard_{d}"] == pytest.approx(2 / 3)
    assert m["AJ"] == pytest.approx((0.25 + 4 * 2 / 3) / 5)
    assert m["OA"] == pytest.approx(2 / 3)


def test_occluded_ground_truth_and_false_positive():
    gt, occ, pred, pocc = _one_track()
    # a second query, gt occluded at frame 2, but predicted visible there (a false positive at every δ),
    # and correctly predicted occluded at frame 3 where gt is occluded too
    gt2 = np.concatenate([gt, gt], 0)
    occ2 = np.concatenate([occ, [[False, False, True, True]]], 0)
    pred2 = np.concatenate([pred, gt], 0)
    pocc2 = np.concatenate([pocc, [[False, False, False, True]]], 0)
    m = tapvid_metrics([0, 0], gt2, occ2, pred2, pocc2, "first")
    # gt-visible eval points: 3 (track 0) + 1 (track 1 frame 1) = 4
    # δ=16: TP = 2 + 1 = 3; FP = track-1 frame 2 = 1 -> 3 / (4 + 1)
    assert m["jaccard_16"] == pytest.approx(3 / 5)
    assert m["delta_16"] == pytest.approx(4 / 4)
    # OA over 6 eval points: track 0 right at 1, 2; track 1 right at 1 and 3 -> 4 / 6
    assert m["OA"] == pytest.approx(4 / 6)


def test_strict_threshold_at_every_delta():
    gt = np.zeros((5, 2, 2))
    pred = gt.copy()
    for i, d in enumerate((1, 2, 4, 8, 16)):
        pred[i, 1, 0] = d          # exactly on threshold d: not within d, within 2d
    occ = np.zeros((5, 2), bool)
    m = tapvid_metrics(np.zeros(5), gt, occ, pred, occ, "first")
    # track i is within threshold d_j iff d_i < d_j
    assert [m[f"delta_{d}"] for d in (1, 2, 4, 8, 16)] == pytest.approx([0, 0.2, 0.4, 0.6, 0.8])


def test_strided_scores_frames_before_the_query():
    gt = np.zeros((1, 3, 2))
    pred = gt.copy()
    pred[0, 0, 0] = 50  # far off before the query frame 1
    occ = np.zeros((1, 3), bool)
    assert tapvid_metrics([1], gt, occ, pred, occ, "first")["delta_avg"] == pytest.approx(1.0)
    assert tapvid_metrics([1], gt, occ, pred, occ, "strided")["delta_avg"] == pytest.approx(0.5)


def test_badja_pck_hand_computed():
    gt = np.zeros((2, 3, 2))
    pred = gt.copy()
    pred[0, 1, 0] = 3.9     # within 0.2·sqrt(400) = 4 px, not within 3 px
    pred[0, 2, 0] = 2.0     # within both
    pred[1, 1, 0] = 4.0     # exactly 4: not within the strict seg threshold
    vis = np.array([[True, True, True], [True, True, False]])
    m = badja_pck(pred, gt, vis, np.array([400, 400, 400]), (480, 854), np.array([False, True, True]))
    # scored: (0,1), (0,2), (1,1)
    assert m["num_scored"] == 3
    assert m["PCK_seg"] == pytest.approx(2 / 3)
    assert m["PCK_3px"] == pytest.approx(1 / 3)
    # 3 px is measured at 854×480: at 427×240 the same 2 px error is 4 px there
    m2 = badja_pck(pred, gt, vis, np.array([400, 400, 400]), (240, 427), np.array([False, True, True]))
    assert m2["PCK_3px"] == pytest.approx(0.0)


def test_calibration_summary_of_a_calibrated_gaussian():
    from eval.calibration import summarize
    rng = np.random.default_rng(0)
    sigma = rng.uniform(0.5, 5.0, 20000)
    err = np.linalg.norm(rng.standard_normal((20000, 2)), axis=1) * sigma     # isotropic, σ per axis
    s = summarize(sigma, err)
    assert s["within_1sigma"] == pytest.approx(1 - np.exp(-0.5), abs=0.01)
    assert s["within_2sigma"] == pytest.approx(1 - np.exp(-2.0), abs=0.01)
    assert s["spearman"] > 0.3
    assert summarize(sigma, err * 5)["within_2sigma"] < 0.3                       # over-confident σ shows


def test_keypoint_quality_counts():
    """eval.keypoint_quality on a hand-made case: 1 query, 4 scored frames."""
    from eval.keypoint_quality import keypoint_quality
    gt = np.zeros((1, 4, 2))
    kp = np.array([[[1.0, 0], [20, 0], [0, 3], [50, 0]]])
    valid = np.array([[True, True, True, True]])
    flow = np.array([[[0.5, 0], [0, 0], [0, 0], [0, 0]]])
    flow_vis = np.array([[True, True, False, True]])
    gt_vis = np.array([[True, True, True, False]])
    q = keypoint_quality(kp, valid, flow, flow_vis, gt, gt_vis, np.ones((1, 4), bool), far=8.0)
    assert q["observations"] == 4 and q["precision_gt_visible"] == 0.75 and q["recall_of_gt_visible"] == 1.0
    assert q["kp_median_error"] == 3.0 and q["kp_within_4"] == pytest.approx(2 / 3)
    assert q["conflicts"] == 1 and q["conflict_kp_closer"] == 0.0 and q["conflict_obs_not_gt_visible"] == 1
    assert q["redetections"] == 1 and q["redetection_gt_visible"] == 1.0 and q["redetection_kp_median_error"] == 3.0
