"""The dashboard in a real browser: headless Chromium (Debian's `chromium` and
`chromium-driver`) driven by Selenium loads it from a real valqd, sees a queue appear after a
PUSH, a DLQ message's last reason, a redrive that empties the DLQ, and a `<script>` body shown
as text. It saves a screenshot (docs/dashboard.png is one)."""

import math
import os
import shutil
import threading
import time
from pathlib import Path

import pytest

from http_support import http_valqd
from support import valq

SCREENSHOT = Path(os.environ.get("VALQD_SCREENSHOT_DIR", "")) if \
    os.environ.get("VALQD_SCREENSHOT_DIR") else None
INSTALL = "apt-get install -y chromium chromium-driver && pip install -e '.[test]' (selenium)"


def _find(*names: str) -> str | None:
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    webdriver = pytest.importorskip("selenium.webdriver", reason=f"no selenium: {INSTALL}")
    chromium = _find("chromium", "chromium-browser")
    driver_path = _find("chromedriver")
    if chromium is None or driver_path is None:
        pytest.skip(f"no chromium or chromedriver: {INSTALL}")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1280,860",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    service = webdriver.ChromeService(executable_path=driver_path)
    driver = webdriver.Chrome(options=options, service=service)
    yield driver
    driver.quit()


@pytest.fixture
def server(tmp_path):
    process, port = http_valqd(tmp_path / "dash")
    process.http_port = port
    yield process
    process.stop()


def traffic(server, seconds: float) -> None:
    """Jobs pushed, leased and acked at a changing rate on three queues, for the charts."""
    c = server.client(protocol=3)
    for name in ("thumbnails", "webhooks"):
        valq(c, "CREATE", name, "VISIBILITY", "60")
    started = time.monotonic()
    step = 0
    while (elapsed := time.monotonic() - started) < seconds:
        step += 1
        burst = 3 + int(3 * (1 + math.sin(elapsed * 2)))
        for name, extra in (("emails", 0), ("thumbnails", 2), ("webhooks", -2)):
            valq(c, "MPUSH", name, *[f"job {step}.{i}" for i in range(max(1, burst + extra))])
            popped = valq(c, "POP", name, "COUNT", str(max(1, burst + extra - 1)))
            for m in popped[:-1]:
                valq(c, "ACK", name, m[b"id"])
        time.sleep(0.05)
    c.close()


def test_dashboard_in_a_browser(browser, server, tmp_path):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def wait(predicate, what: str):
        """Until predicate() is true; the page redraws every second, so an element found
        a moment ago may be gone: that is retried."""
        return WebDriverWait(browser, 30, poll_frequency=0.1,
                             ignored_exceptions=(StaleElementReferenceException,)).until(
            lambda _: predicate(), message=what)

    def texts(selector: str) -> list[str]:
        return browser.execute_script(
            "return [...document.querySelectorAll(arguments[0])].map(e => e.textContent)",
            selector)

    def cell(queue: str, column: str):
        return browser.execute_script(
            "const row = [...document.querySelectorAll('#queues tbody tr')]"
            ".find(r => r.dataset.queue === arguments[0]);"
            "return row ? row.querySelector('td.' + arguments[1]).textContent : null;",
            queue, column)

    def click(by, selector: str) -> None:
        wait(lambda: browser.find_element(by, selector).click() or True, f"click {selector}")

    def text(element_id: str) -> str:
        return browser.execute_script(
            "return document.getElementById(arguments[0]).textContent", element_id)

    c = server.client(protocol=3)
    base = f"http://127.0.0.1:{server.http_port}"
    browser.get(base + "/")
    wait(lambda: "live" in text("status"), "the first poll")
    assert browser.find_elements(By.CSS_SELECTOR, "#queues tbody tr") == []

    # a queue appears after a PUSH (here: created, then pushed to, over RESP)
    valq(c, "CREATE", "emails", "VISIBILITY", "30", "MAXATTEMPTS", "1")
    valq(c, "CREATE", "<img src=x onerror=alert(1)>")
    for body in ("welcome mail", "reset password", "weekly digest"):
        valq(c, "PUSH", "emails", body)
    wait(lambda: cell("emails", "ready") == "3", "the queue with 3 ready messages")
    assert cell("<img src=x onerror=alert(1)>", "ready") == "0"  # a name shown as text

    # a message that failed: in the DLQ with its last reason
    (first,) = valq(c, "POP", "emails", "COUNT", "1")
    valq(c, "NACK", "emails", first[b"id"], "REASON", "SMTP 550: mailbox unavailable")
    valq(c, "PUSH", "emails", "<script>document.title='owned'</script>")
    wait(lambda: cell("emails", "dlq") == "1", "the DLQ count in the list")
    click(By.LINK_TEXT, "emails")
    wait(lambda: text("count-dlq") == "1", "the queue page")
    click(By.CSS_SELECTOR, "#tabs button[data-state='dlq']")
    wait(lambda: texts("#messages td.reason") == ["SMTP 550: mailbox unavailable"],
         "the DLQ message's last reason")

    # a <script> body is text, not markup
    click(By.CSS_SELECTOR, "#tabs button[data-state='ready']")
    wait(lambda: "<script>document.title='owned'</script>" in texts("#messages td.body .text"),
         "the <script> body as text")
    assert browser.title != "owned"
    assert browser.find_elements(By.CSS_SELECTOR, "#messages script") == []
    assert browser.execute_script("return typeof window.alert") == "function"

    # screenshots while jobs flow, so that the charts have rates to draw
    worker = threading.Thread(target=traffic, args=(server, 11.0))
    worker.start()
    browser.execute_script("location.hash = '#/'")  # the same page: rate history is kept
    wait(lambda: cell("thumbnails", "ready") not in (None, "0"), "the other queues")
    time.sleep(6)  # six polls of rates
    directory = SCREENSHOT or tmp_path
    directory.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(directory / "dashboard.png"))
    click(By.LINK_TEXT, "emails")
    click(By.CSS_SELECTOR, "#tabs button[data-state='dlq']")
    wait(lambda: texts("#messages td.reason") == ["SMTP 550: mailbox unavailable"], "the DLQ")
    time.sleep(2.5)
    assert browser.save_screenshot(str(directory / "dashboard-queue.png"))
    worker.join(20)

    # redrive: the DLQ count drops
    click(By.ID, "redrive")
    wait(lambda: text("count-dlq") == "0", "the DLQ emptied")
    assert valq(c, "STATS", "emails")[b"redriven"] == b"1"

    # purge asks first: dismissed, nothing is removed
    click(By.CSS_SELECTOR, "#tabs button[data-state='ready']")
    ready = valq(c, "STATS", "emails")[b"ready"]
    click(By.ID, "purge")
    alert = browser.switch_to.alert
    assert "cannot be undone" in alert.text
    alert.dismiss()
    assert valq(c, "STATS", "emails")[b"ready"] == ready

    # pause from the page
    click(By.ID, "pause")
    wait(lambda: text("queue-state") == "paused", "paused")
    assert valq(c, "STATS", "emails")[b"paused"] == b"1"
    c.close()


def test_dashboard_behind_a_password(browser, tmp_path):
    """With requirepass the browser needs Basic credentials (it asks for them; here they are
    in the URL), and the page's own requests carry them."""
    process, port = http_valqd(tmp_path / "locked", "--requirepass", "s3cret")
    try:
        c = process.client(protocol=3, password="s3cret")
        valq(c, "CREATE", "private")
        browser.get(f"http://127.0.0.1:{port}/")
        # no credentials: the browser asks for them (a blank page meanwhile), nothing shown
        assert "private" not in browser.page_source and "queues" not in browser.page_source
        browser.get(f"http://default:s3cret@127.0.0.1:{port}/")
        from selenium.webdriver.support.ui import WebDriverWait
        WebDriverWait(browser, 15, poll_frequency=0.1).until(lambda _: browser.execute_script(
            "return [...document.querySelectorAll('#queues tbody tr')]"
            ".map(r => r.dataset.queue)") == ["private"], message="the queue behind AUTH")
        c.close()
    finally:
        process.stop()
