"""The MLflow UI that `autotrick ui` serves, on a store where a search was logged by
SearchTracker: the real command in a subprocess, and the page in a real headless Chromium."""

from __future__ import annotations

import contextlib
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow import MlflowClient
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from autotrick.recipe import Recipe
from autotrick.records import SearchInfo, SearchResult, TrialRecord
from autotrick.tracking import TAG_BEST_RUN, SearchTracker, serve_ui, ui_url

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
NAME = "ui-search"

needs_chromium = pytest.mark.skipif(not CHROMIUM.exists(),
                                    reason="needs Debian's chromium and chromium-driver in /usr/bin "
                                           "(apt-get install -y chromium chromium-driver)")


def trial(number: int, accuracy: float, norm: str) -> TrialRecord:
    rows = [{"epoch": e, "train_loss": 1 / e, "val_loss": 1 / e, "val_accuracy": accuracy * e / 3,
             "lr": 0.05, "seconds": 1.0, "images_per_s": 2000.0} for e in (1, 2, 3)]
    return TrialRecord(number=number, values={"norm.type": norm, "optim.lr": 0.05}, outcome="finished",
                       metric=accuracy, epochs=3, history=rows, baseline=number == 0, seconds=3.0)


@pytest.fixture(scope="module")
def search(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A small search logged in a fresh store: (tracking URI, best run's name)."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('ui') / 'mlflow.db'}"
    records = [trial(0, 0.90, "keep"), trial(1, 0.95, "group"), trial(2, 0.93, "batch")]
    info = SearchInfo(name=NAME, space="quick", model="cnn", data="digits", metric="val_accuracy", mode="max",
                      trials=3, max_epochs=3, batch_size=64, seed=0, device="cpu")
    tracker = SearchTracker(info, tracking_uri=uri)
    for record in records:
        tracker.trial_finished(record)
    result = SearchResult(info=info, records=records, interrupted=False)
    tracker.search_finished(result, Recipe(tricks=dict(records[1].values)))
    tracker.close(timeout=120)
    best_id = MlflowClient(uri).get_run(tracker.parent_run_id).data.tags[TAG_BEST_RUN]
    return uri, MlflowClient(uri).get_run(best_id).info.run_name


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def ui(search: tuple[str, str]) -> Iterator[int]:
    """The UI's port, on a free loopback port; the server stops after the test."""
    port = free_port()
    server = serve_ui(tracking_uri=search[0], port=port)
    try:
        yield port
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--window-size=1400,900", f"--user-data-dir={tmp_path / 'chrome'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


@needs_chromium
def test_experiment_page_shows_the_search_and_its_best_run(ui: int, browser: WebDriver,
                                                            search: tuple[str, str], tmp_path: Path) -> None:
    uri, best_run = search
    browser.get(ui_url(search_name=NAME, tracking_uri=uri, port=ui))
    # The parent run's row; its trials sit folded under the button in its name cell.
    unfold = WebDriverWait(browser, 90, poll_frequency=0.5).until(lambda driver: driver.find_element(
        By.XPATH, f"//div[contains(@class, 'ag-row')][.//a[normalize-space() = '{NAME}']]//button"))
    unfold.click()
    WebDriverWait(browser, 30, poll_frequency=0.5).until(
        lambda driver: best_run in driver.find_element(By.TAG_NAME, "body").text)
    browser.save_screenshot(str(tmp_path / "experiment.png"))
    page = browser.find_element(By.TAG_NAME, "body").text
    assert NAME in page and best_run in page and "Runs" in page


def read_line(process: subprocess.Popen[str], timeout: float) -> str:
    """The next line the process prints, or "" if it prints none in time or exits."""
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        ready, _, _ = select.select([process.stdout], [], [], 0.5)
        if ready:
            return process.stdout.readline()
    return ""


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def test_the_ui_command_prints_its_address_serves_it_and_stops_with_it(search: tuple[str, str]) -> None:
    """`autotrick ui` as a user runs it: its address line, the page there, and no server left
    behind once the command is terminated."""
    uri, _ = search
    port = free_port()
    command = [sys.executable, "-m", "autotrick", "ui", "--port", str(port), "--name", NAME, "--tracking-uri", uri]
    # A session of its own: whatever the command leaves behind can be found and stopped.
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        line = read_line(process, timeout=150)
        assert line, f"no address printed; exit code {process.poll()}"
        printed = re.fullmatch(r"MLflow UI at (\S+) \(Ctrl-C to stop\)\n", line)
        assert printed, line
        url = printed.group(1)
        assert url == ui_url(search_name=NAME, tracking_uri=uri, port=port)
        base = url.partition("#")[0]
        assert base == f"http://127.0.0.1:{port}/"
        with urllib.request.urlopen(base, timeout=30) as response:
            assert response.status == 200
            page = response.read().decode("utf-8", errors="replace")
        assert "<title>MLflow</title>" in page or "mlflow" in page.lower()
        assert answers(f"http://127.0.0.1:{port}/health")

        process.terminate()  # SIGTERM, as a service manager, `timeout` or `docker stop` stops it
        process.wait(timeout=60)
        deadline = time.monotonic() + 15
        while answers(f"http://127.0.0.1:{port}/health") and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not answers(f"http://127.0.0.1:{port}/health"), (
            "the MLflow server outlived `autotrick ui` after SIGTERM")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # the command and anything it left running
        process.wait(timeout=30)
