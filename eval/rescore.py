"""Score saved predictions again, with the current metrics, and write results like ``eval.bench``.

    python -m eval.rescore --data DIR --preds FOLDER --mode first|strided [--out OUT] [--ground-truth-visibility]

``FOLDER`` holds ``<video>.npz`` (tracks, visible, sigma, queries), as ``eval.bench --save-pred`` writes them next
to its ``<video>.json``. Every prediction in FOLDER is scored against the video of that name in DIR. A video's
config, seconds, peak memory and stats are copied from its bench JSON in FOLDER where there is one (which must
record the same mode and the same AJ / <δ avg / OA or PCK as the prediction gives). Writes ``OUT/<video>.json``,
``OUT/table.md`` and ``OUT/summary.json`` as ``eval.bench`` does; OUT defaults to FOLDER (updated in place).

``--ground-truth-visibility`` (TAP-Vid) scores the predicted positions with the ground truth's visibility in
place of the predicted one: the AJ a perfect visibility rule would give these tracks (OA is then 100), the
ceiling of anything that only decides visibility. The bench JSON is still checked against the prediction as
it was saved; OUT must then be another folder.
"""
import argparse
import glob
import json
import os
import sys

import numpy as np

from eval.bench import results_title, write_results
from eval.datasets import list_videos
from eval.score import load_prediction, score_prediction
from core.atomic import save_json
from core.errors import InputError, PitrackError

CHECKED = ("AJ", "delta_avg", "OA", "PCK_seg", "PCK_3px")  # metrics a bench JSON must agree on with the prediction


def rescore_one(ref, pred_path, mode, ground_truth_visibility=False):
    """The per-video record (as ``eval.bench`` writes it) of the prediction ``pred_path`` on the video ``ref``
    (an eval.datasets.VideoRef); with ``ground_truth_visibility`` its positions scored with the ground truth's
    visibility."""
    video = ref.open()
    pred = load_prediction(pred_path)
    metrics = score_prediction(video, pred, mode)
    kind_mode = mode if video.kind == "tapvid" else "badja"
    h, w = video.size_hw
    rec = {"config": None, "config_fingerprint": None, "frame_size": f"{w}x{h}", "seconds": None,
           "load_seconds": None, "peak_rss_mb": None, "stats": {}}
    bench_json = pred_path[:-len(".npz")] + ".json"
    if os.path.isfile(bench_json):
        try:
            with open(bench_json) as f:
                old = json.load(f)
        except (OSError, ValueError) as e:
            raise InputError(f"cannot read {bench_json}: {e}") from None
        if old.get("mode") != kind_mode:
            raise InputError(f"{bench_json} was run in mode {old.get('mode')!r}, not {kind_mode!r}")
        for k in CHECKED:
            if k in old.get("metrics", {}) and not np.isclose(old["metrics"][k], metrics[k], rtol=0, atol=1e-6,
                                                               equal_nan=True):
                raise InputError(f"{bench_json} records {k} = {old['metrics'][k]:.6f} but {pred_path} gives "
                                 f"{metrics[k]:.6f}: they are not from the same run")
        rec.update(old)
    if ground_truth_visibility:
        if video.kind != "tapvid":
            raise InputError(f"{ref.source}: --ground-truth-visibility is for TAP-Vid videos (BADJA scores no visibility)")
        _, index = video.queries(mode)
        metrics = score_prediction(video, dict(pred, visible=~video.occluded[index]), mode)
    rec.update(video=video.name, kind=video.kind, mode=kind_mode, data=ref.source,
               num_queries=int(np.asarray(pred["tracks"]).shape[0]), num_frames=video.num_frames, metrics=metrics)
    return rec


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m eval.rescore", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="the dataset the predictions were made on (any format eval.bench reads)")
    p.add_argument("--preds", required=True, help="folder of <video>.npz predictions (eval.bench --save-pred)")
    p.add_argument("--mode", choices=["first", "strided"], default="first", help="TAP-Vid query mode")
    p.add_argument("--out", help="results folder (default: --preds, updated in place)")
    p.add_argument("--ground-truth-visibility", action="store_true",
                   help="score the positions with the ground truth's visibility (the ceiling of a visibility rule)")
    args = p.parse_args(argv)
    out = args.out or args.preds
    try:
        if args.ground_truth_visibility and os.path.abspath(out) == os.path.abspath(args.preds):
            raise InputError("--ground-truth-visibility needs an --out other than --preds (the saved results stay)")
        if not os.path.isdir(args.preds):
            raise InputError(f"predictions folder not found: {args.preds}")
        preds = sorted(glob.glob(os.path.join(args.preds, "*.npz")))
        if not preds:
            raise InputError(f"{args.preds} holds no <video>.npz predictions (eval.bench --save-pred writes them)")
        found = {r.name: r for r in list_videos(args.data)}
        refs = []
        for pred in preds:
            name = os.path.basename(pred)[:-len(".npz")]
            if name not in found:
                raise InputError(f"{pred}: no video named {name} in {args.data}")
            refs.append(found[name])
        records = [rescore_one(ref, pred, args.mode, args.ground_truth_visibility) for ref, pred in zip(refs, preds)]
        if len({r["kind"] for r in records}) > 1:
            raise InputError(f"{args.preds} mixes TAP-Vid and BADJA predictions; rescore them separately")
        configs = {r["config"] for r in records}
        config = configs.pop() if len(configs) == 1 and None not in configs else \
            os.path.basename(os.path.normpath(args.preds))
        os.makedirs(out, exist_ok=True)
        for r in records:
            save_json(os.path.join(out, r["video"] + ".json"), r)
        title = results_title(config, args.data, records, args.mode) + (
            ", rescored with the ground truth's visibility" if args.ground_truth_visibility else ", rescored")
        print(write_results(out, records, title, config, args.mode))
    except PitrackError as e:
        print(f"eval.rescore: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    from core.errors import run_command
    sys.exit(run_command(main, "eval.rescore"))
