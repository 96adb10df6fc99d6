"""Progress bars that suit where stderr goes: tqdm's redrawn bar on a terminal; in a log file (a batch job,
Slurm, ``2> log``) a plain line now and then, never thousands of carriage-return redraws."""
import sys
import time

LOG_INTERVAL_S = 30.0       # not a terminal: at most one line per bar this often, and a last line if any


class LogProgress:
    """The part of tqdm's interface the stages use (iterate, ``update``, ``set_postfix``, ``close``, ``with``),
    printing ``desc: n/total (p%) elapsed [postfix]`` lines to ``file`` at most every ``interval`` seconds,
    and a final line when it printed any (short stages print nothing)."""

    def __init__(self, iterable=None, desc="", total=None, initial=0, unit="it", file=None,
                 interval=LOG_INTERVAL_S, **_):
        self.iterable, self.desc, self.unit = iterable, desc or "progress", unit
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.n, self.file, self.interval = int(initial), file, float(interval)
        self.start = self.last = time.monotonic()
        self.postfix, self.printed_at, self.closed = "", None, False

    def __iter__(self):
        try:
            for x in self.iterable:
                yield x
                self.update(1)
        finally:
            self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def update(self, n=1):
        self.n += n
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            self._line(now)

    def set_postfix(self, ordered_dict=None, **kwargs):
        items = dict(ordered_dict or {}, **kwargs)
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def close(self):
        if not self.closed and self.printed_at is not None and self.printed_at != self.n:
            self._line(time.monotonic())
        self.closed = True

    def _line(self, now):
        of = f"/{self.total}" if self.total else ""
        pct = f" ({100.0 * self.n / self.total:.0f}%)" if self.total else ""
        post = f" [{self.postfix}]" if self.postfix else ""
        print(f"{self.desc}: {self.n}{of} {self.unit}{pct} {now - self.start:.0f} s{post}",
              file=self.file or sys.stderr, flush=True)
        self.printed_at = self.n


def progress_bar(iterable=None, enabled=True, **kwargs):
    """A tqdm bar (keyword arguments as tqdm's) when ``enabled`` and stderr is a terminal, a
    :class:`LogProgress` when stderr is not one, and a silent tqdm when not ``enabled``."""
    from tqdm import tqdm
    if kwargs.pop("disable", False):
        enabled = False
    if not enabled:
        return tqdm(iterable, disable=True, **kwargs)
    stream = sys.stderr
    if stream is not None and hasattr(stream, "isatty") and stream.isatty():
        return tqdm(iterable, **kwargs)
    return LogProgress(iterable, **kwargs)
