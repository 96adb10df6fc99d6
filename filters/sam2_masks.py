"""Object masks of the query points from SAM2's video predictor (the ``sam2`` package), cached per video.

Entry point: :func:`sam2_masks` -> :class:`filters.masks.MaskSet`.

Algorithm
---------
1. **Frames in memory.** Every frame is resized to SAM2's square input (``cfg.image_size``; bicubic, as the
   package's own JPEG loader does with PIL) and ImageNet-normalised. ``init_state`` receives them through a
   temporary swap of ``sam2.sam2_video_predictor.load_video_frames`` (no JPEG round trip).
2. **Encoder once per frame.** ``init_state`` encodes frame 0; every other frame is encoded once right
   after, and ``inference_state["cached_features"]`` is pre-filled for all T frames. The package keeps only
   the last frame there, so without the pre-fill it would re-run the image encoder on every revisit (each
   prompt, each pass). The sine positional encodings are identical for every frame, so all frames share one
   copy. ``stats["encoder_calls"]`` counts the frames that went through the encoder (== T).
3. **Objects.** Query frames are visited in ascending order (queries of a frame in input order). A query
   whose pixel (corner convention: pixel index = floor(x), floor(y)) lies inside the mask (logits > 0) of an
   object that already exists at that frame joins that object (the one with the highest logit there) and
   adds no click; otherwise it creates a new object prompted with one positive click at its own position.
   Nothing but the query points is used as a prompt.
4. **Forward pass.** Objects are added when the sweep reaches their prompt frame and tracked forward from
   there to the last frame. The masks of the existing objects at a later query frame come from this sweep,
   which is what step 3 tests later queries against.
5. **Backward pass.** ``reset_state``, then the sweep runs from the latest prompt frame down to frame 0
   (``reverse=True``); each object is re-prompted with its OWN click when the sweep reaches its prompt frame
   and tracked backward to frame 0.
6. **Combination.** Object k with prompt frame f_k: frames after f_k from the forward pass, frames before
   f_k from the backward pass, f_k itself the prompt's result. Masks are logits > 0 at the video resolution,
   reduced to ``cfg.mask_resolution`` by area averaging (the covered fraction of each output pixel, i.e.
   adaptive average pooling of the binary mask) and thresholded at >= 0.5.

Because objects enter each sweep only at their prompt frame, every object is tracked exactly once on every
frame but its prompt frame: K·(T−1) tracking steps for K objects (the stock use, every object over every
frame from the earliest prompt in both directions, costs up to 2·K·T and fills the memory with frames tracked
before an object's prompt). Objects are tracked independently (the package loops over them), so cost is
linear in K.

Cost (tiny config, CPU, random weights; RESEARCH.md §1 with 2 threads, 256 measured here with one): encoder
~2.8 s/frame at 1024, ~0.46 s at 512, ~0.27 s at 256; tracking ~1.7-2.7 s per object-frame at 1024, ~0.2-0.3 s
at 512, ~0.1 s at 256. Feature memory ~17 MB/frame at 1024 (~4 MB at 512). The model runs in float32 (no
autocast) on ``cfg.device``.

Cache
-----
``<cache_dir>/masks/<key>.npz``: ``packed`` uint8 [K, T, h, ceil(w/8)] (``np.packbits`` of the bool masks
along w), ``object_of_query`` int64 [N], ``mask_hw``, ``shape`` and ``key``. ``key`` = sha256 of the weights'
sha256 (or ``random-init-seed<seed>``), the model config, the image size, the mask resolution, a hash of the
frames (every 4th row and column, with the full shape) and the query bytes. A file that fails to load or to
validate is deleted (core.atomic.discard_cache_file) and recomputed; files are written atomically. A cache that
cannot be written or read (core.atomic.cache_write / cache_unreadable) costs one warning; the masks are computed.

Checkpoints
-----------
Official SAM 2 / SAM 2.1 files (tiny, small, base_plus, large) map to the package's Hydra config names
(:data:`CHECKPOINT_CONFIGS`); ``cfg.model_config`` overrides. ``cfg.checkpoint`` is a file name looked up in
``$PITRACK_WEIGHTS`` or a path (core.paths.resolve_weights). The file is read with
``torch.load(weights_only=True)["model"]`` and must fit the model exactly (every key, every shape), else a
WeightsError names the first bad key. ``cfg.random_init`` (tests only) builds random weights seeded by ``seed``.
"""
import contextlib
import hashlib
import json
import os
import time
import warnings

import numpy as np

from core.checkpoints import check_fits
from core.atomic import cache_unreadable, cache_write, discard_cache_file
from core.coords import parse_resolution, to_center
from core.progress import progress_bar
from core.devices import resolve_device
from core.errors import ConfigError, InputError, WeightsError
from core.paths import file_sha256, resolve_weights
from filters.masks import MaskSet

CACHE_FORMAT = 1
IMG_MEAN = (0.485, 0.456, 0.406)   # the package's load_video_frames defaults (ImageNet)
IMG_STD = (0.229, 0.224, 0.225)
_SIZES = (("tiny", "t"), ("small", "s"), ("base_plus", "b+"), ("large", "l"))
#: official checkpoint file name -> the ``sam2`` package's Hydra config name
CHECKPOINT_CONFIGS = {
    **{f"sam2.1_hiera_{size}.pt": f"configs/sam2.1/sam2.1_hiera_{code}.yaml" for size, code in _SIZES},
    **{f"sam2_hiera_{size}.pt": f"configs/sam2/sam2_hiera_{code}.yaml" for size, code in _SIZES},
}
_CFG = "filters.mask.sam2"
_IN_MEMORY = "<pitrack: frames in memory>"


# --- configuration, checkpoints, model ------------------------------------------------------------------

def model_config_for(checkpoint, model_config=""):
    """The package's Hydra config name: ``model_config`` if given, else the one of an official checkpoint name."""
    if model_config:
        return str(model_config)
    name = os.path.basename(str(checkpoint or ""))
    if name in CHECKPOINT_CONFIGS:
        return CHECKPOINT_CONFIGS[name]
    raise ConfigError(f"{_CFG}.checkpoint '{checkpoint}' is not an official SAM2 checkpoint name "
                      f"({', '.join(CHECKPOINT_CONFIGS)}); set {_CFG}.model_config to the sam2 package's config "
                      f"name (e.g. configs/sam2.1/sam2.1_hiera_l.yaml)")


def checkpoint_path(checkpoint):
    """Path of ``checkpoint`` (a file name in $PITRACK_WEIGHTS, or a path); WeightsError naming it if absent."""
    if not checkpoint:
        raise ConfigError(f"{_CFG}.checkpoint is empty: give an official SAM2 checkpoint (e.g. sam2.1_hiera_large.pt)")
    c = str(checkpoint)
    if "/" in c or os.sep in c or c.startswith("~"):
        return resolve_weights(os.path.basename(c), explicit=c)
    return resolve_weights(c)


def weights_id(cfg, seed=0):
    """What identifies the weights in cache keys: the checkpoint's sha256, or ``random-init-seed<seed>``."""
    if cfg.random_init:
        return f"random-init-seed{int(seed)}"
    return file_sha256(checkpoint_path(cfg.checkpoint))


def _check_image_size(n):
    if int(n) != n or int(n) < 64 or int(n) % 32:
        raise ConfigError(f"{_CFG}.image_size must be a multiple of 32 and >= 64 (SAM2's Hiera encoder has "
                          f"stride 32; its checkpoints were trained at 1024), got {n}")
    return int(n)


def _import_sam2():
    """The ``sam2`` modules this file relies on; ConfigError when absent or laid out differently."""
    try:
        import sam2.sam2_video_predictor as vp
        from sam2.build_sam import build_sam2_video_predictor
    except ImportError as e:
        raise ConfigError(f"{_CFG} needs the 'sam2' package (pip install sam2; tested with 1.1.0): {e}; or set "
                          f"filters.mask.source to 'offline' or 'none'") from None
    needed = [("sam2.sam2_video_predictor.load_video_frames", getattr(vp, "load_video_frames", None)),
              ("sam2.sam2_video_predictor.SAM2VideoPredictor", getattr(vp, "SAM2VideoPredictor", None))]
    cls = getattr(vp, "SAM2VideoPredictor", None)
    for m in ("init_state", "add_new_points_or_box", "propagate_in_video", "reset_state", "forward_image",
              "_get_image_feature"):
        needed.append((f"SAM2VideoPredictor.{m}", getattr(cls, m, None)))
    missing = [n for n, v in needed if v is None]
    if missing:
        raise ConfigError(f"the installed sam2 package ({_sam2_version()}) lacks {', '.join(missing)}; "
                          f"{__name__} was written against sam2 1.1.0")
    return vp, build_sam2_video_predictor


def _sam2_version():
    try:
        from importlib.metadata import version
        return "sam2 " + version("sam2")
    except Exception:  # noqa: BLE001 - installed without metadata (a source checkout)
        return "sam2, version unknown"


def _load_checkpoint(model, path, config_name):
    """Strictly load ``torch.load(path, weights_only=True)["model"]`` into ``model``; WeightsError if it does not fit."""
    import torch
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the user's checkpoint problem
        first = str(e).splitlines()[0] if str(e) else ""
        raise WeightsError(f"cannot read SAM2 checkpoint {path}: {type(e).__name__}: {first}") from None
    sd = obj.get("model") if isinstance(obj, dict) else None
    if not isinstance(sd, dict) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise WeightsError(f"SAM2 checkpoint {path} has no 'model' state dict of tensors (an official checkpoint "
                           f"stores its weights under 'model')")
    target = model.state_dict()
    hint = "(a SAM 2.0 checkpoint needs a configs/sam2/ config, a SAM 2.1 one a configs/sam2.1/ config)"
    check_fits(sd, target, f"SAM2 checkpoint {path} does not fit {config_name}", hint)
    model.load_state_dict(sd, strict=True)


def build_predictor(cfg, seed=0):
    """SAM2 video predictor for ``cfg`` (a SAM2Config), in eval mode on ``cfg.device``.

    Built with ``build_sam2_video_predictor(config, ckpt_path=None, ...)`` and ``++model.image_size``; the
    checkpoint (unless ``cfg.random_init``) is then loaded strictly by :func:`_load_checkpoint`. With
    ``random_init`` the weights are the package's initialisation under ``torch.manual_seed(seed)`` (the
    global RNG state is restored afterwards).
    """
    import torch
    _, build = _import_sam2()
    config_name = model_config_for(cfg.checkpoint, cfg.model_config)
    image_size = _check_image_size(cfg.image_size)
    path = None if cfg.random_init else checkpoint_path(cfg.checkpoint)
    device = resolve_device(cfg.device, f"{_CFG}.device")
    from hydra.errors import HydraException
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            model = build(config_name, ckpt_path=None, device="cpu",
                          hydra_overrides_extra=[f"++model.image_size={image_size}"])
    except HydraException as e:
        known = ", ".join(sorted(set(CHECKPOINT_CONFIGS.values())))
        raise ConfigError(f"{_CFG}.model_config '{config_name}' is not a config of the sam2 package "
                          f"({type(e).__name__}: {str(e).splitlines()[0]}); known: {known}") from None
    if path is not None:
        _load_checkpoint(model, path, config_name)
    model = model.to(device).eval()
    model.requires_grad_(False)
    return model


# --- frames in memory, features computed once ----------------------------------------------------------

def prepare_frames(video, image_size, device="cpu"):
    """uint8 [T, H, W, 3] RGB -> float32 [T, 3, S, S] on ``device``: bicubic resize to S×S (PIL, like the
    package's JPEG loader), /255, minus ImageNet mean, over ImageNet std (the package's normalisation)."""
    import torch
    from PIL import Image
    T = video.shape[0]
    out = torch.empty((T, 3, image_size, image_size), dtype=torch.float32)
    for t in range(T):
        img = np.array(Image.fromarray(video[t]).resize((image_size, image_size), Image.BICUBIC))
        out[t] = torch.from_numpy(img).permute(2, 0, 1).float() / 255.0
    out -= torch.tensor(IMG_MEAN, dtype=torch.float32)[:, None, None]
    out /= torch.tensor(IMG_STD, dtype=torch.float32)[:, None, None]
    return out.to(device)


@contextlib.contextmanager
def _patched_predictor_module(vp, images, hw, progress):
    """During the block: ``vp.load_video_frames`` returns ``(images, H, W)`` (the frames are already in memory);
    the package's tqdm bars are drawn by core.progress (silenced with ``progress`` False). Not thread-safe (module attributes)."""
    saved = {"load_video_frames": vp.load_video_frames, "tqdm": getattr(vp, "tqdm", None)}

    def load_video_frames(video_path, image_size, *args, **kwargs):
        if images.shape[-1] != image_size:
            raise RuntimeError(f"frames prepared at {images.shape[-1]} px, the model wants {image_size}")
        return images, int(hw[0]), int(hw[1])

    vp.load_video_frames = load_video_frames
    if saved["tqdm"] is not None:           # the package's own bars: silenced, or as core.progress draws them
        vp.tqdm = lambda it, *a, **k: progress_bar(it, progress, **k)
    try:
        with warnings.catch_warnings():
            # Hole filling needs the package's compiled extension; without it the package warns on every
            # frame and skips that post-processing step (harmless, RESEARCH.md §1).
            warnings.filterwarnings("ignore", message=r"(?s).*Skipping the post-processing step")
            yield
    finally:
        for k, v in saved.items():
            if v is not None:
                setattr(vp, k, v)


def _count_encoder_calls(predictor):
    """Wrap ``predictor.forward_image`` (instance attribute) to count frames; returns (counter, undo)."""
    counter = {"frames": 0, "seconds": 0.0}
    original = predictor.forward_image

    def forward_image(img_batch):
        t0 = time.perf_counter()
        out = original(img_batch)
        counter["frames"] += int(img_batch.shape[0])
        counter["seconds"] += time.perf_counter() - t0
        return out

    predictor.forward_image = forward_image

    def undo():
        predictor.__dict__.pop("forward_image", None)
    return counter, undo


def prefill_features(predictor, state, progress=False):
    """Encode every frame not yet in ``state["cached_features"]`` once and store it there.

    ``init_state`` has already encoded frame 0. All frames then share frame 0's positional encodings (sine
    encodings of the feature-map size: identical for every frame; checked, kept separate if not).
    """
    import torch
    cache = state["cached_features"]
    if not isinstance(cache, dict) or 0 not in cache:
        raise ConfigError(f"the installed sam2 package ({_sam2_version()}) does not cache frame 0's features in "
                          f"init_state; {__name__} was written against sam2 1.1.0")
    shared_pos = list(cache[0][1]["vision_pos_enc"])
    device = state["device"]
    for t in progress_bar(range(state["num_frames"]), desc="SAM2 encoder", enabled=progress, leave=False):
        if t in cache:
            continue
        image = state["images"][t].to(device).float().unsqueeze(0)
        with torch.inference_mode():
            out = predictor.forward_image(image)
        pos = out["vision_pos_enc"]
        if len(pos) == len(shared_pos) and all(a.shape == b.shape and torch.equal(a, b)
                                               for a, b in zip(pos, shared_pos)):
            out["vision_pos_enc"] = list(shared_pos)
        cache[t] = (image, out)


# --- queries, grouping, masks --------------------------------------------------------------------------

def query_pixel(x, y, hw):
    """Corner-convention (x, y) -> (column, row) index of the pixel containing it, clipped into the frame."""
    H, W = hw
    return int(min(max(np.floor(x), 0), W - 1)), int(min(max(np.floor(y), 0), H - 1))


def object_containing(pixel, logits_by_object):
    """The object whose mask (logits > 0) contains ``pixel`` = (column, row), or -1.

    ``logits_by_object``: {object id: [H, W] logits (torch or numpy)} of the objects that exist at the
    query's frame. Several: the highest logit wins (ties: the lowest id).
    """
    col, row = pixel
    best, best_v = -1, 0.0
    for k in sorted(logits_by_object):
        v = float(logits_by_object[k][row, col])
        if v > best_v:
            best, best_v = k, v
    return best


def downsample_masks(logits, hw):
    """[B, 1, H, W] logits (torch) -> bool numpy [B, h, w]: mask = logits > 0, area-averaged to ``hw``
    (the covered fraction of each output pixel), kept where the fraction is >= 0.5."""
    import torch.nn.functional as F
    m = (logits > 0).float()
    if tuple(m.shape[-2:]) != tuple(hw):
        m = F.interpolate(m, size=tuple(hw), mode="area")
    return (m[:, 0] >= 0.5).cpu().numpy()


def _validate(video, queries):
    video = np.asarray(video)
    if video.ndim != 4 or video.shape[-1] != 3 or video.dtype != np.uint8 or video.shape[0] < 1:
        raise InputError(f"video must be uint8 [T, H, W, 3] with T >= 1, got {video.shape} {video.dtype}")
    q = np.asarray(queries)
    if q.ndim != 2 or q.shape[1] != 3 or not np.issubdtype(q.dtype, np.number):
        raise InputError(f"queries must be [N, 3] rows (t, x, y), got {q.shape} {q.dtype}")
    q = np.ascontiguousarray(q, dtype=np.float32)
    if not np.isfinite(q).all():
        raise InputError("queries contain non-finite values")
    t = np.round(q[:, 0])
    if np.any(np.abs(q[:, 0] - t) > 1e-3) or np.any(t < 0) or np.any(t >= video.shape[0]):
        raise InputError(f"query frames must be integers in [0, {video.shape[0] - 1}]")
    return video, q, t.astype(np.int64)


def _track(predictor, video, queries, qt, mask_hw, progress=False):
    """Run SAM2 on the video; returns (masks bool [K, T, h, w], object_of_query int64 [N], stats).

    ``queries`` float32 [N, 3], ``qt`` int64 [N] their frames, ``mask_hw`` the (h, w) of the stored masks.
    """
    vp, _ = _import_sam2()
    T, H, W = video.shape[:3]
    S = int(predictor.image_size)
    device = predictor.device
    stats = {"frames_forward": 0, "frames_backward": 0}
    counter, undo = _count_encoder_calls(predictor)
    try:
        t0 = time.perf_counter()
        images = prepare_frames(video, S, device)
        with _patched_predictor_module(vp, images, (H, W), progress):
            try:
                state = predictor.init_state(_IN_MEMORY)
            except NotImplementedError as e:  # the package's own loader was called: the swap had no effect
                raise ConfigError(f"the installed sam2 package ({_sam2_version()}) does not load frames through "
                                  f"sam2.sam2_video_predictor.load_video_frames ({e}); {__name__} was written "
                                  f"against sam2 1.1.0") from None
            if state.get("images") is not images:
                raise ConfigError(f"the installed sam2 package ({_sam2_version()}) did not keep the frames given "
                                  f"to init_state; {__name__} was written against sam2 1.1.0")
            prefill_features(predictor, state, progress)
            stats["prepare_encode_s"] = time.perf_counter() - t0
            t1 = time.perf_counter()
            masks, object_of_query, prompt_frame = _two_passes(predictor, state, queries, qt, mask_hw, stats)
            stats["tracking_s"] = time.perf_counter() - t1
    finally:
        undo()
    stats["encoder_calls"] = counter["frames"]
    stats["encoder_s"] = counter["seconds"]
    stats["object_prompt_frames"] = [int(f) for f in prompt_frame]
    if counter["frames"] > T:
        warnings.warn(f"SAM2's image encoder ran {counter['frames']} times for {T} frames: the pre-filled feature "
                      f"cache was bypassed (sam2 package {_sam2_version()} differs from 1.1.0?)", stacklevel=3)
    del state
    return masks, object_of_query, stats


def _two_passes(predictor, state, queries, qt, mask_hw, stats):
    """Objects from the queries, forward sweep, reset, backward sweep (see the module docstring)."""
    T = state["num_frames"]
    H, W = state["video_height"], state["video_width"]
    N = len(queries)
    order = np.argsort(qt, kind="stable")
    query_frames = sorted(set(int(t) for t in qt))
    object_of_query = np.full(N, -1, np.int64)
    clicks = []          # per object: (frame, [x, y] in original pixel-index coordinates)
    masks = {}           # object -> bool [T, h, w]
    done = {}            # object -> bool [T]: frame filled

    def record(k, t, logits_k):
        masks[k][t] = downsample_masks(logits_k[None], mask_hw)[0]
        done[k][t] = True

    # Forward sweep: at each query frame, group or create; then track everything up to the next query frame.
    for i, t in enumerate(query_frames):
        at_t = {}  # object -> [H, W] logits at frame t, from the sweep (older objects) or the prompt (new ones)
        if i > 0:
            start = query_frames[i - 1] + 1
            for f, ids, logits in predictor.propagate_in_video(state, start_frame_idx=start,
                                                               max_frame_num_to_track=t - start):
                for j, k in enumerate(ids):
                    record(k, f, logits[j])
                    stats["frames_forward"] += 1
                    if f == t:
                        at_t[k] = logits[j, 0]
        for q in order[qt[order] == t]:
            x, y = float(queries[q, 1]), float(queries[q, 2])
            pix = query_pixel(x, y, (H, W))
            k = object_containing(pix, at_t)
            if k < 0:
                k = len(clicks)
                click = [float(np.clip(v, 0, n - 1)) for v, n in zip(to_center([x, y]), (W, H))]
                clicks.append((t, click))
                masks[k] = np.zeros((T,) + tuple(mask_hw), bool)
                done[k] = np.zeros(T, bool)
                _, ids, logits = predictor.add_new_points_or_box(state, frame_idx=t, obj_id=k, points=[click],
                                                                 labels=[1])
                j = list(ids).index(k)
                at_t[k] = logits[j, 0]
                record(k, t, logits[j])
            object_of_query[q] = k
    if query_frames and query_frames[-1] < T - 1:
        start = query_frames[-1] + 1
        for f, ids, logits in predictor.propagate_in_video(state, start_frame_idx=start,
                                                           max_frame_num_to_track=T - 1 - start):
            for j, k in enumerate(ids):
                record(k, f, logits[j])
                stats["frames_forward"] += 1

    # Backward sweep: same objects, each with its own click, entering at its prompt frame.
    predictor.reset_state(state)
    prompt_frame = [c[0] for c in clicks]
    frames_desc = sorted(set(prompt_frame), reverse=True)
    for i, c in enumerate(frames_desc):
        if c == 0:
            break
        for k, (f, click) in enumerate(clicks):
            if f == c:
                predictor.add_new_points_or_box(state, frame_idx=c, obj_id=k, points=[click], labels=[1])
        stop = frames_desc[i + 1] if i + 1 < len(frames_desc) else 0
        # The package skips a reverse sweep that starts at frame 0, so a sweep covering only frame 0 starts
        # at the prompt frame itself (already-known frames are not overwritten below).
        start = c - 1 if c - 1 > 0 else c
        for f, ids, logits in predictor.propagate_in_video(state, start_frame_idx=start,
                                                           max_frame_num_to_track=start - stop, reverse=True):
            for j, k in enumerate(ids):
                if f < prompt_frame[k] and not done[k][f]:
                    record(k, f, logits[j])
                    stats["frames_backward"] += 1
    predictor.reset_state(state)

    K = len(clicks)
    missing = [(k, int(np.flatnonzero(~done[k])[0])) for k in range(K) if not done[k].all()]
    if missing:
        raise RuntimeError(f"SAM2 sweeps left object {missing[0][0]} without a mask at frame {missing[0][1]}")
    out = np.stack([masks[k] for k in range(K)]) if K else np.zeros((0, T) + tuple(mask_hw), bool)
    return out, object_of_query, prompt_frame


# --- cache ---------------------------------------------------------------------------------------------

def cache_key(weights, model_config, image_size, mask_resolution, video, queries):
    """sha256 hex of everything the masks depend on (see the module docstring)."""
    fh = hashlib.sha256(repr(tuple(video.shape)).encode())
    fh.update(memoryview(np.ascontiguousarray(video[:, ::4, ::4])).cast("B"))
    q = np.ascontiguousarray(queries, dtype=np.float32)
    fields = dict(format=CACHE_FORMAT, weights=str(weights), model_config=str(model_config),
                  image_size=int(image_size), mask_resolution=str(mask_resolution), frames=fh.hexdigest(),
                  queries=hashlib.sha256(repr(q.shape).encode() + q.tobytes()).hexdigest())
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def _load_cache(path, key, T, N, mask_hw):
    """(packed, object_of_query) from ``path`` if it validates, else None (the file is deleted)."""
    why = None
    try:
        with np.load(path, allow_pickle=False) as z:
            k, packed, ooq = str(z["key"]), z["packed"], z["object_of_query"]
            hw = tuple(int(v) for v in z["mask_hw"])
    except PermissionError as e:                   # not corrupt: keep it, run without it
        return cache_unreadable(path, "SAM2 mask cache file", e)
    except Exception as e:  # noqa: BLE001 - truncated zip, missing member, bad header: all mean "corrupt"
        why = f"unreadable ({type(e).__name__})"
    else:
        h, w = mask_hw
        if k != key:
            why = f"key {k[:16]}… != {key[:16]}…"
        elif hw != tuple(mask_hw):
            why = f"mask size {hw} != {tuple(mask_hw)}"
        elif packed.dtype != np.uint8 or packed.ndim != 4 or packed.shape[1:] != (T, h, (w + 7) // 8):
            why = f"packed masks {packed.shape} {packed.dtype} != uint8 [K, {T}, {h}, {(w + 7) // 8}]"
        elif ooq.dtype != np.int64 or ooq.shape != (N,):
            why = f"object_of_query {ooq.shape} {ooq.dtype} != int64 [{N}]"
        elif N and (ooq.min() < 0 or ooq.max() >= packed.shape[0] or len(np.unique(ooq)) != packed.shape[0]):
            why = f"object_of_query does not index the {packed.shape[0]} objects"
    if why is not None:
        discard_cache_file(path, "SAM2 mask cache file", why)
        return None
    return packed, ooq


def _save_cache(path, key, ms):
    """Write the cache file; False (with one warning) when it cannot be written."""
    def write(tmp):
        with open(tmp, "wb") as f:
            np.savez_compressed(f, packed=ms.packed, object_of_query=ms.object_of_query, key=np.array(key),
                                mask_hw=np.array(ms.mask_hw, np.int64))
    return cache_write(path, write, "SAM2 mask cache file", suffix=".npz")


# --- entry point ---------------------------------------------------------------------------------------

def sam2_masks(video, queries, cfg, cache_dir=None, progress=False, seed=0):
    """SAM2 object masks of the queries' objects over the whole video.

    video: uint8 [T, H, W, 3] RGB at the original resolution.
    queries: float [N, 3] rows (t, x, y); t an integer frame, x/y original pixels in the TAP-Vid corner
        convention ((0, 0) = top-left corner of the top-left pixel).
    cfg: SAM2Config. cache_dir: the video's cache folder (masks in ``<cache_dir>/masks/``); None: no cache.
    progress: show progress bars. seed: the random-init seed (``cfg.random_init``, tests).

    Returns MaskSet: ``packed`` bit-packed bool [K, T, h, w] masks at ``parse_resolution(cfg.mask_resolution,
    (H, W))``, ``object_of_query`` int64 [N] in 0..K-1, and ``stats``: sam2_s (seconds, total), encoder_calls
    (frames through SAM2's image encoder: T after a run, 0 when loaded), objects (K), masks_loaded, masks_mb
    (packed size); after a run also encoder_s, tracking_s (the two sweeps), prepare_encode_s, frames_forward /
    frames_backward (object-frames tracked by each sweep: together K·(T−1)), object_prompt_frames [K].

    Raises InputError (video, queries), ConfigError (config, sam2 package), WeightsError (checkpoint).
    """
    t_start = time.perf_counter()
    video, q, qt = _validate(video, queries)
    T, H, W = video.shape[:3]
    mask_hw = parse_resolution(cfg.mask_resolution, (H, W))
    config_name = model_config_for(cfg.checkpoint, cfg.model_config)
    image_size = _check_image_size(cfg.image_size)
    stats = dict(model_config=config_name, image_size=image_size, encoder_calls=0, masks_loaded=False)
    if len(q) == 0:
        ms = MaskSet.from_masks(np.zeros((0, T) + tuple(mask_hw), bool), np.zeros(0, np.int64))
        stats.update(objects=0, masks_mb=0.0, sam2_s=time.perf_counter() - t_start)
        return ms._replace(stats=stats)
    weights = weights_id(cfg, seed)
    key = cache_key(weights, config_name, image_size, cfg.mask_resolution, video, q)
    path = os.path.join(os.fspath(cache_dir), "masks", f"{key}.npz") if cache_dir is not None else None
    loaded = _load_cache(path, key, T, len(q), mask_hw) if path is not None and os.path.isfile(path) else None
    if loaded is not None:
        ms = MaskSet(loaded[0], tuple(mask_hw), loaded[1], {})
        stats["masks_loaded"] = True
    else:
        predictor = build_predictor(cfg, seed)
        masks, object_of_query, run_stats = _track(predictor, video, q, qt, mask_hw, progress)
        stats.update(run_stats)
        ms = MaskSet.from_masks(masks, object_of_query)
        if path is not None:
            _save_cache(path, key, ms)
    stats.update(objects=ms.num_objects, masks_mb=ms.packed.nbytes / 2 ** 20, sam2_s=time.perf_counter() - t_start)
    return ms._replace(stats=stats)
