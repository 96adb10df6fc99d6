"""filters/sam2_masks.py: SAM2 object masks, on CPU with random tiny weights at a reduced image size.

The masks of a randomly initialised SAM2 are arbitrary, so these tests check the machinery (shapes, the
encoder running once per frame, both sweeps and how they are combined, each object's own click, grouping
with hand-made masks, the cache, checkpoint handling), never mask quality.
"""
import os
import warnings

import numpy as np
import pytest

pytest.importorskip("sam2")
torch = pytest.importorskip("torch")

from core.errors import ConfigError, InputError, WeightsError  # noqa: E402
from filters import sam2_masks as sm  # noqa: E402
from filters.config import SAM2Config  # noqa: E402

T, H, W = 6, 64, 96
IMAGE_SIZE = 256          # reduced from 1024 (every multiple of 32 from 64 runs); ~1 s per frame here
MASK_RES = "48x32"        # -> (h, w) = (32, 48)
# queries (t, x, y): the earliest at frame 1 (so frame 0 needs the backward sweep), a middle frame, the last frame
QUERIES = np.array([[1, 20.5, 30.5], [3, 70.0, 12.0], [3, 71.0, 12.5], [5, 40.0, 50.0]], np.float32)


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread: these tiny shapes gain nothing from a second one, and on a shared machine two
    threads spin-wait on each other (measured here: ~1 s per SAM2 run with one thread, ~4-5 s with two)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _cfg(**kw):
    base = dict(checkpoint="sam2.1_hiera_tiny.pt", model_config="", image_size=IMAGE_SIZE, device="cpu",
                random_init=True, mask_resolution=MASK_RES)
    base.update(kw)
    return SAM2Config(**base)


def _video(seed=0, frames=T):
    rng = np.random.default_rng(seed)
    video = np.empty((frames, H, W, 3), np.uint8)
    video[:] = rng.integers(0, 255, (1, H, W, 3), dtype=np.uint8)
    for t in range(frames):  # a red box moving right
        video[t, 20:40, 10 + 5 * t:40 + 5 * t] = (255, 0, 0)
    return video


class Spy:
    """Wraps a predictor's prompt / propagate calls (return values untouched unless ``fake`` is given)."""

    def __init__(self, predictor, fake=None):
        self.prompts = []   # (frame, obj_id, click, mask bool [h, w] of that object)
        self.yields = []    # (reverse, frame, obj_id, mask bool [h, w])
        self.fake = fake    # fake(frame, obj_ids, logits) -> logits
        add, prop = predictor.add_new_points_or_box, predictor.propagate_in_video
        hw = sm.parse_resolution(MASK_RES, (H, W))

        def add_new_points_or_box(state, frame_idx, obj_id, points, labels):
            f, ids, logits = add(state, frame_idx=frame_idx, obj_id=obj_id, points=points, labels=labels)
            if self.fake is not None:
                logits = self.fake(f, ids, logits)
            j = list(ids).index(obj_id)
            self.prompts.append((f, obj_id, list(points[0]), sm.downsample_masks(logits[j:j + 1], hw)[0]))
            return f, ids, logits

        def propagate_in_video(state, start_frame_idx=None, max_frame_num_to_track=None, reverse=False):
            for f, ids, logits in prop(state, start_frame_idx=start_frame_idx,
                                       max_frame_num_to_track=max_frame_num_to_track, reverse=reverse):
                if self.fake is not None:
                    logits = self.fake(f, ids, logits)
                m = sm.downsample_masks(logits, hw)
                self.yields += [(reverse, f, k, m[j]) for j, k in enumerate(ids)]
                yield f, ids, logits

        predictor.add_new_points_or_box = add_new_points_or_box
        predictor.propagate_in_video = propagate_in_video


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One SAM2 run on the test video with a spy on the predictor; the cache folder it wrote."""
    cache = tmp_path_factory.mktemp("video_cache")
    spies = []
    real_build = sm.build_predictor

    def build(cfg, seed=0):
        p = real_build(cfg, seed)
        spies.append(Spy(p))
        return p

    n = torch.get_num_threads()
    torch.set_num_threads(1)   # see _one_thread
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(sm, "build_predictor", build)
            # every query its own object, so that the run has several prompts on several frames whatever the
            # random masks look like (grouping: test_queries_inside_an_existing_mask_share_its_object)
            mp.setattr(sm, "object_containing", lambda pixel, logits_by_object: -1)
            ms = sm.sam2_masks(_video(), QUERIES, _cfg(), cache_dir=str(cache), seed=0)
    finally:
        torch.set_num_threads(n)
    return ms, spies[0], str(cache)


def test_output_shapes_and_dtypes(run):
    ms, _, _ = run
    K = ms.num_objects
    assert K == len(QUERIES)
    assert ms.mask_hw == (32, 48)
    assert ms.packed.dtype == np.uint8 and ms.packed.shape == (K, T, 32, 6)
    assert ms.object_of_query.dtype == np.int64 and ms.object_of_query.shape == (len(QUERIES),)
    assert set(ms.object_of_query.tolist()) == set(range(K))       # every object belongs to a query
    assert ms.frame(0, 0).shape == (32, 48) and ms.frame(0, 0).dtype == bool
    for k in ("sam2_s", "encoder_calls", "objects", "masks_loaded", "masks_mb"):
        assert k in ms.stats
    assert ms.stats["objects"] == K and ms.stats["masks_loaded"] is False
    assert ms.stats["masks_mb"] == pytest.approx(ms.packed.nbytes / 2 ** 20)


def test_encoder_runs_once_per_frame(run):
    ms, spy, _ = run
    assert len(spy.prompts) > T and len({f for f, *_ in spy.prompts}) == 3   # several prompts and frames ...
    assert {r for r, *_ in spy.yields} == {False, True}    # ... and both directions
    assert ms.stats["encoder_calls"] == T


def test_encoder_count_detects_missing_prefill(monkeypatch):
    """Without the pre-filled feature cache the package re-encodes revisited frames: the count must show it."""
    monkeypatch.setattr(sm, "prefill_features", lambda predictor, state, progress=False: None)
    q = np.array([[1, 20.5, 30.5], [2, 70.0, 12.0]], np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ms = sm.sam2_masks(_video(frames=3), q, _cfg(), seed=0)
    assert ms.stats["encoder_calls"] > 3


def test_both_directions_and_combination(run):
    """Every object is tracked forward after its prompt frame and backward before it, once per frame, and the
    result takes each frame from the sweep that reaches it (the prompt's own result on its frame)."""
    ms, spy, _ = run
    f_of = ms.stats["object_prompt_frames"]
    assert f_of == [1, 3, 3, 5]
    assert ms.stats["frames_forward"] == sum(T - 1 - f for f in f_of)
    assert ms.stats["frames_backward"] == sum(f for f in f_of)
    forward_prompt = {k: m for f, k, _, m in spy.prompts[:ms.num_objects]}
    seen = set()
    for reverse, f, k, m in spy.yields:
        if (reverse and f < f_of[k]) or (not reverse and f > f_of[k]):
            seen.add((k, f))
            np.testing.assert_array_equal(ms.frame(k, f), m)   # (a frame yielded twice must agree)
    assert seen == {(k, f) for k in range(ms.num_objects) for f in range(T) if f != f_of[k]}
    for k in range(ms.num_objects):
        np.testing.assert_array_equal(ms.frame(k, f_of[k]), forward_prompt[k])
    # frames before the middle/last prompts came from reverse sweeps
    assert any(reverse and f < f_of[k] for reverse, f, k, _ in spy.yields)


def test_each_object_is_reprompted_with_its_own_click(run):
    ms, spy, _ = run
    K = ms.num_objects
    forward, backward = spy.prompts[:K], spy.prompts[K:]
    assert [k for _, k, _, _ in forward] == list(range(K))
    click = {k: (f, c) for f, k, c, _ in forward}
    # backward: every object with a prompt frame > 0 again, with its own click on its own frame
    assert sorted(k for _, k, _, _ in backward) == [k for k in range(K) if click[k][0] > 0]
    for f, k, c, _ in backward:
        assert (f, c) == click[k]
    assert len({tuple(c) for _, c in click.values()}) == K                 # the clicks differ
    for k, (f, c) in click.items():                                       # and are their queries' own points
        q = QUERIES[np.flatnonzero(run[0].object_of_query == k)[0]]
        assert f == q[0] and c == pytest.approx([q[1] - 0.5, q[2] - 0.5])


def test_object_containing_with_hand_made_masks():
    a = np.full((10, 12), -5.0)
    a[2:6, 3:8] = 4.0
    b = np.full((10, 12), -5.0)
    b[4:9, 6:11] = 2.0
    assert sm.object_containing((4, 3), {0: a, 1: b}) == 0
    assert sm.object_containing((9, 7), {0: a, 1: b}) == 1
    assert sm.object_containing((6, 4), {0: a, 1: b}) == 0       # both: the higher logit
    assert sm.object_containing((6, 4), {0: b, 1: a}) == 1
    assert sm.object_containing((0, 0), {0: a, 1: b}) == -1
    assert sm.object_containing((0, 0), {}) == -1
    # corner convention: (3.0, 2.0) .. (3.99, 2.99) are inside pixel (col 3, row 2)
    assert sm.query_pixel(3.0, 2.0, (10, 12)) == (3, 2) and sm.query_pixel(3.99, 2.99, (10, 12)) == (3, 2)
    assert sm.query_pixel(12.0, -1.0, (10, 12)) == (11, 0)


def test_queries_inside_an_existing_mask_share_its_object(monkeypatch):
    """Grouping through the real sweeps, with every object's logits replaced by a disk of radius 8 px around its
    click (random weights give arbitrary masks): same-frame and later-frame queries inside a disk join it."""
    clicks = {}
    yy, xx = np.mgrid[0:H, 0:W]

    def fake(frame, ids, logits):
        out = torch.full_like(logits, -10.0)
        for j, k in enumerate(ids):
            cx, cy = clicks[k]
            out[j, 0] = torch.from_numpy(np.where((xx - cx) ** 2 + (yy - cy) ** 2 <= 64, 10.0, -10.0))
        return out

    real_build = sm.build_predictor

    def build(cfg, seed=0):
        p = real_build(cfg, seed)
        add = p.add_new_points_or_box

        def add_and_remember(state, frame_idx, obj_id, points, labels):
            clicks[obj_id] = points[0]
            return add(state, frame_idx=frame_idx, obj_id=obj_id, points=points, labels=labels)
        p.add_new_points_or_box = add_and_remember
        Spy(p, fake=fake)
        return p

    monkeypatch.setattr(sm, "build_predictor", build)
    q = np.array([[0, 20.5, 20.5],    # A: new object 0
                  [0, 80.5, 50.5],    # far from A: new object 1
                  [0, 22.5, 21.5],    # inside A's disk: joins 0
                  [2, 19.0, 25.0],    # later frame, inside A's (tracked) disk: joins 0
                  [2, 50.5, 10.5]],   # later frame, outside both: new object 2
                 np.float32)
    ms = sm.sam2_masks(_video(frames=3), q, _cfg(), seed=0)
    assert ms.object_of_query.tolist() == [0, 1, 0, 0, 2]
    assert ms.num_objects == 3 and ms.stats["object_prompt_frames"] == [0, 0, 2]
    assert ms.frame(0, 1)[int(20.5 / 2), int(20.5 / 2)] and not ms.frame(1, 1)[int(20.5 / 2), int(20.5 / 2)]


def test_cache_round_trip(run):
    ms, _, cache = run
    files = os.listdir(os.path.join(cache, "masks"))
    assert len(files) == 1 and files[0].endswith(".npz")
    ms2 = sm.sam2_masks(_video(), QUERIES, _cfg(), cache_dir=cache, seed=0)
    assert ms2.stats["masks_loaded"] is True and ms2.stats["encoder_calls"] == 0
    np.testing.assert_array_equal(ms2.packed, ms.packed)
    np.testing.assert_array_equal(ms2.object_of_query, ms.object_of_query)
    assert ms2.mask_hw == ms.mask_hw


def test_cache_key_covers_its_inputs():
    v, q = _video(), QUERIES
    base = sm.cache_key("w", "c", 128, "48x32", v, q)
    v2 = v.copy()
    v2[0, 0, 0, 0] ^= 1
    q2 = q.copy()
    q2[0, 1] += 0.25
    others = [sm.cache_key("w2", "c", 128, "48x32", v, q), sm.cache_key("w", "c2", 128, "48x32", v, q),
              sm.cache_key("w", "c", 256, "48x32", v, q), sm.cache_key("w", "c", 128, "native", v, q),
              sm.cache_key("w", "c", 128, "48x32", v2, q), sm.cache_key("w", "c", 128, "48x32", v, q2)]
    assert len(set(others + [base])) == 7
    assert sm.weights_id(_cfg(), seed=3) == "random-init-seed3"


@pytest.mark.parametrize("damage", ["garbage", "wrong_key"])
def test_bad_cache_file_is_discarded_and_recomputed(run, tmp_path, monkeypatch, damage):
    _, _, cache = run
    src = os.path.join(cache, "masks", os.listdir(os.path.join(cache, "masks"))[0])
    dst = tmp_path / "masks" / os.path.basename(src)
    dst.parent.mkdir()
    if damage == "garbage":
        dst.write_bytes(open(src, "rb").read()[:100])
    else:
        z = dict(np.load(src))
        z["key"] = np.array("0" * 64)
        np.savez(str(dst), **z)
        assert dst.exists()

    class Recompute(Exception):
        pass

    def build(cfg, seed=0):
        raise Recompute

    monkeypatch.setattr(sm, "build_predictor", build)
    with pytest.warns(UserWarning, match="SAM2 mask cache file"), pytest.raises(Recompute):
        sm.sam2_masks(_video(), QUERIES, _cfg(), cache_dir=str(tmp_path), seed=0)
    assert not dst.exists()


def test_missing_checkpoint_names_file(tmp_path, monkeypatch):
    monkeypatch.setenv("PITRACK_WEIGHTS", str(tmp_path))
    with pytest.raises(WeightsError, match=r"sam2\.1_hiera_tiny\.pt") as e:
        sm.sam2_masks(_video(frames=2), QUERIES[:1] * 0, _cfg(random_init=False))
    assert str(tmp_path) in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(WeightsError, match="nowhere/sam2_hiera_large.pt"):
        sm.sam2_masks(_video(frames=2), QUERIES[:1] * 0,
                      _cfg(random_init=False, checkpoint=str(tmp_path / "nowhere" / "sam2_hiera_large.pt")))


def test_checkpoint_name_to_config_table():
    import sam2
    expected = {
        "sam2.1_hiera_tiny.pt": "configs/sam2.1/sam2.1_hiera_t.yaml",
        "sam2.1_hiera_small.pt": "configs/sam2.1/sam2.1_hiera_s.yaml",
        "sam2.1_hiera_base_plus.pt": "configs/sam2.1/sam2.1_hiera_b+.yaml",
        "sam2.1_hiera_large.pt": "configs/sam2.1/sam2.1_hiera_l.yaml",
        "sam2_hiera_tiny.pt": "configs/sam2/sam2_hiera_t.yaml",
        "sam2_hiera_small.pt": "configs/sam2/sam2_hiera_s.yaml",
        "sam2_hiera_base_plus.pt": "configs/sam2/sam2_hiera_b+.yaml",
        "sam2_hiera_large.pt": "configs/sam2/sam2_hiera_l.yaml",
    }
    assert sm.CHECKPOINT_CONFIGS == expected
    for name, config in expected.items():
        assert sm.model_config_for(name) == config
        assert sm.model_config_for("/some/dir/" + name) == config
        assert os.path.isfile(os.path.join(sam2.__path__[0], config))   # a config the package has
    assert sm.model_config_for("sam2.1_hiera_tiny.pt", "configs/sam2/sam2_hiera_l.yaml") == \
        "configs/sam2/sam2_hiera_l.yaml"
    assert sm.model_config_for("my_finetune.pt", "configs/sam2.1/sam2.1_hiera_s.yaml") == \
        "configs/sam2.1/sam2.1_hiera_s.yaml"
    with pytest.raises(ConfigError, match="my_finetune.pt"):
        sm.model_config_for("my_finetune.pt")
    with pytest.raises(ConfigError, match="model_config"):
        sm.sam2_masks(_video(frames=2), QUERIES[:1] * 0, _cfg(checkpoint="my_finetune.pt"))


def test_checkpoint_loading(tmp_path, monkeypatch):
    """A full state dict under 'model' loads strictly; an extra, missing or mis-shaped key is a WeightsError."""
    monkeypatch.setenv("PITRACK_WEIGHTS", str(tmp_path))
    ref = sm.build_predictor(_cfg(), seed=5)
    sd = ref.state_dict()
    torch.save({"model": sd}, tmp_path / "sam2.1_hiera_tiny.pt")
    loaded = sm.build_predictor(_cfg(random_init=False), seed=0)
    assert all(torch.equal(v, sd[k]) for k, v in loaded.state_dict().items())   # seed 0 would differ
    first, second = list(sd)[:2]
    bad = {
        "extra": ({"bogus.weight": torch.zeros(1)}, "bogus.weight"),
        "missing": ({first: sd[first]}, second),
        "shape": ({first: torch.zeros(3)}, first),
    }
    path = tmp_path / "small.pt"
    for what, (state, key) in bad.items():
        torch.save({"model": state}, path)
        with pytest.raises(WeightsError, match=key.replace(".", r"\.")) as e:
            sm._load_checkpoint(ref, str(path), "configs/sam2.1/sam2.1_hiera_t.yaml")
        assert str(path) in str(e.value) and "\n" not in str(e.value), what
    torch.save({"state_dict": {first: sd[first]}}, path)   # not an official layout
    with pytest.raises(WeightsError, match="'model'"):
        sm._load_checkpoint(ref, str(path), "configs/sam2.1/sam2.1_hiera_t.yaml")
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="cannot read"):
        sm._load_checkpoint(ref, str(path), "configs/sam2.1/sam2.1_hiera_t.yaml")


def test_frames_normalised_like_the_package(tmp_path):
    """In-memory frames equal what the package's own loader makes of a lossless file of the same frame."""
    from PIL import Image
    from sam2.utils import misc
    video = _video(frames=1)
    Image.fromarray(video[0]).save(tmp_path / "0.png")
    img, h, w = misc._load_img_as_tensor(str(tmp_path / "0.png"), IMAGE_SIZE)
    mean = torch.tensor(sm.IMG_MEAN)[:, None, None]
    std = torch.tensor(sm.IMG_STD)[:, None, None]
    ref = (img.float() - mean) / std
    ours = sm.prepare_frames(video, IMAGE_SIZE)
    assert (h, w) == (H, W) and ours.shape == (1, 3, IMAGE_SIZE, IMAGE_SIZE) and ours.dtype == torch.float32
    torch.testing.assert_close(ours[0], ref, atol=1e-5, rtol=0)


def test_bad_inputs_and_config():
    with pytest.raises(InputError):
        sm.sam2_masks(_video().astype(np.float32), QUERIES, _cfg())
    with pytest.raises(InputError, match="query frames"):
        sm.sam2_masks(_video(), np.array([[T, 1, 1]], np.float32), _cfg())
    with pytest.raises(InputError, match="query frames"):
        sm.sam2_masks(_video(), np.array([[0.5, 1, 1]], np.float32), _cfg())
    with pytest.raises(ConfigError, match="multiple of 32"):
        sm.sam2_masks(_video(), QUERIES, _cfg(image_size=200))
    empty = sm.sam2_masks(_video(), np.zeros((0, 3), np.float32), _cfg())
    assert empty.num_objects == 0 and empty.packed.shape == (0, T, 32, 6) and empty.object_of_query.shape == (0,)
