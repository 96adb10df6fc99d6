"""FlowBank: optical flow between frame pairs of one video, both directions, with occlusion and variance,
computed when first needed and released when no later step needs it.

Frames are held once, as given (uint8, original resolution); a frame pair is resized to the working
resolution ``bank.working_hw`` when its flow is computed. Every flow is in working pixels, pixel-centre
convention (see flow/occlusion.py). A pair {a, b} is always computed in both directions (the
forward–backward check needs both), batched, and held as float16 (8·h·w bytes per pair).

Streaming. The stages that read flows declare, before they start, the order in which they will read
them (:meth:`FlowBank.plan`: named segments of steps, each step the pairs one call reads). The bank
holds a pair from its first use to its last, within ``flow.memory_mb``: over the budget it drops the
pair whose next use is farthest away (Belady's rule), and computes it again when that use comes. A
pair with no use left is released at once; a pair read without a plan is kept only while the budget
has room. Peak flow memory is therefore at most ``memory_mb`` (or one step's pairs, if larger),
whatever the video's length; flows are deterministic, so results do not depend on the budget.

Disk cache (``flow.cache``: ``auto`` = RAFT only, ``on``, ``off``; ``cache_dir`` given):
``<cache_dir>/flows/<key>/<a>_<b>.npz`` (a < b), one file per unordered pair holding both flows as
float16, written atomically. DIS is not cached under ``auto``: it recomputes a pair faster than the
pair's file is written and read. ``key`` is a short hash of everything that determines the stored
flows: cache format, backend, working resolution, RAFT iterations and the sha256 of the weights file
(or 'torchvision-download') / the DIS preset, and a fingerprint of the working-resolution frames.
With ``flow.uncertainty: learned`` a file also holds the head's maps of both flows (float16, 1/4 or 1/8
of the working resolution) and the key covers the head's file, so a RAFT head is never run twice.
Each file also records the key, the pair and the shape; a file that does not load or does not match
(key, pair, shape, dtype, finiteness) is deleted and recomputed. A cache that cannot be written is
skipped with one warning.
"""
import collections
import hashlib
import json
import os
import time
import zipfile

import numpy as np
from core.progress import progress_bar

from flow.config import FlowConfig
from flow.occlusion import FBUncertainty
from core.atomic import cache_unreadable, cache_write, discard_cache_file
from core.coords import outside_frame, parse_resolution
from core.paths import folder_mb, json_key
from core.images import ResizedFrames
from core.errors import ConfigError, InputError

CACHE_FORMAT = 1     # bump when the meaning of stored flows changes (padding, normalisation, layout)
NEVER = float("inf")


def make_backend(cfg):
    """The flow backend of ``cfg``: a callable (frames1, frames2) -> float32 [B, 2, h, w] with ``cache_id()``."""
    if cfg.backend in ("raft_small", "raft_large"):
        from flow.raft import RaftFlow
        return RaftFlow(cfg.backend, cfg.weights, cfg.iterations, cfg.allow_download, cfg.device)
    if cfg.backend == "dis":
        from flow.dis import DISFlow
        return DISFlow(cfg.dis_preset)
    raise ConfigError(f"unknown flow.backend '{cfg.backend}' (known: raft_small, raft_large, dis)")


def make_uncertainty(cfg):
    """The occlusion and variance estimator of ``cfg.uncertainty``: forward–backward formulas or a learned head."""
    if cfg.uncertainty == "fb":
        return FBUncertainty.from_config(cfg)
    if cfg.uncertainty == "learned":
        from flow.learned_uncertainty import LearnedUncertainty
        return LearnedUncertainty(cfg.backend, cfg.uncertainty_weights, cfg.var_max)
    if cfg.uncertainty == "learned_variance":
        from flow.learned_uncertainty import LearnedVariance
        return LearnedVariance(cfg.backend, cfg.uncertainty_weights, FBUncertainty.from_config(cfg))
    raise ConfigError(f"unknown flow.uncertainty '{cfg.uncertainty}' (known: fb, learned, learned_variance)")


def uses_disk_cache(cfg):
    """Whether ``cfg`` (FlowConfig) stores flows on disk: ``flow.cache`` on, or auto with a RAFT backend."""
    if cfg.cache not in ("auto", "on", "off"):
        raise ConfigError(f"flow.cache must be auto, on or off, got {cfg.cache!r}")
    return cfg.cache == "on" or (cfg.cache == "auto" and cfg.backend != "dis")


class FlowBank:
    """Flows of ``video`` (uint8 RGB [T, H, W, 3], original resolution) between any frame pairs."""

    def __init__(self, video, cfg: FlowConfig, cache_dir=None, progress=True):
        video = np.asarray(video)
        if video.ndim != 4 or video.shape[-1] != 3 or video.dtype != np.uint8 or video.shape[0] < 1:
            raise InputError(f"FlowBank needs a uint8 RGB video [T, H, W, 3], got {video.shape} {video.dtype}")
        if int(cfg.batch_size) < 1:
            raise ConfigError(f"flow.batch_size must be >= 1, got {cfg.batch_size}")
        if not float(cfg.memory_mb) > 0:
            raise ConfigError(f"flow.memory_mb must be > 0, got {cfg.memory_mb}")
        self.cfg = cfg
        self.progress = progress
        self.num_frames = int(video.shape[0])
        self.original_hw = (int(video.shape[1]), int(video.shape[2]))
        self.working_hw = tuple(int(v) for v in parse_resolution(cfg.resolution, self.original_hw))
        if cfg.backend.startswith("raft"):
            from flow.raft import check_correlation_memory
            check_correlation_memory(self.working_hw, cfg.batch_size)
        self._working = ResizedFrames(video, self.working_hw)   # the video held once, resized when read
        self._backend = make_backend(cfg)
        self._uncertainty = make_uncertainty(cfg)
        self.uncertainty_id = self._uncertainty.cache_id()
        self.occlusion_id = self._uncertainty.occlusion_id()     # what decides the occlusion probabilities alone
        self._map_shape = self._uncertainty.set_working_size(self.working_hw) if self._uncertainty.needs_maps else None
        self.pair_bytes = 8 * self.working_hw[0] * self.working_hw[1] + (
            8 * self._map_shape[1] * self._map_shape[2] if self._map_shape else 0)
        self.budget_bytes = float(cfg.memory_mb) * 2 ** 20
        self._stats = dict(flow_s=0.0, flow_pairs_computed=0, flow_pairs_recomputed=0, flow_pairs_loaded=0,
                           network_evals=0, cache_files_rejected=0, load_s=0.0, save_s=0.0, resize_s=0.0,
                           flow_fields_alive_max=0, flow_memory_peak_mb=0.0,
                           uncertainty_s=0.0)
        t0 = time.perf_counter()
        self.key_fields = self._key_fields()
        self._stats["key_s"] = time.perf_counter() - t0
        self.key = json_key(self.key_fields)
        self.flows_key = json_key({k: v for k, v in self.key_fields.items() if k != "maps"})   # the flows alone
        self.cache_folder = None
        if cache_dir is not None and uses_disk_cache(cfg):
            self.cache_folder = os.path.join(os.fspath(cache_dir), "flows", self.key)
        self._held = collections.OrderedDict()    # (a, b), a < b -> (fwd, bwd) float16 [2, h, w] and their
        #                                           uncertainty maps (learned) or None, None; oldest first
        self._uses = {}                           # (a, b) -> deque of future use positions (planned pairs)
        self._segments = {}                       # segment name -> its first use position
        self._clock = 0
        self._segment = "unplanned"
        self._ever = set()                        # pairs computed at least once (to count recomputations)

    # --- frames, cache key and files ---------------------------------------------------------------------

    def working_frames(self, idx):
        """uint8 [len(idx), h, w, 3]: frames ``idx`` at the working resolution."""
        t0 = time.perf_counter()
        out = self._working[list(idx)]
        self._stats["resize_s"] += time.perf_counter() - t0
        return out

    def _key_fields(self):
        h = hashlib.sha256(repr((self.num_frames,) + self.working_hw + (3,)).encode())
        for t in range(self.num_frames):          # one frame at a time: no copy of the whole video
            h.update(np.ascontiguousarray(self.working_frames([t])[0, ::2, ::2]).tobytes())
        maps = {"maps": self.uncertainty_id} if self._map_shape else {}     # the learned head's maps are stored too
        return dict(self._backend.cache_id(), format=CACHE_FORMAT, working_hw=list(self.working_hw),
                    frames=h.hexdigest()[:16], **maps)

    def _pair_path(self, a, b):
        return os.path.join(self.cache_folder, f"{a:06d}_{b:06d}.npz")

    def _shape(self):
        return (2,) + self.working_hw

    def _load_pair(self, a, b):
        """Both flows of pair a < b and their uncertainty maps (learned; else None) from disk, or None (a bad
        file is deleted)."""
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
                mfwd, mbwd = (z["fwd_maps"], z["bwd_maps"]) if self._map_shape else (None, None)
        except PermissionError as e:
            return cache_unreadable(path, "flow cache file", e)
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
            elif self._map_shape and not all(m.dtype == np.float16 and m.shape == tuple(self._map_shape)
                                             and np.isfinite(m).all() for m in (mfwd, mbwd)):
                why = f"uncertainty maps {mfwd.dtype} {mfwd.shape} / {mbwd.shape} != float16 {tuple(self._map_shape)}"
        self._stats["load_s"] += time.perf_counter() - t0
        if why is not None:
            discard_cache_file(path, "flow cache file", why)
            self._stats["cache_files_rejected"] += 1
            return None
        return fwd, bwd, mfwd, mbwd

    def _save_pair(self, a, b, fwd, bwd, mfwd, mbwd):
        if self.cache_folder is None:
            return
        t0 = time.perf_counter()
        meta = os.path.join(self.cache_folder, "meta.json")
        if not os.path.isfile(meta):
            text = json.dumps(dict(self.key_fields, key=self.key), indent=1, sort_keys=True) + "\n"
            if not cache_write(meta, lambda tmp: open(tmp, "w").write(text), "flow cache file"):
                self.cache_folder = None
                return
        arrays = dict(fwd=fwd, bwd=bwd, key=np.array(self.key), shape=np.array(self._shape(), np.int64),
                      pair=np.array([a, b], np.int64))
        if self._map_shape:
            arrays.update(fwd_maps=mfwd, bwd_maps=mbwd)

        def write(tmp):
            # an .npz that np.load reads, deflated at level 1: ~4x faster to write than level 6
            with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as z:
                for name, arr in arrays.items():
                    with z.open(name + ".npy", "w", force_zip64=True) as f:
                        np.lib.format.write_array(f, np.asarray(arr), allow_pickle=False)

        if not cache_write(self._pair_path(a, b), write, "flow cache file", suffix=".npz"):
            self.cache_folder = None              # one warning, then no more attempts
        self._stats["save_s"] += time.perf_counter() - t0

    # --- plan and memory ---------------------------------------------------------------------------------

    def plan(self, segments):
        """Declare the order of the reads to come: ``segments`` = [(name, steps)], in run order, each step
        the directed pairs (a, b) of one read (a call of :meth:`sample`). Replaces any earlier plan. A
        stage calls :meth:`begin` with its segment's name when it starts, so the reads of a skipped
        stage (e.g. an optimisation loaded from its checkpoint) do not keep pairs alive."""
        self._uses, self._segments, self._clock = {}, {}, 0
        pos = 0
        for name, steps in segments:
            self._segments[name] = pos
            for step in steps:
                for a, b in step:
                    if a != b:
                        self._uses.setdefault((min(a, b), max(a, b)), collections.deque()).append(pos)
                pos += 1
        self._release_unused()

    def begin(self, name):
        """The stage of segment ``name`` starts now: earlier planned reads will not happen."""
        self._segment = name
        if name in self._segments:
            self._clock = max(self._clock, self._segments[name])
            self._release_unused()

    def _next_use(self, p):
        q = self._uses.get(p)
        if q is None:
            return NEVER                          # never planned
        while q and q[0] < self._clock:
            q.popleft()
        return q[0] if q else None                # None: planned, no use left

    def _advance(self, p):
        """A read of pair ``p`` happens now: move the clock to its planned position."""
        if self._next_use(p) not in (None, NEVER):
            self._clock = self._uses[p].popleft()

    def _release_unused(self, protect=()):
        for p in [p for p in self._held if p not in protect and self._next_use(p) is None]:
            del self._held[p]

    def _enforce_budget(self, incoming=()):
        """Release pairs with no use left; then, while the held pairs and ``incoming`` exceed the budget,
        release the held pair (not incoming) whose next use is farthest ahead (Belady's rule; among pairs
        read without a plan, the least recently used)."""
        incoming = set(incoming)
        self._release_unused(protect=incoming)
        count = len(set(self._held) | incoming)
        if count * self.pair_bytes <= self.budget_bytes:
            return
        order = {p: i for i, p in enumerate(self._held)}
        cands = sorted((p for p in self._held if p not in incoming),
                       key=lambda p: (self._next_use(p), -order[p]), reverse=True)
        for victim in cands:
            if count * self.pair_bytes <= self.budget_bytes:
                break
            del self._held[victim]
            count -= 1

    def _note_memory(self):
        n = len(self._held)
        self._stats["flow_fields_alive_max"] = max(self._stats["flow_fields_alive_max"], 2 * n)
        self._stats["flow_memory_peak_mb"] = max(self._stats["flow_memory_peak_mb"], n * self.pair_bytes / 2 ** 20)

    # --- computing ---------------------------------------------------------------------------------------

    def _check_index(self, t):
        if isinstance(t, (bool, np.bool_)) or not isinstance(t, (int, np.integer)):
            raise InputError(f"frame index must be an integer, got {t!r}")
        t = int(t)
        if not 0 <= t < self.num_frames:
            raise InputError(f"frame index {t} out of range [0, {self.num_frames})")
        return t

    def _compute(self, pairs, bar=None):
        """Compute both directions of unordered pairs [(a, b), a < b], cfg.batch_size pairs per call."""
        bs = int(self.cfg.batch_size)
        for i in range(0, len(pairs), bs):
            chunk = pairs[i:i + bs]
            need = sorted({t for p in chunk for t in p})
            frames = dict(zip(need, self.working_frames(need)))
            src = np.stack([frames[a] for a, _ in chunk] + [frames[b] for _, b in chunk])
            dst = np.stack([frames[b] for _, b in chunk] + [frames[a] for a, _ in chunk])
            t0 = time.perf_counter()
            features = None
            if self._map_shape and self._uncertainty.from_features:
                flows, features = self._backend.flow_and_features(src, dst)
            else:
                flows = self._backend(src, dst)
            dt = time.perf_counter() - t0
            self._stats["flow_s"] += dt
            seg = f"flow_s_{self._segment}"
            self._stats[seg] = self._stats.get(seg, 0.0) + dt
            self._stats["network_evals"] += len(src)
            if not np.isfinite(flows).all():
                raise RuntimeError(f"flow backend {self.cfg.backend} returned non-finite flow for pairs {chunk}")
            flows = flows.astype(np.float16)
            n = len(chunk)
            maps = self._maps(src, dst, flows, np.concatenate([flows[n:], flows[:n]]), features)
            for j, (a, b) in enumerate(chunk):
                self._held[(a, b)] = (flows[j], flows[n + j], maps[j], maps[n + j])
                self._stats["flow_pairs_computed"] += 1
                if (a, b) in self._ever:
                    self._stats["flow_pairs_recomputed"] += 1
                self._ever.add((a, b))
                self._save_pair(a, b, flows[j], flows[n + j], maps[j], maps[n + j])
            self._note_memory()
            if bar is not None:
                bar.update(len(chunk))

    def _maps(self, frames_a, frames_b, flow_ab, flow_ba, features=None):
        """Uncertainty maps of the directed flows a → b (learned head: from the frames and flows, or from the
        RAFT ``features`` of their pass), else a list of None. ``frames_*`` uint8 [B, h, w, 3]."""
        if not self._uncertainty.needs_maps:
            return [None] * len(frames_a)
        t0 = time.perf_counter()
        if features is not None:
            out = self._uncertainty.maps_from_features(features)
        else:
            out = self._uncertainty.maps(frames_a, frames_b, flow_ab.astype(np.float32), flow_ba.astype(np.float32))
        self._stats["uncertainty_s"] += time.perf_counter() - t0
        return list(out)

    def _ensure(self, pairs):
        """Hold the unordered pairs [(a, b), a < b]: memory, else disk, else computed (batched)."""
        todo = []
        for p in pairs:
            if p in self._held:
                self._held.move_to_end(p)
                continue
            got = self._load_pair(*p)
            if got is None:
                todo.append(p)
                continue
            self._held[p] = got
            self._ever.add(p)
            self._stats["flow_pairs_loaded"] += 1
            self._note_memory()
        if todo:
            h, w = self.working_hw
            with progress_bar(total=len(todo), unit="pair", enabled=self.progress and len(todo) >= 8, leave=False,
                      desc=f"flow {self.cfg.backend} {w}x{h}") as bar:
                self._compute(todo, bar)

    def _fields(self, a, b):
        """(F_ab, F_ba) float16 [2, h, w] of a held pair, and the uncertainty map of a → b (or None)."""
        if a == b:
            z = np.zeros(self._shape(), np.float16)
            return z, z, (self._uncertainty.still_map(self._map_shape) if self._map_shape else None)
        fwd, bwd, mfwd, mbwd = self._held[(min(a, b), max(a, b))]
        return (fwd, bwd, mfwd) if a < b else (bwd, fwd, mbwd)

    # --- public API --------------------------------------------------------------------------------------

    def flow(self, a, b):
        """Flow from frame ``a`` to frame ``b``: float32 [2, h, w] working px (computed or loaded if needed)."""
        a, b = self._check_index(a), self._check_index(b)
        if a == b:
            return np.zeros(self._shape(), np.float32)
        p = (min(a, b), max(a, b))
        self._advance(p)
        self._enforce_budget(incoming=[p])
        self._ensure([p])
        out = self._fields(a, b)[0].astype(np.float32)
        self._enforce_budget()
        return out

    def sample(self, pairs, points):
        """Flow, occlusion and variance of G frame pairs at G point sets, in one batch.

        ``pairs``: G pairs (a, b); ``points``: torch float [G, M, 2] (x, y) working px, pixel-centre
        convention, positions in frame a. Returns torch float32 [G, M, 4]: dx, dy (px), occlusion
        probability, variance (px²) of the flow a → b at each point. Only the sampled points are
        evaluated: F_ab at p, then F_ba at q = p + F_ab(p), then the FB formulas (flow/occlusion.py).
        Pairs are made available a budget's worth at a time.
        """
        import torch
        from core.sampling import sample_fields
        pairs = [(self._check_index(a), self._check_index(b)) for a, b in pairs]
        unordered = list(dict.fromkeys((min(a, b), max(a, b)) for a, b in pairs if a != b))
        for p in unordered:
            self._advance(p)
        per_chunk = max(1, int(self.budget_bytes // self.pair_bytes))
        out = torch.empty(len(pairs), points.shape[1], 4)
        h, w = self.working_hw
        for i in range(0, len(unordered), per_chunk) if unordered else [0]:
            chunk = set(unordered[i:i + per_chunk])
            self._enforce_budget(incoming=chunk)
            self._ensure(sorted(chunk))
            rows = [g for g, (a, b) in enumerate(pairs) if (min(a, b), max(a, b)) in chunk or (a == b and i == 0)]
            fab = torch.from_numpy(np.stack([self._fields(*pairs[g])[0] for g in rows])).float()
            fba = torch.from_numpy(np.stack([self._fields(*pairs[g])[1] for g in rows])).float()
            pts = points[rows]
            d_ab = sample_fields(fab, pts)
            q = pts + d_ab
            d_ba = sample_fields(fba, q)
            outside = outside_frame(q[..., 0], q[..., 1], (h, w)).numpy()
            if self._map_shape:
                maps = torch.from_numpy(np.stack([self._fields(*pairs[g])[2] for g in rows]))
                occ, var = self._uncertainty.at_points(maps, pts, outside, d_ab, d_ba)
            else:
                occ, var = self._uncertainty.at_points(d_ab.numpy(), d_ba.numpy(), outside)
            out[rows] = torch.cat([d_ab, torch.from_numpy(occ)[..., None], torch.from_numpy(var)[..., None]], -1)
        self._enforce_budget()
        return out

    def has(self, a, b):
        """Whether the flows of pair {a, b} are held in memory now."""
        return a == b or (min(int(a), int(b)), max(int(a), int(b))) in self._held

    @property
    def stats(self):
        """flow_s (seconds computing flow; flow_s_<segment>: in each planned segment), flow_pairs_computed (of which flow_pairs_recomputed: computed
        again after being released), flow_pairs_loaded, network_evals (flow fields computed, 2 per pair),
        flow_fields_alive_max (most flow fields held at once), flow_memory_peak_mb, flow_cache_mb (this key's
        cache folder), cache_files_rejected, load_s, save_s, resize_s, key_s, memory_mb (held now)."""
        s = dict(self._stats)
        s["flow_cache_mb"] = folder_mb(self.cache_folder) if self.cache_folder else 0.0
        s["memory_mb"] = len(self._held) * self.pair_bytes / 2 ** 20
        return s
