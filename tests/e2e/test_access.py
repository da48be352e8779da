"""End-to-end tests of accountable access in the lab (issue: access), with the official OpenAI
Python SDK as alice: the appliance holds the provider key (brokering), virtual keys name their
users, a real key from a client is refused, rotation applies to the next request, and the real
key is written nowhere: not in a log, a record, a spool file, the state directories or an API
answer.

Expects the lab up and the appliance started (scripts/test does both).
"""

import hashlib
import json
import os
import secrets
import tempfile
import time
import unittest

from test_control import ctl, current_rules
from test_dataplane import api, env, lab, push_rules, restarted_with_stats, start_appliance, wait_for_record
from test_intercept import sdk, upstream

RULE = 'name = "finance-openai-inspect"\n'


def with_broker(rules, extra='broker_key = "openai-prod"\n'):
    assert RULE in rules, "the default rules name alice's inspect rule"
    return rules.replace(RULE, RULE + extra, 1)


def models(key, tag):
    """alice lists models with `key` (the SDK's api_key), tagged so the mock's log tells this
    call from others; the SDK's exit status and output."""
    code = ("try:\n"
            "    client.models.list(extra_query={'tag': %r})\n"
            "    print('ok')\n"
            "except openai.APIStatusError as e:\n"
            "    print(type(e).__name__, e.status_code, json.dumps(e.body))\n" % tag)
    return sdk("alice", code, key=key)


def seen(tag):
    """The mock's log entries of the call tagged `tag`."""
    return [e for e in upstream("api.openai.com") if ("tag=" + tag) in e["path"]]


class Brokering(unittest.TestCase):

    def setUp(self):
        self.real = "sk-proj-LAB" + secrets.token_hex(20)
        self.set_key(self.real)
        self.before = current_rules()
        push_rules(with_broker(self.before))

    def tearDown(self):
        push_rules(self.before)
        ctl("keys", "rm", "openai-prod")

    def set_key(self, key):
        with tempfile.NamedTemporaryFile("w", suffix=".key", delete=False) as f:
            f.write(key + "\n")
        try:
            r = ctl("keys", "set", "openai-prod", "--from-file", f.name)
        finally:
            os.unlink(f.name)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("applied", r.stdout)

    def test_a_placeholder_reaches_the_server_as_the_real_key_written_nowhere(self):
        tag = secrets.token_hex(6)
        placeholder = "placeholder-" + tag
        r = models(placeholder, tag)
        self.assertEqual(r.stdout.strip(), "ok", r.stdout + r.stderr)
        got = seen(tag)
        self.assertEqual(len(got), 1, got)
        self.assertEqual(got[0]["headers"]["authorization"], "Bearer " + self.real)
        self.assertNotIn(placeholder, json.dumps(got))
        fp = "sha256:" + hashlib.sha256(placeholder.encode()).hexdigest()[:12]
        rec = wait_for_record("request", lambda r: r.get("api_key_fp") == fp)
        self.assertEqual(rec["broker_key"], "openai-prod")
        # The real key in no file of the lab's state (control's and the data plane's state
        # directories, logs, flow log, spool), no record and no API answer. (The mock
        # server's own log, which stands for OpenAI, holds what it received.)
        time.sleep(1)
        state = env()["SLUICE_LAB_STATE"]
        needle = self.real.encode()
        for root, _, files in os.walk(state):
            for name in files:
                if name == "upstream.jsonl":
                    continue
                path = os.path.join(root, name)
                try:
                    with open(path, "rb") as f:
                        data = f.read()
                except OSError:
                    continue
                self.assertNotIn(needle, data, "the real key is in %s" % path)
        for path, token in (("/v1/keys", "SLUICE_ADMIN_TOKEN"), ("/v1/requests?limit=50", "SLUICE_ANALYST_TOKEN"),
                            ("/v1/status", "SLUICE_ANALYST_TOKEN"), ("/v1/audit", "SLUICE_ADMIN_TOKEN")):
            code, body = api("GET", path, token)
            self.assertEqual(code, 200, body)
            self.assertNotIn(self.real, body, path)
        self.assertNotIn(self.real, lab("flows").stdout)
        r = ctl("keys", "list")
        self.assertIn("openai-prod", r.stdout)
        self.assertNotIn(self.real, r.stdout + r.stderr)

    def test_rotation_applies_to_the_next_request(self):
        tag = secrets.token_hex(6)
        self.assertEqual(models("placeholder", tag).stdout.strip(), "ok")
        rotated = "sk-proj-ROT" + secrets.token_hex(20)
        self.set_key(rotated)
        tag2 = secrets.token_hex(6)
        self.assertEqual(models("placeholder", tag2).stdout.strip(), "ok")
        self.assertEqual(seen(tag)[0]["headers"]["authorization"], "Bearer " + self.real)
        self.assertEqual(seen(tag2)[0]["headers"]["authorization"], "Bearer " + rotated)

    def test_a_virtual_key_names_its_user(self):
        r = ctl("keys", "issue", "--user", "alice@corp", "--identity", "finance")
        self.assertEqual(r.returncode, 0, r.stderr)
        key = r.stdout.strip().splitlines()[0]
        self.assertTrue(key.startswith("svk-"), r.stdout)
        tag = secrets.token_hex(6)
        self.assertEqual(models(key, tag).stdout.strip(), "ok")
        self.assertEqual(seen(tag)[0]["headers"]["authorization"], "Bearer " + self.real)
        fp = "sha256:" + hashlib.sha256(key.encode()).hexdigest()[:12]
        rec = wait_for_record("request", lambda r: r.get("api_key_fp") == fp and r.get("virtual_key"))
        self.assertEqual(rec["user"], "alice@corp")
        self.assertTrue(rec["virtual_key"].startswith("vk_"), rec)
        self.assertNotIn(key, json.dumps(rec))
        # Revoked: the key is only a placeholder again (its record names no user).
        self.assertEqual(ctl("keys", "revoke", rec["virtual_key"]).returncode, 0)
        revoked_ms = time.time() * 1000
        self.assertEqual(models(key, secrets.token_hex(6)).stdout.strip(), "ok")
        after = wait_for_record("request", lambda r: r.get("api_key_fp") == fp and r["ts_ms"] > revoked_ms)
        self.assertIsNone(after.get("virtual_key"))
        self.assertNotEqual(after.get("user"), "alice@corp")

    def test_a_real_provider_key_from_the_client_is_refused(self):
        tag = secrets.token_hex(6)
        r = models("sk-proj-" + secrets.token_hex(24), tag)
        self.assertTrue(r.stdout.startswith("PermissionDeniedError 403"), r.stdout + r.stderr)
        self.assertIn("real_key_refused", r.stdout)
        self.assertEqual(seen(tag), [], "a refused request reached the server")



class Usage(unittest.TestCase):
    """Token usage read from the model's answers (JSON, a stream with include_usage, the
    Responses API) lands in request records and adds up in GET /v1/usage and `sluicectl
    usage`, matching what the mock answered."""

    def test_tokens_are_recorded_and_add_up(self):
        since = int(time.time() * 1000)
        tag = secrets.token_hex(4)
        words = "count these five words %s" % tag
        code = ("r = client.chat.completions.create(model='gpt-4o-mini', messages=[{'role':'user','content':%r}])\n"
                "print(json.dumps(r.usage.model_dump()))\n"
                "s = client.chat.completions.create(model='gpt-4o-mini', messages=[{'role':'user','content':%r}],\n"
                "    stream=True, stream_options={'include_usage': True})\n"
                "print(json.dumps([c.usage.model_dump() for c in s if c.usage]))\n"
                "r = client.responses.create(model='gpt-4o-mini', input='hi')\n"
                "print(json.dumps(r.usage.model_dump()))\n" % (words, words))
        key = "sk-lab-usage-" + tag
        r = sdk("alice", code, key=key)
        self.assertEqual(r.returncode, 0, r.stderr)
        chat, streamed, responses = (json.loads(line) for line in r.stdout.strip().splitlines()[-3:])
        self.assertEqual((chat["prompt_tokens"], chat["completion_tokens"]), (5, 4))
        self.assertEqual(streamed[0]["prompt_tokens"], 5)
        fp = "sha256:" + hashlib.sha256(key.encode()).hexdigest()[:12]
        deadline, mine = time.time() + 20, []
        while time.time() < deadline and len(mine) < 3:
            mine = [x for x in (json.loads(l) for l in lab("flows").stdout.splitlines() if l.strip())
                    if x.get("type") == "request" and x.get("api_key_fp") == fp]
            time.sleep(0.5)
        got = sorted((x["path"], x.get("input_tokens"), x.get("output_tokens")) for x in mine)
        self.assertEqual(got, [("/v1/chat/completions", 5, 4), ("/v1/chat/completions", 5, 4),
                               ("/v1/responses", 3, 4)])
        # The store adds them up (with whatever else alice asked since).
        deadline = time.time() + 20
        while time.time() < deadline:
            code_, body = api("GET", "/v1/usage?by=model&since=%d" % since, "SLUICE_ANALYST_TOKEN")
            self.assertEqual(code_, 200, body)
            rows = {row["key"]: row for row in json.loads(body)["rows"]}
            if rows.get("gpt-4o-mini", {}).get("requests", 0) >= 3:
                break
            time.sleep(0.5)
        row = rows["gpt-4o-mini"]
        self.assertGreaterEqual((row["input_tokens"], row["output_tokens"]), (13, 12), row)
        out = ctl("usage", "--by", "identity", "--since", "10m", token="SLUICE_ANALYST_TOKEN")
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertRegex(out.stdout, r"finance\s+\d+\s+\d+\s+\d+")


class Quotas(unittest.TestCase):
    """A token budget per virtual key (each test run issues its own key, so its budget starts
    at zero): the request past it gets 429, which the SDK raises as RateLimitError with
    `retry-after` and `x-should-retry: true`; the budget holds across a restart of the
    appliance (control seeds the counts from its store and pushes them); the usage API adds up
    what the mock answered."""

    def setUp(self):
        Brokering.set_key(self, "sk-proj-QUOTA" + secrets.token_hex(20))
        self.before = current_rules()
        self.rules = with_broker(self.before, 'broker_key = "openai-prod"\n'
                                              'quota = { by = "key", tokens_per_day = 20 }\n')
        push_rules(self.rules)
        r = ctl("keys", "issue", "--user", "alice@corp", "--identity", "finance")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.key = r.stdout.strip().splitlines()[0]

    def tearDown(self):
        push_rules(self.before)
        ctl("keys", "rm", "openai-prod")

    def chat(self, n):
        """alice asks `n` times (5 words: the mock answers 5 input and 4 output tokens); one
        line per call: `ok`, or the error's class, status, headers and body."""
        code = ("for i in range(%d):\n"
                "    try:\n"
                "        client.chat.completions.create(model='gpt-4o-mini', messages=[{'role':'user','content':'one two three four five'}])\n"
                "        print('ok')\n"
                "    except openai.APIStatusError as e:\n"
                "        print(type(e).__name__, e.status_code, json.dumps(dict(e.response.headers)), json.dumps(e.body), sep='\\t')\n" % n)
        r = sdk("alice", code, key=self.key)
        self.assertEqual(r.returncode, 0, r.stderr)
        return r.stdout.strip().splitlines()

    def test_the_request_past_the_budget_is_refused_until_the_window_ends(self):
        got = self.chat(4)
        # 0, 9 and 18 tokens used are under 20: three complete; at 27 the fourth is refused.
        self.assertEqual(got[:3], ["ok"] * 3, got)
        name, status, headers, body = got[3].split("\t")
        self.assertEqual((name, status), ("RateLimitError", "429"), got[3])
        headers, body = json.loads(headers), json.loads(body)
        self.assertEqual(headers["x-should-retry"], "true")
        self.assertTrue(0 < int(headers["retry-after"]) <= 86400, headers)
        self.assertEqual(body["code"], "quota_exceeded")
        self.assertIn("27 of 20 tokens this day", body["message"])
        rec = wait_for_record("request", lambda r: r.get("code") == "quota_exceeded" and r.get("user") == "alice@corp")
        self.assertEqual(rec["status"], 429)
        vk = rec["virtual_key"]
        # The usage API adds up what the mock answered: 3 x (5 in, 4 out).
        deadline = time.time() + 20
        while time.time() < deadline:
            code_, body_ = api("GET", "/v1/usage?by=virtual_key&since=1h", "SLUICE_ANALYST_TOKEN")
            rows = {row["key"]: row for row in json.loads(body_)["rows"]}
            if rows.get(vk, {}).get("output_tokens") == 12:
                break
            time.sleep(0.5)
        self.assertEqual((rows[vk]["input_tokens"], rows[vk]["output_tokens"]), (15, 12), rows.get(vk))
        # Prometheus has the same.
        code_, metrics = api("GET", "/metrics", "SLUICE_ANALYST_TOKEN")
        self.assertEqual(code_, 200)
        self.assertRegex(metrics, r'sluice_usage_tokens_total\{identity="finance",user="alice@corp",model="gpt-4o-mini",kind="output"\} \d+')
        # The budget outlives a restart of the appliance: control pushes the day's counts.
        # (`lab start` gives control the lab's rule file: the budget's rule is pushed again.)
        start_appliance()
        restarted_with_stats(time.time() * 1000)
        push_rules(self.rules)
        again = self.chat(1)
        self.assertTrue(again[0].startswith("RateLimitError\t429"), again)
