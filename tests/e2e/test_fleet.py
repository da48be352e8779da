"""End-to-end tests of a fleet: two appliances, one control (ARCHITECTURE.md, "The fleet").

The lab's appliance (appl) is linked to control over its Unix socket; the branch appliance
(appl2, in front of carol) over TCP with mutual TLS on its management link, enrolled with
`sluicectl fleet enrol` by `scripts/lab branch start`. One rule push is acknowledged by each
and enforced by both; records, status and metrics are kept per data plane; a revoked branch
is cut off from control and refused when it comes back, while it goes on enforcing the rules
it holds.

Expects the lab up and the appliance started (scripts/test does both).
"""

import json
import os
import subprocess
import unittest

from test_dataplane import ROOT, api, env, lab, on, records, until

PROBE = """
[[category]]
name = "fleet-probe"
domains = ["example.org"]

[[rule]]
name = "fleet-probe-block"
categories = ["fleet-probe"]
action = "block"
"""


def names():
    p = env()["SLUICE_LAB"]
    return "lab-" + p, "branch-" + p


def https_code(host, url="https://example.org/fleet-probe"):
    r = on(host, "curl", "-sS", "-m", "10", "-o", "/dev/null", "-w", "%{http_code}", url)
    return r.stdout.strip()


def status():
    code, body = api("GET", "/v1/status", "SLUICE_ANALYST_TOKEN")
    assert code == 200, body
    return {d["name"]: d for d in json.loads(body)["dataplanes"]}


def sluicectl(*args):
    e = env()
    return subprocess.run([os.path.join(ROOT, "target", "release", "sluicectl"), *args], capture_output=True,
                          text=True, timeout=60,
                          env=dict(os.environ, SLUICE_URL=e["SLUICE_URL"], SLUICE_TOKEN=e["SLUICE_ADMIN_TOKEN"],
                                   SLUICE_CA=e["SLUICE_API_CA"]))


def start_branch():
    # Statistics every 2 s, as the suite's main appliance reports.
    lab("branch", "start", timeout=300, env_extra={"SLUICE_DATAPLANE_ARGS": "--report-interval 2"})


def with_rules_first(text, rules):
    i = text.index("[[rule]]")
    return text[:i] + rules.strip() + "\n\n" + text[i:]


class Fleet(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        start_branch()
        with open(os.path.join(env()["SLUICE_LAB_STATE"], "rules.path")) as f:
            path = f.read().strip()
        with open(path) as f:
            cls.original = f.read()

    @classmethod
    def tearDownClass(cls):
        lab("branch", "stop", check=False)

    def push(self, text):
        code, body = api("PUT", "/v1/rules", "SLUICE_ADMIN_TOKEN", text)
        self.assertEqual(code, 200, body)
        return json.loads(body)

    def test_a_both_appliances_are_linked_one_over_tls(self):
        main, branch = names()
        st = status()
        self.assertTrue(st[main]["connected"] and st[branch]["connected"], st)
        self.assertEqual((st[main]["transport"], st[branch]["transport"]), ("unix", "tls"))
        self.assertTrue(st[branch]["remote"].startswith("10.99."), st[branch])
        self.assertTrue(st[branch]["policy_current"], "the branch enforces control's rules")
        # The branch runs with only its systemd unit's capabilities (scripts/lab branch
        # start): its kernel fast path and interception engine work with them.
        state = env()["SLUICE_LAB_STATE"]
        with open(os.path.join(state, "branch.pid")) as f:
            pid = f.read().strip()
        with open("/proc/%s/status" % pid) as f:
            caps = dict(line.split(":\t", 1) for line in f.read().splitlines() if line.startswith("Cap"))
        # CAP_NET_ADMIN (12), CAP_NET_RAW (13), CAP_BPF (39), and nothing else.
        self.assertEqual(int(caps["CapEff"], 16), (1 << 12) | (1 << 13) | (1 << 39), caps)
        self.assertEqual(int(caps["CapBnd"], 16), (1 << 12) | (1 << 13) | (1 << 39), caps)
        with open(os.path.join(state, "branch.log")) as f:
            started = [l for l in f.read().splitlines() if " forwarding " in l][-1]
        self.assertIn("fast_path=true", started)
        out = sluicectl("fleet", "list").stdout
        self.assertRegex(out, r"(?m)^%s\s.*\byes\s*$" % branch)

    def test_b_one_push_is_acknowledged_by_each_and_enforced_by_both(self):
        main, branch = names()
        self.assertEqual(https_code("bob"), "200")
        self.assertEqual(https_code("carol"), "200")
        reply = self.push(with_rules_first(self.original, PROBE))
        try:
            got = sorted((d["dataplane"], d["status"]) for d in reply["dataplanes"])
            self.assertEqual(got, [(branch, "applied"), (main, "applied")], reply)
            # Acknowledged: the next connection at either site follows the push.
            self.assertEqual(https_code("bob"), "000")
            self.assertEqual(https_code("carol"), "000")
            # Each appliance's records are stored under its own name.
            blocked = until("carol's blocked flow", lambda: [
                r for r in records("flows", "dataplane=%s&src=10.30.1.10&rule=fleet-probe-block" % branch)])
            self.assertEqual(blocked[0]["verdict"], "block", blocked[0])
            self.assertEqual(records("flows", "dataplane=%s&src=10.30.1.10" % main), [],
                             "carol's flows pass the branch only")
            until("bob's blocked flow", lambda: records(
                "flows", "dataplane=%s&src=10.20.2.20&rule=fleet-probe-block" % main))
            st = status()
            self.assertEqual(st[main]["policy_version"], st[branch]["policy_version"])
        finally:
            reply = self.push(self.original)
            self.assertEqual(sorted(d["status"] for d in reply["dataplanes"]), ["applied", "applied"], reply)
        self.assertEqual(https_code("carol"), "200")
        # Status and metrics are per data plane.
        code, metrics = api("GET", "/metrics", "SLUICE_ANALYST_TOKEN")
        self.assertEqual(code, 200)
        for n in (main, branch):
            self.assertIn('sluice_dataplane_connected{dataplane="%s"} 1' % n, metrics)
        until("the branch's stats", lambda: status()[branch].get("stats"))
        code, metrics = api("GET", "/metrics", "SLUICE_ANALYST_TOKEN")
        for n in (main, branch):
            self.assertIn('sluice_packets_total{dataplane="%s"}' % n, metrics)

    def test_c_a_revoked_branch_is_cut_off_and_refused_and_keeps_enforcing(self):
        main, branch = names()
        state = env()["SLUICE_LAB_STATE"]
        log = os.path.join(state, "branch.log")
        with open(log) as f:
            seen = len(f.read())
        r = sluicectl("fleet", "revoke", branch)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("its link was closed", r.stdout)
        until("the branch disconnected", lambda: not status()[branch]["connected"])

        def told():
            with open(log) as f:
                return "its certificate was revoked" in f.read()[seen:]
        until("the branch told why", told)
        # Its next connection, with the same certificate, is refused after the handshake.
        fleet = os.path.join(state, "branch", "fleet")
        with open(os.path.join(state, "control", "link_addr")) as f:
            link = f.read().strip()
        r = on("appl2", "openssl", "s_client", "-connect", link, "-servername", "sluice-control",
               "-CAfile", os.path.join(fleet, "ca.crt"), "-cert", os.path.join(fleet, "dataplane.crt"),
               "-key", os.path.join(fleet, "dataplane.key"), "-verify_return_error", "-quiet", timeout=20)
        self.assertIn("is revoked", r.stdout + r.stderr)
        code, metrics = api("GET", "/metrics", "SLUICE_ANALYST_TOKEN")
        refused = [l for l in metrics.splitlines() if l.startswith("sluice_link_refused_total ")]
        self.assertGreaterEqual(int(refused[0].split()[1]), 1, refused)
        self.assertFalse(status()[branch]["connected"])
        # Cut off from control, it goes on enforcing what it holds: unknown sources (carol)
        # are refused every OpenAI service by the lab's rules, and may reach the rest.
        self.assertIn(https_code("carol", "https://api.openai.com/v1/models"), ("403", "000"))
        self.assertEqual(https_code("carol"), "200")
        last = until("carol's refused API flow", lambda: [
            r for r in local_branch_records() if r.get("type") == "flow" and r.get("src") == "10.30.1.10"
            and r.get("sni") == "api.openai.com"])[-1]
        self.assertEqual(last["action"], "block", last)
        # The main appliance is untouched.
        self.assertTrue(status()[main]["connected"])
        # Enrolled again (as `scripts/lab branch start` does for a revoked name), it is back.
        start_branch()
        self.assertTrue(status()[branch]["connected"])


def local_branch_records():
    """The branch data plane's own flow log."""
    path = os.path.join(env()["SLUICE_LAB_STATE"], "branch", "flows.jsonl")
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


if __name__ == "__main__":
    unittest.main()
