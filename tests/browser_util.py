"""Shared helper for browser tests: a headless Chromium driven by Selenium.

Used by tests/test_report.py and the serve tests. Everything here is local:
the driver path is given explicitly so Selenium Manager never downloads one,
and the flags switch off Chromium's own background network traffic so that
"no request left the page" checks only see what the page itself asked for.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
DRIVER_CANDIDATES = ("/usr/bin/chromedriver",)

CHROME_FLAGS = (
    "--headless=new",
    "--no-sandbox",  # we run as root in a container
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",  # small /dev/shm in containers
)


def _first_existing(paths: tuple[str, ...], which: str) -> str | None:
    for p in paths:
        if Path(p).exists():
            return p
    return shutil.which(which)


def chrome_unavailable_reason() -> str | None:
    """None when a browser test can run, else a human-readable reason to skip."""
    if importlib.util.find_spec("selenium") is None:
        return "selenium is not installed (.venv/bin/pip install selenium)"
    if _first_existing(CHROMIUM_CANDIDATES, "chromium") is None:
        return "no Chromium found (apt-get install chromium chromium-driver)"
    if _first_existing(DRIVER_CANDIDATES, "chromedriver") is None:
        return "no chromedriver found (apt-get install chromium-driver)"
    return None


def make_chrome_driver(width: int = 1280, height: int = 900, user_data_dir: str | None = None) -> Any:
    """Start headless Chromium with console and performance logging enabled.

    Call `driver.quit()` when done (the fresh profile folder is removed then too).
    Raises RuntimeError with the skip reason when no browser is available;
    tests should call `chrome_unavailable_reason()` first and skip.
    """
    reason = chrome_unavailable_reason()
    if reason:
        raise RuntimeError(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = _first_existing(CHROMIUM_CANDIDATES, "chromium")  # type: ignore[assignment]
    for flag in CHROME_FLAGS:
        opts.add_argument(flag)
    profile = user_data_dir or tempfile.mkdtemp(prefix="convladder-chrome-")
    opts.add_argument(f"--user-data-dir={profile}")
    opts.add_argument(f"--window-size={width},{height}")
    # 'browser' gives console messages, 'performance' gives CDP Network.* events.
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    service = Service(_first_existing(DRIVER_CANDIDATES, "chromedriver"))
    driver = webdriver.Chrome(service=service, options=opts)
    # Chromium opens its own new-tab page (chrome:// resources) at start; move to a
    # blank page and drop those log entries so checks only see the page under test.
    driver.get("about:blank")
    drain_logs(driver)
    if user_data_dir is None:
        original_quit = driver.quit

        def quit_and_clean() -> None:
            try:
                original_quit()
            finally:
                shutil.rmtree(profile, ignore_errors=True)

        driver.quit = quit_and_clean  # type: ignore[method-assign]
    return driver


def drain_logs(driver: Any) -> None:
    """Discard console and performance log entries collected so far."""
    for kind in ("browser", "performance"):
        driver.get_log(kind)


def console_errors(driver: Any) -> list[str]:
    """Console messages at SEVERE level since the last call (the log is drained)."""
    return [e["message"] for e in driver.get_log("browser") if e.get("level") == "SEVERE"]


def requested_urls(driver: Any) -> list[str]:
    """URLs of every network request the page made, from the performance log (drained)."""
    urls = []
    for entry in driver.get_log("performance"):
        msg = json.loads(entry["message"]).get("message", {})
        if msg.get("method") == "Network.requestWillBeSent":
            urls.append(msg["params"]["request"]["url"])
    return urls


def external_requests(driver: Any, allowed: tuple[str, ...] = ("file:", "data:")) -> list[str]:
    """Requested URLs whose scheme is not in `allowed` (e.g. http: to another host)."""
    return [u for u in requested_urls(driver) if not u.startswith(allowed)]


def broken_images(driver: Any) -> list[str]:
    """src (truncated) of every <img> that did not decode (naturalWidth == 0)."""
    return driver.execute_script(
        "return Array.from(document.images)"
        ".filter(i => !(i.complete && i.naturalWidth > 0))"
        ".map(i => (i.getAttribute('src') || '').slice(0, 80));"
    )
