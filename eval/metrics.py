"""TAP-Vid and BADJA metrics, written from the benchmark definitions.

TAP-Vid (Doersch et al. 2022), per video, in the 256×256 raster, thresholds δ ∈ {1, 2, 4, 8, 16} px.
Frames scored for a query ("evaluation frames"): query-first — frames after the query frame;
query-strided — every frame but the query frame. Over the evaluation frames of all queries:

    OA        = mean[ pred_occluded == gt_occluded ]
    <δ        = |{gt visible and ‖pred − gt‖ < δ}| / |{gt visible}|
    Jaccard_δ = TP / (TP + FN + FP), with
                TP = gt visible, pred visible, ‖pred − gt‖ < δ
                FN = gt visible and not TP          (so TP + FN = |{gt visible}|)
                FP = pred visible and (gt occluded or ‖pred − gt‖ ≥ δ)
    <δ^x_avg  = mean over δ of <δ;   AJ = mean over δ of Jaccard_δ.

The comparison is strict (<). Scores are averaged per video first, then over videos.

Error shares (not part of TAP-Vid; same evaluation frames): occ→vis = |{gt occluded, pred visible}| / |{gt occluded}|,
vis→occ = |{gt visible, pred occluded}| / |{gt visible}|, >16px = |{gt visible, ‖pred − gt‖ > 16}| / |{gt visible}|.
"""
import numpy as np

THRESHOLDS = (1, 2, 4, 8, 16)
FAR = 16  # px in the 256×256 raster: a gt-visible position further off than this is a gross error


def evaluation_frames(query_t, num_frames, mode):
    """bool [M, T]: which frames are scored for each query. first: t > t_q; strided: t != t_q."""
    t = np.arange(num_frames)[None, :]
    q = np.asarray(query_t).astype(int)[:, None]
    if mode == "first":
        return t > q
    if mode == "strided":
        return t != q
    raise ValueError(f"mode must be 'first' or 'strided', got {mode!r}")


def tapvid_metrics(query_t, gt_tracks, gt_occluded, pred_tracks, pred_occluded, mode):
    """TAP-Vid metrics of one video. Tracks [M, T, 2] (x, y) in the 256×256 raster; occluded bool [M, T].

    Returns a dict with AJ, delta_avg, OA (fractions in [0, 1]) and per-threshold ``delta_<d>`` and ``jaccard_<d>``.
    """
    gt_vis = ~np.asarray(gt_occluded, bool)
    pred_vis = ~np.asarray(pred_occluded, bool)
    evalf = evaluation_frames(query_t, gt_vis.shape[1], mode)
    dist = np.linalg.norm(np.asarray(pred_tracks, np.float64) - np.asarray(gt_tracks, np.float64), axis=-1)
    out = {"OA": float(np.sum((pred_vis == gt_vis) & evalf) / np.sum(evalf))}
    deltas, jaccards = [], []
    for d in THRESHOLDS:
        within = dist < d
        n_gt_vis = np.sum(gt_vis & evalf)
        tp = np.sum(gt_vis & pred_vis & within & evalf)
        fp = np.sum(pred_vis & (~gt_vis | ~within) & evalf)
        delta = np.sum(gt_vis & within & evalf) / n_gt_vis
        jac = tp / (n_gt_vis + fp)
        out[f"delta_{d}"], out[f"jaccard_{d}"] = float(delta), float(jac)
        deltas.append(delta)
        jaccards.append(jac)
    out["delta_avg"] = float(np.mean(deltas))
    out["AJ"] = float(np.mean(jaccards))
    return out


def tapvid_error_shares(query_t, gt_tracks, gt_occluded, pred_tracks, pred_occluded, mode):
    """Visibility errors and gross position errors of one video, over the evaluation frames of ``tapvid_metrics``.

    Args: ``query_t`` [M]; tracks [M, T, 2] (x, y) in the 256×256 raster; occluded bool [M, T]; mode first|strided.
    Returns a dict: ``occ_called_visible`` (share of scored gt-occluded pairs predicted visible),
    ``vis_called_occluded`` (share of scored gt-visible pairs predicted occluded), ``vis_far16`` (share of scored
    gt-visible pairs with ‖pred − gt‖ > 16, whatever the predicted visibility), each NaN where it has no pair,
    and the counts ``n_occ``, ``n_vis``, ``n_occ_called_visible``, ``n_vis_called_occluded``, ``n_vis_far16``.
    """
    gt_vis = ~np.asarray(gt_occluded, bool)
    pred_vis = ~np.asarray(pred_occluded, bool)
    evalf = evaluation_frames(query_t, gt_vis.shape[1], mode)
    dist = np.linalg.norm(np.asarray(pred_tracks, np.float64) - np.asarray(gt_tracks, np.float64), axis=-1)
    occ, vis = ~gt_vis & evalf, gt_vis & evalf
    n = {"n_occ": int(np.sum(occ)), "n_vis": int(np.sum(vis)),
         "n_occ_called_visible": int(np.sum(occ & pred_vis)), "n_vis_called_occluded": int(np.sum(vis & ~pred_vis)),
         "n_vis_far16": int(np.sum(vis & (dist > FAR)))}
    share = lambda a, b: a / b if b else float("nan")
    return {"occ_called_visible": share(n["n_occ_called_visible"], n["n_occ"]),
            "vis_called_occluded": share(n["n_vis_called_occluded"], n["n_vis"]),
            "vis_far16": share(n["n_vis_far16"], n["n_vis"]), **n}


def badja_pck(pred_xy, gt_xy, gt_visible, mask_areas, frame_hw, score_frames):
    """BADJA PCK of one video.

    ``pred_xy``, ``gt_xy`` [J, K, 2] (x, y) original pixels at the K annotated frames; ``gt_visible`` [J, K];
    ``mask_areas`` [K] foreground pixels of each annotated frame's mask; ``score_frames`` bool [K] (annotated
    frames that are scored: all but the query frame). A joint is correct when its distance is below
    0.2·sqrt(mask area) (PCK@seg), or below 3 px measured at 854×480 (PCK@3px). Mean over scored visible pairs.
    """
    H, W = frame_hw
    diff = np.asarray(pred_xy, np.float64) - np.asarray(gt_xy, np.float64)
    dist = np.linalg.norm(diff, axis=-1)
    dist_854 = np.linalg.norm(diff * np.array([854.0 / W, 480.0 / H]), axis=-1)
    scored = np.asarray(gt_visible, bool) & np.asarray(score_frames, bool)[None, :]
    n = np.sum(scored)
    thr = 0.2 * np.sqrt(np.asarray(mask_areas, np.float64))[None, :]
    return {"PCK_seg": float(np.sum((dist < thr) & scored) / n),
            "PCK_3px": float(np.sum((dist_854 < 3.0) & scored) / n),
            "num_scored": int(n)}
