"""FlowBank: optical flow between frame pairs of one video, both directions, with occlusion and variance.

The video is resized once to the working resolution ``bank.working_hw``; every flow is in working
pixels, pixel-centre convention (see flow/occlusion.py). A pair {a, b} is always computed in both
directions (the forward–backward check needs both), batched, and kept in memory as float16.

Disk cache (``cache_dir`` given): ``<cache_dir>/flows/<key>/<a>_<b>.npz`` (a < b), one file per
unordered pair holding both flows as float16, written atomically. ``key`` is a short hash of
everything that determines the stored flows: cache format, backend, working resolution, RAFT
iterations and the sha256 of the weights file (or 'torchvision-download') / the DIS preset, and a
fingerprint of the working-resolution frames (occlusion and variance are recomputed from the two flows
at the sampled points, so their parameters are not in the key). Each file also records the key, the pair and the shape; a file that
does not load or does not match (key, pair, shape, dtype, finiteness) is deleted and recomputed.
"""
import hashlib
import json
import os
import time
import zipfile

import numpy as np
from tqdm import tqdm

from flow.config import FlowConfig
from flow.occlusion import FBUncertainty
from core.atomic import atomic_path, discard_cache_file, save_json
from core.coords import parse_resolution
from core.images import resize_video
from core.errors import ConfigError, InputError

CACHE_FORMAT = 1     # bump when the meaning of stored flows changes (padding, normalisation, layout)






def make_backend(cfg):
    """The flow backend of ``cfg``: a callable (frames1, frames2) -> float32 [B, 2, h, w] with ``cache_id()``."""
    if cfg.backend in ("raft_small", "raft_large"):
        from flow.raft import RaftFlow
        return RaftFlow(cfg.backend, cfg.weights, cfg.iterations, cfg.allow_download, cfg.device)
    if cfg.backend == "dis":
        from flow.dis import DISFlow
        return DISFlow(cfg.dis_preset)
    raise ConfigError(f"unknown flow.backend '{cfg.backend}' (known: raft_small, raft_large, dis)")




def _folder_mb(folder):
    total = 0
    if folder and os.path.isdir(folder):
        for e in os.scandir(folder):
            if e.is_file():
                total += e.stat().st_size
    return total / 2 ** 20


class FlowBank:
    """Flows of ``video`` (uint8 RGB [T, H, W, 3], original resolution) between any frame pairs."""

    def __init__(self, video, cfg: FlowConfig, cache_dir=None, progress=True):
        video = np.asarray(video)
        if video.ndim != 4 or video.shape[-1] != 3 or video.dtype != np.uint8 or video.shape[0] < 1:
            raise InputError(f"FlowBank needs a uint8 RGB video [T, H, W, 3], got {video.shape} {video.dtype}")
        if int(cfg.batch_size) < 1:
            raise ConfigError(f"flow.batch_size must be >= 1, got {cfg.batch_size}")
        self.cfg = cfg
        self.progress = progress
        self.num_frames = int(video.shape[0])
        self.original_hw = (int(video.shape[1]), int(video.shape[2]))
        self.working_hw = tuple(int(v) for v in parse_resolution(cfg.resolution, self.original_hw))
        t0 = time.perf_counter()
        self.frames = resize_video(video, self.working_hw)   # uint8 [T, h, w, 3] at working resolution
        resize_s = time.perf_counter() - t0
        self._backend = make_backend(cfg)
        self._uncertainty = FBUncertainty.from_config(cfg)
        self.key_fields = self._key_fields()
        self.key = hashlib.sha256(json.dumps(self.key_fields, sort_keys=True).encode()).hexdigest()[:16]
        self.cache_folder = os.path.join(os.fspath(cache_dir), "flows", self.key) if cache_dir is not None else None
        self._flows = {}                              # (a, b) -> float16 [2, h, w], flow a -> b
        self._stats = dict(flow_s=0.0, flow_pairs_computed=0, flow_pairs_loaded=0, network_evals=0,
                           cache_files_rejected=0, load_s=0.0, save_s=0.0, resize_s=resize_s)

    # --- cache key and files ---------------------------------------------------------------------------

    def _key_fields(self):
        h = hashlib.sha256(repr(self.frames.shape).encode())
        h.update(np.ascontiguousarray(self.frames[:, ::2, ::2]).tobytes())
        return dict(self._backend.cache_id(), format=CACHE_FORMAT, working_hw=list(self.working_hw),
                    frames=h.hexdigest()[:16])

    def _pair_path(self, a, b):
        return os.path.join(self.cache_folder, f"{a:06d}_{b:06d}.npz")

    def _shape(self):
        return (2,) + self.working_hw

    def _load_pair(self, a, b):
        """Both flows of pair a < b from disk, or None (a bad file is deleted)."""
        if self.cache_folder is None:
            return None
        path = self._pair_path(a, b)
        if not os.path.isfile(path):
            return None
        t0 = time.perf_counter()
        why = None
        try:
            with np.load(path, allow_pickle=False) as z:
                key, shape, pair = str(z["key"]), tuple(int(v) for v in z["shape"]), tuple(int(v) for v in z["pair"])
                fwd, bwd = z["fwd"], z["bwd"]
        except Exception as e:  # noqa: BLE001 - truncated zip, missing member, bad header: all mean "corrupt"
            why = f"unreadable ({type(e).__name__})"
        else:
            if key != self.key:
                why = f"key {key} != {self.key}"
            elif shape != self._shape() or pair != (a, b):
                why = f"shape/pair {shape}/{pair} != {self._shape()}/{(a, b)}"
            elif fwd.dtype != np.float16 or bwd.dtype != np.float16:
                why = f"dtype {fwd.dtype}/{bwd.dtype} != float16"
            elif fwd.shape != self._shape() or bwd.shape != self._shape():
                why = f"array shapes {fwd.shape}/{bwd.shape} != {self._shape()}"
            elif not (np.isfinite(fwd).all() and np.isfinite(bwd).all()):
                why = "non-finite values"
        self._stats["load_s"] += time.perf_counter() - t0
        if why is not None:
            discard_cache_file(path, "flow cache file", why)
            self._stats["cache_files_rejected"] += 1
            return None
        return fwd, bwd

    def _save_pair(self, a, b):
        if self.cache_folder is None:
            return
        t0 = time.perf_counter()
        os.makedirs(self.cache_folder, exist_ok=True)
        meta = os.path.join(self.cache_folder, "meta.json")
        if not os.path.isfile(meta):
            save_json(meta, dict(self.key_fields, key=self.key))
        arrays = dict(fwd=self._flows[(a, b)], bwd=self._flows[(b, a)], key=np.array(self.key),
                      shape=np.array(self._shape(), np.int64), pair=np.array([a, b], np.int64))
        with atomic_path(self._pair_path(a, b), suffix=".npz") as tmp:
            # an .npz that np.load reads, deflated at level 1: ~4x faster to write than np.savez_compressed
            # (level 6) for flows, and only a few percent larger
            with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as z:
                for name, arr in arrays.items():
                    with z.open(name + ".npy", "w", force_zip64=True) as f:
                        np.lib.format.write_array(f, np.asarray(arr), allow_pickle=False)
        self._stats["save_s"] += time.perf_counter() - t0

    # --- computing ---------------------------------------------------------------------------------------

    def _check_index(self, t):
        if isinstance(t, (bool, np.bool_)) or not isinstance(t, (int, np.integer)):
            raise InputError(f"frame index must be an integer, got {t!r}")
        t = int(t)
        if not 0 <= t < self.num_frames:
            raise InputError(f"frame index {t} out of range [0, {self.num_frames})")
        return t

    def _have(self, a, b):
        return (a, b) in self._flows and (b, a) in self._flows

    def _compute(self, pairs, bar=None):
        """Compute both directions of unordered pairs [(a, b), a < b], cfg.batch_size pairs per call."""
        bs = int(self.cfg.batch_size)
        for i in range(0, len(pairs), bs):
            chunk = pairs[i:i + bs]
            src = [a for a, _ in chunk] + [b for _, b in chunk]
            dst = [b for _, b in chunk] + [a for a, _ in chunk]
            t0 = time.perf_counter()
            flows = self._backend(self.frames[src], self.frames[dst])
            self._stats["flow_s"] += time.perf_counter() - t0
            self._stats["network_evals"] += len(src)
            if not np.isfinite(flows).all():
                raise RuntimeError(f"flow backend {self.cfg.backend} returned non-finite flow for pairs {chunk}")
            for (s, d), f in zip(zip(src, dst), flows):
                self._flows[(s, d)] = f.astype(np.float16)
            for a, b in chunk:
                self._stats["flow_pairs_computed"] += 1
                self._save_pair(a, b)
            if bar is not None:
                bar.update(len(chunk))

    def _ensure(self, pairs):
        """Make the unordered pairs [(a, b), a < b] available: memory, else disk, else computed (batched)."""
        todo = []
        for a, b in pairs:
            if self._have(a, b):
                continue
            got = self._load_pair(a, b)
            if got is None:
                todo.append((a, b))
                continue
            self._flows[(a, b)], self._flows[(b, a)] = got
            self._stats["flow_pairs_loaded"] += 1
        if not todo:
            return
        h, w = self.working_hw
        with tqdm(total=len(todo), unit="pair", disable=not self.progress or len(todo) < 2,
                  desc=f"flow {self.cfg.backend} {w}x{h}") as bar:
            self._compute(todo, bar)

    # --- public API --------------------------------------------------------------------------------------

    def prefetch(self, pairs):
        """Make every pair (a, b) in ``pairs`` available: each missing unordered pair {a, b} is loaded from
        the cache or computed once, in both directions, ``cfg.batch_size`` pairs per network call."""
        want = []
        seen = set()
        for a, b in pairs:
            a, b = self._check_index(a), self._check_index(b)
            p = (min(a, b), max(a, b))
            if a != b and p not in seen:
                seen.add(p)
                want.append(p)
        self._ensure(want)

    def flow(self, a, b):
        """Flow from frame ``a`` to frame ``b``: float32 [2, h, w] working px (computed or loaded if needed)."""
        a, b = self._check_index(a), self._check_index(b)
        if a == b:
            return np.zeros(self._shape(), np.float32)
        self._ensure([(min(a, b), max(a, b))])
        return self._flows[(a, b)].astype(np.float32)

    def sample(self, pairs, points):
        """Flow, occlusion and variance of G frame pairs at G point sets, in one batch.

        ``pairs``: G pairs (a, b); ``points``: torch float [G, M, 2] (x, y) working px, pixel-centre
        convention, positions in frame a. Returns torch float32 [G, M, 4]: dx, dy (px), occlusion
        probability, variance (px²) of the flow a → b at each point. Only the sampled points are
        evaluated: F_ab at p, then F_ba at q = p + F_ab(p), then the FB formulas (flow/occlusion.py).
        """
        import torch
        from core.sampling import sample_fields
        pairs = [(self._check_index(a), self._check_index(b)) for a, b in pairs]
        self._ensure(sorted({(min(a, b), max(a, b)) for a, b in pairs if a != b}))
        zeros = np.zeros(self._shape(), np.float16)
        fab = torch.from_numpy(np.stack([self._flows[(a, b)] if a != b else zeros for a, b in pairs])).float()
        fba = torch.from_numpy(np.stack([self._flows[(b, a)] if a != b else zeros for a, b in pairs])).float()
        d_ab = sample_fields(fab, points)
        q = points + d_ab
        d_ba = sample_fields(fba, q)
        h, w = self.working_hw
        outside = ((q[..., 0] < -0.5) | (q[..., 0] > w - 0.5) | (q[..., 1] < -0.5) | (q[..., 1] > h - 0.5)).numpy()
        occ, var = self._uncertainty.at_points(d_ab.numpy(), d_ba.numpy(), outside)
        return torch.cat([d_ab, torch.from_numpy(occ)[..., None], torch.from_numpy(var)[..., None]], -1)

    def has(self, a, b):
        """Whether the flows of pair {a, b} are in memory."""
        return a == b or self._have(int(a), int(b))

    @property
    def stats(self):
        """flow_s (seconds computing flow), flow_pairs_computed, flow_pairs_loaded, network_evals (flow fields
        computed, 2 per pair), cache_mb (size of this key's cache folder), cache_files_rejected, load_s,
        save_s, resize_s, memory_mb (flows held in memory)."""
        s = dict(self._stats)
        s["cache_mb"] = _folder_mb(self.cache_folder)
        s["memory_mb"] = sum(f.nbytes for f in self._flows.values()) / 2 ** 20
        return s
