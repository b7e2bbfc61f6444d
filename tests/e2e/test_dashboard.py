"""The dashboard in a real browser: Debian's Chromium driven by Playwright.

Jobs flow through the real stack (gateway, consumer, worker) while the page is open: the
numbers must move without a reload, a failing job must show up with its reason, and the
browser console must stay clean. The screenshot is kept under ``.artifacts/`` (or
``$BLAZE_ARTIFACTS``) for a person to look at.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import httpx
from playwright.sync_api import sync_playwright

from tests.e2e.conftest import User, echo_fleet

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def artifacts() -> Path:
    path = Path(os.environ.get("BLAZE_ARTIFACTS", ROOT / ".artifacts"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def number(text: str) -> float:
    return float(text.replace(",", "")) if text.strip() not in ("", "-") else -1.0


def test_dashboard_moves_while_a_batch_runs_and_shows_failures(user: User, tmp_path: Path) -> None:
    assert Path(CHROMIUM).exists(), "infra/dev.sh setup installs Debian's chromium"
    url, _, _, _ = echo_fleet(user, tmp_path, "    max_batch_size: 8\n    max_wait_s: 0.2\n")
    viewer, submitter = user.key("wall", "dashboard"), user.key("ops", "submit")
    reader = user.key("r", "read")
    auth = {"Authorization": f"Bearer {submitter}"}
    # a key without the dashboard scope sees the sign-in page, not the data
    assert (
        httpx.get(
            f"{url}/dashboard/snapshot", headers={"Authorization": f"Bearer {reader}"}
        ).status_code
        == 403
    )
    assert httpx.get(f"{url}/dashboard?key={viewer}").status_code == 400  # never in a URL

    stop = threading.Event()
    sent: list[int] = []

    def traffic() -> None:  # a steady run: 20 jobs every 0.5 s, one of them failing
        while not stop.is_set():
            jobs = [
                {"kind": "llm", "model": "fast", "prompt": f"q{len(sent)}-{i}"} for i in range(19)
            ]
            jobs.append({"kind": "llm", "model": "broken", "prompt": "x"})
            r = httpx.post(f"{url}/v1/jobs", json={"jobs": jobs}, headers=auth, timeout=30)
            assert r.status_code == 202, r.text
            sent.append(len(jobs))
            stop.wait(0.5)

    problems: list[str] = []
    shot = artifacts() / "dashboard.png"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1250})
            page.on(
                "console",
                lambda m: problems.append(f"{m.type}: {m.text}") if m.type == "error" else None,
            )
            page.on("pageerror", lambda e: problems.append(f"pageerror: {e}"))
            page.goto(f"{url}/dashboard#key={viewer}")
            page.wait_for_selector("#conn.live", timeout=20_000)
            assert page.url == f"{url}/dashboard"  # the key left the address bar
            assert page.locator("#workers tbody").inner_text().count("alive") == 1
            feeder = threading.Thread(target=traffic, daemon=True)
            feeder.start()
            try:
                succeeded = "document.getElementById('k-succeeded').textContent"
                page.wait_for_function(f"Number({succeeded}.replace(/,/g, '')) > 0", timeout=30_000)
                first = number(page.inner_text("#k-succeeded"))
                time.sleep(3)
                second = number(page.inner_text("#k-succeeded"))
                assert second > first, (first, second)  # moving, without a reload
                page.wait_for_function(
                    "Number(document.getElementById('k-in').textContent) > 0", timeout=15_000
                )
                page.wait_for_selector("#failures td.bad", timeout=30_000)
                failures = page.inner_text("#failures")
                assert "failed (broken)" in failures and "no-such-weights" in failures
                assert page.locator("#c-throughput path.series").count() >= 1
                time.sleep(4)  # let the charts draw a few seconds of the run
            finally:
                stop.set()
                feeder.join(30)
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert problems == [], problems
    assert shot.stat().st_size > 20_000
    assert sum(sent) >= 40
