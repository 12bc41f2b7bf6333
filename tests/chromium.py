"""Headless Chromium for the report tests: how many of a page's images decode."""

from __future__ import annotations

import subprocess
from pathlib import Path


def images_loaded(page: Path, profile: Path) -> tuple[int, int]:
    """(images in the page, images that decoded) as headless Chromium reports them."""
    probe = profile.parent / "probe.html"
    probe.write_text(
        page.read_text().replace(
            "</body>",
            "<script>window.onload=()=>{const i=[...document.images];document.title="
            "'images '+i.length+' loaded '+i.filter(x=>x.complete&&x.naturalWidth>0).length}"
            "</script></body>",
        )
    )
    out = subprocess.run(
        [
            "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-sync",
            "--disable-background-networking",
            "--disable-component-update",
            "--no-first-run",
            f"--user-data-dir={profile}",
            "--dump-dom",
            probe.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    title = out.stdout.split("<title>")[1].split("</title>")[0]
    _, total, _, loaded = title.split()
    return int(total), int(loaded)
