"""Candidate filters and visibility on hand-made inputs with hand-computed answers: query templates, cosine
similarity, the similarity and mask filters, the integrator's filter hook, combined visibility, and the
offline object mask on a flow bank of known motion."""
import dataclasses
import math

import numpy as np
import pytest
import torch

from analytic import AnalyticBank, moving_square
from filters.candidates import CandidateFilters
from filters.masks import MaskFilter, MaskSet
from filters.offline_mask import offline_masks
from filters.similarity import SimilarityFilter, query_templates, similarity_at, trajectory_similarity
from fusion.visibility import combined_visibility
from pitrack.config import default_section


def _half(xy):
    """A working px -> grid map that is not the identity (grid = working / 2), so using it is checked."""
    return xy * 0.5


def _maps():
    """[T=2, C=2, 3, 3]: frame 0 is (7, 0) everywhere; frame 1 has channel 0 [[1, 0, 2], [0, 4, 0], [3, 0, 0]]
    and channel 1 all ones."""
    maps = torch.zeros(2, 2, 3, 3)
    maps[0, 0] = 7.0
    maps[1, 0] = torch.tensor([[1.0, 0, 2], [0, 4, 0], [3, 0, 0]])
    maps[1, 1] = 1.0
    return maps


def test_query_templates_are_the_normalised_bilinear_feature_at_the_query():
    maps = _maps()
    # query 0: frame 1 at working (1.0, 2.5) = grid (0.5, 1.25): channel 0 = 0.75·(0+4)/2 + 0.25·(3+0)/2 = 1.875
    # query 1: frame 0: (7, 0) -> (1, 0); query 2: frame 1 at grid (2, 0): (2, 1)
    q_xy = torch.tensor([[1.0, 2.5], [3.0, 1.0], [4.0, 0.0]])
    tq = np.array([1, 0, 1])
    tpl = query_templates(maps, _half, q_xy, tq)
    n = math.hypot(1.875, 1.0)
    assert tpl.shape == (3, 2)
    assert tpl[0].tolist() == pytest.approx([1.875 / n, 1.0 / n], abs=1e-6)
    assert tpl[1].tolist() == pytest.approx([1.0, 0.0], abs=1e-6)
    assert tpl[2].tolist() == pytest.approx([2 / math.sqrt(5), 1 / math.sqrt(5)], abs=1e-6)


def test_similarity_at_is_the_cosine_to_the_template():
    maps = _maps()
    tpl = query_templates(maps, _half, torch.tensor([[1.0, 2.5], [3.0, 1.0]]), np.array([1, 0]))
    # frame 1 at grid (2, 0) = (2, 1); at grid (1, 1) = (4, 1); at grid (0.5, 0) = (0.5, 1)
    xy = torch.tensor([[[4.0, 0.0], [2.0, 2.0]], [[1.0, 0.0], [4.0, 0.0]]])
    s = similarity_at(maps, _half, tpl, 1, xy)
    n0 = math.hypot(1.875, 1.0)
    cos = lambda a, b: (a[0] * b[0] + a[1] * b[1]) / (math.hypot(*a) * math.hypot(*b))  # noqa: E731
    expect = [[cos((1.875, 1), (2, 1)), cos((1.875, 1), (4, 1))], [cos((1, 0), (0.5, 1)), cos((1, 0), (2, 1))]]
    assert s.shape == (2, 2)
    assert s.tolist()[0] == pytest.approx(expect[0], abs=1e-6) and s.tolist()[1] == pytest.approx(expect[1], abs=1e-6)
    assert expect[0][0] == pytest.approx((2 * 1.875 + 1) / (n0 * math.sqrt(5)))
    # along trajectories: the same values, frame by frame
    traj = torch.zeros(2, 2, 2)
    traj[:, 1] = xy[:, 0]
    sim = trajectory_similarity(maps, _half, tpl, traj)
    assert sim[:, 1].tolist() == pytest.approx([expect[0][0], expect[1][0]], abs=1e-6)


# cosines of the four candidate cells of frame 1 with the template (1, 0); each cell a different length
COS = [0.9, 0.4, 0.2, -0.5]


def _angle_maps():
    """Frame 0: (3, 0) at cell (0, 0) [query 0] and (0, 2) at cell (1, 0) [query 1]; frame 1: cells (k, 0) hold
    vectors at cosine COS[k] to (1, 0), scaled by 2, 0.5, 3, 1."""
    maps = torch.zeros(2, 2, 2, 4)
    maps[0, :, 0, 0] = torch.tensor([3.0, 0.0])
    maps[0, :, 0, 1] = torch.tensor([0.0, 2.0])
    for k, (c, scale) in enumerate(zip(COS, (2.0, 0.5, 3.0, 1.0))):
        maps[1, :, 0, k] = scale * torch.tensor([c, math.sqrt(1 - c * c)])
    return maps


def test_similarity_filter_rejects_exactly_the_predicted_candidates():
    maps = _angle_maps()
    ident = lambda xy: xy  # noqa: E731
    tpl = query_templates(maps, ident, torch.tensor([[0.0, 0.0], [1.0, 0.0]]), np.array([0, 0]))
    f = SimilarityFilter(maps, ident, tpl, 0.3, 0.5)
    cells = torch.tensor([[k, 0.0] for k in range(4)])
    xy = cells[None].repeat(2, 1, 1)                               # both queries, the four cells
    # query order reversed (idx [1, 0]): the templates must follow idx
    idx = torch.tensor([1, 0])
    sin = [math.sqrt(1 - c * c) for c in COS]                      # cosines to query 1's template (0, 1)
    assert sin[0] < 0.5 < min(sin[1:]) and min(sin) > 0.3
    flow = f.valid(1, idx, xy, "flow")
    assert flow.tolist() == [[True] * 4, [True, True, False, False]]            # 0.9, 0.4 >= 0.3 > 0.2, -0.5
    kp = f.valid(1, idx, xy, "keypoint")
    assert kp.tolist() == [[False, True, True, True], [True, False, False, False]]  # only 0.9 >= 0.5
    assert f.valid(1, idx, xy).tolist() == flow.tolist()             # 'flow' is the default kind
    # on the query's own frame at the query itself: similarity 1, passes both
    assert f.valid(0, torch.tensor([0]), torch.zeros(1, 1, 2), "keypoint").tolist() == [[True]]


def _mask_set():
    """Mask raster 10 x 30 (h x w) under a 40 x 60 working raster (y scale 1/4, x scale 1/2). Object 0 in frame 1:
    mask rows 3..5, columns 10..14; in frame 0: columns 0..2 (elsewhere). Object 1: column 29 only."""
    masks = np.zeros((2, 2, 10, 30), bool)
    masks[0, 1, 3:6, 10:15] = True
    masks[0, 0, 3:6, 0:3] = True
    masks[1, :, :, 29] = True
    return MaskSet.from_masks(masks, [0, -1, 1, 0], dict(source="hand"))


def test_mask_set_round_trip():
    ms = _mask_set()
    assert ms.num_objects == 2 and ms.mask_hw == (10, 30) and ms.packed.shape == (2, 2, 10, 4)
    assert ms.frame(0, 1).sum() == 15 and ms.frame(0, 1)[3:6, 10:15].all() and ms.frame(1, 0)[:, 29].all()


def test_mask_filter_scales_between_rasters_by_the_corner_convention():
    ms = _mask_set()
    f = MaskFilter(ms, (40, 60), 0.01)
    # working pixel-centre x -> mask x = (x + 0.5) / 2 − 0.5, y -> (y + 0.5) / 4 − 0.5. Row y = 17.5 is mask row 4.
    # Object 0 covers mask columns 10..14: mask value at 30.4 -> 14.95: 0.05 (in); 30.6 -> 15.05: 0 (out);
    # 18.6 -> 9.05: 0.05 (in); 18.4 -> 8.95: 0 (out); 24.5 -> 12: 1. A y/x mix-up or x·(mw/w) without the
    # half-pixel shift gets some of these wrong.
    xs = [24.5, 30.4, 30.6, 18.6, 18.4, 50.0]
    xy = torch.tensor([[[x, 17.5] for x in xs]] * 3)
    idx = torch.tensor([0, 1, 2])                 # object 0, no object, object 1
    ok = f.valid(1, idx, xy)
    assert ok[0].tolist() == [True, True, False, True, False, False]
    assert ok[1].all()                            # a query without an object passes everything
    assert ok[2].tolist() == [False] * 6          # object 1 is the last column only
    # rows: y = 9.5 -> mask row 2 (outside, rows 3..5); y = 10.0 -> 2.125: 0.125 (in)
    assert f.valid(1, torch.tensor([0]), torch.tensor([[[24.5, 9.5], [24.5, 10.0]]])).tolist() == [[False, True]]
    # the frame is t's: in frame 0 object 0 lies at columns 0..2
    assert f.valid(0, torch.tensor([3]), torch.tensor([[[24.5, 17.5], [2.5, 17.5]]])).tolist() == [[False, True]]
    # the threshold applies to the bilinear value: 0.05 fails 0.1
    assert MaskFilter(ms, (40, 60), 0.1).valid(1, torch.tensor([0]), xy[:1]).tolist() == \
        [[True, False, False, False, False, False]]


class _Stub:
    """A filter with a fixed answer per (query, candidate); records the kinds it was asked about."""

    def __init__(self, name, reject):
        self.name, self.reject, self.kinds = name, reject, []

    def valid(self, t, idx, xy, kind="flow"):
        self.kinds.append(kind)
        return ~self.reject(t, idx, xy)


def test_candidate_filters_hook_marks_rejected_candidates_occluded_and_records_usable_ones():
    # filter a: rejects candidates with x > 10; filter b: rejects query 7's candidates in frame 3
    a = _Stub("a", lambda t, idx, xy: xy[..., 0] > 10)
    b = _Stub("b", lambda t, idx, xy: (idx == 7)[:, None].expand(xy.shape[:2]) & (t == 3))
    hook = CandidateFilters([a, b], 0.5)
    assert hook and not CandidateFilters([], 0.5)
    idx = torch.tensor([7, 2])
    xy = torch.tensor([[[1.0, 0], [11, 1], [12, 2]], [[20.0, 3], [2, 4], [30, 5]]])
    occ = torch.tensor([[0.1, 0.2, 0.7], [0.3, 0.0, 0.4]])
    ok = torch.tensor([[True, True, True], [True, True, False]])
    out = hook(3, idx, xy, occ.clone(), ok)
    # every candidate of query 7 rejected (b); x > 10 rejected (a) -> only query 2's candidate 1 keeps its value
    assert torch.equal(out, torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 1.0]]))
    assert a.kinds == ["flow"] and b.kinds == ["flow"]
    # usable = ok and occ < 0.5: a's usable rejections are (7, [11, 1]) and (2, [20, 3]); (7, [12, 2]) had
    # occlusion 0.7 and (2, [30, 5]) was not ok: not counted
    rep = hook.report(lambda p: np.asarray(p) * 2.0)               # to_original: ×2
    assert rep["a"]["query"].tolist() == [7, 2] and rep["a"]["frame"].tolist() == [3, 3]
    assert rep["a"]["xy"].tolist() == [[22.0, 2.0], [40.0, 6.0]] and not rep["a"]["keypoint"].any()
    assert rep["b"]["query"].tolist() == [7, 7] and rep["b"]["xy"].tolist() == [[2.0, 0.0], [22.0, 2.0]]
    # another frame: b passes everything
    out = hook(4, idx, xy, occ.clone(), ok)
    assert torch.equal(out, torch.tensor([[0.1, 1.0, 1.0], [1.0, 0.0, 1.0]]))
    rep = hook.report(lambda p: np.asarray(p))
    assert rep["a"]["frame"].tolist() == [3, 3, 4, 4] and rep["b"]["query"].size == 2
    assert rep["a"]["query"].dtype == np.int64 and rep["a"]["xy"].dtype == np.float32


def test_candidate_filters_drop_rejected_keypoint_observations():
    """observations() asks the filters about valid observations only, with kind 'keypoint' (the similarity
    filter's keypoint threshold), and records the rejected ones as keypoints."""
    maps = _angle_maps()
    ident = lambda xy: xy  # noqa: E731
    tpl = query_templates(maps, ident, torch.tensor([[0.0, 0.0], [1.0, 0.0]]), np.array([0, 0]))
    sim = SimilarityFilter(maps, ident, tpl, 0.3, 0.5)
    stub = _Stub("stub", lambda t, idx, xy: torch.zeros(xy.shape[:2], dtype=torch.bool))
    hook = CandidateFilters([sim, stub], 0.5)
    # query 0 (template (1, 0)) observed in frame 1 at the cells with cosine 0.9, 0.4 (flow would pass) ...
    obs = torch.zeros(2, 2, 2)
    obs[0, 1] = torch.tensor([1.0, 0.0])                            # cosine 0.4: rejected (< 0.5)
    obs[1, 1] = torch.tensor([1.0, 0.0])                            # query 1: cosine sin = 0.92: kept
    valid = torch.tensor([[False, True], [False, True]])
    kept = hook.observations(obs, valid)
    assert kept.tolist() == [[False, False], [False, True]] and valid[0, 1]   # the input is not changed
    assert set(stub.kinds) == {"keypoint"}
    rep = hook.report(lambda p: np.asarray(p))
    assert rep["similarity"]["query"].tolist() == [0] and rep["similarity"]["keypoint"].tolist() == [True]
    assert rep["similarity"]["frame"].tolist() == [1] and rep["similarity"]["xy"].tolist() == [[1.0, 0.0]]
    assert rep["stub"]["query"].size == 0 and rep["stub"]["xy"].shape == (0, 2)
    # an invalid observation is not looked at: nothing to reject
    obs[0, 1] = torch.tensor([3.0, 0.0])                            # cosine -0.5, but not valid
    hook2 = CandidateFilters([sim], 0.5)
    assert hook2.observations(obs, torch.tensor([[False, False], [False, True]])).tolist() == \
        [[False, False], [False, True]]
    assert hook2.report(np.asarray)["similarity"]["query"].size == 0


def test_combined_visibility():
    """visible = flow_visible and s >= max(τ, r · m_i), m_i the median of s over the frames where the flow sees
    point i (its query frame left out); the query frame always visible. τ = 0.2, r = 0.75."""
    flow = torch.tensor([[True, True, False, False, True, True],
                         [False, True, True, True, True, False],
                         [True, True, False, False, False, True]])
    sim = torch.tensor([[1.0, 0.9, 0.99, 0.99, 0.6, 0.3],
                        [0.1, 0.22, 0.25, 0.5, 0.18, 0.9],
                        [1.0, 0.9, 0.0, 0.0, 0.0, 0.5]])
    tq = np.array([0, 3, 0])
    vis = combined_visibility(flow, sim, 0.2, 0.75, tq)
    # 0: m = median(0.9, 0.6, 0.3) = 0.6 -> 0.45: frame 5 (0.3) fails; frames 2, 3 (flow-occluded, high s) are
    #    not in the median (with them m = 0.9 -> 0.675 and frame 4 would fail too)
    # 1: m = median(0.22, 0.25, 0.18) = 0.22 -> 0.165 < τ: the floor 0.2 rejects frame 4 (0.18); frame 3 is the query
    # 2: m = median(0.9, 0.5) = 0.5 (torch: the lower middle) -> 0.375: frame 5 passes (with the query frame's
    #    1.0 in the median, m = 0.9 and it would fail)
    assert vis.tolist() == [[True, True, False, False, True, False],
                            [False, True, True, True, False, False],
                            [True, True, False, False, False, True]]
    assert torch.equal(flow, torch.tensor([[True, True, False, False, True, True],
                                           [False, True, True, True, True, False],
                                           [True, True, False, False, False, True]]))   # input untouched
    # s = τ passes (0.25 is exact in float32)
    assert combined_visibility(flow, sim, 0.25, 0.0, tq)[1].tolist() == [False, False, True, True, False, False]
    expect_flow = flow.clone()
    expect_flow[torch.arange(3), torch.as_tensor(tq)] = True
    assert torch.equal(combined_visibility(flow, None, 0.2, 0.75, tq), expect_flow)    # appearance off
    assert torch.equal(combined_visibility(flow, sim, -1.0, 0.0, tq), expect_flow)     # τ = −1, r = 0: off
    # no flow-visible frame but the query: an empty median must not fail; only the query frames are visible
    only_q = torch.zeros(3, 6, dtype=torch.bool)
    assert combined_visibility(only_q, sim, 0.2, 0.75, tq).tolist() == \
        [[True] + [False] * 5, [False] * 3 + [True] + [False] * 2, [True] + [False] * 5]


def test_offline_mask_groups_the_moving_square_apart_from_the_background():
    """A 12 x 12 square (working px x 10..21, y 12..23 in frame 0) moves 4 px/frame right over a static
    background; working raster 48 x 64, original 96 x 128, masks at 32 x 24."""
    T, hw, orig = 5, (48, 64), (96, 128)
    warp, hidden, inside = moving_square(10, 12, 12, (4.0, 0.0))
    bank = AnalyticBank(T, hw, warp, hidden=hidden)
    cfg = dataclasses.replace(default_section("filters").mask.offline, resolution="32x24", motion_tolerance=2.0,
                              min_frames=2)
    # working pixel-centre -> original corner: (x + 0.5) * 2
    to_orig = lambda x, y: [(x + 0.5) * 2, (y + 0.5) * 2]  # noqa: E731
    queries = np.array([[0] + to_orig(15.5, 17.5),     # square centre
                        [0] + to_orig(50.5, 35.5),     # background
                        [0] + to_orig(12.5, 14.5)],    # another point of the square: the same object
                       np.float32)
    ms = offline_masks(bank, queries, cfg, orig)
    assert ms.mask_hw == (24, 32) and ms.num_objects == 2 and ms.stats["objects"] == 2
    sq, bg = ms.object_of_query[0], ms.object_of_query[1]
    assert sq >= 0 and bg >= 0 and sq != bg and ms.object_of_query[2] == sq
    # mask pixel (i, j) covers working px x in [2j, 2j + 2): the square's pixels in frame t
    my, mx = np.mgrid[0:24, 0:32]
    centres = np.stack([2 * mx + 0.5, 2 * my + 0.5], -1)         # working pixel-centre of each mask pixel
    for t in (0, 3, 4):
        m = ms.frame(sq, t)
        sq_t = inside(centres, t)
        assert m[sq_t].mean() > 0.95, t                        # covers the moved square ...
        near = inside(centres + 2.0, t) | inside(centres - 2.0, t) | sq_t
        assert not m[~near].any(), t                           # ... and nothing beyond one mask pixel of it
        b = ms.frame(bg, t)
        assert not b[inside(centres, t) & inside(centres + 2, t) & inside(centres - 2, t)].any(), t
    assert not ms.frame(sq, 3)[6:12, 5:11].any()                 # frame 0's square position, left behind
    # the background object in frame 0: everything but the square's rows 6..11 (mask) at working x in [10, 30):
    # the square [10, 22) and the band [22, 30) that the square hides in all but one other frame (fewer than
    # min_frames = 2 frames to compare); x in [30, 40) is seen in frames 1, 2 and hidden (its flow the
    # square's) in 3, 4, which do not count
    b = ms.frame(bg, 0)
    assert not b[7:11, 5:15].any() and b[7:11, 15:20].all() and b[20, 28]
    assert b[:5].all() and b[13:].all() and b[:, :4].all() and b[:, 20:].all()
