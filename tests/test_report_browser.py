"""The report page in a real browser: headless Chromium (Debian's ``chromium``) renders
index.html as the search writes it; the screenshot is not blank and every image decoded."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import matplotlib.image
import numpy as np
import pytest

from search.report.draw import write_outputs
from test_front import report_of, sample_trials


@pytest.fixture(scope="module")
def chromium() -> str:
    """The browser; installed with apt-get where it is missing and this process may."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None and shutil.which("apt-get") and os.geteuid() == 0:
        subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", "chromium"],
                       capture_output=True, timeout=900)
        found = shutil.which("chromium")
    if found is None:
        pytest.skip("headless Chromium is missing and cannot be installed here: run apt-get install chromium as root")
    return found


def headless(chromium: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", *args],
        capture_output=True, text=True, timeout=120,
    )


def test_the_page_renders_with_every_image_decoded(chromium, tmp_path):
    write_outputs(report_of(sample_trials()), tmp_path, lambda sha: None)
    page = (tmp_path / "report" / "index.html").as_uri()
    dom = headless(chromium, "--dump-dom", page)
    assert dom.returncode == 0, dom.stderr
    decoded, total = map(int, re.search(r'data-images-decoded="(\d+)/(\d+)"', dom.stdout).groups())
    assert total == 3 and decoded == total
    shot = tmp_path / "shot.png"
    result = headless(chromium, f"--screenshot={shot}", "--window-size=1400,2200", page)
    assert result.returncode == 0 and shot.exists(), result.stderr
    pixels = matplotlib.image.imread(shot)[..., :3]
    ink = np.any(pixels < 0.9, axis=2).mean()  # share of pixels that are not (near) white
    colours = len(np.unique((pixels * 255).astype(np.uint8).reshape(-1, 3), axis=0))
    assert ink > 0.02 and colours > 100  # text, tables and plots, not a blank or single-colour page
