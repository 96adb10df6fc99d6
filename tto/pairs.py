"""Training correspondences from the video itself: verified flow trajectories and best buddies.

Trajectories (flow bank, working pixels, pixel-centre convention). Points on a regular grid (spacing
``traj_grid`` original px) are seeded at anchor frames a ∈ {0, k, 2k, …, T−1} and chained frame to frame
with the consecutive flows, forward (a → a+1 → …) and backward (a → a−1 → …); a step is kept while
the forward–backward occlusion probability of the step is below ``traj_occlusion_threshold`` and the
point stays in the frame. At the check frames n = a ± Δ (Δ ∈ ``traj_check_intervals``, and the chain's
last frame a ± max Δ clamped to the video; chains go no further) the chained position p_n is compared with the direct long-range flow from the anchor,
q_n = p_a + F_{a→n}(p_a): the chain survives only if that flow is trusted (occlusion below the threshold)
and |p_n − q_n| ≤ tol + frac·|q_n − p_a| (tol, frac: ``traj_tol`` (original px), ``traj_tol_frac``).
Only the frames up to the last check a chain passed are positions of it ("confirmed"), so every
stored position is covered by both a consecutive chain and a direct flow that agree. A chain spans at
most max Δ + 1 frames, so each is stored over that window only (:class:`Trajectories`): memory
O(K · max Δ), linear in the video length T (K grows with T), not O(K · T).

Best buddies (feature grid). Cells i of frame a and j of frame b are best buddies when j is i's
nearest neighbour in b and i is j's nearest neighbour in a (cosine similarity of the frozen,
normalised backbone features), and that similarity is at least ``buddy_min_sim``.
"""
import time

import numpy as np
import torch

from core.coords import inside_frame, scale_sigma


class Trajectories:
    """K point trajectories of a T-frame video, each stored over a window of L frames.

    Trajectory k has a position at frame f ∈ [start[k], start[k] + L) ∩ [0, T) where ``ok[k, f − start[k]]``
    holds; it has none at any other frame. Tensors (CPU): ``start`` long [K] (first frame of each window),
    ``xy`` float32 [K, L, 2] (x, y positions; units are the caller's, e.g. working px or grid coordinates),
    ``ok`` bool [K, L]. Memory: K·(8 + 9·L) bytes, plus 24 bytes per run (below), independent of T.

    Runs of consecutive k with the same ``start`` (one per chain group in :func:`flow_trajectories`) are
    indexed, so :meth:`valid_at` reads only the runs whose window holds both frames.
    """

    def __init__(self, start, xy, ok, num_frames):
        start = torch.as_tensor(start, dtype=torch.long).reshape(-1)
        K = start.shape[0]
        if xy.dim() != 3 or xy.shape[0] != K or xy.shape[2] != 2 or tuple(ok.shape) != tuple(xy.shape[:2]):
            raise ValueError(f"Trajectories: start [{K}], xy {tuple(xy.shape)}, ok {tuple(ok.shape)} do not match "
                             "([K], [K, L, 2], [K, L])")
        self.start, self.xy, self.ok = start, xy, ok.to(torch.bool)
        self.num_frames = int(num_frames)
        self.window = int(xy.shape[1])
        st = start.numpy()
        lo = np.flatnonzero(np.r_[True, st[1:] != st[:-1]]) if K else np.zeros(0, np.int64)
        self._run_lo = lo.astype(np.int64)                           # [R] first k of each run
        self._run_hi = np.r_[lo[1:], K].astype(np.int64)             # [R] one past its last k
        self._run_start = st[lo].astype(np.int64)                    # [R] the run's window start

    def __len__(self):
        return int(self.start.shape[0])

    @property
    def positions_count(self):
        """Number of (trajectory, frame) positions."""
        return int(self.ok.sum())

    @property
    def nbytes(self):
        """Bytes of all stored arrays (tensors and the run index)."""
        t = sum(x.element_size() * x.nelement() for x in (self.start, self.xy, self.ok))
        return t + sum(a.nbytes for a in (self._run_lo, self._run_hi, self._run_start))

    def _frame(self, f):
        f = int(f)
        if not 0 <= f < self.num_frames:
            raise IndexError(f"frame {f} outside a {self.num_frames}-frame video")
        return f

    def valid_at(self, s, t):
        """Indices k (long [M], increasing) of the trajectories with a position at both frames s and t."""
        s, t = self._frame(s), self._frame(t)
        lo, hi = min(s, t), max(s, t)
        runs = np.flatnonzero((self._run_start <= lo) & (hi < self._run_start + self.window))
        parts = []
        for r in runs.tolist():
            k0, k1, a = int(self._run_lo[r]), int(self._run_hi[r]), int(self._run_start[r])
            both = self.ok[k0:k1, s - a] & self.ok[k0:k1, t - a]
            parts.append(torch.nonzero(both)[:, 0] + k0)
        return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)

    def positions(self, idx, frame):
        """Positions float32 [M, 2] of trajectories ``idx`` (long [M]) at ``frame`` (inside each one's window)."""
        idx = torch.as_tensor(idx, dtype=torch.long)
        off = self._frame(frame) - self.start[idx]
        if off.numel() and (int(off.min()) < 0 or int(off.max()) >= self.window):
            raise IndexError(f"frame {frame} is outside the window of some of the trajectories asked for")
        return self.xy[idx, off]

    def map_xy(self, fn):
        """The same trajectories with positions ``fn(xy)`` (``fn``: [K, L, 2] -> [K, L, 2] elementwise, e.g. a
        coordinate change such as features.grid.FeatureGrid.from_working). ``start`` and ``ok`` are shared."""
        return Trajectories(self.start, fn(self.xy), self.ok, self.num_frames)


def anchors(num_frames, stride):
    """Anchor frames 0, k, 2k, … and the last frame."""
    a = list(range(0, num_frames, max(1, int(stride))))
    if num_frames - 1 not in a:
        a.append(num_frames - 1)
    return a


def chain_end(a, direction, num_frames, intervals):
    """Last frame of a chain from anchor a: a ± max(Δ), clamped to the video (no check could confirm more)."""
    horizon = max([int(d) for d in intervals] + [1])
    return min(num_frames - 1, a + horizon) if direction > 0 else max(0, a - horizon)


def check_frames(a, direction, num_frames, intervals):
    """Frames a + direction·Δ (Δ in ``intervals``) inside the video, plus the chain's last frame."""
    end = chain_end(a, direction, num_frames, intervals)
    out = {a + direction * int(d) for d in intervals if 0 <= a + direction * int(d) < num_frames}
    if end != a:
        out.add(end)
    return out


def trajectory_flow_schedule(num_frames, cfg):
    """The flow reads of :func:`flow_trajectories`, in order: a list of steps, each the directed pairs of one
    ``bank.sample`` call (segment 'trajectories' of ``FlowBank.plan``). A chain that dies early reads fewer."""
    T = int(num_frames)
    steps = []
    for a in anchors(T, cfg.traj_anchor_stride):
        for d in (1, -1):
            n_end = chain_end(a, d, T, cfg.traj_check_intervals)
            checks = check_frames(a, d, T, cfg.traj_check_intervals)
            for t in range(a, n_end, d):
                steps.append([(t, t + d)])
                if t + d in checks:
                    steps.append([(a, t + d)])
    return steps


def _seed_points(working_hw, original_hw, spacing):
    h, w = working_hw
    g = max(1.0, float(scale_sigma(spacing, original_hw, working_hw)))
    xs = np.arange(g / 2 - 0.5, w - 0.5, g)
    ys = np.arange(g / 2 - 0.5, h - 0.5, g)
    gx, gy = np.meshgrid(xs, ys)
    return torch.from_numpy(np.stack([gx.ravel(), gy.ravel()], -1).astype(np.float32))


def flow_trajectories(bank, cfg, original_hw=None):
    """Verified trajectories. Returns (:class:`Trajectories` of positions in working px, pixel-centre, stats).

    Their window length is L = min(max Δ, T − 1) + 1; a chain's window starts at min(a, its last frame).
    Trajectories are ordered by anchor, then direction (forward, backward), then seed (row-major grid).
    ``bank``: a FlowBank (its working resolution is used throughout); ``cfg``: a TTOConfig;
    ``original_hw``: the video's size, to convert the original-px settings (default: bank.original_hw).
    stats: traj_count, traj_positions, traj_checks_done, traj_checks_passed, traj_s.
    """
    t0 = time.perf_counter()
    T, (h, w) = bank.num_frames, bank.working_hw
    original_hw = original_hw or getattr(bank, "original_hw", bank.working_hw)
    tol0 = float(scale_sigma(cfg.traj_tol, original_hw, bank.working_hw))
    thr = float(cfg.traj_occlusion_threshold)
    seeds = _seed_points(bank.working_hw, original_hw, cfg.traj_grid)
    if hasattr(bank, "begin"):
        bank.begin("trajectories")
    horizon = max([int(d) for d in cfg.traj_check_intervals] + [1])
    L = min(horizon, max(T - 1, 0)) + 1
    all_start, all_xy, all_ok = [], [], []
    checks_passed = checks_done = 0
    for a in anchors(T, cfg.traj_anchor_stride):
        for d in (1, -1):
            n_end = chain_end(a, d, T, cfg.traj_check_intervals)
            if a == n_end:
                continue
            checks = check_frames(a, d, T, cfg.traj_check_intervals)
            K = seeds.shape[0]
            w0 = min(a, n_end)                             # the window's first frame: frame f is column f - w0
            xy = torch.zeros(K, L, 2)
            ok = torch.zeros(K, L, dtype=torch.bool)
            xy[:, a - w0], ok[:, a - w0] = seeds, True
            pos, alive, last = seeds.clone(), torch.ones(K, dtype=torch.bool), a
            for t in range(a, n_end, d):
                n = t + d
                s = bank.sample([(t, n)], pos[None])[0]
                pos = pos + s[:, :2]
                inside = inside_frame(pos[:, 0], pos[:, 1], (h, w))
                alive &= (s[:, 2] < thr) & inside
                xy[:, n - w0] = pos
                if n in checks:
                    direct = bank.sample([(a, n)], seeds[None])[0]
                    q = seeds + direct[:, :2]
                    tol = tol0 + float(cfg.traj_tol_frac) * (q - seeds).norm(dim=-1)
                    agree = (direct[:, 2] < thr) & ((q - pos).norm(dim=-1) <= tol)
                    checks_done += int(alive.sum())
                    alive &= agree
                    checks_passed += int(alive.sum())
                    lo, hi = (last + 1, n + 1) if d > 0 else (n, last)
                    ok[:, lo - w0:hi - w0] |= alive[:, None]
                    last = n
                if not alive.any():
                    break
            keep = ok.sum(1) >= 2
            all_xy.append(xy[keep])
            all_ok.append(ok[keep])
            all_start.append(torch.full((all_xy[-1].shape[0],), w0, dtype=torch.long))
    if all_xy:
        traj = Trajectories(torch.cat(all_start), torch.cat(all_xy), torch.cat(all_ok), T)
    else:
        traj = Trajectories(torch.zeros(0, dtype=torch.long), torch.zeros(0, L, 2), torch.zeros(0, L, dtype=torch.bool),
                            T)
    stats = dict(traj_count=len(traj), traj_positions=traj.positions_count, traj_checks_done=checks_done,
                 traj_checks_passed=checks_passed, traj_s=time.perf_counter() - t0)
    return traj, stats


def best_buddies(fa, fb, min_sim):
    """Mutual nearest neighbours of unit features ``fa`` [C, n_a] and ``fb`` [C, n_b].

    Returns (ia [K] long, ib [K] long, sim [K]): cell indices in a and b, and their cosine similarity."""
    sim = fa.t() @ fb                                  # [n_a, n_b]
    best_b = sim.argmax(1)                             # a -> b
    best_a = sim.argmax(0)                             # b -> a
    ia = torch.arange(fa.shape[1], device=fa.device)
    mutual = best_a[best_b] == ia
    s = sim[ia, best_b]
    keep = mutual & (s >= min_sim)
    return ia[keep], best_b[keep], s[keep]
