"""End-to-end tests of session recording in the lab, with the official OpenAI Python SDK as
alice: her rule records requests and responses, sealed with age to a key made for the test
(`sluicectl sessions keygen`); `sluicectl sessions show` opens a recording with that key and
not with another; a Responses API chain threads; the prompt is in clear in no file of the lab's
state and no log; replay against a stricter rule file says it would have been blocked.

Expects the lab up and the appliance started (scripts/test does both).
"""

import hashlib
import json
import os
import secrets
import subprocess
import tempfile
import time
import unittest

import test_access
from test_control import ctl, current_rules
from test_dataplane import env, push_rules, wait_for_record
from test_intercept import sdk

WORDS = '"Project Bluebird", "Project Kestrel"'


def recording_rules(rules, public):
    rule = test_access.RULE
    assert rule in rules and "[defaults]\n" in rules
    rules = rules.replace("[defaults]\n", '[defaults]\nrecording_recipients = ["%s"]\n' % public, 1)
    return rules.replace(rule, rule + 'record = "request+response"\n', 1)


class Recording(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="sluice-keys-")
        cls.keys = {}
        for name in ("right", "wrong"):
            path = os.path.join(cls.dir, name + ".txt")
            r = ctl("sessions", "keygen", path, token=None)
            assert r.returncode == 0, r.stderr
            cls.keys[name] = (path, r.stdout.strip())
        assert oct(os.stat(cls.keys["right"][0]).st_mode & 0o777) == "0o600"

    def setUp(self):
        self.before = current_rules()
        push_rules(recording_rules(self.before, self.keys["right"][1]))

    def tearDown(self):
        push_rules(self.before)

    def test_a_recorded_chat_opens_with_the_right_key_only_and_is_nowhere_in_clear(self):
        tag = secrets.token_hex(6)
        phrase = "the quarterly numbers for %s" % tag
        key = "sk-lab-rec-" + tag
        code = ("r = client.chat.completions.create(model='gpt-4o-mini', messages=[{'role':'user','content':%r}])\n"
                "print(r.choices[0].message.content)\n" % phrase)
        r = sdk("alice", code, key=key)
        self.assertEqual(r.returncode, 0, r.stderr)
        fp = "sha256:" + hashlib.sha256(key.encode()).hexdigest()[:12]
        rec = wait_for_record("request", lambda x: x.get("api_key_fp") == fp and x.get("recording"))
        rid = rec["recording"]["id"]
        self.assertNotIn(phrase, json.dumps(rec))
        # Listed (in clear: who, where, when, size), stored once.
        deadline = time.time() + 20
        while time.time() < deadline:
            lst = ctl("--json", "sessions", "list", "--since", "10m", token="SLUICE_ANALYST_TOKEN")
            if rid in lst.stdout:
                break
            time.sleep(0.5)
        self.assertIn(rid, lst.stdout, lst.stdout + lst.stderr)
        shown = ctl("sessions", "show", rid, "--identity", self.keys["right"][0], token="SLUICE_ANALYST_TOKEN")
        self.assertEqual(shown.returncode, 0, shown.stderr)
        self.assertIn(phrase, shown.stdout)
        self.assertIn("< 200", shown.stdout, "the response is recorded too")
        self.assertIn("authorization: [withheld]", shown.stdout.lower())
        self.assertNotIn(key, shown.stdout, "the API key is never recorded")
        wrong = ctl("sessions", "show", rid, "--identity", self.keys["wrong"][0], token="SLUICE_ANALYST_TOKEN")
        self.assertNotEqual(wrong.returncode, 0)
        self.assertNotIn(phrase, wrong.stdout + wrong.stderr)
        self.assertIn("cannot decrypt", wrong.stderr)
        # Nothing of the prompt in clear: the lab's state (both daemons' state directories,
        # spool, flow log, logs). The mock server's own log stands for OpenAI.
        time.sleep(1)
        for root, _, files in os.walk(env()["SLUICE_LAB_STATE"]):
            for name in files:
                if name in ("upstream.jsonl", "upstream.out"):
                    continue
                path = os.path.join(root, name)
                try:
                    with open(path, "rb") as f:
                        data = f.read()
                except OSError:
                    continue
                self.assertNotIn(tag.encode(), data, "the recorded prompt is in clear in %s" % path)

        # Replay against a stricter rule file: the tag becomes a code name DLP blocks.
        strict = current_rules().replace(WORDS, WORDS + ', "%s"' % tag, 1)
        self.assertNotEqual(strict, current_rules())
        with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
            f.write(strict)
        try:
            rep = ctl("sessions", "replay", rid, "--identity", self.keys["right"][0], "--rules", f.name,
                      token="SLUICE_ANALYST_TOKEN")
            same = ctl("sessions", "replay", rid, "--identity", self.keys["right"][0], "--rules",
                       self.rules_file(), token="SLUICE_ANALYST_TOKEN")
        finally:
            os.unlink(f.name)
        self.assertEqual(rep.returncode, 0, rep.stderr)
        self.assertIn("request: block (403 dlp_violation)", rep.stdout)
        self.assertIn("internal_codenames", rep.stdout)
        self.assertEqual(same.returncode, 0, same.stderr)
        self.assertIn("request: allow", same.stdout)

    def test_an_evidence_bundle_holds_recordings_only_when_asked_still_sealed(self):
        tag = secrets.token_hex(6)
        phrase = "the bundle's numbers for %s" % tag
        key = "sk-lab-rec-" + tag
        code = ("r = client.chat.completions.create(model='gpt-4o-mini', messages=[{'role':'user','content':%r}])\n"
                "print(r.choices[0].message.content)\n" % phrase)
        self.assertEqual(sdk("alice", code, key=key).returncode, 0)
        fp = "sha256:" + hashlib.sha256(key.encode()).hexdigest()[:12]
        rid = wait_for_record("request", lambda x: x.get("api_key_fp") == fp and x.get("recording"))["recording"]["id"]
        deadline = time.time() + 20
        while rid not in ctl("--json", "sessions", "list", "--since", "10m").stdout and time.time() < deadline:
            time.sleep(0.5)
        pub = ctl("audit", "key", token="SLUICE_AUDITOR_TOKEN").stdout.strip()
        out = {}
        for name, extra in (("plain", []), ("with", ["--recordings"])):
            path = os.path.join(self.dir, "bundle-%s.tar.zst" % name)
            r = ctl("evidence", "export", "--since", "10m", "--out", path, *extra, token="SLUICE_AUDITOR_TOKEN",
                    timeout=120)
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            v = ctl("evidence", "verify", path, "--key", pub, token=None, timeout=120)
            self.assertEqual(v.returncode, 0, v.stdout + v.stderr)
            unpacked = os.path.join(self.dir, "unpacked-" + name)
            os.makedirs(unpacked, exist_ok=True)
            subprocess.run(["tar", "--zstd", "-xf", path, "-C", unpacked], check=True)
            out[name] = (v.stdout, unpacked)
        self.assertNotIn("recordings:", out["plain"][0])
        self.assertFalse(os.path.exists(os.path.join(out["plain"][1], "recordings.jsonl")))
        self.assertRegex(out["with"][0], r"recordings: [1-9]\d* included")
        with open(os.path.join(out["with"][1], "recordings.jsonl")) as f:
            lines = [json.loads(x) for x in f]
        mine = [x for x in lines if x["id"] == rid]
        self.assertEqual(len(mine), 1, [x["id"] for x in lines])
        # Sealed to the customer's key: the prompt is in clear in neither bundle.
        for _, unpacked in out.values():
            for root, _, files in os.walk(unpacked):
                for name in files:
                    with open(os.path.join(root, name), "rb") as f:
                        self.assertNotIn(tag.encode(), f.read(), name)

    def rules_file(self):
        with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
            f.write(current_rules())
        self.addCleanup(os.unlink, f.name)
        return f.name

    def test_a_responses_chain_is_one_thread(self):
        tag = secrets.token_hex(6)
        key = "sk-lab-thread-" + tag
        code = ("a = client.responses.create(model='gpt-4o-mini', input='first %s')\n"
                "b = client.responses.create(model='gpt-4o-mini', input='second %s', previous_response_id=a.id)\n"
                "c = client.responses.create(model='gpt-4o-mini', input='third %s', previous_response_id=b.id)\n"
                "print(a.id)\n" % (tag, tag, tag))
        r = sdk("alice", code, key=key)
        self.assertEqual(r.returncode, 0, r.stderr)
        first = r.stdout.strip().splitlines()[-1]
        deadline = time.time() + 20
        mine = []
        while time.time() < deadline:
            out = ctl("--json", "sessions", "list", "--since", "10m", token="SLUICE_ANALYST_TOKEN")
            listed = json.loads(out.stdout)["recordings"]
            # The chain is named by its first recording, which answered with `first`.
            head = [x for x in listed if x.get("response") == first]
            mine = [x for x in listed if head and x["thread"] == head[0]["id"]]
            if len(mine) == 3:
                break
            time.sleep(0.5)
        self.assertEqual(len(mine), 3, out.stdout)
        # `sessions thread` finds the chain by the first response's id.
        t = ctl("sessions", "thread", first, "--identity", self.keys["right"][0], token="SLUICE_ANALYST_TOKEN")
        self.assertEqual(t.returncode, 0, t.stderr)
        at = [t.stdout.index("%s %s" % (w, tag)) for w in ("first", "second", "third")]
        self.assertEqual(at, sorted(at), "in order")
