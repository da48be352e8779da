"""End-to-end tests of the evidence (issue 18): the lab's records are chained by the data
plane and checkpointed by control; `sluicectl audit verify` finds a row changed through
`sqlite3` (or `psql`) on the control store, with its position, and exits 1; retention keeps a checkpoint at
its cut, so what is kept still verifies.
"""

import json
import os
import subprocess
import time
import unittest

from test_control import ctl, restart_appliance
from test_dataplane import api, curl, env, flows, wait_for_record
from test_dlp import CARD, chat, send


def postgres():
    """The PostgreSQL connection string of control's store, or None (SQLite files)."""
    path = os.path.join(env()["SLUICE_LAB_STATE"], "control", "store")
    if not os.path.exists(path):
        return None
    return open(path).read().splitlines()[0]


def sql(query):
    """Runs `query` on control's record store, as someone with write access to it would:
    `sqlite3` on its file, or `psql` on its PostgreSQL server. Returns the last statement's
    output; an UPDATE returns the number of rows it changed."""
    pg = postgres()
    if pg is None:
        if query.startswith("UPDATE"):
            query += "; SELECT changes();"
        path = os.path.join(env()["SLUICE_LAB_STATE"], "control", "state", "flows.db")
        args = ["sqlite3", "-cmd", ".timeout 5000", path, query]
    else:
        if query.startswith("UPDATE"):
            query = "WITH changed AS (%s RETURNING 1) SELECT count(*) FROM changed" % query
        args = ["psql", "-X", pg, "-v", "ON_ERROR_STOP=1", "-qAt", "-c", query]
    r = subprocess.run(args, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def verify(*args):
    return ctl("audit", "verify", *args, token="SLUICE_AUDITOR_TOKEN", timeout=120)


def probe_flows(n, path):
    """`n` flows from alice, stored: returns their records."""
    since = int(time.time() * 1000) - 1000
    for i in range(n):
        curl("alice", "http://example.org/%s-%d" % (path, i), "-o", "/dev/null")
    deadline = time.time() + 30
    while time.time() < deadline:
        code, body = api("GET", "/v1/flows?src=10.20.1.10&since=%d&limit=1000" % since, "SLUICE_AUDITOR_TOKEN")
        assert code == 200, body
        got = [r for r in json.loads(body)["records"] if r.get("dport") == 80 and r.get("event") == "end"]
        if len(got) >= n:
            return got
        time.sleep(0.5)
    raise AssertionError("the probe flows were not stored")


class Verify(unittest.TestCase):
    def test_a_row_changed_in_the_store_is_found_with_its_position(self):
        flows = probe_flows(5, "evidence")
        self.assertTrue(all("chain" in r and "prev" in r for r in flows), flows[0])
        time.sleep(6)  # a checkpoint (every 5 s in the lab)
        r = verify()
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("clean", r.stdout)
        self.assertRegex(r.stdout, r"dp:\S+ \(data plane \S+\): \d+ records, positions \d+\.\.\d+, [1-9]\d* checkpoints matched")
        # The auditor sees the key; an analyst may not verify.
        key = ctl("audit", "key", token="SLUICE_ANALYST_TOKEN")
        self.assertEqual((key.returncode, len(key.stdout.strip())), (0, 64), key.stderr)
        self.assertEqual(verify("--key", key.stdout.strip()).returncode, 0)
        self.assertEqual(ctl("audit", "verify", token="SLUICE_ANALYST_TOKEN").returncode, 1)

        # Someone with write access to the store turns an allowed flow into a blocked one.
        n = flows[2]["chain"]
        row = sql("SELECT id FROM flows WHERE cn = %d AND ce = (SELECT MAX(epoch) FROM chain_heads)" % n)
        tampered = sql("UPDATE flows SET record = replace(record, '\"verdict\":\"allow\"', '\"verdict\":\"bl0ck\"') "
                       "WHERE id = %s" % row)
        self.assertEqual(tampered, "1")
        try:
            r = verify()
            self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
            self.assertIn("CHANGED at %d (flows:%s)" % (n, row), r.stdout)
            # The same over the API, for scripts.
            code, body = api("GET", "/v1/audit/verify", "SLUICE_AUDITOR_TOKEN")
            self.assertEqual(code, 200, body)
            self.assertFalse(json.loads(body)["clean"])
        finally:
            sql("UPDATE flows SET record = replace(record, '\"verdict\":\"bl0ck\"', '\"verdict\":\"allow\"') WHERE id = %s" % row)
        r = verify()
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)


def offline(*args):
    """sluicectl with no daemon to reach: no URL, no token."""
    from test_control import SLUICECTL
    run_env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
    return subprocess.run([SLUICECTL, *args], capture_output=True, text=True, timeout=120, env=run_env)


def repack(src, dst, change=None):
    """Unpacks bundle `src` with tar and zstd, lets `change(dir)` edit its files, packs it
    again as `dst` in the manifest's order (manifest first)."""
    work = dst + ".d"
    subprocess.run(["rm", "-rf", work], check=True)
    os.makedirs(work)
    subprocess.run(["tar", "--zstd", "-xf", src, "-C", work], check=True)
    if change:
        change(work)
    with open(os.path.join(work, "manifest.json")) as f:
        names = [e["name"] for e in json.load(f)["files"]]
    present = [n for n in names if os.path.exists(os.path.join(work, n))]
    subprocess.run(["tar", "--zstd", "-cf", dst, "-C", work, "manifest.json", "manifest.sig", *present], check=True)


class Export(unittest.TestCase):
    def test_a_bundle_exports_verifies_offline_and_any_change_to_it_is_found(self):
        since = int(time.time() * 1000) - 1000
        flows = probe_flows(4, "export")
        key = ctl("audit", "key", token="SLUICE_AUDITOR_TOKEN").stdout.strip()
        out = os.path.join(env()["SLUICE_LAB_STATE"], "evidence")
        subprocess.run(["rm", "-rf", out], check=True)
        os.makedirs(out)
        bundle = os.path.join(out, "bundle.tar.zst")
        r = ctl("evidence", "export", "--since", str(since), "--out", bundle, token="SLUICE_AUDITOR_TOKEN", timeout=120)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        # An analyst sees records but no evidence.
        r = ctl("evidence", "export", "--since", str(since), "--out", bundle + ".no", token="SLUICE_ANALYST_TOKEN")
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertFalse(os.path.exists(bundle + ".no"))

        # Offline, no daemon: clean, with the pinned key; the chains alone too.
        r = offline("evidence", "verify", bundle, "--key", key)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("clean", r.stdout)
        self.assertRegex(r.stdout, r"\d+ records \(0 in no chain")
        r = offline("audit", "verify", "--bundle", bundle, "--key", key)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        r = offline("evidence", "verify", bundle, "--key", "ab" * 32)
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn("not the pinned", r.stdout)

        # What it holds: the probe's records, the summary and its page, the rules in force
        # with this data plane's acknowledgement; no secret.
        work = os.path.join(out, "plain")
        repack(bundle, os.path.join(out, "same.tar.zst"))
        os.rename(os.path.join(out, "same.tar.zst.d"), work)
        with open(os.path.join(work, "records.jsonl")) as f:
            records = [json.loads(l) for l in f]
        seqs = {(r["dataplane"], r["seq"]) for r in records if r.get("type") == "flow"}
        self.assertTrue({(r["dataplane"], r["seq"]) for r in flows} <= seqs, flows)
        with open(os.path.join(work, "summary.json")) as f:
            summary = json.load(f)
        self.assertGreaterEqual(summary["flows"], 4)
        with open(os.path.join(work, "summary.html")) as f:
            self.assertIn("Sluice evidence summary", f.read())
        with open(os.path.join(work, "rules", "versions.json")) as f:
            versions = json.load(f)
        self.assertTrue(versions and versions[-1]["acknowledgements"], versions)
        self.assertEqual(versions[-1]["acknowledgements"][-1]["status"], "applied")
        everything = subprocess.run(["cat"] + [os.path.join(dp, f) for dp, _, fs in os.walk(work) for f in fs],
                                    capture_output=True).stdout
        for secret in ("SLUICE_ADMIN_TOKEN", "SLUICE_AUDITOR_TOKEN"):
            self.assertNotIn(env()[secret].encode(), everything)
        # Packed again unchanged by tar: still clean (the check reads files, not bytes of one
        # archive).
        r = offline("evidence", "verify", os.path.join(out, "same.tar.zst"), "--key", key)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)

        # A flow's verdict changed in the bundle: found, exit 1.
        def block_one(d):
            p = os.path.join(d, "records.jsonl")
            with open(p) as f:
                text = f.read()
            with open(p, "w") as f:
                f.write(text.replace('"verdict":"allow"', '"verdict":"block"', 1))
        tampered = os.path.join(out, "tampered.tar.zst")
        repack(bundle, tampered, block_one)
        r = offline("evidence", "verify", tampered, "--key", key)
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn("records.jsonl: its hash", r.stdout)
        # A file removed: found.
        removed = os.path.join(out, "removed.tar.zst")
        repack(bundle, removed, lambda d: os.remove(os.path.join(d, "checkpoints.jsonl")))
        r = offline("evidence", "verify", removed, "--key", key)
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn("checkpoints.jsonl: listed in the manifest, missing", r.stdout)
        r = offline("audit", "verify", "--bundle", removed, "--key", key)
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)


class Retention(unittest.TestCase):
    @classmethod
    def tearDownClass(cls):
        restart_appliance()

    def test_retention_keeps_a_checkpoint_at_the_cut(self):
        probe_flows(6, "retention")
        # Control restarted keeping 5 records a kind: its first round of retention runs at once.
        restart_appliance(SLUICE_RETENTION_MAX_ROWS="5")
        deadline = time.time() + 30
        while time.time() < deadline:
            code, body = api("GET", "/v1/status", "SLUICE_AUDITOR_TOKEN")
            if json.loads(body)["stored"]["flows"] <= 20:
                break
            time.sleep(1)
        r = verify()
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("verified from the checkpoint at", r.stdout)



class Salt(unittest.TestCase):
    """The DLP salt is the deployment's: a secret hashes the same across a restart of the
    appliance, and differently once an admin rotates the salt."""

    def connected_with_salt(self, salt):
        deadline = time.time() + 30
        while time.time() < deadline:
            code, body = api("GET", "/v1/status", "SLUICE_AUDITOR_TOKEN")
            want = "lab-" + env()["SLUICE_LAB"]
            dps = [d for d in json.loads(body)["dataplanes"] if d["name"] == want] if code == 200 else []
            if dps and dps[0]["connected"] and dps[0].get("dlp_salt") == salt:
                return
            time.sleep(0.5)
        raise AssertionError("the data plane did not take salt %s: %s" % (salt, body))

    def card(self):
        """Sends a card from alice: (the salt its record names, the card's hashes)."""
        def is_card(r):
            return r.get("type") == "request" and any(
                f["detector"] == "credit_card" for f in r.get("dlp_findings", []))
        # The card sent just before (under the other salt) may be younger than any margin
        # of time: the new record is the one that was not there before.
        before = {json.dumps(r, sort_keys=True) for r in flows() if is_card(r)}
        r = send("alice", "/v1/chat/completions", chat("salt test, card " + CARD))
        self.assertEqual(r["status"], 403, r)
        rec = wait_for_record("request", lambda r: is_card(r) and json.dumps(
            r, sort_keys=True) not in before)
        found = next(f for f in rec["dlp_findings"] if f["detector"] == "credit_card")
        self.assertEqual(len(found["hashes"]), 1, rec)
        return rec["dlp_salt"], found["hashes"][0]

    def salts(self):
        r = ctl("--json", "keys", "salt", token="SLUICE_AUDITOR_TOKEN")
        self.assertEqual(r.returncode, 0, r.stderr)
        return json.loads(r.stdout)["salts"]

    def test_a_secret_hashes_alike_across_a_restart_and_apart_after_a_rotation(self):
        first = self.salts()[0]
        self.assertIsNone(first["retired_ms"])
        self.connected_with_salt(first["id"])
        salt, hashed = self.card()
        self.assertEqual(salt, first["id"])
        restart_appliance()
        self.connected_with_salt(first["id"])
        self.assertEqual(self.card(), (salt, hashed), "the same secret, the same salt, the same hash")
        # Only an admin rotates; an auditor may only list.
        self.assertEqual(ctl("keys", "rotate-salt", token="SLUICE_AUDITOR_TOKEN").returncode, 1)
        r = ctl("keys", "rotate-salt")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        now = self.salts()
        self.assertEqual([now[0]["retired_ms"] is None, now[1]["id"]], [True, first["id"]])
        self.assertIsNotNone(now[1]["retired_ms"])
        self.assertIn("%s in force; %s destroyed" % (now[0]["id"], first["id"]), r.stdout)
        self.connected_with_salt(now[0]["id"])
        salt2, hashed2 = self.card()
        self.assertEqual(salt2, now[0]["id"])
        self.assertNotEqual(hashed2, hashed)
        code, body = api("GET", "/v1/audit?limit=20", "SLUICE_AUDITOR_TOKEN")
        self.assertEqual(code, 200, body)
        self.assertIn("dlp.salt.rotate", body)
        self.assertIn("%s replaces %s (destroyed)" % (now[0]["id"], first["id"]), body)


if __name__ == "__main__":
    unittest.main()
