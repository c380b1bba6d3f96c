"""The try-it page in a real headless Chromium (Debian's chromium + chromium-driver, driven by
Selenium with the system driver, no downloads): draw a digit, upload real test images, see the
answers the API gives, the notice for images unlike the training data and the explanation's
heatmap. Screenshots go to reports/screenshots/ (git-ignored).
"""

from __future__ import annotations

import base64
import os
import shutil

import numpy as np
import pytest
from pixelgate import Client

from serving import stack
from tests.conftest import ROOT, encode

SCREENSHOTS = ROOT / "reports" / "screenshots"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = (
    "/usr/bin/chromedriver" if os.path.isfile("/usr/bin/chromedriver") else shutil.which("chromedriver")
)
WAIT_SECONDS = 30


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not (CHROMIUM and CHROMEDRIVER):
        reason = "needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; .ci/run installs them, so CI must have them")
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1180,860",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # An explicit driver path: Selenium Manager is never asked (it would try the network).
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def page(browser, gateway_url):
    """The page, loaded fresh, once its model list has arrived."""
    browser.get_log("browser")  # drop what earlier tests left in the console log
    browser.get(gateway_url + "/")
    wait_until(browser, lambda d: d.find_element("id", "model-select").get_attribute("disabled") is None)
    wait_until(browser, lambda d: d.find_element("id", "status").get_attribute("data-ready") == "true")
    return browser


def wait_until(driver, condition, message: str = ""):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT_SECONDS).until(condition, message)


def choose_model(driver, name: str) -> None:
    from selenium.webdriver.support.ui import Select

    Select(driver.find_element("id", "model-select")).select_by_value(name)


def answers(driver) -> int:
    return int(driver.find_element("id", "result").get_attribute("data-answers") or 0)


def wait_for_answer(driver, before: int) -> str:
    """Wait for the next answer shown; return the result's state ("done" or "error")."""
    wait_until(driver, lambda d: answers(d) > before, "the page showed no answer")
    return driver.find_element("id", "result").get_attribute("data-state")


def shown_prediction(driver) -> tuple[str, list[str]]:
    label = driver.find_element("id", "result-label").text
    bars = [row.get_attribute("data-label") for row in driver.find_elements("css selector", "#bars li")]
    return label, bars


def check_bars_show(driver, prediction) -> None:
    """Each bar is as long as its probability (the page's own floor of 0.5 % aside)."""
    rows = driver.find_elements("css selector", "#bars li")
    assert len(rows) == len(prediction.top_k)
    for row, score in zip(rows, prediction.top_k, strict=True):
        fill = row.find_element("css selector", ".bar-fill").size["width"]
        track = row.find_element("css selector", ".bar-track").size["width"]
        assert fill / track == pytest.approx(max(score.probability, 0.005), abs=0.03)


def draw_seven(driver) -> None:
    """A "7" across the canvas with the mouse: top bar, then the diagonal down."""
    from selenium.webdriver.common.action_chains import ActionChains

    canvas = driver.find_element("id", "canvas")
    strokes = ActionChains(driver, duration=10).move_to_element_with_offset(canvas, -70, -80).click_and_hold()
    for _ in range(14):
        strokes.move_by_offset(10, 0)
    for _ in range(16):
        strokes.move_by_offset(-4, 11)
    strokes.release().perform()


def severe_console_errors(driver) -> list[str]:
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def check_preprocessed_shown(driver, api_prediction) -> None:
    """The image the model saw when the gateway returns it (debug=true), else a placeholder saying so."""
    image = driver.find_element("id", "preprocessed")
    if api_prediction.preprocessed is not None:
        assert image.is_displayed()
        source = image.get_attribute("src")
        assert base64.b64decode(source.split(",", 1)[1]) == api_prediction.preprocessed
    else:
        assert not image.is_displayed()
        assert "not available" in driver.find_element("id", "preprocessed-placeholder").text


def test_draw_a_digit_and_see_the_api_answer(page, gateway_url):
    choose_model(page, "mnist")
    page.find_element("id", "tab-draw").click()
    before = answers(page)
    draw_seven(page)
    assert wait_for_answer(page, before) == "done"
    label, bars = shown_prediction(page)
    # What the page shows is what the API answers for the very pixels on the canvas.
    png = base64.b64decode(
        page.execute_script("return document.getElementById('canvas').toDataURL('image/png')").split(",", 1)[
            1
        ]
    )
    with Client(gateway_url) as client:
        result = client.predict(png, model="mnist", top_k=3, debug=True)
    assert label == result.predictions[0].label
    assert bars == [score.label for score in result.predictions[0].top_k]
    assert "mnist v1" in page.find_element("id", "result-served").text
    check_bars_show(page, result.predictions[0])
    check_preprocessed_shown(page, result.predictions[0])
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.save_screenshot(str(SCREENSHOTS / "draw-mnist.png"))
    assert severe_console_errors(page) == []


def test_upload_real_test_images(page, gateway_url, test_images, tmp_path):
    """An MNIST digit the model gets right shows its true label; CIFAR-10 hides the drawing tab."""
    images, labels = test_images["mnist"]
    with Client(gateway_url) as client:
        results = client.predict([encode(image) for image in images[:20]], model="mnist").predictions
        index = next(i for i, p in enumerate(results) if p.label == str(labels[i]))
        path = tmp_path / f"mnist-{index}.png"
        path.write_bytes(encode(images[index]))
        page.find_element("id", "tab-upload").click()
        before = answers(page)
        page.find_element("id", "file-input").send_keys(str(path))
        assert wait_for_answer(page, before) == "done"
        assert shown_prediction(page)[0] == str(labels[index])

        choose_model(page, "cifar10")
        assert page.find_element("id", "tab-draw").get_attribute("disabled") is not None
        cifar_image = test_images["cifar10"][0][0]
        path = tmp_path / "cifar10.png"
        path.write_bytes(encode(cifar_image))
        expected = client.predict(path, model="cifar10", top_k=3, debug=True).predictions[0]
        before = answers(page)
        page.find_element("id", "file-input").send_keys(str(path))
        assert wait_for_answer(page, before) == "done"
    assert shown_prediction(page) == (expected.label, [score.label for score in expected.top_k])
    check_bars_show(page, expected)
    check_preprocessed_shown(page, expected)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.save_screenshot(str(SCREENSHOTS / "upload-cifar10.png"))
    assert severe_console_errors(page) == []


def upload(driver, path) -> str:
    """Upload the file on the page; return the state of the answer it shows."""
    driver.find_element("id", "tab-upload").click()
    before = answers(driver)
    driver.find_element("id", "file-input").send_keys(str(path))
    return wait_for_answer(driver, before)


def test_an_image_unlike_the_training_data_gets_a_notice(page, gateway_url, test_images, tmp_path):
    """Noise and a blank frame are no digits and no clothes: the page says so, in the model's words;
    a real digit the API finds in distribution gets no notice."""
    noise = np.random.default_rng(7).integers(0, 256, (28, 28, 1), dtype=np.uint8)
    (tmp_path / "noise.png").write_bytes(encode(noise))
    (tmp_path / "blank.png").write_bytes(encode(np.zeros((28, 28, 1), np.uint8)))
    images, _ = test_images["mnist"]
    with Client(gateway_url) as client:
        flags = [
            p.in_distribution
            for p in client.predict([encode(i) for i in images[:20]], model="mnist").predictions
        ]
    (tmp_path / "digit.png").write_bytes(encode(images[flags.index(True)]))
    notice = page.find_element("id", "ood-notice")

    choose_model(page, "mnist")
    for name in ("noise.png", "blank.png"):
        assert upload(page, tmp_path / name) == "done"
        assert notice.is_displayed(), name
        assert "does not look like a handwritten digit" in notice.text
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.save_screenshot(str(SCREENSHOTS / "out-of-distribution-mnist.png"))
    assert upload(page, tmp_path / "digit.png") == "done"
    assert not notice.is_displayed()
    assert "OOD score" in page.find_element("id", "result-served").text

    before = answers(page)
    choose_model(page, "fashion_mnist")  # asks again for the digit shown
    wait_for_answer(page, before)
    assert upload(page, tmp_path / "blank.png") == "done"
    assert notice.is_displayed() and "does not look like a clothing item" in notice.text
    assert severe_console_errors(page) == []


def test_explain_overlays_the_heatmap_on_the_image_the_model_saw(page, gateway_url, test_images, tmp_path):
    path = tmp_path / "digit.png"
    path.write_bytes(encode(test_images["mnist"][0][0]))
    choose_model(page, "mnist")
    explain = page.find_element("id", "explain")
    heatmap = page.find_element("id", "heatmap")
    assert not explain.is_selected()
    assert upload(page, path) == "done" and not heatmap.is_displayed()

    before = answers(page)
    explain.click()  # asks again, with explain=true
    assert wait_for_answer(page, before) == "done"
    assert heatmap.is_displayed()
    with Client(gateway_url) as client:
        expected = client.predict(path, model="mnist", explain=True).predictions[0]
    assert expected.explanation is not None
    assert page.find_element("id", "result-label").text == expected.label
    png = base64.b64decode(heatmap.get_attribute("src").split(",", 1)[1])
    assert png.startswith(b"\x89PNG")
    wait_until(page, lambda d: heatmap.get_property("naturalWidth") == 28, "the heatmap is not 28 wide")
    # Over the image the model saw, box for box, and see-through.
    seen = page.find_element("id", "preprocessed").rect
    for key in ("x", "y", "width", "height"):
        assert heatmap.rect[key] == pytest.approx(seen[key], abs=1), key
    opacity = float(page.execute_script("return getComputedStyle(arguments[0]).opacity", heatmap))
    assert 0.2 <= opacity <= 0.8
    caption = page.find_element("id", "explain-caption")
    assert caption.is_displayed() and expected.label in caption.text
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.save_screenshot(str(SCREENSHOTS / "explain-mnist.png"))

    before = answers(page)
    explain.click()  # unticked: asks again without, and the page remembers it (for the other tests too)
    assert wait_for_answer(page, before) == "done"
    assert not heatmap.is_displayed()
    assert severe_console_errors(page) == []


def test_a_file_that_is_not_an_image_shows_the_gateway_error_in_place_of_the_last_answer(page, test_images,
                                                                                         tmp_path):
    digit = tmp_path / "digit.png"
    digit.write_bytes(encode(test_images["mnist"][0][0]))
    choose_model(page, "mnist")
    assert upload(page, digit) == "done" and page.find_element("id", "result-label").text != "–"
    path = tmp_path / "notes.png"
    path.write_bytes(b"these are not pixels")
    page.find_element("id", "tab-upload").click()
    before = answers(page)
    page.find_element("id", "file-input").send_keys(str(path))
    assert wait_for_answer(page, before) == "error"
    error = page.find_element("id", "error")
    assert error.is_displayed() and "invalid_image" in error.text
    # The last image's answer is gone, not shown beside this one's error as if it were its answer.
    assert page.find_element("id", "result-label").text == "–"
    assert page.find_element("id", "bars").find_elements("tag name", "li") == []
    assert not page.find_element("id", "preprocessed").is_displayed()


def test_page_needs_nothing_from_elsewhere(gateway_url):
    """Offline: every resource the page names is served by the gateway itself."""
    import re
    import urllib.request

    with urllib.request.urlopen(gateway_url + "/") as response:
        html = response.read().decode()
        assert "default-src 'self'" in response.headers["Content-Security-Policy"]
    references = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert references and all(r.startswith("/static/") or r.startswith("data:") for r in references)
    for reference in (r for r in references if r.startswith("/static/")):
        with urllib.request.urlopen(gateway_url + reference) as response:
            assert response.status == 200
    styles_and_scripts = "".join(
        (ROOT / "serving" / "gateway" / "static" / name).read_text() for name in ("app.js", "style.css")
    )
    assert not re.search(r"https?://", styles_and_scripts)


def test_a_gateway_with_tokens_asks_for_one(browser, model_server, models_dir, test_images, tmp_path):
    """The page itself is open; the API answers 401 until the token typed into the page is sent."""
    port = stack.free_port()
    env = {"GATEWAY_WORKERS": "1", "GATEWAY_TOKENS": "browser-token"}
    process = stack.start_gateway(port, model_server, models_dir, env=env)
    try:
        stack.wait_for_http(f"http://127.0.0.1:{port}/readyz", process)
        browser.get(f"http://127.0.0.1:{port}/")
        wait_until(browser, lambda d: d.find_element("id", "token-box").is_displayed(), "no token box")
        assert "unauthorized" in browser.find_element("id", "error").text
        browser.find_element("id", "token-input").send_keys("browser-token")
        browser.find_element("id", "token-save").click()
        wait_until(browser, lambda d: d.find_element("id", "model-select").get_attribute("disabled") is None)
        assert not browser.find_element("id", "error").is_displayed()
        path = tmp_path / "digit.png"
        path.write_bytes(encode(test_images["mnist"][0][0]))
        choose_model(browser, "mnist")
        browser.find_element("id", "tab-upload").click()
        before = answers(browser)
        browser.find_element("id", "file-input").send_keys(str(path))
        assert wait_for_answer(browser, before) == "done"
        assert shown_prediction(browser)[0] == str(test_images["mnist"][1][0])
    finally:
        stack.stop(process)
