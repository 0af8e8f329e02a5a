"""The README's MLflow UI screenshots, taken as a user gets there: a default search with --register
in a fresh folder, `autotrick ui`, and the address it prints opened in a headless Chromium.

    python docs/screenshots.py [--out docs] [--store DIR]   # --store: reuse a folder a search ran in

Writes ui-runs.png (the runs table as `autotrick ui` opens it), ui-parent-run.png (the search's
run and its description) and ui-model.png (the registered model's version page). Needs Debian's
chromium and chromium-driver.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mlflow import MlflowClient
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

MODEL = "digits-cnn"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def browser(profile: Path) -> WebDriver:
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1600,1000", "--hide-scrollbars", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))
    driver.set_page_load_timeout(90)
    return driver


def text(driver: WebDriver) -> str:
    return driver.find_element(By.TAG_NAME, "body").text


def close_assistant(driver: WebDriver) -> None:
    """MLflow 3.17 opens its chat assistant on a first visit, over a third of the page."""
    for button in driver.find_elements(By.CSS_SELECTOR, "[data-component-id='mlflow.assistant.chat_panel.close']"):
        with contextlib.suppress(Exception):
            button.click()
            time.sleep(1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    parser.add_argument("--store", type=Path, help="a folder where `autotrick search --register` already ran")
    args = parser.parse_args()
    store = args.store or Path(tempfile.mkdtemp(prefix="autotrick-shots-"))
    if args.store is None:
        subprocess.run([sys.executable, "-m", "autotrick", "search", "--register", MODEL], cwd=store, check=True)
    port = free_port()
    ui = subprocess.Popen([sys.executable, "-m", "autotrick", "ui", "--port", str(port)], cwd=store,
                          stdout=subprocess.PIPE, text=True, start_new_session=True,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    driver = None
    try:
        assert ui.stdout is not None
        ready, _, _ = select.select([ui.stdout], [], [], 180)
        line = ui.stdout.readline() if ready else ""
        match = re.search(r"MLflow UI at (\S+)", line)
        if not match:
            raise SystemExit(f"`autotrick ui` printed no address: {line!r}")
        url = match.group(1)
        print(line.strip())
        driver = browser(store / "chromium-profile")
        driver.get(url)
        WebDriverWait(driver, 120, 0.5).until(lambda d: "★ best" in text(d))
        close_assistant(driver)
        time.sleep(3)
        driver.save_screenshot(str(args.out / "ui-runs.png"))

        client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
        experiment = client.get_experiment_by_name("quick")
        assert experiment is not None
        parent = client.search_runs([experiment.experiment_id], "tags.`autotrick.role` = 'parent'")[0]
        base = url.partition("#")[0]
        # as the description's links and the runs table open it: the machine-learning view
        view = "?workflowType=machine_learning"
        driver.get(f"{base}#/experiments/{experiment.experiment_id}/runs/{parent.info.run_id}{view}")
        WebDriverWait(driver, 90, 0.5).until(lambda d: "Winner" in text(d))
        close_assistant(driver)
        for more in driver.find_elements(By.XPATH, "//*[text() = 'Show more']"):
            with contextlib.suppress(Exception):
                driver.execute_script("arguments[0].click();", more)
        time.sleep(3)
        driver.save_screenshot(str(args.out / "ui-parent-run.png"))

        driver.get(f"{base}#/models/{MODEL}/versions/1{view}")
        WebDriverWait(driver, 90, 0.5).until(lambda d: "Schema" in text(d))
        close_assistant(driver)
        for schema in driver.find_elements(By.XPATH, "//*[starts-with(text(), 'Inputs (') or "
                                                     "starts-with(text(), 'Outputs (')]"):
            with contextlib.suppress(Exception):
                driver.execute_script("arguments[0].click();", schema)
        time.sleep(3)
        driver.save_screenshot(str(args.out / "ui-model.png"))
    finally:
        if driver is not None:
            driver.quit()
        os.killpg(ui.pid, signal.SIGTERM)
        ui.wait(timeout=30)
    print(f"screenshots in {args.out}")


if __name__ == "__main__":
    main()
