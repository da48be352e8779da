"""The web console in a real browser: Debian's chromium, headless, driven by Playwright
against the lab's control daemon. An admin logs in, watches a request made in the lab
arrive in the live tail and opens its record, pushes a broken rule set and reads the error
at its line; an analyst sees no push button and is refused anyway when trying; a reviewer
approves a held request from the page and the SDK call completes. Every page is saved as a
screenshot (the README shows some): $SLUICE_ARTEFACTS/console/, by default
target/artefacts/console/.
"""

import json
import os
import random
import secrets
import time
import unittest

from playwright.sync_api import expect, sync_playwright

from test_approvals import Approvals
from test_control import current_rules
from test_dataplane import ROOT, api, curl, env, wait_for_record

CHROMIUM = "/usr/lib/chromium/chromium"
SHOTS = os.path.join(os.environ.get("SLUICE_ARTEFACTS", os.path.join(ROOT, "target", "artefacts")), "console")


class Browser(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        os.makedirs(SHOTS, exist_ok=True)
        cls.env = env()
        cls.url = cls.env["SLUICE_URL"]
        cls.pw = sync_playwright().start()
        cls.browser = cls.pw.chromium.launch(executable_path=CHROMIUM)

    @classmethod
    def tearDownClass(cls):
        cls.browser.close()
        cls.pw.stop()

    def page_for(self, token_name):
        """A fresh browser context logged in with the lab's `token_name` token."""
        ctx = self.browser.new_context(ignore_https_errors=True, viewport={"width": 1440, "height": 900})
        self.addCleanup(ctx.close)
        page = ctx.new_page()
        # Script errors, and anything the Content-Security-Policy blocked, fail the test (a
        # refused call's "failed to load resource" is expected where a test asks for one).
        errors = []
        page.on("console", lambda m: errors.append(m.text) if "Content Security Policy" in m.text else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        self.addCleanup(lambda: self.assertEqual(errors, [], "no script error, nothing blocked by the CSP"))
        page.goto(self.url + "/console/")
        expect(page).to_have_url(self.url + "/console/login")
        page.fill("#token", self.env[token_name])
        page.click("button[type=submit]")
        page.wait_for_load_state("load")
        cookies = {c["name"]: c for c in ctx.cookies()}
        c = cookies["__Host-sluice_session"]
        self.assertTrue(c["httpOnly"] and c["secure"] and c["sameSite"] == "Strict", c)
        return page

    def shot(self, page, name):
        page.screenshot(path=os.path.join(SHOTS, name + ".png"), full_page=True)


class Console(Browser):
    def test_admin_follows_a_request_and_pushes_a_broken_rule_set(self):
        page = self.page_for("SLUICE_ADMIN_TOKEN")
        expect(page.locator("h1")).to_have_text("Overview")
        expect(page.locator("body")).to_have_attribute("data-charts", "drawn")
        self.assertEqual(page.locator("#chart-traffic canvas").count(), 1)
        expect(page.locator("table.dataplanes tbody tr")).to_have_count(1)
        expect(page.locator("table.dataplanes")).to_contain_text("up")
        self.shot(page, "overview")

        # The live tail, filtered to what the request will make, then the request.
        since = int(time.time() * 1000)
        page.goto(self.url + "/console/flows?live=1&sni=api.openai.com&since=%d" % since)
        expect(page.locator("#tail")).to_have_count(1)
        sport = random.randint(41000, 48000)
        curl("guest", "https://api.openai.com/v1/models", "-o", "/dev/null", "--local-port", str(sport))
        rows = page.locator("table.records tbody tr:not(#tail)")
        expect(rows.first).to_be_visible(timeout=30_000)
        self.shot(page, "flows")
        links = [rows.nth(i).locator("a").get_attribute("href") for i in range(rows.count())]
        found = None
        deadline = time.time() + 20
        while found is None and time.time() < deadline:
            for href in links:
                page.goto(self.url + href)
                record = json.loads(page.locator("pre.record").inner_text())
                if record.get("sport") == sport:
                    found = record
                    break
            if found is None:
                time.sleep(2)
                page.goto(self.url + "/console/flows?sni=api.openai.com&since=%d" % since)
                links = [a.get_attribute("href") for a in page.locator("table.records tbody tr a").all()]
        self.assertIsNotNone(found, "the request's flow is in the console, with its source port")
        self.assertEqual(found["sni"], "api.openai.com")
        expect(page.locator("dl.summary")).to_contain_text("api.openai.com")
        self.shot(page, "flow-detail")

        page.goto(self.url + "/console/requests?since=1h")
        expect(page.locator("h1")).to_have_text("Requests")
        self.shot(page, "requests")

        # A broken rule set: the error at its line, nothing pushed.
        before = current_rules()
        broken = before.replace('action = "block"', 'action = "blok"', 1)
        self.assertNotEqual(broken, before)
        line = broken.splitlines().index(next(l for l in broken.splitlines() if '"blok"' in l)) + 1
        page.goto(self.url + "/console/rules")
        page.fill("section.push textarea", broken)
        page.click("#push-button")
        expect(page.locator("#result .invalid")).to_be_visible()
        expect(page.locator("#result ul.diags")).to_contain_text("line %d, column" % line)
        expect(page.locator("#result li.marked#line-%d" % line)).to_contain_text('"blok"')
        page.locator("#result li.marked").first.scroll_into_view_if_needed()
        self.shot(page, "rules-error")
        self.assertEqual(current_rules(), before, "a broken rule set is never pushed")

        # Validating the good text says so; the history and a diff show.
        page.fill("section.push textarea", before)
        page.click("button:has-text('Validate')")
        expect(page.locator("#result p.ok")).to_contain_text("Valid")
        code, body = api("GET", "/v1/rules/history", "SLUICE_ANALYST_TOKEN")
        versions = [v["version"] for v in json.loads(body)]
        if len(versions) > 1:
            page.goto(self.url + "/console/rules?from=%d" % min(versions))
            expect(page.locator("section.diff h2")).to_contain_text("Version %d → version" % min(versions))
        else:
            page.goto(self.url + "/console/rules")
        self.shot(page, "rules")

        for path, title, name in [
            ("/console/identities", "Identities", "identities"),
            ("/console/inventory", "Inventory", "inventory"),
            ("/console/approvals?state=all", "Approvals", "approvals-all"),
            ("/console/audit", "Audit", "audit"),
            ("/console/evidence", "Evidence", "evidence"),
        ]:
            page.goto(self.url + path)
            expect(page.locator("h1")).to_have_text(title)
            self.shot(page, name)
        # The audit log shows this session's login.
        page.goto(self.url + "/console/audit")
        expect(page.locator("table")).to_contain_text("console.login")

    def test_analyst_sees_no_push_and_is_refused_anyway(self):
        page = self.page_for("SLUICE_ANALYST_TOKEN")
        page.goto(self.url + "/console/rules")
        expect(page.locator("h1")).to_have_text("Rule sets")
        self.assertEqual(page.locator("#push-button").count(), 0)
        self.assertEqual(page.locator("section.push textarea").count(), 0)
        self.assertEqual(page.locator("header nav a[href='/console/audit']").count(), 0)
        self.shot(page, "rules-analyst")

        # Posting the push by hand, with the session's own CSRF token: refused.
        csrf = json.loads(page.locator("body").get_attribute("hx-headers"))["X-CSRF-Token"]
        status = page.evaluate(
            """async (csrf) => {
                 const r = await fetch("/console/rules/push", {method: "POST",
                   headers: {"X-CSRF-Token": csrf, "Content-Type": "application/x-www-form-urlencoded"},
                   body: "text=" + encodeURIComponent("[defaults]\\naction = \\"allow\\"\\n")});
                 return r.status; }""",
            csrf,
        )
        self.assertEqual(status, 403)
        code, _ = api("PUT", "/v1/rules", "SLUICE_ANALYST_TOKEN", current_rules())
        self.assertEqual(code, 403, "the API refuses the analyst too")
        resp = page.goto(self.url + "/console/audit")
        self.assertEqual(resp.status, 403)
        expect(page.locator("p.error")).to_contain_text("analyst role may not")


class ConsoleApprovals(Browser):
    """A request held for approval (test_approvals' rules: alice's requests wait), decided
    from the console by the lab's approver."""

    ask = Approvals.ask
    pending = Approvals.pending
    wait_pending = Approvals.wait_pending
    finish = Approvals.finish

    setUp = Approvals.setUp
    tearDown = Approvals.tearDown

    def test_a_reviewer_approves_from_the_page(self):
        t, out = self.ask("quarterly numbers %s" % secrets.token_hex(4))
        (aid,) = self.wait_pending()
        page = self.page_for("SLUICE_APPROVER_TOKEN")
        expect(page).to_have_url(self.url + "/console/approvals")
        # An approver's console: approvals only.
        self.assertEqual(page.locator("header nav a").count(), 1)
        row = page.locator("#approval-" + aid)
        expect(row).to_contain_text("alice@corp")
        self.shot(page, "approvals")
        row.locator("input[name=reason]").fill("numbers are public today")
        row.locator("button[value=approve]").click()
        expect(page.locator("#approval-" + aid)).to_contain_text("approved")
        self.assertEqual(self.finish(t, out), "ok")
        rec = wait_for_record("request", lambda x: (x.get("approval") or {}).get("id") == aid)
        self.assertEqual((rec["approval"]["decision"], rec["approval"]["by"]), ("approved", "lab-approver"))
        code, body = api("GET", "/v1/audit", "SLUICE_ADMIN_TOKEN")
        self.assertIn("numbers are public today", body)


if __name__ == "__main__":
    unittest.main()
