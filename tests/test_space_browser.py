"""The Space in a real browser: Playwright driving Debian's chromium (installed by .ci/run; never
`playwright install`). Screenshots are saved under test-artifacts/ for a human to look at.

Without chromium these tests skip, saying why, so that README's test command runs on a fresh machine;
where the environment requires them (``DDPM_HUB_REQUIRE_BROWSER=1``, which .ci/run sets, or ``CI=true``)
a missing browser fails them instead.
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


def browser_required() -> bool:
    """Whether a missing browser fails the browser tests instead of skipping them."""
    required = os.environ.get(REQUIRE_BROWSER_ENV, "").strip().lower() in ("1", "true", "yes")
    return required or os.environ.get("CI", "").strip().lower() in ("1", "true")


@pytest.fixture(scope="module")
def chromium() -> str:
    """The chromium executable, or a skip (a failure where the environment requires the browser)."""
    if not os.access(CHROMIUM, os.X_OK):
        why = f"the browser tests need Debian's chromium at {CHROMIUM} (apt-get install chromium)"
        if browser_required():
            pytest.fail(f"{why}; {REQUIRE_BROWSER_ENV}=1 or CI=true requires them", pytrace=False)
        pytest.skip(f"{why}; set {REQUIRE_BROWSER_ENV}=1 to make a missing browser an error")
    return CHROMIUM


@pytest.fixture(scope="module")
def page(chromium, request):
    space_url = request.getfixturevalue("space_url")  # after the browser check: no Space without a browser
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.set_default_timeout(180_000)
        page.goto(space_url)
        page.wait_for_selector("#generate")
        yield page
        browser.close()


def _pixel_std(png: bytes) -> float:
    """Standard deviation of the grey levels of a screenshot: about 0 for a blank element."""
    return float(np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.float64).std())


def _set_number(page, elem_id: str, value: int) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def test_generate_shows_a_grid_and_the_trajectory(page):
    # on load, the steps slider follows the default model's T
    page.wait_for_function("document.querySelector('#steps input[type=number]').max === '512'")
    _set_number(page, "steps", 5)
    _set_number(page, "num-images", 4)
    page.click("#generate")
    page.wait_for_function("document.querySelector('#generate-summary').innerText.includes('4 images from')")
    grid = page.locator("#grid img")
    grid.wait_for()
    page.screenshot(path=str(ARTIFACTS / "space-generate.png"), full_page=True)
    assert _pixel_std(grid.screenshot(path=str(ARTIFACTS / "space-grid.png"))) > 10
    # 5 steps: x_t and the predicted x_0 after each of them
    frames = page.locator("#trajectory img")
    frames.nth(9).wait_for()
    assert frames.count() == 10
    assert _pixel_std(frames.first.screenshot()) > 10  # x_T: noise
    assert (
        _pixel_std(page.locator("#trajectory").screenshot(path=str(ARTIFACTS / "space-trajectory.png"))) > 10
    )


def test_explain_tab_plots_the_schedule_and_the_forward_process(page):
    page.get_by_role("tab", name="Explain").click()
    for plot in ("#beta-plot", "#curves-plot"):
        page.locator(f"{plot} svg .mark-line path").first.wait_for()
    assert page.locator("#curves-plot svg .mark-line path").count() == 3  # alpha_bar, signal, noise
    assert (
        _pixel_std(page.locator("#curves-plot").screenshot(path=str(ARTIFACTS / "space-schedule.png"))) > 10
    )
    _set_number(page, "t", 300)
    page.click("#add-noise")
    page.wait_for_function("document.querySelector('#forward-summary').innerText.includes('t=300')")
    forward = page.locator("#forward img")
    assert _pixel_std(forward.screenshot(path=str(ARTIFACTS / "space-forward.png"))) > 10
    page.screenshot(path=str(ARTIFACTS / "space-explain.png"), full_page=True)


@pytest.mark.parametrize("required", [False, True])
def test_a_missing_browser_skips_unless_the_environment_requires_it(required, tmp_path):
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("CI", REQUIRE_BROWSER_ENV)}
    env["DDPM_HUB_CHROMIUM"] = str(tmp_path / "no-chromium")
    if required:
        env[REQUIRE_BROWSER_ENV] = "1"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-rs",
            __file__,
            "-k",
            "grid_and_the_trajectory",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).resolve().parents[1],
    )
    out = result.stdout + result.stderr
    assert "the browser tests need Debian's chromium at" in out, out
    if required:
        assert result.returncode != 0 and "1 error" in out and "requires them" in out, out
    else:
        assert result.returncode == 0 and "1 skipped" in out and "DDPM_HUB_REQUIRE_BROWSER=1" in out, out
