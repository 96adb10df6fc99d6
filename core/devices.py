"""Compute devices, CPU threads and the process's peak memory."""
import contextlib
import resource


def resolve_device(device, what="device"):
    """'auto' or '' -> 'cuda' when available, else 'cpu'; a CUDA device that is not there is a ConfigError."""
    import torch
    from core.errors import ConfigError
    if device in ("", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"{what} is '{device}' but no CUDA device is available")
    return str(device)


@contextlib.contextmanager
def num_threads(n):
    """torch's intra-op CPU threads set to ``n`` inside the block (``n`` <= 0: unchanged)."""
    import torch
    old = torch.get_num_threads()
    if int(n) > 0:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def peak_rss_mb():
    """The process's peak resident set size so far, MiB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
