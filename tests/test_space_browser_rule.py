"""The browser tests' rule: without chromium they skip, unless the environment requires them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BROWSER_TESTS = Path(__file__).resolve().parent / "test_space_browser.py"
REQUIRE_BROWSER_ENV = "DDPM_HUB_REQUIRE_BROWSER"


@pytest.mark.parametrize("required", [False, True])
def test_a_missing_browser_skips_unless_the_environment_requires_it(required, tmp_path):
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
            str(BROWSER_TESTS),
            "-k",
            "test_explain_tab",
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
