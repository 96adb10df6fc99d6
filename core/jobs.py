"""Running many independent per-video jobs: one after another, as Ray tasks, or one Slurm array shard of them.

A job is a picklable argument of a module-level function ``fn(job) -> result``; ``run_jobs`` calls it for each
job in this process (serial) or as a Ray task (``ray=True``: a local Ray instance; ``ray_address``: join a
cluster), and hands each result to ``on_result(job, result)`` in this process as it arrives, so results land
one by one and an interrupted run keeps what finished. Ray is an optional extra (``pip install -e '.[ray]'``).
"""
import json
import os

from core.errors import PitrackError


def parse_shard(text):
    """``"i/n"`` -> (i, n) with 0 <= i < n; PitrackError otherwise. Slurm: ``--shard $SLURM_ARRAY_TASK_ID/N``."""
    try:
        i, n = (int(v) for v in text.split("/"))
    except (ValueError, AttributeError):
        raise PitrackError(f"--shard must be i/n (e.g. 0/4), got {text!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise PitrackError(f"--shard {text}: need 0 <= i < n")
    return i, n


def take_shard(items, shard):
    """The items of shard (i, n): every n-th item starting at the i-th (None: all). Shards partition the list."""
    if shard is None:
        return list(items)
    i, n = shard
    return [x for k, x in enumerate(items) if k % n == i]


def load_record(path, matches):
    """The JSON record at ``path`` if it loads and ``matches(record)``, else None: a finished job's result that
    a rerun reuses."""
    try:
        with open(path) as f:
            rec = json.load(f)
    except (OSError, ValueError):
        return None
    return rec if matches(rec) else None


def worker_error(name, returncode, stderr):
    """The one line that says why a video's worker process failed: its own error message (what follows
    ``error: `` on its last line) when it exited with code 2, else its exit code and last line."""
    lines = [l for l in stderr.strip().splitlines() if l.strip()]
    last = lines[-1].strip() if lines else ""
    if returncode == 2 and "error: " in last:
        return f"video {name}: {last.split('error: ', 1)[1]}"
    return f"video {name}: failed (exit code {returncode}){': ' + last if last else ''}"


def config_uses_gpu(config, cluster_has_gpu):
    """Whether a task running ``config`` should ask for a GPU: a pitrack tracker (the baselines run no network)
    with a stage's ``device`` ``cuda…``, or ``auto`` on a cluster that has GPUs."""
    if getattr(config, "tracker", "pitrack") != "pitrack":
        return False
    devices = _devices(config)
    return any(d.startswith("cuda") for d in devices) or (cluster_has_gpu and "auto" in devices)


def _devices(obj):
    import dataclasses
    if dataclasses.is_dataclass(obj):
        found = []
        for f in dataclasses.fields(obj):
            v = getattr(obj, f.name)
            if f.name == "device" and isinstance(v, str):
                found.append(v)
            else:
                found += _devices(v)
        return found
    return []


def run_jobs(fn, jobs, on_result, prepare=None, ray=False, ray_address=None, workers=None, cpus_per_task=1,
             gpus_per_task=None, gpu_config=None):
    """Call ``fn(prepare(job))`` for every job and ``on_result(job, result)`` for each result, in completion order.

    ``prepare`` (default: none) turns a job into ``fn``'s argument just before it runs or is submitted, so that
    heavy arguments (a video) are read one at a time and not held for the whole run.

    Serial unless ``ray`` or ``ray_address``. Ray: a local instance with ``workers`` × ``cpus_per_task`` CPUs
    (default: all cores) or the cluster at ``ray_address`` (``auto``: the one this node belongs to); each task
    asks for ``cpus_per_task`` CPUs and ``gpus_per_task`` GPUs (None: 1 when ``config_uses_gpu(gpu_config)``).
    Returns a description of where the jobs ran. ``on_result`` raising stops new submissions; tasks already
    running finish and their results are handed on before the error propagates."""
    jobs = list(jobs)
    prepare = prepare or (lambda job: job)
    if not (ray or ray_address):
        for job in jobs:
            on_result(job, fn(prepare(job)))
        return "serial"
    try:
        import ray as ray_module
    except ImportError:
        raise PitrackError("--ray needs Ray: pip install -e '.[ray]'") from None
    import logging
    if ray_address:
        ray_module.init(address=ray_address, logging_level=logging.WARNING, log_to_driver=False)
    else:
        n = workers or max(1, (os.cpu_count() or 1) // cpus_per_task)
        ray_module.init(num_cpus=n * cpus_per_task, include_dashboard=False, logging_level=logging.WARNING,
                        log_to_driver=False)
    try:
        resources = ray_module.cluster_resources()
        if gpus_per_task is None:
            gpus_per_task = 1 if gpu_config is not None and config_uses_gpu(gpu_config, resources.get("GPU", 0) > 0) else 0
        slots = max(1, int(resources.get("CPU", 1) // cpus_per_task))
        task = ray_module.remote(num_cpus=cpus_per_task, num_gpus=gpus_per_task, max_retries=0)(fn)
        pending, queue, failure = {}, list(jobs), None
        while queue or pending:
            while queue and failure is None and len(pending) < 2 * slots:
                job = queue.pop(0)
                pending[task.remote(prepare(job))] = job
            if not pending:
                break
            done, _ = ray_module.wait(list(pending), num_returns=1)
            for ref in done:
                job = pending.pop(ref)
                try:
                    on_result(job, ray_module.get(ref))
                except Exception as e:            # noqa: BLE001 - re-raised once the running tasks are in
                    failure = failure or e
        if failure is not None:
            raise failure
        where = f"Ray at {ray_address}" if ray_address else "local Ray"
        return f"{where}: {slots} task slots of {cpus_per_task} CPU" + (f", {gpus_per_task} GPU" if gpus_per_task else "")
    finally:
        ray_module.shutdown()
