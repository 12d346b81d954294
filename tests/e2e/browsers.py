"""Headless Chromium for browser tests (Debian's ``chromium`` and ``chromium-driver``, driven by Selenium), and the
steps of the server's own sign-in and consent pages that every SMART browser test goes through."""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webelement import WebElement
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


def wait_for(browser: webdriver.Chrome, condition: Any, timeout: float = 60) -> Any:
    """``condition(browser)`` once it is truthy (Selenium's wait, with this module's long default)."""
    return WebDriverWait(browser, timeout).until(condition)


def shown(browser: webdriver.Chrome, css: str) -> WebElement:
    """The first element matching ``css`` once it is displayed."""

    def visible(driver: webdriver.Chrome) -> WebElement | bool:
        found = driver.find_elements(By.CSS_SELECTOR, css)
        return found[0] if found and found[0].is_displayed() else False

    element: WebElement = wait_for(browser, visible)
    return element


def text_by_id(browser: webdriver.Chrome, element_id: str) -> str:
    value: str = browser.find_element(By.ID, element_id).text
    return value


def csp_violations(browser: webdriver.Chrome) -> list[str]:
    """What the Content-Security-Policy blocked since the last look at the browser's log."""
    return [e["message"] for e in browser.get_log("browser") if "Content Security Policy" in e["message"]]


def tab_to(browser: webdriver.Chrome, found: Callable[[webdriver.Chrome], bool], limit: int = 80) -> None:
    """Press Tab until ``found`` says the focused element is the one wanted (fails when it is never reached)."""
    for _ in range(limit):
        if found(browser):
            return
        ActionChains(browser).send_keys(Keys.TAB).perform()
    raise AssertionError("the element cannot be reached with the Tab key")


CONTRAST = """
const rgb = text => (text.match(/[\\d.]+/g) || []).map(Number);
const luminance = ([r, g, b]) => {
  const [R, G, B] = [r, g, b].map(v => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; });
  return 0.2126 * R + 0.7152 * G + 0.0722 * B;
};
const background = element => {
  for (let e = element; e; e = e.parentElement) {
    const color = rgb(getComputedStyle(e).backgroundColor);
    if (color.length === 3 || color[3] > 0) return color.slice(0, 3);
  }
  return [255, 255, 255];
};
const low = [];
let checked = 0;
for (const element of document.querySelectorAll("header *, main *")) {
  const own = [...element.childNodes].some(n => n.nodeType === 3 && n.textContent.trim());
  if (!own || !element.getClientRects().length || getComputedStyle(element).visibility === "hidden") continue;
  const [a, b] = [luminance(rgb(getComputedStyle(element).color)), luminance(background(element))];
  const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
  checked += 1;
  const what = `${element.tagName}#${element.id} "${element.textContent.trim().slice(0, 30)}"`;
  if (!(ratio >= 4.5)) low.push(`${what} ${ratio.toFixed(2)}`);
}
return [checked, low];
"""


def low_contrast(browser: webdriver.Chrome) -> tuple[int, list[str]]:
    """How many visible texts of the header and main were checked, and those under 4.5:1 against their background."""
    checked, low = browser.execute_script(CONTRAST)
    return int(checked), list(low)


def fits_width(browser: webdriver.Chrome, width: int, height: int = 1100) -> bool:
    """Whether the page, laid out at ``width``, runs off the side (a wide table may scroll in its own box)."""
    size = browser.get_window_size()
    browser.set_window_size(width, height)
    try:
        return bool(browser.execute_script("return document.documentElement.scrollWidth <= window.innerWidth"))
    finally:
        browser.set_window_size(size["width"], size["height"])
