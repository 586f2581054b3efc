"""A real browser for web tests: Debian's Chromium, headless, driven by selenium through
Debian's chromedriver (.ci/run installs both)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


@contextmanager
def chromium(width: int = 1100, height: int = 800) -> Iterator[Any]:
    """A headless Chromium session with a fresh profile, quit at the end."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    if not shutil.which(CHROMIUM) or not shutil.which(CHROMEDRIVER):
        raise AssertionError(f"{CHROMIUM} and {CHROMEDRIVER} are needed (apt-get install "
                             "chromium chromium-driver; .ci/run does it)")
    profile = tempfile.mkdtemp(prefix="evc-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                f"--user-data-dir={profile}", f"--window-size={width},{height}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def row_states(driver: Any) -> dict[str, str]:
    """The board's rows as the page shows them: CP id -> its state."""
    return driver.execute_script(
        "const out = {}; document.querySelectorAll('#board tbody tr').forEach("
        "tr => out[tr.dataset.cp] = tr.dataset.state); return out;")
