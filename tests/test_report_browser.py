"""report.html in a real browser (headless Chromium): every figure loads, no link is broken.

Chromium loads a copy of the page with a script that, on load, records each image's
naturalWidth and each link's target into the DOM, which --dump-dom prints. Skips when
chromium is missing (CI installs it: scripts/ci-system-deps).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from vitplas.experiments.report import write_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--allow-file-access-from-files", "--virtual-time-budget=10000"]  # fmt: skip
PROBE = """<script>
window.addEventListener('load', () => {
  const images = [...document.images].map(i => ({src: i.getAttribute('src'),
    width: i.naturalWidth, complete: i.complete}));
  const links = [...document.querySelectorAll('a[href]')].map(a => a.getAttribute('href'));
  const out = document.createElement('pre');
  out.id = 'probe';
  out.textContent = JSON.stringify({images, links});
  document.body.appendChild(out);
});
</script></body>"""


def browser_probe(page: Path, tmp: Path) -> dict:
    """{'images': [{src, width, complete}], 'links': [href]} as Chromium sees `page`."""
    probe = page.with_name("_probe.html")
    probe.write_text(page.read_text().replace("</body>", PROBE))
    profile = tmp / "chromium-profile"
    cmd = [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--dump-dom", probe.as_uri()]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    found = re.search(r'<pre id="probe">(.*?)</pre>', done.stdout, re.S)
    assert found, f"chromium printed no probe result; stderr: {done.stderr[-2000:]}"
    return json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_report_html_figures_load_and_links_resolve(tmp_path):
    from test_figures import _bounds, _plasticity
    from test_report import _tables

    from vitplas.runs import write_table

    spec, _ = _tables(tmp_path)
    write_table(_plasticity(), tmp_path / "tables" / "plasticity")  # the analysis figures too
    write_table(_bounds(), tmp_path / "tables" / "bounds")
    write_report(spec, tmp_path)
    page = tmp_path / "report" / "report.html"
    seen = browser_probe(page, tmp_path)
    names = {Path(i["src"]).stem for i in seen["images"]}
    assert {"accuracy_by_component", "gain_by_component", "accuracy_over_lrs",
            "curves_grad_norm", "curves_val_loss", "plasticity_by_rank",
            "plasticity_vs_depth", "bounds_per_layer"} <= names  # fmt: skip
    for image in seen["images"]:
        assert image["complete"] and image["width"] > 100, f"figure did not load: {image}"
    for href in seen["links"]:
        url = urlparse(href)
        if url.scheme in ("", "file") and url.path:
            assert (page.parent / unquote(url.path)).exists(), f"broken link: {href}"


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_probe_catches_a_missing_figure(tmp_path):
    page = tmp_path / "report.html"
    page.write_text("<!doctype html><html><body><img src='figures/gone.png'></body></html>")
    seen = browser_probe(page, tmp_path)
    assert seen["images"] == [{"src": "figures/gone.png", "width": 0, "complete": True}]
