"""A run's or a comparison's Markdown report as one self-contained HTML page (no torch): the
figures embedded as base64, so the page can be shared alone."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

from cfglab import rundir


def md_to_html(md: str, figs: dict[str, Path], rel_to: Path) -> str:
    """A minimal Markdown -> HTML for our own report (headings, tables, images, lists, bold)."""
    body: list[str] = []
    lines = md.splitlines()
    i = 0

    def inline(s: str) -> str:
        s = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", html.escape(s))
        # a whole line in single asterisks is a caption; elsewhere '*' is math (P*)
        return re.sub(r"^\*([^*]+)\*$", r"<i>\1</i>", s)

    paths = {p.relative_to(rel_to).as_posix(): p for p in figs.values()}
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{inline(line[level:].strip())}</h{level}>")
        elif line.startswith("!["):
            alt, src = re.match(r"!\[(.*)\]\((.*)\)", line).groups()
            data = base64.b64encode(rundir.read_bytes(paths[src])).decode()
            body.append(f'<p><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"></p>')
        elif line.startswith("|"):
            rows = []
            while i < len(lines) and lines[i].startswith("|"):
                rows.append([c.strip() for c in lines[i].strip("|").split("|")])
                i += 1
            head, rest = rows[0], rows[2:]
            body.append(
                "<table><tr>"
                + "".join(f"<th>{inline(c)}</th>" for c in head)
                + "</tr>"
                + "".join(
                    "<tr>" + "".join(f"<td>{inline(c)}</td>" for c in r) + "</tr>" for r in rest
                )
                + "</table>"
            )
            continue
        elif line.startswith("- "):
            items = []
            while i < len(lines) and lines[i].startswith("- "):
                items.append(f"<li>{inline(lines[i][2:])}</li>")
                i += 1
            body.append("<ul>" + "".join(items) + "</ul>")
            continue
        elif line.strip():
            body.append(f"<p>{inline(line)}</p>")
        i += 1
    style = (
        "body{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;"
        "padding:3px 8px;text-align:right}img{max-width:100%}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>cfglab report</title>"
        f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )
