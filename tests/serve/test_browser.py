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


def _nearest_x2_sr():
    """Convolutions then PixelShuffle(2), initialised to nearest-neighbour x2 upscaling (a real photo stays one)."""
    import torch
    from torch import nn

    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 12, 3, padding=1), nn.PixelShuffle(2))
    with torch.no_grad():
        for conv in (net[0], net[2]):
            conv.weight.zero_()
            conv.bias.zero_()
        for c in range(3):
            net[0].weight[c, c, 1, 1] = 1.0  # channels 0-2 carry the input ([0, 1]: the ReLU keeps it)
            net[2].weight[4 * c:4 * c + 4, c, 1, 1] = 1.0  # each of the 2x2 sub-pixels of channel c copies it
    return net.eval()


@pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (apt-get install chromium); `make test` installs it")
def test_upload_a_photo_and_see_the_x2_super_resolved_image(tmp_path):
    pytest.importorskip("playwright")
    import base64
    import io

    import torch
    from PIL import Image
    from playwright.sync_api import sync_playwright
    from sklearn.datasets import load_sample_image

    import slimforge

    art = slimforge.load(_nearest_x2_sr(), example_inputs=torch.rand(1, 3, 16, 16), name="sr-x2")
    model = slimforge.export(art, tmp_path / "sr.onnx", workdir=tmp_path)
    photo = Image.fromarray(load_sample_image("china.jpg")).crop((0, 0, 600, 400)).resize((96, 64), Image.BILINEAR)
    png = tmp_path / "china.png"
    photo.save(png)
    shot = tmp_path / "sr_page.png"
    with running_server(ServeConfig(paths=[str(model.path)])) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 800})
            page.goto(url + "/")
            page.wait_for_selector("#image-input", state="visible")
            page.set_input_files("#file", str(png))
            page.wait_for_selector("#preview", state="visible")
            page.click("#predict")
            page.wait_for_function("(() => { const i = document.querySelector('#output-image-0'); "
                                   "return i && i.complete && i.naturalWidth > 0; })()", timeout=30_000)
            size = page.evaluate("(() => { const i = document.querySelector('#output-image-0'); "
                                 "return [i.naturalWidth, i.naturalHeight]; })()")
            src = page.get_attribute("#output-image-0", "src")
            caption = page.inner_text("figcaption")
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert size == [192, 128]  # twice the 96 x 64 upload: the server kept its size
    shown = np.asarray(Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))))
    assert np.array_equal(shown, np.asarray(photo).repeat(2, 0).repeat(2, 1))  # nearest x2, denormalised exactly
    assert "192 × 128 from 96 × 64" in caption
    assert shot.stat().st_size > 20_000
    out = Path(os.environ.get("SLIMFORGE_SCREENSHOT_DIR", tmp_path))
    if out != tmp_path:
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, out / "serve_super_resolution.png")
