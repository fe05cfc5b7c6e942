"""Open a report.html in headless Chromium and list what did not load.

    check_report(html_path) -> list[str]      # [] when every image loaded
    python tests/browser_check.py runs/demo/report.html

The report forbids scripts (Content-Security-Policy `default-src 'none'`), so nothing runs in the
page itself: the checks are evaluated by WebDriver (selenium's execute_script goes through the
DevTools protocol, which the page's policy does not govern). Reported: every <img> whose
naturalWidth is 0 after load (a broken or blocked data URI), and every error in the browser's
console (e.g. a resource the policy blocked).

Needs selenium (a dev dependency) and Chromium with its driver (Debian: `apt-get install
chromium chromium-driver`); without them check_report raises BrowserUnavailable. Nothing is
downloaded: the driver is taken from PATH (selenium's own driver download is never used).
"""
from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
DRIVERS = ("chromedriver",)
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1280,2000")
IMAGES_JS = """return Array.from(document.images).map(
    (img, i) => [i, img.complete, img.naturalWidth, img.alt || '', (img.getAttribute('src') || '').slice(0, 40)]);"""
LOAD_TIMEOUT_S = 60


class BrowserUnavailable(RuntimeError):
    """selenium, Chromium or chromedriver is missing, or the browser would not start."""


def find_browser() -> tuple[str, str]:
    """(browser, driver) executables from PATH, or BrowserUnavailable saying which is missing."""
    browser = next((p for p in map(shutil.which, BROWSERS) if p), None)
    driver = next((p for p in map(shutil.which, DRIVERS) if p), None)
    if browser is None or driver is None:
        missing = [name for name, found in (("Chromium", browser), ("chromedriver", driver)) if found is None]
        raise BrowserUnavailable(f"{' and '.join(missing)} not found on PATH (apt-get install chromium chromium-driver)")
    return browser, driver


def check_report(html_path: str | Path, min_images: int = 0) -> list[str]:
    """Problems seen when Chromium renders the page: images that failed to load, console errors,
    and fewer than `min_images` images. Raises BrowserUnavailable when no browser can be run."""
    try:  # deferred: selenium is an optional dev dependency
        from selenium import webdriver
        from selenium.common.exceptions import WebDriverException
        from selenium.webdriver.chrome.service import Service
        from selenium.webdriver.support.ui import WebDriverWait
    except ImportError as exc:
        raise BrowserUnavailable(f"selenium is not installed ({exc})") from None
    path = Path(html_path).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such report")
    browser, driver_path = find_browser()
    with tempfile.TemporaryDirectory(prefix="vd-chromium-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = browser
        for flag in FLAGS:
            options.add_argument(flag)
        options.add_argument(f"--user-data-dir={profile}")
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        try:
            driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
        except WebDriverException as exc:
            raise BrowserUnavailable(f"Chromium did not start: {exc.msg or exc}") from None
        try:
            driver.set_page_load_timeout(LOAD_TIMEOUT_S)
            driver.get(path.as_uri())
            WebDriverWait(driver, LOAD_TIMEOUT_S).until(
                lambda d: d.execute_script("return document.readyState") == "complete")
            images = driver.execute_script(IMAGES_JS)
            console = driver.get_log("browser")
        finally:
            driver.quit()
    problems = [f"image #{i} ({alt[:60] or 'no alt'}; src {src!r}...) did not load: complete={complete}, naturalWidth={width}"
                for i, complete, width, alt, src in images if not complete or not width]
    problems += [f"console {entry.get('level')}: {entry.get('message')}" for entry in console
                 if entry.get("level") == "SEVERE"]
    if len(images) < min_images:
        problems.append(f"expected at least {min_images} images, the page has {len(images)}")
    return problems


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python tests/browser_check.py REPORT.html", file=sys.stderr)
        return 2
    try:
        problems = check_report(argv[0])
    except BrowserUnavailable as exc:
        print(f"cannot check: {exc}", file=sys.stderr)
        return 2
    for p in problems:
        print(p)
    print(f"{argv[0]}: {'OK, every image loaded' if not problems else f'{len(problems)} problem(s)'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
