"""Progress lines for the long-running tools (extract, bake): at most one every few seconds, and the last."""

from __future__ import annotations

import time

__all__ = ["printer", "resolve"]


def printer(label: str, every: float = 5.0):
    """A callable(done, total, name) printing `label: done/total (elapsed) name`."""
    start, last = time.monotonic(), [0.0]

    def report(done: int, total: int, name: str) -> None:
        now = time.monotonic() - start
        if now - last[0] >= every or done == total:
            last[0] = now
            print(f"{label}: {done}/{total} ({now:.0f} s) {name}", flush=True)

    return report


def resolve(progress, label: str):
    """None / False: quiet; True: a printer; a callable: itself."""
    if progress is True:
        return printer(label)
    return progress or None
