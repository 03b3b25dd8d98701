"""`distillery report`: a self-contained HTML page, rendered in headless
Chromium; the screenshot must show the accuracy plot."""

from __future__ import annotations

import shutil
import struct
import subprocess
import zlib

import pytest

from tests.loop.helpers import run_inprocess

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def read_png(path):
    """(width, height, rows of (r, g, b)) of an 8-bit RGB/RGBA PNG (no PIL here)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, w = 8, b"", 0
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + n]
        if kind == b"IHDR":
            w, h, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and ctype in (2, 6) and interlace == 0
            bpp = 3 if ctype == 2 else 4
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    raw = zlib.decompress(idat)
    stride = w * bpp
    rows, prev = [], bytearray(stride)
    for y in range(h):
        f, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], (prev[i - bpp] if i >= bpp else 0)
            if f == 1:
                line[i] = (line[i] + a) & 255
            elif f == 2:
                line[i] = (line[i] + b) & 255
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append([tuple(line[j : j + 3]) for j in range(0, stride, bpp)])
        prev = line
    return w, h, rows


def test_report_is_self_contained_and_shows_the_plot_in_chromium(finished, tmp_path):
    ws, _ = finished
    out = tmp_path / "report.html"
    assert run_inprocess(ws, "report", "-o", str(out)) == 0
    html = out.read_text()
    assert "<svg" in html and "dev accuracy per iteration" in html
    assert "<script" not in html and "src=" not in html and "<link" not in html  # nothing fetched
    for k in (0, 1, 2):
        assert f"id='iter-{k}'" in html and f"href='#iter-{k}'" in html
    assert "baseline" in html and "Refinements accepted" in html

    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install chromium chromium-driver; .ci/run installs it)")
    shot = tmp_path / "shot.png"
    subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1200,900",
         "--hide-scrollbars", out.as_uri()],
        check=True, capture_output=True, timeout=120,
    )
    w, h, rows = read_png(shot)
    assert (w, h) == (1200, 900)
    # the dev series is drawn in #1f6feb: its line and points must be on screen
    blue = sum(1 for row in rows for px in row if abs(px[0] - 0x1F) < 30 and abs(px[1] - 0x6F) < 30 and abs(px[2] - 0xEB) < 30)
    assert blue > 200, blue
    shutil.copy(shot, ws.parent / "report-screenshot.png")
