"""visualizer.py end to end: the real command in a subprocess, the real page in headless Chromium (Debian's
`chromium` and `chromium-driver`, driven by Selenium). Skipped with the reason where they are not installed;
.ci/run installs them so CI always runs this."""

from __future__ import annotations

import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import ROOT, script_env, tiny_stylegan3

from torch_utils import distributed

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
try:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:
    webdriver = None

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        webdriver is None or CHROMIUM is None or DRIVER is None,
        reason="needs Selenium, Chromium and its driver (pip install selenium; apt-get install chromium "
        "chromium-driver); .ci/run installs them",
    ),
]
TOKEN = "browser-test"
WAIT_SEC = 120


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """visualizer.py on a free port with a tiny StyleGAN3 snapshot and a planted pickle under --browse-dir."""
    root = tmp_path_factory.mktemp("visualizer")
    G = tiny_stylegan3(16).eval()
    torch.manual_seed(0)
    G.mapping.w_avg.copy_(torch.randn_like(G.mapping.w_avg))
    snapshot = root / "sg3.pkl"
    with open(snapshot, "wb") as f:
        pickle.dump({"G": G, "D": None, "G_ema": G, "augment_pipe": None, "training_set_kwargs": {}}, f)
    (root / "planted.pkl").write_bytes(b'\x80\x04cos\nsystem\n(S"echo planted"\ntR.')
    port = distributed._free_port()
    command = [sys.executable, str(ROOT / "visualizer.py"), str(snapshot), f"--port={port}", f"--token={TOKEN}"]
    command += [f"--browse-dir={root}", f"--capture-dir={root / 'captures'}", "--device=cpu"]
    server = subprocess.Popen(
        command,
        cwd=root,
        env=script_env(PYTHONUNBUFFERED="1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        line = server.stdout.readline()
        assert f"open http://127.0.0.1:{port}/?token={TOKEN}" in line, line + server.stdout.read()
        assert "ssh -L" in server.stdout.readline()
        yield dict(url=f"http://127.0.0.1:{port}/?token={TOKEN}", root=root, snapshot=snapshot)
    finally:
        server.terminate()
        server.wait(30)


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(argument)
    options.binary_location = CHROMIUM
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def set_control(driver, element_id: str, value) -> None:
    """Change a control as a user would: its value, then the event the page listens to."""
    driver.execute_script(
        "const e = document.getElementById(arguments[0]); e.value = arguments[1];"
        "e.dispatchEvent(new Event(e.tagName === 'SELECT' ? 'change' : 'input'));",
        element_id,
        value,
    )


def shown_request(driver) -> int:
    """The number of the newest view whose rendering the page shows (0 before the first)."""
    return int(driver.find_element(By.ID, "image").get_attribute("data-request") or 0)


def change(driver, **controls) -> str:
    """Change controls as a user would, then wait for the rendering of the newest view; its image's data URL."""
    before = driver.execute_script("return sentId;")
    for element_id, value in controls.items():
        set_control(driver, element_id, value)
    sent = driver.execute_script("return sentId;")
    assert sent > before, "the page sent no view"
    WebDriverWait(driver, WAIT_SEC).until(lambda d: shown_request(d) >= sent)
    return driver.find_element(By.ID, "image").get_attribute("src")


def first_image(driver) -> str:
    WebDriverWait(driver, WAIT_SEC).until(lambda d: shown_request(d) > 0)
    return driver.find_element(By.ID, "image").get_attribute("src")


def text_of(driver, element_id: str, pattern: str) -> str:
    """The text of an element once it matches `pattern`."""
    WebDriverWait(driver, WAIT_SEC).until(lambda d: re.search(pattern, d.find_element(By.ID, element_id).text))
    return driver.find_element(By.ID, element_id).text


def test_the_page_follows_the_controls_and_captures_the_pixels_of_gen_images(served, browser, tmp_path):
    browser.get(served["url"])
    assert "token" not in browser.current_url  # Moved into the cookie.
    first = first_image(browser)
    assert "networks_stylegan3, 16×16" in text_of(browser, "network-info", "16×16")
    seed5 = change(browser, x=5)
    assert seed5 != first
    average = change(browser, psi=0)
    assert average != seed5
    assert change(browser, x=9) == average  # At psi 0 every seed shows the average w's image.
    assert change(browser, psi=0.5, tx=0.25, rotate_deg=30) != average
    browser.find_element(By.ID, "capture").click()
    result = text_of(browser, "capture-result", "Same pixels")
    captured = Path(re.search(r"Saved (\S+\.png)\.", result).group(1))
    command = result.split("Same pixels: ", 1)[1].split()
    assert command[:2] == ["python", "gen_images.py"] and "--translate=0.25,0" in command and "--rotate=30" in command
    outdir = tmp_path / "out"
    subprocess.run(
        [sys.executable, str(ROOT / "gen_images.py"), *command[2:-1], f"--outdir={outdir}", "--device=cpu"],
        check=True,
        env=script_env(),
        capture_output=True,
    )
    assert (outdir / "seed0009.png").read_bytes() == captured.read_bytes()

    # A layer and its spectrum.
    change(browser, layer="L2_36_32")
    assert "all channels: mean" in browser.find_element(By.ID, "stats").text
    assert browser.find_element(By.ID, "spectrum-figure").is_displayed()
    browser.save_screenshot(str(tmp_path / "page.png"))


def test_a_refused_pickle_is_a_message_and_the_server_keeps_serving(served, browser):
    browser.get(served["url"])
    first_image(browser)
    field = browser.find_element(By.ID, "network-input")
    field.clear()
    field.send_keys(str(served["root"] / "planted.pkl"))
    browser.find_element(By.ID, "open-button").click()
    assert "asks for the global os.system" in text_of(browser, "message", "os.system")
    assert not (served["root"] / "planted").exists()
    field.clear()
    field.send_keys(str(served["snapshot"]))
    browser.find_element(By.ID, "open-button").click()
    WebDriverWait(browser, WAIT_SEC).until(lambda d: not d.find_element(By.ID, "message").is_displayed())
    assert change(browser, x=3).startswith("data:image/png")
