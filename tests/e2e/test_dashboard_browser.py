"""The dashboard in a real headless Chromium (Debian's, driven by Playwright) against the daemon and the
lab, both with the shipped configs: the page shows a job's steps advancing while the lab runs a failover
(its power latencies slowed so each step is seen), the spare count drops, the job page's picture fills
in, and an action without the token is refused (401) while with it and the confirmation it is done."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.e2e.test_first_run import SERVER, _cli, shipped_run
from tests.support.wait import eventually

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
TOKEN = "dashboard-token"
WAIT_MS = 60_000

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed")


RECORD_STEPS = """server => {
  window.stepsShown = [];
  const look = () => {
    for (const tr of document.querySelectorAll('#jobs tbody tr')) {
      if (!tr.textContent.includes(server)) continue;
      const cell = tr.querySelector('.job-step');
      const text = cell ? cell.textContent.trim() : '';
      const shown = window.stepsShown;
      if (text && shown[shown.length - 1] !== text) shown.push(text);
      return;
    }
  };
  new MutationObserver(look).observe(document.body, {subtree: true, childList: true, characterData: true});
}"""
"""Records, in the page, each step shown in the first jobs row of `server` (window.stepsShown)."""


@pytest.mark.slow
async def test_the_dashboard_shows_a_failover_live_and_guards_its_actions(tmp_path: Path) -> None:
    from playwright.async_api import async_playwright, expect

    def slower(lab_text: str) -> str:  # each power step lasts long enough to be seen
        for key in ("power_off_s: 1.0", "power_on_s: 1.0"):
            assert key in lab_text
            lab_text = lab_text.replace(key, key.replace("1.0", "1.5"))
        return lab_text

    env = {"FAILOVER_API_TOKEN": TOKEN, "FAILOVER_SNMP_COMMUNITY": "site-community",
           "FAILOVER_EVENT_SECRET": "dashboard-secret"}
    async with shipped_run(tmp_path, env, slower) as run:
        lab_url, base = run.lab_url, run.base
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = await browser.new_page(viewport={"width": 1280, "height": 900})

            counts = page.locator('.spare-count[data-group="dg1"]')

            async def spares_shown() -> int | None:
                """dg1's spare count once the daemon has read its inventory (a page loaded before then
                shows none)."""
                try:
                    response = await page.goto(base + "/", timeout=5000)
                except Exception:
                    return None
                if response is None or response.status != 200:
                    return None
                return sum(int(t) for t in await counts.all_inner_texts()) or None

            before = await eventually(spares_shown, 60, "the dashboard to show dg1's spares")
            await expect(page.locator("#live")).to_have_text("live", timeout=WAIT_MS)

            # Every step the page shows for the server is recorded as the page changes (a
            # MutationObserver), so a short step is not missed between two polls of an assertion.
            await page.evaluate(RECORD_STEPS, SERVER)

            # The lab's subscription must be in place before the fault (as in test_first_run).
            fault = None

            async def faulted() -> bool:
                nonlocal fault
                fault = _cli("lab", "fault", SERVER, "cpu-uncorrectable", "--lab", lab_url, env=env)
                return fault.returncode == 0 and "to 1 subscription(s)" in fault.stdout

            await eventually(faulted, 60, "the fault to reach the monitor's subscription")
            row = page.locator("#jobs tbody tr", has_text=SERVER).first
            await page.wait_for_function("() => window.stepsShown.includes('power_on_spare')",
                                         timeout=WAIT_MS)
            shown = await page.evaluate("() => window.stepsShown")
            # seen in order, live, without a reload
            assert "power_off_source" in shown, shown
            assert shown.index("power_off_source") < shown.index("power_on_spare"), shown
            job_id = await row.get_attribute("data-job")
            job_page = await browser.new_page()
            await job_page.goto(f"{base}/jobs/{job_id}")
            await expect(row.locator(".job-state")).to_have_text("completed", timeout=WAIT_MS)
            await expect(job_page.locator("#phase-boot")).to_have_class("phase done", timeout=WAIT_MS)
            await expect(job_page.locator("#phase-fence")).to_have_class("phase done")
            await expect(job_page.locator(".job-state")).to_have_text("completed")

            async def dropped() -> bool:
                return bool(sum(int(t) for t in await counts.all_inner_texts()) == before - 1)

            await eventually(dropped, 30, "the spare count to drop by the spare taken")
            shot = Path(os.environ.get("FAILOVER_SCREENSHOT") or tmp_path / "dashboard.png")
            await page.screenshot(path=str(shot), full_page=False)

            # Actions: refused without the token, done with it after the confirmation dialog.
            result = page.locator("#action-result")
            await page.locator('button[data-action="pause"]').click()
            await page.locator("#confirm-ok").click()
            await expect(result).to_contain_text("401", timeout=WAIT_MS)
            await expect(page.locator("#paused")).to_have_text("on")
            await page.locator("#token").fill(TOKEN)
            await page.locator('button[data-action="pause"]').click()
            await page.locator("#confirm-ok").click()
            await expect(result).to_contain_text("pause: 200", timeout=WAIT_MS)
            await expect(page.locator("#paused")).to_contain_text("paused")
            await browser.close()
