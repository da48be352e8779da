"""End-to-end tests of just-in-time approval in the lab, with the official OpenAI Python SDK as
alice (a virtual key names her): her finance rule holds every request; a reviewer (token role
`approver`) approves or denies it with `sluicectl approvals`; a timeout blocks; alice cannot
approve her own; the bound on held requests refuses the next one; the webhook hears of each
wait without the prompt.

Expects the lab up and the appliance started (scripts/test does both).
"""

import http.server
import json
import secrets
import threading
import time
import unittest

import test_access
from test_control import ctl, current_rules
from test_dataplane import api, push_rules, restarted_with_stats, start_appliance, wait_for_record
from test_intercept import sdk, upstream

HOOK = []


class Hook(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        n = int(self.headers.get("content-length", "0"))
        HOOK.append(json.loads(self.rfile.read(n)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


def held_rules(rules, timeout=30):
    """alice's rule holds every request (the prompt shown to reviewers, one held at a time)
    and brokers the key, so her virtual key names her."""
    rule = test_access.RULE
    assert rule in rules
    at = rules.index(rule)
    head, tail = rules[:at], rules[at:]
    tail = tail.replace('action = "inspect"', 'action = "hold"', 1)
    extra = ('broker_key = "openai-prod"\napproval_timeout = %d\napproval_shows_prompt = true\n'
             'approval_max_held = 1\n' % timeout)
    return head + tail.replace(rule, rule + extra, 1)


class Approvals(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
        threading.Thread(target=cls.server.serve_forever, daemon=True).start()
        url = "http://127.0.0.1:%d/hook" % cls.server.server_address[1]
        start_appliance(SLUICE_APPROVAL_WEBHOOK=url)
        restarted_with_stats(time.time() * 1000)

    @classmethod
    def tearDownClass(cls):
        start_appliance()
        restarted_with_stats(time.time() * 1000)
        cls.server.shutdown()

    def setUp(self):
        test_access.Brokering.set_key(self, "sk-proj-HOLD" + secrets.token_hex(20))
        self.before = current_rules()
        push_rules(held_rules(self.before))
        r = ctl("keys", "issue", "--user", "alice@corp", "--identity", "finance")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.key = r.stdout.strip().splitlines()[0]

    def tearDown(self):
        for a in self.pending():
            ctl("approvals", "deny", a, "--reason", "test cleanup", token="SLUICE_APPROVER_TOKEN")
        push_rules(self.before)
        ctl("keys", "rm", "openai-prod")

    def ask(self, words):
        """alice's chat call in the background: its output line, when it ends."""
        code = ("try:\n"
                "    client.chat.completions.create(model='gpt-4o-mini', messages=[{'role':'user','content':%r}])\n"
                "    print('ok')\n"
                "except openai.APIStatusError as e:\n"
                "    print(type(e).__name__, e.status_code, json.dumps(e.body))\n" % words)
        out = []
        t = threading.Thread(target=lambda: out.append(sdk("alice", code, key=self.key)))
        t.start()
        return t, out

    def pending(self):
        r = ctl("--json", "approvals", "list", token="SLUICE_APPROVER_TOKEN")
        self.assertEqual(r.returncode, 0, r.stderr)
        return [a["id"] for a in json.loads(r.stdout)["approvals"]]

    def wait_pending(self, n=1):
        deadline = time.time() + 20
        while time.time() < deadline:
            ids = self.pending()
            if len(ids) >= n:
                return ids
            time.sleep(0.2)
        self.fail("no request waits for approval")

    def finish(self, t, out):
        t.join(60)
        self.assertEqual(len(out), 1)
        r = out[0]
        self.assertEqual(r.returncode, 0, r.stderr)
        return r.stdout.strip()

    def test_a_held_request_completes_after_approval(self):
        tag = secrets.token_hex(4)
        t, out = self.ask("plan the merger %s" % tag)
        (aid,) = self.wait_pending()
        self.assertFalse(any(tag in e.get("body", "") for e in upstream("api.openai.com")),
                         "the held request reached the server before approval")
        shown = ctl("approvals", "show", aid, token="SLUICE_APPROVER_TOKEN")
        self.assertEqual(shown.returncode, 0, shown.stderr)
        self.assertIn("alice@corp", shown.stdout)
        self.assertIn("plan the merger %s" % tag, shown.stdout, "the rule shows reviewers the prompt")
        r = ctl("approvals", "approve", aid, token="SLUICE_APPROVER_TOKEN")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("approved by lab-approver", r.stdout)
        self.assertEqual(self.finish(t, out), "ok")
        rec = wait_for_record("request", lambda x: (x.get("approval") or {}).get("id") == aid)
        self.assertEqual((rec["approval"]["decision"], rec["approval"]["by"]), ("approved", "lab-approver"))
        self.assertGreater(rec["approval"]["waited_ms"], 0)
        self.assertEqual(rec["user"], "alice@corp")
        # The webhook heard of the wait, without the prompt; the audit log has the decision.
        notes = [h for h in HOOK if h["approval"]["id"] == aid]
        self.assertEqual(len(notes), 1, HOOK)
        self.assertNotIn(tag, json.dumps(notes))
        self.assertIn("alice@corp", notes[0]["text"])
        code, body = api("GET", "/v1/audit", "SLUICE_ADMIN_TOKEN")
        self.assertIn("approval.approve", body)
        self.assertIn(aid, body)

    def test_a_denied_request_raises_permission_denied_with_the_reason(self):
        t, out = self.ask("send the client list")
        (aid,) = self.wait_pending()
        r = ctl("approvals", "deny", aid, "--reason", "client data stays here", token="SLUICE_APPROVER_TOKEN")
        self.assertEqual(r.returncode, 0, r.stderr)
        line = self.finish(t, out)
        self.assertTrue(line.startswith("PermissionDeniedError 403"), line)
        self.assertIn("approval_denied", line)
        self.assertIn("client data stays here", line)

    def test_alice_cannot_approve_her_own_request(self):
        t, out = self.ask("approve me")
        (aid,) = self.wait_pending()
        r = ctl("approvals", "approve", aid, token="SLUICE_ALICE_APPROVER_TOKEN")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("of their own", r.stdout + r.stderr)
        self.assertEqual(self.pending(), [aid], "still waiting")
        ctl("approvals", "deny", aid, token="SLUICE_APPROVER_TOKEN")
        self.assertTrue(self.finish(t, out).startswith("PermissionDeniedError 403"))

    def test_the_bound_on_held_requests_refuses_the_next_one(self):
        t, out = self.ask("first")
        (aid,) = self.wait_pending()
        second = sdk("alice", "try:\n"
                     "    client.models.list()\n"
                     "except openai.APIStatusError as e:\n"
                     "    print(type(e).__name__, e.status_code, json.dumps(e.body))\n", key=self.key)
        self.assertIn("503", second.stdout, second.stdout + second.stderr)
        self.assertIn("approval_queue_full", second.stdout)
        ctl("approvals", "approve", aid, token="SLUICE_APPROVER_TOKEN")
        self.assertEqual(self.finish(t, out), "ok")

    def test_nobody_deciding_blocks_after_the_timeout(self):
        push_rules(held_rules(self.before, timeout=5))
        started = time.time()
        t, out = self.ask("anyone there")
        line = self.finish(t, out)
        self.assertTrue(line.startswith("PermissionDeniedError 403"), line)
        self.assertIn("approval_timeout", line)
        self.assertGreaterEqual(time.time() - started, 5)
        r = ctl("--json", "approvals", "list", "--state", "timeout", token="SLUICE_APPROVER_TOKEN")
        self.assertTrue(json.loads(r.stdout)["approvals"], r.stdout)
