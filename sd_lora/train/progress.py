"""What a run shows while it trains, and the loss history it leaves behind.

On a terminal: a tqdm bar with loss, lr and s/step. Anywhere else (a log file, CI, nohup): one plain line every
`train.log_every_n_steps` steps, no carriage returns. Every logged step (and every validation loss) is also one
JSON line in `{output.dir}/logs/metrics.jsonl`, whatever tracker is configured.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

__all__ = ["Progress", "format_duration"]


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class Progress:
    def __init__(self, total: int, initial: int, metrics_path: Path | None, enabled: bool = True, stream=None):
        self.total, self.step, self.enabled = total, initial, enabled
        self.stream = stream or sys.stderr
        self.started, self.first_step = time.perf_counter(), initial
        self.bar = None
        if enabled and self.stream.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, desc="training", unit="step", file=self.stream)
        self.metrics = None
        if enabled and metrics_path is not None:
            metrics_path.parent.mkdir(parents=True, exist_ok=True)
            self.metrics = open(metrics_path, "a", encoding="utf-8")  # appended to on resume

    def advance(self) -> None:
        self.step += 1
        if self.bar is not None:
            self.bar.update(1)

    def log(self, loss: float, lrs: dict[str, float], s_per_step: float, grad_norm: float | None,
            extra: dict[str, int | float] | None = None) -> None:
        """One logged optimiser step: the bar's postfix or a plain line, and a metrics line (`extra`: method values
        such as AdaLoRA's rank budget, shown on the line and recorded)."""
        if not self.enabled:
            return
        first_lr = next(iter(lrs.values()))
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{first_lr:.2e}", s_per_step=f"{s_per_step:.2f}",
                                 **(extra or {}))
        else:
            done = self.step - self.first_step
            eta = (time.perf_counter() - self.started) / done * (self.total - self.step) if done else 0.0
            more = "".join(f"  {k} {v}" for k, v in (extra or {}).items())
            print(f"step {self.step}/{self.total}  loss {loss:.4f}  lr {first_lr:.2e}  {s_per_step:.2f} s/step  "
                  f"ETA {format_duration(eta)}{more}", file=sys.stdout, flush=True)
        record = {"step": self.step, "loss": loss, "lr": {k.removeprefix("lr/"): v for k, v in lrs.items()},
                  "s_per_step": s_per_step}
        if grad_norm is not None:
            record["grad_norm"] = grad_norm
        self._write({**record, **(extra or {})})

    def validation(self, loss: float) -> None:
        if self.enabled:
            print(f"step {self.step}: validation loss {loss:.5f}", file=sys.stdout, flush=True)
            self._write({"step": self.step, "validation_loss": loss})

    def _write(self, record: dict) -> None:
        if self.metrics is not None:
            self.metrics.write(json.dumps(record) + "\n")
            self.metrics.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.metrics is not None:
            self.metrics.close()
            self.metrics = None
