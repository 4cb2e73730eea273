"""One self-contained HTML page from a DatasetReport (thumbnails inlined), to open in any browser or share."""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path

from sd_lora.captioning.report import DatasetReport
from sd_lora.fileio import atomic_write_text

__all__ = ["render_report", "write_report"]

_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;background:#fafafa;color:#222}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.2em .6em;text-align:left}
.grid{display:flex;flex-wrap:wrap;gap:10px}
.card{width:190px;background:#fff;border:1px solid #ddd;padding:6px;font-size:.8em}
.card img{max-width:178px;max-height:178px;display:block;margin:auto}
.card.warn{border-color:#d33}.cap{word-wrap:break-word;margin-top:4px}.meta{color:#666}
.cloud span{margin:0 .35em;line-height:1.6;display:inline-block}
.bad{color:#b00}
"""


def _img(im) -> str:
    if im.thumbnail is None:
        return ""
    buf = io.BytesIO()
    im.thumbnail.save(buf, format="JPEG", quality=80)
    return f'<img src="data:image/jpeg;base64,{base64.b64encode(buf.getvalue()).decode()}" alt="">'


def _rel(report: DatasetReport, path: Path) -> str:
    try:
        return str(path.relative_to(report.folder))
    except ValueError:
        return str(path)


def render_report(report: DatasetReport, max_tags: int = 150) -> str:
    e = html.escape
    s = report.summary()
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>Dataset report: {e(str(report.folder))}</title>"
           f"<style>{_CSS}</style></head><body>",
           f"<h1>Dataset report: {e(str(report.folder))}</h1>",
           f"<p>{s['images']} usable images at resolution {report.resolution} "
           f"({'aspect buckets' if report.enable_bucket else 'square crops'}); {s['skipped']} skipped; "
           f"{s['missing_captions']} without caption; {s['duplicate_groups']} duplicate group(s); "
           f"{s['distinct_tags']} distinct tags.</p>"]
    if report.warnings:
        out.append("<h2>Warnings</h2><ul>" + "".join(f"<li>{e(w)}</li>" for w in report.warnings) + "</ul>")
    out.append("<h2>Skipped files</h2>" + ("<table><tr><th>file</th><th>why</th></tr>" + "".join(
        f"<tr><td>{e(_rel(report, p))}</td><td class='bad'>{e(why)}</td></tr>" for p, why in report.skipped)
        + "</table>" if report.skipped else "<p>none</p>"))
    out.append("<h2>Missing captions</h2>" + ("<ul>" + "".join(
        f"<li>{e(_rel(report, p))}</li>" for p in report.missing_captions) + "</ul>"
        if report.missing_captions else "<p>none</p>"))
    out.append("<h2>Near-duplicates (perceptual hash)</h2>" + ("<ul>" + "".join(
        "<li>" + ", ".join(e(_rel(report, p)) for p in group) + "</li>" for group in report.duplicates) + "</ul>"
        if report.duplicates else "<p>none</p>"))
    out.append("<h2>Buckets</h2><table><tr><th>bucket (w x h)</th><th>images</th></tr>" + "".join(
        f"<tr><td>{w} x {h}</td><td>{n}</td></tr>" for (w, h), n in report.buckets) + "</table>")
    tags = report.tags[:max_tags]
    if tags:
        top = tags[0][1]
        out.append("<h2>Tags</h2><div class='cloud'>" + "".join(
            f"<span style='font-size:{0.8 + 1.4 * math.log1p(n) / math.log1p(top):.2f}em' title='{n} image(s)'>"
            f"{e(t)}</span>" for t, n in sorted(tags, key=lambda tn: tn[0].casefold())) + "</div>")
    dup = {p for group in report.duplicates for p in group}
    out.append("<h2>Images</h2><div class='grid'>")
    for im in report.images:
        flags = (["no caption"] if not im.caption.strip() else []) + (["duplicate"] if im.path in dup else [])
        out.append(f"<div class='card{' warn' if flags else ''}'>{_img(im)}"
                   f"<div class='meta'>{e(_rel(report, im.path))}<br>{im.width}x{im.height} &rarr; "
                   f"{im.bucket[0]}x{im.bucket[1]}{' &middot; ' + e(', '.join(flags)) if flags else ''}</div>"
                   f"<div class='cap'>{e(im.caption) or '<i>(empty)</i>'}</div></div>")
    out.append("</div></body></html>")
    return "\n".join(out)


def write_report(report: DatasetReport, target: str | Path) -> Path:
    return atomic_write_text(target, render_report(report))
