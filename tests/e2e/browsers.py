"""Headless Chromium for browser tests (Debian's ``chromium`` and ``chromium-driver``, driven by Selenium), and the
steps of the server's own sign-in and consent pages that every SMART browser test goes through."""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from collections.abc import Iterator

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@contextlib.contextmanager
def chromium(width: int = 1280, height: int = 900) -> Iterator[webdriver.Chrome]:
    """A headless Chromium with a profile of its own, removed afterwards."""
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}",
        f"--window-size={width},{height}",
    ):  # fmt: skip
        options.add_argument(argument)
    # The console (CSP violations) and the network (which requests a page made: "performance" log of DevTools events).
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def requests_made(browser: webdriver.Chrome) -> list[tuple[str, str]]:
    """(method, URL) of every request the browser started since the last call (DevTools' network events)."""
    made = []
    for entry in browser.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            made.append((message["params"]["request"]["method"], message["params"]["request"]["url"]))
        elif message["method"] == "Network.webSocketCreated":
            made.append(("WEBSOCKET", message["params"]["url"]))
    return made


def sign_in_and_allow(browser: webdriver.Chrome, user: str, password: str) -> None:
    """Sign in on the server's page and allow everything on the consent page."""
    wait = WebDriverWait(browser, 60)
    wait.until(expected_conditions.presence_of_element_located((By.NAME, "username"))).send_keys(user)
    browser.find_element(By.NAME, "password").send_keys(password)
    browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    allow = (By.CSS_SELECTOR, 'button[name="decision"][value="allow"]')
    wait.until(expected_conditions.element_to_be_clickable(allow))
    browser.find_element(*allow).click()


def pick_patient(browser: webdriver.Chrome, patient_id: str) -> None:
    """Choose a patient on the server's patient picker."""
    choice = (By.CSS_SELECTOR, f'input[name="patient"][value="{patient_id}"]')
    WebDriverWait(browser, 60).until(expected_conditions.element_to_be_clickable(choice))
    browser.find_element(*choice).click()
    browser.find_element(By.CSS_SELECTOR, 'button[name="step"][value="patient"]').click()
