"""The network explorer in a real browser: headless Chromium (Debian's ``chromium`` and
``chromium-driver``, installed by ``make test`` where missing) driven with selenium.

The page is served by uvicorn on loopback for the network of ``tests/test_explorer.py`` (a revoked
node, a slashed node, two epochs). Checked: the page loads with no console error (a script error,
a blocked resource and a Content-Security-Policy violation all count), its tables and charts show
the nodes and epochs, the revoked and the slashed node show as such, a node's markup-like
capability shows as text, and the page follows the journal live. Screenshots of the main views are
written to ``build/artefacts/``; the overview is copied to the README's ``docs/explorer.png`` when that
file is missing or ``EDIL_UPDATE_SCREENSHOTS`` is set.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from edil.app._explorer import explorer_app
from edil.proofs import keccak256
from tests.test_explorer import E1, E2, EVIL, Network, seed_network

REPO = Path(__file__).resolve().parents[1]
ARTEFACTS = REPO / "build" / "artefacts"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Network:
    return seed_network(tmp_path_factory.mktemp("explorer-browser") / "jobs.sqlite")


@pytest.fixture(scope="module")
def url(net: Network) -> Iterator[str]:
    explorer = net.explorer(refresh_s=0)
    explorer.snapshot()  # read the chain once before the browser asks
    server = uvicorn.Server(uvicorn.Config(explorer_app(explorer, poll_ms=500), host="127.0.0.1", port=_free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the explorer's server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def driver() -> Iterator[Any]:
    binary, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    if binary is None or chromedriver is None:
        pytest.fail("headless Chromium is missing: `make test` installs Debian's chromium and chromium-driver")
    options = Options()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1500,2400"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    d = webdriver.Chrome(options=options, service=Service(chromedriver))
    d.set_page_load_timeout(60)
    try:
        yield d
    finally:
        d.quit()


def _errors(driver: Any) -> list[dict[str, Any]]:
    return [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def _shot(driver: Any, name: str) -> Path:
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTEFACTS / name
    assert driver.save_screenshot(str(path)) and path.stat().st_size > 10_000
    return path


def test_overview_loads_without_console_errors_and_shows_the_network(net: Network, url: str, driver: Any) -> None:
    driver.get(url + "/")
    WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#nodes-table tbody tr"))
    rows = {r.get_attribute("data-address"): r for r in driver.find_elements(By.CSS_SELECTOR, "#nodes-table tbody tr")}
    assert set(rows) == set(net.addresses)
    assert rows[net.addresses[3]].get_attribute("data-status") == "revoked"
    assert "revoked" in rows[net.addresses[3]].text
    assert "slashed" in rows[net.addresses[2]].text.split() and rows[net.addresses[2]].get_attribute("data-status") == "active"
    assert "online" in rows[net.addresses[0]].text.split() and "offline" in rows[net.addresses[2]].text.split()
    assert EVIL in rows[net.addresses[1]].text  # shown as text, never run
    with pytest.raises(NoAlertPresentException):
        driver.switch_to.alert.text  # noqa: B018 - an alert would mean the markup ran
    epochs = [r.get_attribute("data-epoch") for r in driver.find_elements(By.CSS_SELECTOR, "#epochs-table tbody tr")]
    assert epochs == [str(E2), str(E1)]
    assert len(driver.find_elements(By.CSS_SELECTOR, "#heatmap rect")) == 4 * 2
    assert len(driver.find_elements(By.CSS_SELECTOR, "#heatmap rect.hv")) == 1  # node 2's voided epoch
    assert len(driver.find_elements(By.CSS_SELECTOR, "#work-chart rect")) == 2
    assert driver.find_element(By.ID, "payment-totals").is_displayed()
    assert _errors(driver) == []
    shot = _shot(driver, "explorer-overview.png")
    readme_shot = REPO / "docs" / "explorer.png"
    if not readme_shot.exists() or os.environ.get("EDIL_UPDATE_SCREENSHOTS"):  # the README's copy changes only when asked
        readme_shot.parent.mkdir(exist_ok=True)
        shutil.copyfile(shot, readme_shot)


def test_node_and_epoch_views(net: Network, url: str, driver: Any) -> None:
    driver.get(url + "/")
    WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#nodes-table tbody tr"))
    driver.find_element(By.CSS_SELECTOR, f'#nodes-table a[href$="/node/{net.addresses[2]}"]').click()
    WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.ID, "history-table"))
    facts = driver.find_element(By.ID, "node-facts").text
    assert "slashed" in facts and f"epochs {E1}" in facts
    history = {r.get_attribute("data-epoch"): r.text for r in driver.find_elements(By.CSS_SELECTOR, "#history-table tbody tr")}
    assert "failed" in history[str(E1)]
    _shot(driver, "explorer-node.png")
    driver.find_element(By.CSS_SELECTOR, f'#history-table a[href$="/epoch/{E1}"]').click()
    WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.ID, "epoch-nodes-table"))
    cells = [r.get_attribute("data-address") for r in driver.find_elements(By.CSS_SELECTOR, "#epoch-nodes-table tbody tr")]
    assert sorted(cells) == sorted(net.addresses)
    _shot(driver, "explorer-epoch.png")
    assert _errors(driver) == []


def test_the_page_follows_the_journal_live(net: Network, url: str, driver: Any) -> None:
    driver.get(url + "/")
    WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.ID, "jobs-table"))
    assert len(driver.find_elements(By.CSS_SELECTOR, "#jobs-table tbody tr")) == 4
    job = keccak256(b"explorer-browser-live-job")
    net.journal.add(job, "task", b"spec")
    WebDriverWait(driver, 20).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#jobs-table tbody tr")) == 5)
    assert job.hex()[:10] in driver.find_element(By.ID, "jobs-table").text
    assert driver.find_element(By.ID, "live").text == "live"
    assert _errors(driver) == []
