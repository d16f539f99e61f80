"""The HTML page of a run, looked at in a real browser: headless Chromium (the Debian
package `chromium`; .ci/run installs it) loads it without script errors, every
image decodes, the page holds its tables, curve and qualitative rows, and its
screenshot is not blank. Also the index page across runs."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from tests.conftest import random_model_run

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
# .ci/run sets this: there a missing browser is a failure, elsewhere a skip that says why.
REQUIRED = os.environ.get("COIR_BENCH_REQUIRE_BROWSER") == "1"


def browser() -> str:
    found = next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)
    if found is None:
        message = "headless Chromium not found: install the Debian package (apt-get install chromium)"
        if REQUIRED:
            pytest.fail(message)
        pytest.skip(message)
    return found


def headless(page, *flags: str) -> subprocess.CompletedProcess:
    command = [browser(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               "--virtual-time-budget=10000", *flags, page.resolve().as_uri()]
    return subprocess.run(command, capture_output=True, text=True, timeout=180, check=False)


@pytest.fixture(scope="module")
def run_page(tmp_path_factory):
    root = tmp_path_factory.mktemp("html")
    result = random_model_run(root, mix=["sweep"], mix_step=0.25)
    return root / "out", next((root / "out").glob("*.html")), result


def test_page_loads_every_image_and_holds_its_sections(run_page):
    _, page, result = run_page
    done = headless(page, "--dump-dom")
    assert done.returncode == 0, done.stderr[-2000:]
    body = re.search(r"<body([^>]*)>", done.stdout)
    assert body, done.stdout[:500]
    health = dict(re.findall(r'data-(\w+)="(\d+)"', body.group(1)))
    assert health.get("errors") == "0" and health.get("broken") == "0", health
    rows = done.stdout.count('class="row"')
    assert rows >= 8 and int(health["images"]) >= rows * 6  # reference + 5 retrieved per row
    for section in ("Metrics", "Recall@K", "Mixing heat-map", "Protocol fingerprint"):
        assert f"<h2>{section}</h2>" in done.stdout
    assert "<polyline" in done.stdout and "composed f(q,t) minus image-only q" in done.stdout


def test_screenshot_is_not_blank(run_page, tmp_path):
    from PIL import Image, ImageStat

    _, page, _ = run_page
    shot = tmp_path / "page.png"
    done = headless(page, f"--screenshot={shot}", "--window-size=1280,3000")
    assert done.returncode == 0 and shot.is_file(), done.stderr[-2000:]
    image = Image.open(shot).convert("RGB")
    assert image.size == (1280, 3000)
    colours = image.resize((320, 750)).getcolors(maxcolors=1 << 16)
    assert colours is None or len(colours) > 50  # text, tables, thumbnails: many colours
    assert max(ImageStat.Stat(image).stddev) > 20  # not one flat colour


def test_index_links_each_run_page(run_page, tmp_path):
    from harness.reports.benchmarks import main

    out_dir, page, _ = run_page
    index = tmp_path / "index.html"
    assert main([str(out_dir), "--html", str(index), "--out", str(tmp_path / "B.md")]) == 0
    text = index.read_text()
    assert f'{page.name}">' in text and "paper: " not in text  # shapes has no paper
    done = headless(index, "--dump-dom")
    assert 'data-errors="0"' in done.stdout and 'data-broken="0"' in done.stdout


def test_index_puts_paper_rows_under_a_cirr_run(run_page, tmp_path):
    import json

    from harness.reports.html_index import index_html

    out_dir, page, result = run_page
    as_cirr = {**result, "protocol": {**result["protocol"], "suite": "cirr"}}
    text = index_html([(page.with_suffix(".json"), as_cirr)], tmp_path / "index.html")
    assert "<h2>cirr</h2>" in text and "paper: CoVR BLIP-L, as in the paper" in text
    assert json.loads(page.with_suffix(".json").read_text())["protocol"]["suite"] == "shapes"
