#!/usr/bin/env python
"""Track points through a video.

    python run_video.py --video V --queries Q.npy [--config configs/X.yaml] --out pred.npz [--viz out.mp4]
    python run_video.py --video V --grid 10 [--grid-frame 0] --config configs/X.yaml --out pred.npz
    python run_video.py --video V --dense 4 [--query-frame 0] --out dense.npz [--viz dense.mp4]

V: a folder of frames (jpg/png, sorted by name, numbers as numbers) or a video file. Q.npy: float32 [N, 3]
rows (t, x, y), frame index and pixel position in the original frames (rows (t, y, x), tapnet's order, with
--query-order tyx); a text file of such rows (spaces or commas, # comments) is read as well. pred.npz:
tracks float32 [N, T, 2] (x, y original pixels), visible bool [N, T], sigma float32 [N, T] (px), queries
float32 [N, 3]. dense.npz (every S-th pixel of frame F, point (i, j) starting at x = S·j + S/2,
y = S·i + S/2): tracks float16 [Hs, Ws, T, 2], visible bool [Hs, Ws, T], sigma float16 [Hs, Ws, T],
query_frame, stride. Bad input, arguments, weights or output paths: one line and exit code 2, found before
any tracking; nothing is left half-written.
"""
import argparse
import contextlib
import os
import sys


DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "default.yaml")
GRID_POINTS_NOTE = 100_000      # --grid or --queries above this many points: a note on the run time
QUERIES_MAX_BYTES = 1 << 28     # a queries file larger than this (11 million rows as .npy float64) is refused


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit code 2
        print(f"run_video.py: error: {message}", file=sys.stderr)
        sys.exit(2)


def _at_least(lo):
    def parse(text):
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"must be >= {lo}, got {v}")
        return v
    return parse


def parse_args(argv=None):
    p = _Parser(description=__doc__.split("\n\n")[0])
    p.add_argument("--video", required=True, help="frame folder or video file")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--queries", help="Q.npy (or text rows), [N, 3] rows (t, x, y) in original pixels")
    src.add_argument("--grid", type=_at_least(1), help="track a K×K grid of points instead of --queries")
    src.add_argument("--dense", type=_at_least(1), metavar="S", help="track every S-th pixel of --query-frame (S = 1: all)")
    p.add_argument("--query-order", choices=["txy", "tyx"],
                   help="column order of --queries: txy (default) or tyx (tapnet's); outputs are always t, x, y")
    p.add_argument("--grid-frame", type=_at_least(0), help="frame of the --grid queries (default 0)")
    p.add_argument("--query-frame", type=_at_least(0), help="frame of the --dense points (default 0)")
    p.add_argument("--config", default=DEFAULT_CONFIG,
                   help="YAML config (default: configs/default.yaml; e.g. configs/baselines/klt.yaml)")
    p.add_argument("--out", required=True, help="output .npz")
    p.add_argument("--viz", help="also write a video (.mp4) of the tracks (dense: trails and flow colours)")
    p.add_argument("--tail", type=_at_least(0), default=8, help="frames of trail drawn behind each point (--viz)")
    p.add_argument("--max-frames", type=_at_least(1), help="use only the first N frames")
    p.add_argument("--allow-damaged", action="store_true",
                   help="track a video file whose decoder reports damaged data (refused otherwise)")
    p.add_argument("--no-cache", action="store_true", help="recompute every cached stage")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    for flag, value, needs, given in (("--grid-frame", args.grid_frame, "--grid", args.grid),
                                      ("--query-frame", args.query_frame, "--dense", args.dense),
                                      ("--query-order", args.query_order, "--queries", args.queries)):
        if value is not None and given is None:
            p.error(f"{flag} applies to {needs} only")
    args.grid_frame = args.grid_frame or 0
    args.query_frame = args.query_frame or 0
    args.query_order = args.query_order or "txy"
    return args


def _read_npy(f, path, size):
    """The array of an open .npy file, its header checked against the file's size first (a header may claim
    any shape; numpy would allocate it before reading)."""
    import numpy as np
    from core.errors import InputError
    version = np.lib.format.read_magic(f)
    read_header = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    if version not in read_header:
        raise InputError(f"queries {path}: .npy format version {version[0]}.{version[1]} is not read here (1.0 or 2.0)")
    shape, fortran, dtype = read_header[version](f)
    if dtype.hasobject:
        raise InputError(f"queries {path} hold Python objects, not numbers")
    need = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if need > size - f.tell():
        raise InputError(f"queries {path}: the .npy header claims shape {list(shape)} ({need} bytes) but the file "
                         f"holds {size - f.tell()} bytes of data")
    f.seek(0)
    return np.load(f, allow_pickle=False)


def read_queries(path, order="txy"):
    """Queries float [N, 3] (t, x, y) from a .npy file or a text file of rows (spaces or commas; '#' starts a
    comment); ``order`` 'tyx' swaps the last two columns. InputError when it is neither."""
    import stat
    import numpy as np
    from core.errors import InputError
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise InputError(f"queries {path} is not a regular file (a FIFO, device or folder cannot be read "
                             f"as queries)")
        size = st.st_size
        if size > QUERIES_MAX_BYTES:
            raise InputError(f"queries {path} are {size / 2 ** 20:.0f} MB, more than {QUERIES_MAX_BYTES >> 20} MB "
                             f"of queries; for every pixel use --dense")
        with open(path, "rb") as f:
            head = f.read(6)
            if head == b"\x93NUMPY":
                f.seek(0)
                q = _read_npy(f, path, size)
        if head != b"\x93NUMPY":
            with open(path, encoding="utf-8") as f:
                text = f.read()
            rows = [ln.split("#", 1)[0].strip() for ln in text.splitlines()]
            rows = [r for r in rows if r]
            q = np.loadtxt(rows, delimiter="," if rows and "," in rows[0] else None, ndmin=2, dtype=np.float64) \
                if rows else np.zeros((0, 3))
    except InputError:
        raise
    except UnicodeDecodeError:
        raise InputError(f"queries {path} are neither a .npy array nor text rows (t, x, y)") from None
    except (OSError, ValueError) as e:
        raise InputError(f"cannot read queries {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") \
            from None
    if order == "tyx" and q.ndim == 2 and q.shape[1] == 3:
        q = q[:, [0, 2, 1]]
    return q


def write_outputs(args, arrays, draw):
    """``arrays`` to ``args.out`` and, with ``args.viz``, ``draw(path)`` to it: both written to temporary
    files and renamed only when both are complete. A failing write is one OutputError; nothing is left."""
    import numpy as np
    from core.atomic import atomic_path
    from core.errors import OutputError
    with contextlib.ExitStack() as stack:
        targets = [(args.out, lambda tmp: np.savez(tmp, **arrays))]
        if args.viz:
            targets.append((args.viz, draw))
        for path, write in targets:
            try:
                write(stack.enter_context(atomic_path(path)))
            except OSError as e:
                raise OutputError(f"cannot write {path}: {e.strerror or e}") from None


def main(argv=None):
    args = parse_args(argv)
    import numpy as np
    from pitrack import Tracker, grid_queries, load_video
    from pitrack.tracker import check_queries, dense_grid
    from core.atomic import check_not_an_input, check_writable
    from core.errors import InputError, PitrackError
    try:
        if not args.out.endswith(".npz"):
            raise InputError(f"--out must end in .npz, got {args.out}")
        if args.viz and not args.viz.endswith(".mp4"):
            raise InputError(f"--viz must end in .mp4, got {args.viz}")
        inputs = {"--video": args.video, "--queries file": args.queries, "--config file": args.config}
        for flag, path in (("--out", args.out), ("--viz", args.viz)):
            if path is not None:
                check_not_an_input(path, flag, inputs)
        check_writable(args.out, "--out")
        if args.viz:
            from pitrack.viz import check_video_writer
            check_writable(args.viz, "--viz")
            check_video_writer()
        tracker = Tracker.from_config(args.config, progress=not args.quiet, use_cache=not args.no_cache)
        if args.queries is not None:
            queries = read_queries(args.queries, args.query_order)
        notes = []
        video = load_video(args.video, args.max_frames, args.allow_damaged, notes)
        for note in notes:
            print(f"run_video.py: note: {note}", file=sys.stderr)
        T, H, W = video.shape[:3]
        if args.dense is not None:
            dense_grid(args.dense, H, W)                     # bad stride: fails before any tracking
            if not 0 <= args.query_frame < T:
                raise InputError(f"--query-frame {args.query_frame} outside the video's {T} frames")
            dense = tracker.dense(video, args.query_frame, args.dense)

            def draw(path):
                from pitrack.viz import write_dense_overlay
                write_dense_overlay(path, video, dense, tail=args.tail)
            write_outputs(args, dict(tracks=dense.tracks, visible=dense.visible, sigma=dense.sigma,
                                     query_frame=np.int64(dense.query_frame), stride=np.int64(dense.stride)), draw)
            what = f"{dense.visible.shape[0]}x{dense.visible.shape[1]} points of frame {args.query_frame}"
        else:
            if args.grid is not None:
                if not 0 <= args.grid_frame < T:
                    raise InputError(f"--grid-frame {args.grid_frame} outside the video's {T} frames")
                if args.grid > min(H, W):
                    raise InputError(f"--grid {args.grid} is finer than the {W}x{H} frame's pixels (at most "
                                     f"{min(H, W)}); for every pixel use --dense 1")
                if args.grid ** 2 > GRID_POINTS_NOTE and not args.quiet:
                    print(f"run_video.py: note: --grid {args.grid} tracks {args.grid ** 2} points; --dense S "
                          "tracks every S-th pixel and stores float16", file=sys.stderr)
                queries = grid_queries(args.grid, args.grid_frame, H, W)
            queries = check_queries(queries, video.shape)
            if args.grid is None and len(queries) > GRID_POINTS_NOTE and not args.quiet:
                print(f"run_video.py: note: {len(queries)} queries; --dense S tracks every S-th pixel and stores "
                      "float16", file=sys.stderr)
            result = tracker(video, queries)

            def draw(path):
                from pitrack.viz import write_overlay
                write_overlay(path, video, result.tracks, result.visible, queries, tail=args.tail)
            write_outputs(args, dict(tracks=result.tracks, visible=result.visible, sigma=result.sigma,
                                     queries=queries), draw)
            what = f"{queries.shape[0]} points"
    except PitrackError as e:
        print(f"run_video.py: error: {e}", file=sys.stderr)
        return 2
    if not args.quiet:
        s = tracker.stats
        print(f"tracked {what} through {T} frames in {s.get('seconds', 0):.1f} s -> {args.out}",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    from core.errors import run_command
    sys.exit(run_command(main, "run_video.py"))
