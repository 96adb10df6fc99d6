"""The documentation's pictures, made from real runs (``make figures``):

    python -m eval.figures overlay --video DIR --config C --grid K --frame F --out docs/img/overlay.jpg
    python -m eval.figures plot RESULTS_DIR [RESULTS_DIR ...] --out docs/img/aj_vs_seconds.svg

``overlay``: tracks a K×K grid of frame 0 with config C and writes frame F with the tracks drawn
(pitrack.viz.draw_tracks: trails of 8 frames, occluded points hollow) as a JPEG or PNG. ``plot``: AJ against mean
seconds per clip of ``eval.bench`` results folders (one point each, labelled with its config), an SVG
written by hand so that no plotting package is needed. Both write atomically and print what they wrote.
"""
import argparse
import html
import os
import sys

import numpy as np

from core.atomic import atomic_path
from core.errors import InputError, PitrackError


def overlay_still(video_dir, config, grid, frame, out, max_width=640):
    """Frame ``frame`` (None: the last) of the video with the tracks of a ``grid``² grid of frame 0 drawn,
    uint8 RGB, scaled to at most ``max_width`` pixels wide; written to ``out`` (.jpg or .png). Returns
    (the image's shape, the frame drawn)."""
    import cv2
    from pitrack import Tracker, grid_queries, load_video
    from pitrack.viz import draw_tracks
    video = load_video(video_dir)
    T, H, W = video.shape[:3]
    frame = T - 1 if frame is None else frame
    if not 0 <= frame < T:
        raise InputError(f"--frame {frame} outside the video's {T} frames")
    queries = grid_queries(grid, 0, H, W)
    result = Tracker.from_config(config, progress=False)(video, queries)
    drawn = draw_tracks(video[:frame + 1], result.tracks[:, :frame + 1], result.visible[:, :frame + 1], queries)[-1]
    if W > max_width:
        drawn = cv2.resize(drawn, (max_width, int(round(H * max_width / W))), interpolation=cv2.INTER_AREA)
    with atomic_path(out) as tmp:
        if not cv2.imwrite(tmp, np.ascontiguousarray(drawn[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, 85]):
            raise OSError(f"cannot encode {out}")
    return drawn.shape, frame


def bench_points(folders):
    """(label, mean seconds per clip, AJ %) of each ``eval.bench`` results folder."""
    from eval.compare import load_records
    points = []
    for folder in folders:
        recs = load_records(folder)
        if recs[0]["kind"] != "tapvid":
            raise InputError(f"{folder}: not a TAP-Vid result (AJ against seconds needs TAP-Vid)")
        points.append((recs[0].get("config") or os.path.basename(os.path.normpath(folder)),
                       float(np.mean([r["seconds"] for r in recs])),
                       100 * float(np.mean([r["metrics"]["AJ"] for r in recs]))))
    return points


def svg_plot(points, title, width=560, height=360, margin=(60, 20, 30, 50)):
    """An SVG scatter of ``points`` (label, seconds, AJ): seconds on a log axis, AJ linear."""
    left, right, top, bottom = margin
    xs = np.log10([max(p[1], 1e-3) for p in points])
    ys = np.array([p[2] for p in points])
    x0, x1 = np.floor(xs.min()), np.ceil(xs.max())
    x1 = x1 if x1 > x0 else x0 + 1
    y0, y1 = 5 * np.floor(ys.min() / 5 - 0.2), 5 * np.ceil(ys.max() / 5 + 0.2)
    px = lambda v: left + (v - x0) / (x1 - x0) * (width - left - right)
    py = lambda v: height - bottom - (v - y0) / (y1 - y0) * (height - top - bottom)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
           f'font-size="12">', f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{width / 2}" y="16" text-anchor="middle">{html.escape(title)}</text>']
    for d in np.arange(x0, x1 + 1e-9):
        out.append(f'<line x1="{px(d):.1f}" y1="{top}" x2="{px(d):.1f}" y2="{height - bottom}" stroke="#ddd"/>')
        out.append(f'<text x="{px(d):.1f}" y="{height - bottom + 16}" text-anchor="middle">{10 ** d:g}</text>')
    for v in np.arange(y0, y1 + 1e-9, 5):
        out.append(f'<line x1="{left}" y1="{py(v):.1f}" x2="{width - right}" y2="{py(v):.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{left - 6}" y="{py(v) + 4:.1f}" text-anchor="end">{v:g}</text>')
    out.append(f'<text x="{(left + width - right) / 2}" y="{height - 8}" text-anchor="middle">seconds per clip '
               f'(log scale)</text>')
    out.append(f'<text x="14" y="{(top + height - bottom) / 2}" text-anchor="middle" '
               f'transform="rotate(-90 14 {(top + height - bottom) / 2})">AJ (%)</text>')
    for (label, s, aj), x in zip(points, xs):
        out.append(f'<circle cx="{px(x):.1f}" cy="{py(aj):.1f}" r="5" fill="#1f77b4"/>')
        secs = f"{s:.1f}" if s >= 1 else f"{s:.2f}"
        out.append(f'<text x="{px(x) + 8:.1f}" y="{py(aj) - 6:.1f}">{html.escape(label)} ({aj:.1f}, {secs} s)</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    o = sub.add_parser("overlay", help="a still of tracks drawn on a frame (.jpg or .png)")
    o.add_argument("--video", required=True)
    o.add_argument("--config", required=True)
    o.add_argument("--grid", type=int, default=12)
    o.add_argument("--frame", type=int, help="frame drawn (default: the last)")
    o.add_argument("--out", required=True)
    g = sub.add_parser("plot", help="AJ against seconds per clip of eval.bench results (SVG)")
    g.add_argument("results", nargs="+")
    g.add_argument("--title", default="TAP-Vid DAVIS, first 32 frames, query-first (2 CPU cores)")
    g.add_argument("--out", required=True)
    args = p.parse_args(argv)
    try:
        if args.what == "overlay":
            if not args.out.endswith((".png", ".jpg")):
                raise InputError(f"--out must end in .png or .jpg, got {args.out}")
            shape, frame = overlay_still(args.video, args.config, args.grid, args.frame, args.out)
            print(f"wrote {args.out} ({shape[1]}x{shape[0]}, frame {frame})", file=sys.stderr)
        else:
            if not args.out.endswith(".svg"):
                raise InputError(f"--out must end in .svg, got {args.out}")
            points = bench_points(args.results)
            with atomic_path(args.out) as tmp:
                with open(tmp, "w", encoding="utf-8") as f:
                    f.write(svg_plot(points, args.title))
            print(f"wrote {args.out} ({len(points)} configs)", file=sys.stderr)
    except PitrackError as e:
        print(f"eval.figures: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"eval.figures: error: cannot write {args.out}: {e.strerror or e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    from core.errors import run_command
    sys.exit(run_command(main, "eval.figures"))
