"""The web page, end to end in headless Chromium (Debian's chromium, driven by Playwright)."""

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from slimforge.serve import ServeConfig
from slimforge.serve.local import running_server

CHROMIUM = next((p for p in (os.environ.get("SLIMFORGE_CHROMIUM"), shutil.which("chromium"),
                             shutil.which("chromium-browser"), "/usr/bin/chromium") if p and Path(p).exists()), None)


@pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (apt-get install chromium); `make test` installs it")
def test_upload_a_digit_and_see_the_prediction(digits, tmp_path):
    pytest.importorskip("playwright")
    from PIL import Image
    from playwright.sync_api import sync_playwright

    x, y = digits["data"]["x_test"], digits["data"]["y_test"]
    i = int(np.flatnonzero(y == 7)[0])
    png = tmp_path / "seven.png"
    Image.fromarray((x[i, 0] * 255).astype(np.uint8)).resize((64, 64), Image.NEAREST).save(png)
    shot = tmp_path / "page.png"
    with running_server(ServeConfig(paths=[str(digits["onnx"].path)])) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 800})
            page.goto(url + "/")
            page.wait_for_selector("#image-input", state="visible")
            assert "digits" in page.inner_text("#model-info")
            page.set_input_files("#file", str(png))
            page.wait_for_selector("#preview", state="visible")
            page.click("#predict")
            page.wait_for_selector("#prediction-0", timeout=30_000)
            label = page.inner_text("#prediction-0")
            timing = page.inner_text("#timing")
            page.screenshot(path=str(shot), full_page=True)
            # the example images the page offers work too
            page.wait_for_selector("img.example")
            page.click("img.example >> nth=0")
            page.click("#predict")
            page.wait_for_function("document.querySelector('#timing').textContent.includes('round trip')")
        finally:
            browser.close()
    assert label == "7"
    assert "server" in timing and "ms" in timing
    assert shot.stat().st_size > 10_000
    out = Path(os.environ.get("SLIMFORGE_SCREENSHOT_DIR", tmp_path))
    if out != tmp_path:
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, out / "serve_page.png")
