"""What a run page shows, read from the files `sd-lora train` writes: metrics.jsonl, the log, samples, adapters."""

from __future__ import annotations

import json
import re
from pathlib import Path

from sd_lora.studio.runner import BASELINE

__all__ = ["read_metrics", "progress", "sample_steps", "output_files", "loss_svg", "log_tail"]

_STEP_LINE = re.compile(r"^step (\d+)/(\d+)\s")


def read_metrics(out_dir: Path) -> tuple[list[dict], list[dict]]:
    """(training records, validation records) of metrics.jsonl; a half-written last line is skipped."""
    train, val = [], []
    path = out_dir / "logs" / "metrics.jsonl"
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return train, val
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if "validation_loss" in record:
            val.append(record)
        elif "loss" in record:
            train.append(record)
    return train, val


def log_tail(log: Path, max_bytes: int = 20000) -> str:
    try:
        with open(log, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            return f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def progress(out_dir: Path, log: Path, max_steps: int | None) -> dict:
    train, val = read_metrics(out_dir)
    total = max_steps
    for line in reversed(log_tail(log).splitlines()):
        m = _STEP_LINE.match(line)
        if m:
            total = int(m.group(2))
            break
    last = train[-1] if train else {}
    step = int(last.get("step", 0))
    s_per_step = last.get("s_per_step")
    eta = s_per_step * (total - step) if s_per_step and total else None
    lr = next(iter(last.get("lr", {}).values()), None) if isinstance(last.get("lr"), dict) else None
    return {"step": step, "total": total, "loss": last.get("loss"), "lr": lr, "s_per_step": s_per_step,
            "eta_s": eta, "validation_loss": val[-1]["validation_loss"] if val else None,
            "losses": [[r["step"], r["loss"]] for r in train],
            "validation": [[r["step"], r["validation_loss"]] for r in val],
            "samples": sample_steps(out_dir)}


def sample_steps(out_dir: Path) -> list[dict]:
    """[{"step": N, "images": [paths relative to the output folder]}]: each step's grid, and step 0 (the base model
    before training, rendered by `sd-lora generate`) as its grid or its images."""
    folder = out_dir / "samples"
    found = []
    baseline = out_dir / BASELINE
    if baseline.is_dir():
        grids = sorted(baseline.glob("grid-*.png"))
        images = grids or sorted(p for p in baseline.glob("*.png"))
        if images:
            found.append({"step": 0, "images": [p.relative_to(out_dir).as_posix() for p in images]})
    for p in sorted(folder.glob("step*.png")) if folder.is_dir() else []:
        m = re.fullmatch(r"step(\d+)\.png", p.name)
        if m:
            found.append({"step": int(m.group(1)), "images": [p.relative_to(out_dir).as_posix()]})
    return sorted(found, key=lambda e: e["step"])


def output_files(out_dir: Path) -> list[tuple[str, int]]:
    """(path relative to the run's output, size) of the files worth downloading."""
    if not out_dir.is_dir():
        return []
    found = []
    for p in sorted(out_dir.iterdir()):
        if p.is_file() and p.suffix in (".safetensors", ".toml"):
            found.append((p.name, p.stat().st_size))
    metrics = out_dir / "logs" / "metrics.jsonl"
    if metrics.is_file():
        found.append(("logs/metrics.jsonl", metrics.stat().st_size))
    return found


def loss_svg(losses: list[list[float]], validation: list[list[float]], width: int = 640, height: int = 240) -> str:
    """A loss chart as inline SVG (training loss line, validation loss points); no script needed to draw it."""
    points = losses + validation
    if not points:
        return (f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
                f'aria-label="loss chart"><text x="20" y="{height // 2}">no loss logged yet</text></svg>')
    pad = 40
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    if x1 == x0:
        x1 = x0 + 1
    if y1 == y0:
        y1 = y0 + 1e-6

    def sx(x):
        return pad + (x - x0) / (x1 - x0) * (width - 2 * pad)

    def sy(y):
        return height - pad - (y - y0) / (y1 - y0) * (height - 2 * pad)

    line = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in losses)
    dots = "".join(f'<circle class="val" cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="4"><title>validation loss {y:.5f} '
                   f'at step {x:g}</title></circle>' for x, y in validation)
    return (f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
            f'aria-label="loss chart">'
            f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" class="axis"/>'
            f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{height - pad}" class="axis"/>'
            f'<text x="{pad}" y="{height - 12}">step {x0:g}</text>'
            f'<text x="{width - pad}" y="{height - 12}" text-anchor="end">step {x1:g}</text>'
            f'<text x="4" y="{pad - 8}">{y1:.4g}</text><text x="4" y="{height - pad + 14}">{y0:.4g}</text>'
            + (f'<polyline class="loss" points="{line}"/>' if len(losses) > 1 else
               "".join(f'<circle class="loss" cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3"/>' for x, y in losses))
            + dots
            + f'<text x="{width - pad}" y="{pad - 8}" text-anchor="end"><tspan class="loss-key">— training loss</tspan>'
              f'{"  <tspan class=" + chr(34) + "val-key" + chr(34) + ">● validation loss</tspan>" if validation else ""}</text>'
            + "</svg>")
