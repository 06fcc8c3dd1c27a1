"""Progress of long work: a tqdm bar when standard error is a terminal, otherwise one line now
and then (every `EVERY` seconds, so that work shorter than that prints nothing)."""

from __future__ import annotations

import sys
import time

__all__ = ["Progress", "EVERY", "wanted"]

#: seconds between progress lines when no bar is shown
EVERY = 30.0


def wanted(show: bool | None) -> bool:
    """A bar: ``show``, or (None) whether standard error is a terminal."""
    if show is None:
        return sys.stderr is not None and sys.stderr.isatty()
    return show


class Progress:
    """``total`` units of work named ``desc``. ``show``: True a bar, False nothing, None a bar
    on a terminal and lines otherwise. ``update(n, status)`` counts ``n`` more units done;
    ``status`` (a short string) goes after the counts."""

    def __init__(self, total: int, desc: str, unit: str, show: bool | None = None, initial=0):
        self.total, self.desc, self.unit, self.done = total, desc, unit, initial
        bar_on = wanted(show)
        self.lines_on = show is None and not bar_on
        self.last = time.monotonic()
        self.bar = None
        if bar_on:
            from tqdm.auto import tqdm  # loaded only for a bar: `import nemon` stays light

            self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, mininterval=1.0)

    def update(self, n: int = 1, status: str | None = None) -> None:
        self.done += n
        if self.bar is not None:
            if status is not None:
                self.bar.set_postfix_str(status, refresh=False)
            self.bar.update(n)
        elif self.lines_on and time.monotonic() - self.last >= EVERY:
            self.last = time.monotonic()
            line = f"{self.desc}: {self.done}/{self.total} {self.unit}s done"
            print(line + (f": {status}" if status else ""), file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
