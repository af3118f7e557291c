"""The web page at / in a real browser (Debian's chromium, driven by Selenium through chromium-driver): a
shapes image uploaded, two methods run, the maps drawn, the right label shown. The screenshot lands in
``test-output/page.png``."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from models.shapes import CLASSES, generate
from tests.service.helpers import encode

OUTPUT = Path(__file__).resolve().parents[2] / "test-output"
CHROMIUM, DRIVER = (
    shutil.which("chromium") or "/usr/bin/chromium",
    shutil.which("chromedriver") or "/usr/bin/chromedriver",
)


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    if not (os.path.exists(CHROMIUM) and os.path.exists(DRIVER)):
        pytest.fail("chromium and chromium-driver are needed (apt-get install chromium chromium-driver; .ci/run does)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1100"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=DRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def drawn_maps(driver: webdriver.Chrome) -> list:
    """Map images whose PNG has loaded."""
    images = driver.find_elements(By.CSS_SELECTOR, "table.grid img")
    return [
        image
        for image in images
        if (image.get_attribute("src") or "").startswith("blob:")
        and driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", image)
    ]


def test_a_user_explains_a_shape_with_two_methods(embedded_api, browser, tmp_path):
    shapes = generate(1, seed=11)
    label = CLASSES[int(shapes.labels[0])]
    photo = tmp_path / "shape.png"
    photo.write_bytes(encode(__import__("PIL.Image", fromlist=["Image"]).fromarray(shapes.images[0])))

    browser.get(embedded_api + "/")
    wait = WebDriverWait(browser, 60)
    wait.until(lambda d: len(Select(d.find_element(By.ID, "model")).options) >= 3)
    Select(browser.find_element(By.ID, "model")).select_by_value("lenet5-shapes")
    wait.until(lambda d: "32x32" in d.find_element(By.ID, "model-info").text)
    upload = browser.find_element(By.ID, "files")
    browser.execute_script("arguments[0].style.display = 'block'", upload)  # the page hides it behind a label
    upload.send_keys(str(photo))
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#thumbs img"))
    for method in ("gradient", "gradcam"):
        browser.find_element(By.CSS_SELECTOR, f"#methods input[type=checkbox][value={method}]").click()
    for score in ("deletion_auc", "insertion_auc"):  # beside the free ones, checked by default
        browser.find_element(By.CSS_SELECTOR, f"#quality-scores input[value={score}]").click()
    browser.find_element(By.ID, "submit").click()

    wait.until(lambda d: len(drawn_maps(d)) == 2)
    assert browser.find_element(By.ID, "error").text == ""
    job = browser.find_element(By.CSS_SELECTOR, ".job")
    assert "succeeded" in job.find_element(By.CSS_SELECTOR, ".state").text
    top = job.find_element(By.CSS_SELECTOR, ".predictions .top").text
    assert top.startswith(label), f"the page shows {top!r} for a {label}"
    headers = [cell.text for cell in job.find_elements(By.CSS_SELECTOR, "table.grid thead th")]
    assert headers[1:] == ["gradient", "gradcam"]
    for cell in job.find_elements(By.CSS_SELECTOR, "table.grid td"):  # each map's scores beside it
        shown = {span.get_attribute("data-score"): span.text for span in cell.find_elements(By.CSS_SELECTOR, ".score")}
        assert set(shown) == {"sparseness", "complexity", "deletion_auc", "insertion_auc"}, shown
        assert shown["deletion_auc"].startswith("Deletion AUC 0.") and shown["deletion_auc"].endswith("↓")
        assert shown["insertion_auc"].endswith("↑")

    # Overlays with a shared scale and a colour bar: every map drawn again.
    before = {image.get_attribute("src") for image in drawn_maps(browser)}
    Select(job.find_element(By.CSS_SELECTOR, ".form")).select_by_value("overlay")
    Select(job.find_element(By.CSS_SELECTOR, ".scale")).select_by_value("shared")
    wait.until(lambda d: len(drawn_maps(d)) == 2 and not {i.get_attribute("src") for i in drawn_maps(d)} & before)
    assert all("form=overlay" in image.get_attribute("data-drawn") for image in drawn_maps(browser))
    assert all("scale_low" in image.get_attribute("data-drawn") for image in drawn_maps(browser))

    OUTPUT.mkdir(exist_ok=True)
    browser.save_screenshot(str(OUTPUT / "page.png"))
    print(f"screenshot: {OUTPUT / 'page.png'}")
