"""Render robench report.html files in headless Chromium: a full-page PNG and a layout check.

For each report it measures, at the given viewport width (default 1400 px), whether the page
or any scroll box in it needs horizontal scrolling, and which elements stick out on the right;
then it writes a full-page screenshot. Not a test (tests/test_report.py runs the check when
Chromium is installed); a tool to look at a report the way a reader sees it.

    python benchmarks/screenshot_report.py results/fgsm_lenet --out /tmp/shots
    python benchmarks/screenshot_report.py /tmp/rp/*/report.html --width 1400 --check

Needs Chromium (Debian: ``apt-get install chromium``). Exit status 1 with ``--check`` when
some report overflows, 2 when Chromium is missing.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

#: browsers tried in this order when --chromium is not given
CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
MAX_HEIGHT = 16_000  # px: Chromium's screenshots get unreliable beyond this

# Runs in the page after load; stores its findings as JSON in <pre id="robench-layout">,
# which --dump-dom then prints.
_PROBE = """<script>
addEventListener('load', () => {
  const doc = document.documentElement, width = innerWidth;
  const sticking = [], boxes = [];
  for (const el of document.body.querySelectorAll('*')) {
    const r = el.getBoundingClientRect();
    if (r.width && r.right > width + 0.5)
      sticking.push(el.tagName.toLowerCase() + (el.className ? '.' + el.className : '')
                    + ' right=' + Math.round(r.right));
    const ox = getComputedStyle(el).overflowX;
    if ((ox === 'auto' || ox === 'scroll') && el.scrollWidth > el.clientWidth + 1)
      boxes.push(el.tagName.toLowerCase() + ' ' + el.scrollWidth + '>' + el.clientWidth);
  }
  const out = document.createElement('pre');
  out.id = 'robench-layout';
  out.textContent = JSON.stringify({viewport: width, scrollWidth: doc.scrollWidth,
    scrollHeight: doc.scrollHeight, sticking: sticking.slice(0, 20),
    scrollBoxes: boxes.slice(0, 20)});
  document.body.appendChild(out);
});
</script>"""


def find_chromium(explicit: str | None = None) -> str | None:
    """The path of a Chromium-like browser, or None."""
    if explicit:
        return shutil.which(explicit) or (explicit if Path(explicit).is_file() else None)
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


def _chromium(browser: str, args: list[str], timeout: float) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="robench-chromium-") as profile:
        cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               "--disable-dev-shm-usage", "--no-first-run", "--mute-audio",
               f"--user-data-dir={profile}", "--force-device-scale-factor=1", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "HOME": profile})


def measure(report: Path, width: int = 1400, browser: str | None = None,
            timeout: float = 120) -> dict:
    """Layout facts of ``report`` at ``width`` px: scrollWidth, scrollHeight, the elements
    that stick out on the right and the scroll boxes that scroll horizontally."""
    browser = browser or find_chromium()
    if browser is None:
        raise FileNotFoundError("no Chromium found (apt-get install chromium)")
    page = Path(report).read_text(encoding="utf-8")
    with tempfile.TemporaryDirectory(prefix="robench-shot-") as tmp:
        probe = Path(tmp) / "probe.html"
        probe.write_text(page.replace("</body>", _PROBE + "</body>", 1), encoding="utf-8")
        proc = _chromium(browser, [f"--window-size={width},900", "--virtual-time-budget=5000",
                                   "--dump-dom", probe.as_uri()], timeout)
    found = re.search(r'<pre id="robench-layout">(.*?)</pre>', proc.stdout, re.S)
    if found is None:
        raise RuntimeError(f"Chromium gave no layout (exit {proc.returncode}): "
                           f"{proc.stderr.strip()[-500:]}")
    return json.loads(html.unescape(found.group(1)))


def screenshot(report: Path, png: Path, width: int = 1400, height: int | None = None,
               browser: str | None = None, timeout: float = 120) -> Path:
    """A PNG of ``report`` at ``width`` px, as tall as the page (up to MAX_HEIGHT)."""
    browser = browser or find_chromium()
    if browser is None:
        raise FileNotFoundError("no Chromium found (apt-get install chromium)")
    if height is None:
        height = int(measure(report, width, browser, timeout)["scrollHeight"])
    height = max(200, min(height, MAX_HEIGHT))
    png = Path(png).resolve()
    png.parent.mkdir(parents=True, exist_ok=True)
    proc = _chromium(browser, [f"--window-size={width},{height}", "--virtual-time-budget=5000",
                               f"--screenshot={png}", Path(report).resolve().as_uri()], timeout)
    if not png.exists():
        raise RuntimeError(f"Chromium wrote no screenshot (exit {proc.returncode}): "
                           f"{proc.stderr.strip()[-500:]}")
    return png


def overflows(layout: dict) -> list[str]:
    """What needs horizontal scrolling ([] when nothing does)."""
    problems = []
    if layout["scrollWidth"] > layout["viewport"]:
        problems.append(f"page is {layout['scrollWidth']} px wide at a {layout['viewport']} px "
                        "viewport: " + "; ".join(layout["sticking"][:5]))
    problems += [f"scroll box {box}" for box in layout["scrollBoxes"]]
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("reports", nargs="+", type=Path,
                        help="report.html files or results folders that hold one")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for the PNGs (default: a temporary folder, printed)")
    parser.add_argument("--width", type=int, default=1400, help="viewport width in px")
    parser.add_argument("--chromium", default=None, help="browser executable")
    parser.add_argument("--check", action="store_true",
                        help="exit 1 when some report needs horizontal scrolling")
    args = parser.parse_args(argv)

    browser = find_chromium(args.chromium)
    if browser is None:
        print("no Chromium found: apt-get install chromium (or pass --chromium)",
              file=sys.stderr)
        return 2
    out = args.out or Path(tempfile.mkdtemp(prefix="robench-shots-"))
    failed = False
    for given in args.reports:
        report = given / "report.html" if given.is_dir() else given
        name = report.parent.name or "report"
        layout = measure(report, args.width, browser)
        problems = overflows(layout)
        failed |= bool(problems)
        png = screenshot(report, out / f"{name}.png", args.width, layout["scrollHeight"],
                         browser)
        verdict = "OK: nothing scrolls horizontally" if not problems else "; ".join(problems)
        print(f"{report}: {args.width}x{layout['scrollHeight']} px -> {png}\n  {verdict}")
    return 1 if failed and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
