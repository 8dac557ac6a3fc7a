"""The Space in a real browser: Playwright driving Debian's chromium (installed by .ci/run; never
`playwright install`), at a desktop size and a phone size. Screenshots are saved under test-artifacts/ for a
human to look at.

Without chromium these tests skip, saying why, so that README's test command runs on a fresh machine;
where the environment requires them (``DDPM_HUB_REQUIRE_BROWSER=1``, which .ci/run sets, or ``CI=true``)
a missing browser fails them instead (tests/test_space_browser_rule.py checks both).
"""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from playwright import sync_api

#: the browser; DDPM_HUB_CHROMIUM points elsewhere (the test of the skip rule points it at nothing)
CHROMIUM = os.environ.get("DDPM_HUB_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
REQUIRE_BROWSER_ENV = "DDPM_HUB_REQUIRE_BROWSER"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
VIEWPORTS = {"desktop": (1280, 900), "phone": (390, 844)}

#: records every new src of the live images, and when the run's summary appeared (the final grid)
WATCH = """() => {
  window.__srcs = {grid: [], trajectory: []};
  window.__captions = [];
  window.__final = null;
  const seen = () => {
    for (const id of ['grid', 'trajectory']) {
      const img = document.querySelector('#' + id + ' img');
      const list = window.__srcs[id];
      if (img && img.src && list[list.length - 1] !== img.src) list.push(img.src);
    }
    const text = document.querySelector('#generate-summary').innerText;
    const step = text.match(/Step \\d+ of \\d+/);
    if (window.__final === null && step && !window.__captions.includes(step[0])) window.__captions.push(step[0]);
    if (window.__final === null && text.includes('images from')) {
      window.__final = {grid: window.__srcs.grid.length, trajectory: window.__srcs.trajectory.length};
    }
  };
  new MutationObserver(seen).observe(document.body, {subtree: true, childList: true, attributes: true,
                                                    characterData: true});
}"""


def browser_required() -> bool:
    """Whether a missing browser fails the browser tests instead of skipping them."""
    required = os.environ.get(REQUIRE_BROWSER_ENV, "").strip().lower() in ("1", "true", "yes")
    return required or os.environ.get("CI", "").strip().lower() in ("1", "true")


@pytest.fixture(scope="session", autouse=True)
def chromium() -> str:
    """The chromium executable, or a skip (a failure where the environment requires the browser).

    Session-scoped and autouse, so that it runs before the Space is launched for nothing."""
    if not os.access(CHROMIUM, os.X_OK):
        why = f"the browser tests need Debian's chromium at {CHROMIUM} (apt-get install chromium)"
        if browser_required():
            pytest.fail(f"{why}; {REQUIRE_BROWSER_ENV}=1 or CI=true requires them", pytrace=False)
        pytest.skip(f"{why}; set {REQUIRE_BROWSER_ENV}=1 to make a missing browser an error")
    return CHROMIUM


@pytest.fixture(scope="module")
def browser(chromium):
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def _open(browser, url: str, size: str):
    width, height = VIEWPORTS[size]
    page = browser.new_page(viewport={"width": width, "height": height})
    page.set_default_timeout(180_000)
    page.goto(url)
    # on load, the steps slider follows the default model's T
    page.wait_for_function("document.querySelector('#steps input[type=number]')?.max === '512'")
    return page


@pytest.fixture(params=list(VIEWPORTS))
def page(request, browser, space_url):
    page = _open(browser, space_url, request.param)
    page.size = request.param
    yield page
    page.close()


def _pixel_std(png: bytes) -> float:
    """Standard deviation of the grey levels of a screenshot: about 0 for a blank element."""
    return float(np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.float64).std())


def _set_number(page, elem_id: str, value: int) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def _no_sideways_scroll(page) -> None:
    width, inner = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    assert width <= inner, f"the page scrolls sideways: {width} px of content in a {inner} px window"


def _summary_contains(page, text: str) -> None:
    page.wait_for_function(
        "text => document.querySelector('#generate-summary').innerText.includes(text)", arg=text
    )


def test_generate_streams_the_trajectory_then_the_grid(page):
    size = page.size
    if size == "phone":  # Generate is in the first screen, and nothing scrolls sideways
        box = page.locator("#generate").bounding_box()
        assert box["y"] + box["height"] <= VIEWPORTS["phone"][1], box
        _no_sideways_scroll(page)
    page.screenshot(path=str(ARTIFACTS / f"space-{size}-start.png"))
    page.evaluate(WATCH)
    page.click("#generate")  # the defaults: 16 images, sde-dpm-solver++, 20 steps
    _summary_contains(page, "16 images from")
    final = page.evaluate("window.__final")
    # the live view changed at least 3 times before the final grid replaced it
    assert final["trajectory"] >= 3 and final["grid"] >= 3, final
    captions = page.evaluate("window.__captions")
    assert len(captions) >= 3, captions  # "Step 4 of 20", ...: shown while sampling
    grid = page.locator("#grid img")
    # the final grid (square: 4 x 4 digits) replaced the live view (x_t beside x_0: twice as wide)
    page.wait_for_function(
        "(() => { const img = document.querySelector('#grid img');"
        " return img.complete && img.naturalWidth > 0 && img.naturalWidth === img.naturalHeight; })()"
    )
    assert _pixel_std(grid.screenshot(path=str(ARTIFACTS / f"space-{size}-grid.png"))) > 10
    follow = page.locator("#trajectory img")
    assert _pixel_std(follow.screenshot(path=str(ARTIFACTS / f"space-{size}-trajectory.png"))) > 10
    assert "step 20 of 20" in page.locator("#trajectory-caption").inner_text()

    # the step slider walks the followed image back through its trajectory
    _set_number(page, "step", 1)
    page.wait_for_function("document.querySelector('#trajectory-caption').innerText.includes('step 1 of 20')")

    # the grid and the GIF download; the copyable line names the model, sampler, steps and seed
    assert page.locator("#download-grid").is_enabled() and page.locator("#download-gif").is_enabled()
    if size == "desktop":
        _set_number(page, "follow", 3)  # another image to follow: its trajectory and its GIF
        page.wait_for_function(
            "document.querySelector('#trajectory-caption').innerText.startsWith('Image 3, step 1 of 20')"
        )
        with page.expect_download() as download:
            page.click("#download-gif")
        gif = Image.open(download.value.path())
        assert gif.format == "GIF" and gif.n_frames == 20 and "image3" in download.value.suggested_filename
        with page.expect_download() as download:
            page.click("#download-grid")
        png = Image.open(download.value.path())
        shown = page.evaluate("[document.querySelector('#grid img').naturalWidth, 0]")[0]
        assert png.format == "PNG" and png.size == (shown, shown)
    command = page.locator("#reproduce textarea").input_value()
    assert command.startswith("ddpm-hub sample ") and "--sampler sde-dpm-solver++ --steps 20" in command
    assert "--num-images 16 --seed 0" in command
    page.screenshot(path=str(ARTIFACTS / f"space-{size}-generate.png"), full_page=True)

    if size == "phone":  # every control and the whole trajectory are reachable without sideways scrolling
        _no_sideways_scroll(page)
        width = VIEWPORTS["phone"][0]
        for elem_id in (
            "model",
            "revision",
            "sampler",
            "steps",
            "num-images",
            "seed",
            "generate",
            "grid",
            "reproduce",
            "download-grid",
            "trajectory",
            "follow",
            "step",
            "download-gif",
        ):
            box = page.locator(f"#{elem_id}").bounding_box()
            assert box["x"] >= 0 and box["x"] + box["width"] <= width, (elem_id, box)
        img = page.locator("#trajectory img").bounding_box()
        assert img["x"] >= 0 and img["x"] + img["width"] <= width, img


def test_a_bad_model_name_leaves_the_page_working(browser, space_url):
    page = _open(browser, space_url, "desktop")
    model = page.locator("#model input")
    for name, words in (
        ("/etc/passwd", "is not a model name this Space can load"),
        ("ddpm-hub-tests/not-reachable", "cannot be reached"),  # the test Hub is offline
    ):
        model.fill(name)
        model.press("Enter")
        page.wait_for_function(
            "words => document.querySelector('#message')?.innerText.includes(words)", arg=words
        )
        text = page.locator("#message").inner_text()
        assert "--allow-local-paths" not in text and "HF_HUB_OFFLINE" not in text  # visitor words only
        assert "Still using: default (bundled MNIST model)" in text
        page.wait_for_function(
            "() => document.querySelector('#model input').value === 'default (bundled MNIST model)'"
        )
    page.screenshot(path=str(ARTIFACTS / "space-bad-model.png"), full_page=True)
    assert page.locator(".error").count() == 0  # no red "Error" badges on any component

    # the Steps slider still works, and Generate with the default model succeeds
    _set_number(page, "steps", 7)
    page.wait_for_function("document.querySelector('#steps input[type=range]').value === '7'")
    _set_number(page, "num-images", 2)
    page.click("#generate")
    _summary_contains(page, "2 images from")
    assert "7 steps" in page.locator("#generate-summary").inner_text()
    assert not page.locator("#message").is_visible()
    page.close()


def test_explain_tab(browser, space_url):
    page = _open(browser, space_url, "desktop")
    page.get_by_role("tab", name="Explain").click()
    for plot in ("#beta-plot", "#curves-plot"):
        page.locator(f"{plot} svg .mark-line path").first.wait_for()
    assert page.locator("#curves-plot svg .mark-line path").count() == 3  # alpha_bar, signal, noise
    # the t axis ends at T=512 (not at a rounded-up 600)
    ticks = page.locator("#curves-plot svg .role-axis-label text").all_text_contents()
    numbers = [float(t.replace(",", "")) for t in ticks if t.replace(",", "").replace(".", "").isdigit()]
    assert numbers and max(numbers) <= 512, ticks
    page.locator("#forward img").wait_for()

    # every way of moving t redraws: the number box, and the keyboard on the slider
    _set_number(page, "t", 300)
    page.wait_for_function("document.querySelector('#forward-summary').innerText.includes('t=300')")
    page.locator("#t input[type=range]").focus()
    for _ in range(3):
        page.keyboard.press("ArrowRight")
    page.wait_for_function("document.querySelector('#forward-summary').innerText.includes('t=303')")

    # an upload keeps its colour and size; the digit slider then switches back to the digits
    picture = Image.new("RGB", (60, 40), (200, 30, 30))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    page.locator("#upload input[type=file]").set_input_files(
        files=[{"name": "red.png", "mimeType": "image/png", "buffer": buffer.getvalue()}]
    )
    page.wait_for_function(
        "document.querySelector('#forward-summary').innerText.includes('your image (colour, 60x40')"
    )
    forward = np.asarray(Image.open(io.BytesIO(page.locator("#forward img").screenshot())).convert("RGB"))
    assert (forward[..., 0].astype(int) - forward[..., 2]).max() > 100  # red survives: not made grey
    page.screenshot(path=str(ARTIFACTS / "space-explain-upload.png"), full_page=True)
    _set_number(page, "dataset-index", 7)
    page.wait_for_function(
        "document.querySelector('#forward-summary').innerText.includes('MNIST-5k digit #7')"
    )
    assert page.locator("#source input[value='MNIST-5k digit']").is_checked()
    page.screenshot(path=str(ARTIFACTS / "space-explain.png"), full_page=True)
    page.close()


def test_explain_follows_the_model_picked(browser, space_url):
    """Another model redraws the forward process too (its summary named the previous model while t stayed)."""
    page = _open(browser, space_url, "desktop")
    page.get_by_role("tab", name="Explain").click()
    page.wait_for_function(
        "document.querySelector('#forward-summary').innerText.includes('model default-model')"
    )
    page.click("#model input")
    page.locator("ul[role=listbox] li", has_text="pick a digit").first.click()
    page.wait_for_function("document.querySelector('#schedule-summary').innerText.startsWith('cond-model')")
    page.wait_for_function(
        "document.querySelector('#forward-summary').innerText.includes('model cond-model')"
    )
    page.close()
