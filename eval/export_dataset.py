"""Write a dataset of video folders in a published layout, to check the readers of those layouts against it.

    python -m eval.export_dataset --data DIR --layout davis --out tapvid_davis.pkl
    python -m eval.export_dataset --data DIR --layout kinetics --out FOLDER [--shards 10]
    python -m eval.export_dataset --data DIR --layout badja --out ROOT

davis: one pickle, a dict name → {video uint8 [T, H, W, 3], points float32 [N, T, 2] normalised (x, y),
occluded bool [N, T]} (TAP-Vid DAVIS). kinetics: ``FOLDER/NNNN_of_00SS.pkl``, each a list of such records
with the frames as the JPEG files' own bytes (TAP-Vid Kinetics). badja: ``ROOT/joint_annotations/<name>.json``
and ``ROOT/DAVIS/{JPEGImages,Annotations}/480p/<name>/`` (links to the frames and masks), joints as (row,
column) pixels (the BADJA release). Decoding the exported frames gives the folder's frames exactly.
"""
import argparse
import os
import pickle
import sys

import numpy as np

from eval.datasets import list_videos
from core.atomic import atomic_path, save_json
from core.errors import InputError, PitrackError
from pitrack.video import list_frame_files


def tapvid_record(video, jpeg):
    """The TAP-Vid record of a TapVidVideo folder: JPEG bytes of its frame files, or the decoded frames."""
    h, w = video.size_hw
    frames_dir = os.path.join(video.source, "frames")
    if jpeg:
        frames = []
        for name in list_frame_files(frames_dir):
            with open(os.path.join(frames_dir, name), "rb") as f:
                frames.append(f.read())
    else:
        frames = video.load_frames()
    points = (video.points.astype(np.float64) / np.array([w, h])).astype(np.float32)
    return {"video": frames, "points": points, "occluded": video.occluded.copy()}


def write_pickle(path, obj):
    with atomic_path(path, suffix=".pkl") as tmp:
        with open(tmp, "wb") as f:
            pickle.dump(obj, f, protocol=pickle.HIGHEST_PROTOCOL)


def export_badja(video, root):
    """One BadjaVideo folder as the BADJA release lays it out under ``root``."""
    res = "480p"
    for kind, src in (("JPEGImages", video.frames_dir), ("Annotations", os.path.dirname(video.mask_paths[0]))):
        link = os.path.join(root, "DAVIS", kind, res, video.name)
        os.makedirs(os.path.dirname(link), exist_ok=True)
        if not os.path.islink(link):
            os.symlink(os.path.abspath(src), link)
    names = list_frame_files(video.frames_dir)
    entries = []
    for k, f in enumerate(video.frames):
        entries.append({
            "segmentation_path": f"DAVIS/Annotations/{res}/{video.name}/{os.path.basename(video.mask_paths[k])}",
            "image_path": f"DAVIS/JPEGImages/{res}/{video.name}/{names[f]}",
            "visibility": [bool(v) for v in video.visible[:, k]],
            "joints": [[float(y), float(x)] for x, y in video.points[:, k]]})
    save_json(os.path.join(root, "joint_annotations", video.name + ".json"), entries)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m eval.export_dataset", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="a folder of TAP-Vid (davis, kinetics) or BADJA (badja) video folders")
    p.add_argument("--layout", required=True, choices=["davis", "kinetics", "badja"])
    p.add_argument("--out", required=True, help="davis: the .pkl; kinetics and badja: a folder")
    p.add_argument("--shards", type=int, default=10, help="kinetics: number of pickles (default 10, as published)")
    p.add_argument("--videos", help="comma-separated subset of video names")
    args = p.parse_args(argv)
    try:
        videos = [r.open() for r in list_videos(args.data, args.videos)]
        want = "badja" if args.layout == "badja" else "tapvid"
        if any(v.kind != want or os.path.isfile(v.source) for v in videos):
            raise InputError(f"--layout {args.layout} exports {want} video folders; {args.data} holds others")
        if args.layout == "davis":
            write_pickle(args.out, {v.name: tapvid_record(v, jpeg=False) for v in videos})
        elif args.layout == "kinetics":
            if args.shards < 1:
                raise InputError("--shards must be >= 1")
            for i in range(args.shards):
                write_pickle(os.path.join(args.out, f"{i:04d}_of_{args.shards:04d}.pkl"),
                             [tapvid_record(v, jpeg=True) for v in videos[i::args.shards]])
        else:
            for v in videos:
                export_badja(v, args.out)
    except PitrackError as e:
        print(f"eval.export_dataset: error: {e}", file=sys.stderr)
        return 2
    print(f"{len(videos)} videos -> {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    from core.errors import run_command
    sys.exit(run_command(main, "eval.export_dataset"))
