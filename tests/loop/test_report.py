"""`distillery report`: a self-contained HTML page, rendered in headless
Chromium; the screenshots must show the accuracy plot, the loss curves and an
opened drill-down of an example that flipped."""

from __future__ import annotations

import shutil
import re
import struct
import subprocess
import zlib
from html import unescape
from html.parser import HTMLParser

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


def _chromium_shot(page, shot, profile, height):
    subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={profile}", f"--screenshot={shot}", f"--window-size=1200,{height}",
         "--hide-scrollbars", page.as_uri()],
        check=True, capture_output=True, timeout=120,
    )
    return read_png(shot)


def _count(rows, rgb, tol=24, y0=0, y1=None):
    return sum(1 for row in rows[y0:y1] for px in row if all(abs(a - b) < tol for a, b in zip(px, rgb)))


def _student_learns(st, run_id, k, example_ids):
    """Make iteration k's greedy answers to these examples right.  The tiny
    student learns nothing in 3 steps, so flips are played here: the same rows
    `evaluate` writes, with the gold answer."""
    examples = {e["id"]: e for e in st.list_examples(state="all")}
    for eid in example_ids:
        h = st.put_text(f"Counting it through.\n#### {examples[eid]['answer']}")
        with st.transaction() as c:
            n = c.execute("UPDATE predictions SET output_hash = ?, answer = ?, correct = 1 WHERE run_id = ? AND k = ?"
                          " AND phase = 'eval' AND example_id = ? AND sample = 0",
                          (h, examples[eid]["answer"], run_id, k, eid)).rowcount
        assert n == 1


class _Tags(HTMLParser):
    """Every element as (tag, attrs, its text), in document order."""

    VOID = ("br", "meta")

    def __init__(self):
        super().__init__()
        self.open, self.found = [], []

    def handle_starttag(self, tag, attrs):
        el = (tag, dict(attrs), [])
        self.found.append(el)
        if tag not in self.VOID:
            self.open.append(el)

    def handle_endtag(self, tag):
        for i in range(len(self.open) - 1, -1, -1):
            if self.open[i][0] == tag:
                del self.open[i:]
                break

    def handle_data(self, data):
        for el in self.open:
            el[2].append(data)

    def all(self, tag, **attrs):
        return [(a, "".join(t)) for g, a, t in self.found
                if g == tag and all(a.get(k) == v for k, v in attrs.items())]


def _table_rows(html, section_id):
    """The cells (text) of each row of the first table after <h2 id=SECTION_ID>."""
    table = html.split(f"<h2 id={section_id}>")[1].split("</table>")[0]
    return [[unescape(re.sub("<[^>]+>", "", c)) for c in re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", row)]
            for row in re.findall(r"<tr>(.*?)</tr>", table)]


def test_report_has_loss_curves_teacher_costs_rejections_and_drilldowns(finished, tmp_path):
    from store import Store
    from teachers.verify import REASONS

    src, _ = finished
    ws = tmp_path / "ws"
    shutil.copytree(src, ws)  # the shared workspace stays as the loop left it
    st = Store.open(ws)
    try:
        run = st.get_run("main")
        verdicts = st.verdicts(run_id=run["id"], k=1)
        rats = st.get_rationales(v["rationale_id"] for v in verdicts)
        refined = next(rats[v["rationale_id"]]["example_id"] for v in verdicts if v["accepted"])
        accepted_at_1 = {rats[v["rationale_id"]]["example_id"] for v in verdicts if v["accepted"]}
        rejected = next(rats[v["rationale_id"]]["example_id"] for v in verdicts
                        if rats[v["rationale_id"]]["example_id"] not in accepted_at_1)
        why = next(v["rejected_reason"] for v in verdicts if rats[v["rationale_id"]]["example_id"] == rejected)
        dev = st.list_examples("dev")[0]["id"]
        _student_learns(st, run["id"], 1, [refined, rejected, dev])
        stats = {k: st.teacher_call_stats(run["id"], k) for k in (0, 1, 2)}
        metrics = {k: st.get_iteration(run["id"], k)["metrics"] for k in (0, 1, 2)}
    finally:
        st.close()
    out = tmp_path / "report.html"
    assert run_inprocess(ws, "report", "-o", str(out)) == 0
    html = out.read_text()
    assert "<script" not in html and "src=" not in html and "<link" not in html  # still nothing fetched
    page = _Tags()
    page.feed(html)

    # loss curves: a panel per term the objective has (feature's weight is 0: no panel), a line per
    # trained iteration (2 kept iteration 1's adapter: no line)
    panels = [a["aria-label"] for a, _ in page.all("svg", **{"class": "loss"})]
    assert panels == ["training loss: total", "training loss: sft", "training loss: kd", "training loss: contrastive"]
    for svg in html.split('class="loss"')[1:]:
        assert svg.split("</svg>")[0].count("<path") == 2
    assert "Not trained: iteration 2" in html

    # teacher calls per iteration and teacher, as the store counts them
    rows = _table_rows(html, "teachers")
    assert rows[0][:9] == ["k", "teacher", "calls", "new", "cached", "failed", "requests", "prompt tokens",
                           "completion tokens"]
    for k in (0, 1, 2):
        s = stats[k]["fake"]
        assert rows[1 + k][:9] == [str(x) for x in (k, "fake", s["calls"], s["ok"], s["cached"], s["failed"],
                                                    s["requests"], s["prompt_tokens"], s["completion_tokens"])]
    assert rows[4][0] == "all" and rows[4][7] == str(sum(stats[k]["fake"]["prompt_tokens"] for k in stats))

    # rejections by reason: every reason of every iteration, with its meaning
    total = {}
    for m in metrics.values():
        for r, n in (m.get("rejected") or {}).items():
            total[r] = total.get(r, 0) + n
    rows = {row[0]: row for row in _table_rows(html, "rejections")[1:]}
    assert set(rows) == set(total)
    for r, n in total.items():
        per_k = [str(metrics[k].get("rejected", {}).get(r, "")) for k in (0, 1, 2)]
        assert rows[r] == [r, REASONS[r], *per_k, str(n)]

    # drill-downs: 3 fixed at iteration 1, the same 3 broken at 2 (its adapter is 1's, its answers were not played)
    details = page.all("details")
    assert [a["id"] for a, _ in details] == (
        [f"ex-1-{e}" for e in sorted([refined, rejected, dev])] + [f"ex-2-{e}" for e in sorted([refined, rejected, dev])])
    assert [a["id"] for a, _ in details if "open" in a] == [details[0][0]["id"]]  # the first one shows its story
    story = {a["id"]: t for a, t in details}
    s = story[f"ex-1-{refined}"]
    assert "fixed" in s and "The student's answer before (iteration 0)" in s and "(wrong)" in s
    assert "Refinements at iteration 1" in s and "accepted" in s and "Keep a running total" in s
    assert "Trained on (dataset version 1, changed at this iteration)" in s
    assert "The answer after training (iteration 1)" in s and "(right)" in s and "Counting it through." in s
    s = story[f"ex-1-{rejected}"]
    assert "rejected" in s and why in s and REASONS[why] in s
    assert "held out" in story[f"ex-1-{dev}"]
    assert "broken" in story[f"ex-2-{refined}"]
    assert "Examples that flipped: 3 fixed, 0 broken (1 dev, 2 pool)" in html
    assert "Examples that flipped: 0 fixed, 3 broken (1 dev, 2 pool)" in html

    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install chromium chromium-driver; .ci/run installs it)")
    # the curves: below the accuracy plot, iteration 1's orange line and points
    w, h, rows = _chromium_shot(out, tmp_path / "curves.png", tmp_path / "profile", 1500)
    assert (w, h) == (1200, 1500)
    orange = _count(rows, (0xE8, 0x59, 0x0C), y0=620)
    assert orange > 400, orange
    # one opened drill-down: headless Chromium paints nothing when the page's own URL scrolls to an
    # anchor, so a frame scrolls the report to the first drill-down
    frame = tmp_path / "frame.html"
    frame.write_text(f"<!DOCTYPE html><body style='margin:0'><iframe src='{out.name}#{details[0][0]['id']}' "
                     "style='border:0;width:1200px;height:900px'></iframe></body>")
    w, h, rows = _chromium_shot(frame, tmp_path / "drilldown.png", tmp_path / "profile", 900)
    green = _count(rows, (0xD3, 0xF9, 0xD8), tol=6)  # the "fixed" and "accepted" tags
    code = _count(rows, (0xF4, 0xF6, 0xF8), tol=3)  # the <pre> blocks of the story
    assert green > 500 and code > 50_000, (green, code)
    for name in ("curves.png", "drilldown.png"):
        shutil.copy(tmp_path / name, ws.parent / f"report-{name}")
