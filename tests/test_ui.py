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
                      trials=3, max_epochs=3, batch_size=64, seed=0, device="cpu", grace_epochs=1)
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
                 "--disable-sync", "--window-size=1920,1000", f"--user-data-dir={tmp_path / 'chrome'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


@needs_chromium
def test_the_printed_address_opens_the_trials_sorted_with_the_winner_first(
        ui: int, browser: WebDriver, search: tuple[str, str], tmp_path: Path) -> None:
    """What `autotrick ui` prints (the store's latest search) lands on the runs table in the
    machine-learning view, sorted by the final metric, its columns shown, the winner on top."""
    uri, best_run = search
    browser.get(ui_url(tracking_uri=uri, port=ui))

    def row_names(driver: WebDriver) -> list[str]:
        """The run names in the table's order (ag-grid's row-index, not the DOM's)."""
        names: dict[int, str] = {}
        for link in driver.find_elements(By.XPATH, "//div[@row-index]//a[starts-with(normalize-space(), 'trial-') "
                                                   f"or normalize-space() = '{NAME}']"):
            row = link.find_element(By.XPATH, "ancestor::div[@row-index][1]")
            names[int(row.get_attribute("row-index") or 0)] = link.text.strip()
        return [names[index] for index in sorted(names)]

    names = WebDriverWait(browser, 90, poll_frequency=0.5).until(lambda driver: len(row_names(driver)) >= 4
                                                                 and row_names(driver))
    close_assistant(browser)  # MLflow opens its chat panel on a first visit: it hides the table's right half
    browser.save_screenshot(str(tmp_path / "runs.png"))
    page = browser.find_element(By.TAG_NAME, "body").text
    assert "Model training" in page and "Traces 0" not in page  # not the GenAI overview
    assert "Sort: final_val_accuracy" in page
    assert {"final_val_accuracy", "val_accuracy_at_epoch_1", "epochs_trained", "norm.type"} <= set(page.split("\n"))
    # the search (its final value is its winner's) and its winner first, then the others by value
    assert set(names[:2]) == {NAME, best_run} and best_run.endswith("★ best")
    assert names[2:] == ["trial-002", "trial-000 (baseline)"]


def close_assistant(driver: WebDriver) -> None:
    for button in driver.find_elements(By.CSS_SELECTOR, "[data-component-id='mlflow.assistant.chat_panel.close']"):
        with contextlib.suppress(Exception):
            button.click()
            time.sleep(1)


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
