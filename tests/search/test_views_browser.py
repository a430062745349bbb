"""The report drawn by a real browser: headless Chromium (Debian's ``chromium`` package, installed
by ``.ci/services.sh``) renders the report, and a screenshot shows that every plot drew.

How: a copy of the report gets a few lines of script that write, once the page has loaded, each
plot's bounding box and SVG count into the page; ``--dump-dom`` reads them back; a screenshot of
the same window size is cut at those boxes and each box must hold a drawing (data marks: saturated
pixels, which an empty plot of greys lacks). The timeline's zoom script is checked in the same run: the
page opens zoomed by its ``#zoom=A,B`` address (a narrow window: the events are drawn), then the
probe zooms out (the utilisation is re-binned) and resets (the whole run).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from codesign.result import Event
from codesign.views import DETAIL_EVENTS, timeline_fragment
from search.views import write_report

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--virtual-time-budget=15000",
)
WIDTH = 1400
#: Saturated pixels a drawn plot shows at least (measured: Pareto front of 24 trials ~900, parallel
#: coordinates ~4,000, bars and heatmaps > 20,000; the page header's text and toolbar ~100).
MIN_MARK_PIXELS = 400
PLOTS = ("pareto", "parallel", "importance", "hypervolume", "cost", "timeline")

_PROBE = """<script>
window.addEventListener('load', function () { setTimeout(function () {
  var out = {};
  document.querySelectorAll('.js-plotly-plot').forEach(function (d) {
    var r = d.getBoundingClientRect();
    out[d.id] = {x: r.left + window.scrollX, y: r.top + window.scrollY, w: r.width, h: r.height,
      svg: d.querySelectorAll('svg.main-svg').length, gl: d.querySelectorAll('canvas').length,
      view: d.dataset.view || ''};
  });
  out.__panel = (document.getElementById('design-panel') || {}).textContent || '';
  var gd = document.getElementById('timeline');
  function done() {
    var p = document.createElement('pre'); p.id = 'probe'; p.textContent = JSON.stringify(out);
    document.body.appendChild(p);
  }
  if (!/probe-zoom/.test(location.hash)) { done(); return; }
  Plotly.relayout(gd, {'xaxis.range': [0, 1500]}).then(function () {
    out.__wide = gd.dataset.view; return Plotly.relayout(gd, {'xaxis.autorange': true});
  }).then(function () { out.__reset = gd.dataset.view; done(); });
}, 3000); });
</script>"""


def _chromium() -> str:
    found = shutil.which("chromium")
    if found is None:
        raise RuntimeError("chromium not found: run .ci/services.sh (installs Debian's chromium package)")
    return found


def _run(args: list[str], profile: Path) -> subprocess.CompletedProcess[bytes]:
    cmd = [_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args]
    proc = subprocess.run(cmd, capture_output=True, timeout=180)
    if proc.returncode != 0:
        raise RuntimeError(f"chromium failed ({proc.returncode}): {proc.stderr.decode(errors='replace')[-2000:]}")
    return proc


def _probe(page: Path, profile: Path, height: int, fragment: str = "") -> dict[str, Any]:
    dom = _run([f"--window-size={WIDTH},{height}", "--dump-dom", page.as_uri() + fragment], profile).stdout.decode()
    m = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S)
    assert m is not None, "the page's load handler never ran (script error?)"
    raw = m.group(1).replace("&quot;", '"').replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
    probe: dict[str, Any] = json.loads(raw)
    return probe


def _events(n_steps: int) -> list[Event]:
    """A small two-lane log: per 1 ms step, attention then experts on compute and a fetch on copy."""
    evs = []
    for i in range(n_steps):
        t = i * 1e-3
        evs += [
            Event("0:h100-sxm", "compute", "attention", t, t + 3e-4, "a"),
            Event("0:h100-sxm", "compute", "experts", t + 3e-4, t + 8e-4, "e"),
            Event("0:h100-sxm", "copy", "fetch", t, t + 6e-4, "f"),
        ]
    return evs


def test_report_draws_in_headless_chromium(small_study_dir: Path, tmp_path: Path) -> None:
    evs = _events(2000)  # 6000 events: more than DETAIL_EVENTS, so the full view is binned
    assert len(evs) > DETAIL_EVENTS
    report = write_report(small_study_dir, path=tmp_path / "report.html", timeline=lambda d: timeline_fragment(evs))
    page = tmp_path / "probed.html"
    page.write_text(report.read_text().replace("</body>", _PROBE + "</body>"), encoding="utf-8")
    profile = tmp_path / "chromium-profile"

    # opened zoomed to 3 ms by its address (9 events: drawn as bars), then zoomed out by the probe
    probe = _probe(page, profile, 3000, "#zoom=100,103&probe-zoom")
    for name in PLOTS:
        assert name in probe, f"plot {name} missing from the page"
        box = probe[name]
        assert box["svg"] and int(box["svg"]) >= 1 and float(box["w"]) > 300 and float(box["h"]) > 200, (name, box)
    assert int(probe["parallel"]["gl"]) >= 1  # parallel coordinates draw with WebGL
    assert '"model"' in str(probe["__panel"])  # the design panel shows the chosen design's JSON
    view = str(probe["timeline"]["view"])
    assert view.startswith("events:") and 0 < int(view.split(":")[1]) <= DETAIL_EVENTS, view
    assert str(probe["__wide"]).startswith("bins:4500"), probe["__wide"]  # 1.5 s of 6000 events: re-binned
    assert str(probe["__reset"]).startswith("bins:6000"), probe["__reset"]  # double click: the whole run

    bottom = int(max(float(b["y"]) + float(b["h"]) for k, b in probe.items() if k in PLOTS)) + 20
    shot = tmp_path / "shot.png"
    _run([f"--window-size={WIDTH},{bottom}", f"--screenshot={shot}", page.as_uri()], profile)
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert pixels.shape[:2] == (bottom, WIDTH)
    for name in PLOTS:
        b = probe[name]
        x0, y0 = int(float(b["x"])), int(float(b["y"]))
        w, h = int(float(b["w"])), int(float(b["h"]))
        # the left 85 % of the box (colour bars and legends sit on the right): data marks are drawn in
        # saturated colours, while an empty plot holds only greys (background, grid, text, toolbar)
        region = pixels[y0 : y0 + h, x0 : x0 + int(0.85 * w)].reshape(-1, 3)
        saturated = int(np.sum(region.max(axis=1) - region.min(axis=1) >= 60))
        assert saturated >= MIN_MARK_PIXELS, (name, saturated)
