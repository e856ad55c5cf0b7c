"""The "find similar cases" page in headless Chromium against the real service: upload, hits grid, large view."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from conftest import Served

pytestmark = pytest.mark.slow
CHROMIUM = "/usr/bin/chromium"
WAIT_S = 60


@pytest.fixture
def browser():
    chromedriver = shutil.which("chromedriver")
    if chromedriver is None or shutil.which("chromium") is None:
        pytest.skip("chromium and chromedriver must be on PATH (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1200,900",
    ):
        options.add_argument(flag)
    options.binary_location = CHROMIUM
    # an explicit driver path: selenium-manager never runs, so nothing is downloaded
    driver = webdriver.Chrome(options=options, service=Service(executable_path=chromedriver))
    try:
        yield driver
    finally:
        driver.quit()


def test_upload_shows_hits_and_a_large_view(served: Served, browser, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, WAIT_S)
    browser.get(served.url + "/")
    wait.until(ec.text_to_be_present_in_element((By.ID, "health"), "rows"))
    assert "collection m3ret_test_" in browser.find_element(By.ID, "health").text
    browser.find_element(By.ID, "token").send_keys(served.token)
    # kept for this tab only: in sessionStorage, never in localStorage (which outlives the session)
    assert browser.execute_script("return sessionStorage.getItem('m3ret-token')") == served.token
    assert browser.execute_script("return localStorage.length") == 0

    k = browser.find_element(By.ID, "k")
    k.clear()
    k.send_keys("4")
    browser.find_element(By.ID, "file").send_keys(str(served.queries["jpeg_copy"]))
    browser.find_element(By.ID, "submit").click()
    error = browser.find_element(By.ID, "error")
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#hits .hit")) == 4 or error.is_displayed())
    assert error.get_attribute("hidden") is not None, error.text
    tiles = browser.find_elements(By.CSS_SELECTOR, "#hits .hit")

    # the page's first tile is the service's best hit for the near-copy: its original photo
    import httpx

    with served.queries["jpeg_copy"].open("rb") as fh:
        expected = httpx.post(
            f"{served.url}/search", files={"file": fh}, data={"k": "1"}, headers=served.auth, timeout=120
        ).json()
    assert tiles[0].get_attribute("data-item-id") == expected["hits"][0]["item_id"]
    assert "photo" in tiles[0].text
    wait.until(lambda d: d.execute_script("return document.querySelector('#hits .hit img').naturalWidth") > 0)
    assert browser.execute_script("return document.getElementById('query-preview').naturalWidth") > 0

    tiles[0].click()
    overlay = browser.find_element(By.ID, "overlay")
    wait.until(lambda d: overlay.is_displayed())
    wait.until(lambda d: d.execute_script("return document.getElementById('overlay-image').naturalWidth") > 0)
    assert "#1" in browser.find_element(By.ID, "overlay-caption").text
    assert not browser.find_element(By.ID, "overlay-study").is_displayed()  # this token may not reidentify

    # where they agree: the patch-similarity map replaces the thumbnail, and the button goes back to it
    thumbnail_src = browser.find_element(By.ID, "overlay-image").get_attribute("src")
    explain = browser.find_element(By.ID, "overlay-explain")
    explain.click()
    wait.until(lambda d: explain.get_attribute("aria-pressed") == "true")
    explained = browser.find_element(By.ID, "overlay-image")
    assert explained.get_attribute("src") != thumbnail_src
    wait.until(lambda d: d.execute_script("return document.getElementById('overlay-image').naturalWidth") > 0)
    assert error.get_attribute("hidden") is not None, error.text

    shot = tmp_path / "page.png"
    assert browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 1000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    browser.find_element(By.ID, "overlay-close").click()
    wait.until(lambda d: not overlay.is_displayed())


def test_a_refused_upload_shows_its_reason(served: Served, browser, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    note = tmp_path / "note.txt"
    note.write_text("not an image\n" * 10)
    browser.get(served.url + "/")
    browser.execute_script("sessionStorage.clear()")
    browser.find_element(By.ID, "file").send_keys(str(note))
    browser.find_element(By.ID, "submit").click()
    error = browser.find_element(By.ID, "error")
    WebDriverWait(browser, WAIT_S).until(lambda d: error.is_displayed())
    assert error.text.startswith("401") and "token" in error.text  # no token yet: nothing is decoded

    browser.find_element(By.ID, "token").send_keys(served.token)
    browser.find_element(By.ID, "submit").click()
    WebDriverWait(browser, WAIT_S).until(lambda d: error.text.startswith("415"))
    assert "text" in error.text
