"""Debian's Chromium, headless, driven by Selenium through Debian's chromedriver.

Both are named explicitly, so Selenium never looks for (or downloads) a browser of its own.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver"))


def chromium() -> webdriver.Chrome:
    """A fresh headless Chromium (empty profile: nothing cached, nothing stored)."""
    if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
        message = f"needs {CHROMIUM} and {CHROMEDRIVER} (apt-get install chromium chromium-driver)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",  # root in a container has no user namespaces for the sandbox
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--no-first-run",
        "--disable-extensions",
        "--window-size=1280,800",
        "--lang=en-US",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.implicitly_wait(0)
    driver.set_page_load_timeout(30)  # a page that never loads fails its test, not the run
    return driver


def set_color_scheme(driver: webdriver.Chrome, scheme: str) -> None:
    """Emulate the system setting `prefers-color-scheme: light|dark`."""
    driver.execute_cdp_cmd(
        "Emulation.setEmulatedMedia", {"features": [{"name": "prefers-color-scheme", "value": scheme}]}
    )


def set_viewport(driver: webdriver.Chrome, width: int, height: int, *, mobile: bool = False) -> None:
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile},
    )


def reset_viewport(driver: webdriver.Chrome) -> None:
    driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    set_color_scheme(driver, "light")


def page_problems(driver: webdriver.Chrome) -> list[str]:
    """Console messages that mean the page broke: script errors and policy violations.

    (Chromium also logs every 4xx/5xx fetch as an error; those are answers the page
    handles, and are left out.)
    """
    return [
        entry["message"]
        for entry in driver.get_log("browser")
        if entry["level"] == "SEVERE" and "Failed to load resource" not in entry["message"]
    ]
