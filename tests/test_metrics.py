"""The metrics against hand-computed cases."""
import json
import os

import numpy as np
import pytest

from eval.metrics import badja_pck, evaluation_frames, tapvid_error_shares, tapvid_metrics


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


def _two_tracks():
    """2 tracks × 5 frames in the 256 raster. Track 0: query frame 0, gt at (100, 100), occluded at frames 2, 3.
    Track 1: query frame 2, gt at (50, 50), occluded at frames 0, 4. Predicted occluded: track 0 frames 1, 3.
    Prediction offsets: track 0 f1 (12, 12) -> 16.97 px, f2 (50, 0) (gt occluded), f4 (16, 0) -> exactly 16;
    track 1 f1 (0, 20), f3 (10, 0)."""
    gt = np.zeros((2, 5, 2))
    gt[0], gt[1] = 100.0, 50.0
    occ = np.array([[False, False, True, True, False], [True, False, False, False, True]])
    pred = gt.copy()
    pred[0, 1] += (12, 12)
    pred[0, 2] += (50, 0)
    pred[0, 4] += (16, 0)
    pred[1, 1] += (0, 20)
    pred[1, 3] += (10, 0)
    pocc = np.array([[False, True, False, True, False], [False] * 5])
    return [0, 2], gt, occ, pred, pocc


def test_tapvid_error_shares_hand_computed():
    m = tapvid_error_shares(*_two_tracks(), "first")
    # scored: track 0 frames 1-4, track 1 frames 3, 4
    # gt occluded: (0,2) called visible, (0,3) called occluded, (1,4) called visible -> 2 of 3
    # gt visible: (0,1) called occluded and 16.97 px off (far although called occluded), (0,4) exactly 16 px
    # (not far: strict >), (1,3) 10 px -> vis→occ 1 of 3, >16px 1 of 3
    assert (m["n_occ"], m["n_occ_called_visible"], m["n_vis"], m["n_vis_called_occluded"], m["n_vis_far16"]) == \
        (3, 2, 3, 1, 1)
    assert m["occ_called_visible"] == pytest.approx(2 / 3)
    assert m["vis_called_occluded"] == pytest.approx(1 / 3)
    assert m["vis_far16"] == pytest.approx(1 / 3)
    s = tapvid_error_shares(*_two_tracks(), "strided")
    # strided adds track 1 frames 0 (gt occluded, called visible) and 1 (gt visible, 20 px off)
    assert (s["n_occ"], s["n_occ_called_visible"], s["n_vis"], s["n_vis_called_occluded"], s["n_vis_far16"]) == \
        (4, 3, 4, 1, 2)
    assert (s["occ_called_visible"], s["vis_called_occluded"], s["vis_far16"]) == pytest.approx((3 / 4, 1 / 4, 2 / 4))


def test_tapvid_error_shares_without_occluded_pairs():
    gt = np.zeros((1, 3, 2))
    occ = np.zeros((1, 3), bool)
    m = tapvid_error_shares([0], gt, occ, gt, np.array([[False, True, False]]), "first")
    assert m["n_occ"] == 0 and np.isnan(m["occ_called_visible"])
    assert m["vis_called_occluded"] == pytest.approx(1 / 2) and m["vis_far16"] == 0.0


def _tapvid_folder(folder, points, occluded, size_hw=(512, 256)):
    """A TAP-Vid-format folder holding only what scoring reads (tracks.npz, meta.json)."""
    os.makedirs(folder)
    np.savez(os.path.join(folder, "tracks.npz"), points=np.asarray(points, np.float32), occluded=occluded)
    with open(os.path.join(folder, "meta.json"), "w") as f:
        json.dump({"height": size_hw[0], "width": size_hw[1]}, f)


def test_tapvid_video_score_has_error_shares(tmp_path):
    from eval.datasets import TapVidVideo
    # one track visible at frames 0-3, occluded at 4; original frames are 512 high, so y errors halve at 256
    points = np.full((1, 5, 2), 100.0)
    _tapvid_folder(str(tmp_path / "v"), points, np.array([[False, False, False, False, True]]))
    v = TapVidVideo.from_folder(str(tmp_path / "v"))
    pred = points.copy()
    pred[0, 1, 1] += 34.0    # 17 px at 256: far
    pred[0, 2, 1] += 30.0    # 15 px at 256: not far
    m = v.score(pred, np.array([[True, True, True, False, True]]), "first")
    assert {"AJ", "delta_avg", "OA"} <= set(m)
    assert (m["n_vis"], m["n_vis_far16"], m["n_vis_called_occluded"], m["n_occ"], m["n_occ_called_visible"]) == \
        (3, 1, 1, 1, 1)
    assert (m["vis_far16"], m["vis_called_occluded"], m["occ_called_visible"]) == pytest.approx((1 / 3, 1 / 3, 1.0))


def _record(name, metrics, filters=None):
    return {"video": name, "kind": "tapvid", "num_queries": 4, "seconds": 2.0, "peak_rss_mb": 100.0,
            "metrics": {"AJ": 0.5, "delta_avg": 0.6, "OA": 0.7, **metrics},
            "stats": {"filters": filters} if filters else {}}


def test_bench_error_shares_mean_pooled_and_filters():
    from eval.bench import markdown_table, summary
    a = _record("a", {"occ_called_visible": 1 / 4, "vis_called_occluded": 0.1, "vis_far16": 0.2, "n_occ": 4,
                      "n_occ_called_visible": 1, "n_vis": 10, "n_vis_called_occluded": 1, "n_vis_far16": 2},
                {"gate": {"rejected": 8, "rejected_wrong": 6, "kept": 3}})
    b = _record("b", {"occ_called_visible": float("nan"), "vis_called_occluded": 0.5, "vis_far16": 0.0, "n_occ": 0,
                      "n_occ_called_visible": 0, "n_vis": 2, "n_vis_called_occluded": 1, "n_vis_far16": 0},
                {"gate": {"rejected": 2, "rejected_wrong": 0}})
    s = summary([a, b], "cfg", "first")
    # means over videos (b has no occluded pair: left out of occ→vis); pooled = total / total
    assert s["mean"]["occ_called_visible"] == pytest.approx(0.25)
    assert s["mean"]["vis_called_occluded"] == pytest.approx(0.3) and s["mean"]["vis_far16"] == pytest.approx(0.1)
    assert s["pooled_occ_called_visible"] == pytest.approx(1 / 4)
    assert s["pooled_vis_called_occluded"] == pytest.approx(2 / 12) and s["pooled_vis_far16"] == pytest.approx(2 / 12)
    assert s["filters_total"] == {"gate": {"rejected": 10, "rejected_wrong": 6, "kept": 3}}
    table = markdown_table([a, b], "t")
    assert "| occ→vis | vis→occ | >16px |" in table
    assert "| **mean (2)** | 8 | 50.0 | 60.0 | 70.0 | 25.0 | 30.0 | 10.0 |" in table
    assert "occ→vis: mean over 1 of 2 videos; left out: b (no occluded scored pair)" in table
    assert "pooled over all scored pairs: occ→vis 25.0 %, vis→occ 16.7 %, >16px 16.7 %" in table
    assert "filter gate: rejected 10 candidates, of which 6 (60.0 %) truly wrong" in table


def test_rescore_a_folder_of_predictions(tmp_path, capsys):
    from eval.rescore import main
    points = np.full((1, 5, 2), 100.0)
    occ = np.array([[False, False, False, False, True]])
    for name in ("a", "b"):
        _tapvid_folder(str(tmp_path / "data" / name), points, occ)
    preds = tmp_path / "preds"
    preds.mkdir()
    queries = np.array([[0, 100, 100]], np.float32)
    pred = points.copy()
    pred[0, 1, 1] += 34.0
    visible = np.array([[True, True, True, True, True]])
    for name in ("a", "b"):
        np.savez(preds / f"{name}.npz", tracks=pred, visible=visible, sigma=np.ones((1, 5)), queries=queries)
    out = tmp_path / "out"
    assert main(["--data", str(tmp_path / "data"), "--preds", str(preds), "--mode", "first", "--out", str(out)]) == 0
    rec = json.loads((out / "a.json").read_text())
    assert rec["metrics"]["vis_far16"] == pytest.approx(1 / 3) and rec["metrics"]["occ_called_visible"] == 1.0
    assert rec["seconds"] is None and "occ→vis" in (out / "table.md").read_text()
    # a bench JSON next to the prediction: its seconds and stats are kept, its metrics replaced
    bench = {**rec, "config": "cfg", "seconds": 7.5, "peak_rss_mb": 300.0, "stats": {"track_s": 1.0},
             "metrics": {k: rec["metrics"][k] for k in ("AJ", "delta_avg", "OA")}}
    (preds / "a.json").write_text(json.dumps(bench))
    assert main(["--data", str(tmp_path / "data"), "--preds", str(preds), "--mode", "first"]) == 0
    rec = json.loads((preds / "a.json").read_text())
    assert rec["seconds"] == 7.5 and rec["stats"] == {"track_s": 1.0} and "vis_far16" in rec["metrics"]
    assert json.loads((preds / "summary.json").read_text())["pooled_vis_far16"] == pytest.approx(2 / 6)
    capsys.readouterr()
    # bad input: one line, exit code 2
    bench["metrics"]["AJ"] += 0.1
    (preds / "a.json").write_text(json.dumps(bench))
    for args in (["--preds", str(preds)], ["--preds", str(tmp_path / "data")], ["--preds", str(tmp_path / "no")]):
        assert main(["--data", str(tmp_path / "data"), "--mode", "first", "--out", str(out)] + args) == 2
        err = capsys.readouterr().err
        assert err.startswith("eval.rescore: error: ") and len(err.strip().splitlines()) == 1


def test_rescore_with_ground_truth_visibility(tmp_path):
    """Positions scored with the ground truth's visibility: OA 100 and, by hand, the Jaccard of a track whose
    frame 4 (occluded in the truth) was called visible and whose frame 1 is 34 px off."""
    from eval.rescore import main
    points = np.full((1, 5, 2), 100.0)
    occ = np.array([[False, False, False, False, True]])
    _tapvid_folder(str(tmp_path / "data" / "a"), points, occ)
    preds = tmp_path / "preds"
    preds.mkdir()
    pred = points.copy()
    pred[0, 1, 1] += 34.0
    np.savez(preds / "a.npz", tracks=pred, visible=np.ones((1, 5), bool), sigma=np.ones((1, 5)),
             queries=np.array([[0, 100, 100]], np.float32))
    out = tmp_path / "gt"
    assert main(["--data", str(tmp_path / "data"), "--preds", str(preds), "--out", str(out),
                 "--ground-truth-visibility"]) == 0
    m = json.loads((out / "a.json").read_text())["metrics"]
    # frames 1..4 scored (frame 0 is the query); visible in truth and now in the prediction: 1, 2, 3. Frame 1 is
    # 34 px off in y on 512-high frames, 17 px in the 256 raster: far at every δ, so FP and FN; frames 2, 3 TP;
    # frame 4 occluded in both: Jaccard 2 / (2 + 1 + 1) at every δ
    assert m["OA"] == 1.0 and m["AJ"] == pytest.approx(2 / 4)
    assert main(["--data", str(tmp_path / "data"), "--preds", str(preds), "--ground-truth-visibility"]) == 2


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
    none = np.zeros(1, bool)
    s = summarize(sigma, err, none, none)
    assert s["within_1sigma"] == pytest.approx(1 - np.exp(-0.5), abs=0.01)
    assert s["within_2sigma"] == pytest.approx(1 - np.exp(-2.0), abs=0.01)
    assert s["spearman"] > 0.3
    assert summarize(sigma, err * 5, none, none)["within_2sigma"] < 0.3           # over-confident σ shows


def test_calibration_by_distance_octaves_by_hand():
    """Distances 1, 2, 3, 5 and 9 fall in octaves 1, 2-3, 2-3, 4-7 and 8-15; each octave is scored alone."""
    from eval.calibration import by_distance
    sig = np.array([1.0, 1.0, 1.0, 1.0, 1.0])
    err = np.array([0.5, 1.5, 0.5, 3.0, 1.5])
    d = by_distance(sig, err, np.array([1, 2, 3, 5, 9]))
    assert list(d) == ["1", "2-3", "4-7", "8-15"]
    assert [d[k]["points"] for k in d] == [1, 2, 1, 1]
    assert d["2-3"]["within_1sigma"] == 0.5 and d["2-3"]["within_2sigma"] == 1.0
    assert d["4-7"]["within_2sigma"] == 0.0 and d["8-15"]["median_error"] == 1.5


def test_calibration_by_history_by_hand():
    """A point occluded at frame 1 and queried at 0 was found again at frames 1-3; queried at 3 (tracked
    backwards), only frames 0 and 1 lie beyond its occlusion. by_history scores the two groups apart."""
    from eval.calibration import by_history, occluded_in_between
    occluded = np.array([[0, 1, 0, 0], [0, 1, 0, 0], [1, 0, 0, 0]], bool)
    between = occluded_in_between(occluded, np.array([0, 3, 2]))
    assert between.astype(int).tolist() == [[0, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]]
    h = by_history(np.ones(4), np.array([0.5, 3.0, 1.5, 2.5]), np.array([False, True, False, True]))
    assert h["visible_since_query"]["points"] == 2 and h["visible_since_query"]["within_2sigma"] == 1.0
    assert h["after_occlusion"]["within_2sigma"] == 0.0 and h["after_occlusion"]["median_error"] == 2.75
    assert list(by_history(np.ones(2), np.ones(2), np.zeros(2, bool))) == ["visible_since_query"]


def test_fit_scale_by_hand_and_on_a_gaussian():
    """e/σ = 1, 2, 3, 4: the 86.5th percentile (linear) is 3 + (3·0.8647 − 2) = 3.594, so k = 1.797. For errors of a
    Gaussian three times wider than σ, k ≈ 3, and scale_report's held-out halves find it too."""
    from eval.calibration import fit_scale, scale_report
    q = 1 - np.exp(-2.0)
    assert fit_scale(np.full(4, 2.0), np.array([2.0, 4.0, 6.0, 8.0])) == pytest.approx((3 + 3 * q - 2) / 2)
    rng = np.random.default_rng(1)
    sigma = rng.uniform(0.5, 5.0, 20000)
    err = np.linalg.norm(rng.standard_normal((20000, 2)), axis=1) * sigma * 3
    r = scale_report(sigma, err, np.arange(20000) % 7)
    assert r["sigma_scale"] == pytest.approx(3.0, rel=0.03)
    for half in r["held_out"]:
        assert half["within_2sigma"] == pytest.approx(q, abs=0.015) and half["within_1sigma"] == pytest.approx(
            1 - np.exp(-0.5), abs=0.015)


def test_occlusion_scores_by_hand():
    from eval.calibration import occlusion_scores
    truth = np.array([1, 1, 1, 0, 0, 0, 0, 0], bool)
    pred = np.array([1, 0, 0, 1, 0, 0, 0, 0], bool)          # 1 TP, 1 FP, 2 FN
    s = occlusion_scores(truth, pred)
    assert s["occ_precision"] == 0.5 and s["occ_recall"] == pytest.approx(1 / 3)
    assert s["occ_f1"] == pytest.approx(2 * 0.5 * (1 / 3) / (0.5 + 1 / 3))
    assert occlusion_scores(truth, np.zeros(8, bool))["occ_f1"] == 0.0


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


def test_fit_drift_by_hand():
    """σ = 0, d = 1, every e² = 8 ln 2: median(e²/q) = 2 ln 2 at q = 4. σ = 1, d = 2, e² = 14 ln 2: (1 + 2q) = 7 at
    q = 3. An already large σ gets 0; the held-out report fits one half of the videos and scores the other."""
    from eval.calibration import drift_report, fit_drift
    ln2 = np.log(2.0)
    assert fit_drift(np.zeros(5), np.full(5, np.sqrt(8 * ln2)), np.ones(5)) == pytest.approx(4.0, rel=1e-6)
    assert fit_drift(np.ones(4), np.full(4, np.sqrt(14 * ln2)), np.full(4, 2)) == pytest.approx(3.0, rel=1e-6)
    assert fit_drift(np.full(3, 10.0), np.ones(3), np.ones(3)) == 0.0
    err = np.concatenate([np.full(4, np.sqrt(8 * ln2)), np.full(4, np.sqrt(16 * ln2))])
    rep = drift_report(np.zeros(8), err, np.ones(8), np.full(8, 0.5), np.repeat([0, 1], 4))
    # d counts in original px (0.5 raster px each, d = 0.25): all eight, the median e² is 12 ln 2, so q = 24;
    # fitted on video 1 (e² = 16 ln 2) q = 32, σ' = √8 covers video 0's e = √(8 ln 2); fitted on video 0, q = 16
    # and σ' = 2 misses video 1's e = √(16 ln 2)
    assert rep["drift_var"] == pytest.approx(24.0, rel=1e-6)
    assert [h["drift_var"] for h in rep["held_out"]] == pytest.approx([32.0, 16.0], rel=1e-6)
    assert [h["within_1sigma"] for h in rep["held_out"]] == [1.0, 0.0]
