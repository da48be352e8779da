"""End-to-end tests of the control plane the lab starts beside the data plane: tokens and
roles, rule pushes enforced by the data plane, the identity feed, records that survive a
restart of control, the syslog export, and sluicectl against the real daemon.
"""

import json
import os
import random
import secrets
import socket
import subprocess
import threading
import time
import unittest

from test_dataplane import ROOT, api, curl, env, local_records, push_rules, start_appliance

SLUICECTL = os.path.join(ROOT, "target", "release", "sluicectl")


def ctl(*args, token="SLUICE_ADMIN_TOKEN", timeout=60):
    e = env()
    run_env = dict(os.environ, SLUICE_URL=e["SLUICE_URL"], SLUICE_CA=e["SLUICE_API_CA"])
    run_env.pop("SLUICE_TOKEN", None)
    if token:
        run_env["SLUICE_TOKEN"] = e[token]
    return subprocess.run([SLUICECTL, *args], capture_output=True, text=True, timeout=timeout, env=run_env)


def current_rules():
    code, body = api("GET", "/v1/rules", "SLUICE_ANALYST_TOKEN")
    assert code == 200, body
    return json.loads(body)["text"]


def status():
    code, body = api("GET", "/v1/status", "SLUICE_ANALYST_TOKEN")
    assert code == 200, body
    return json.loads(body)


# Requests guest makes while the feed places it in finance carry this marker, so tests that
# check guest never reached the API can tell them apart.
FED = "identity-feed-test"


def models(host, query=""):
    """HTTP status of GET /v1/models from a client ("000" when the connection was refused)."""
    r = curl(host, "https://api.openai.com/v1/models" + query, "-o", "/dev/null", "-w", "%{http_code}")
    return r.stdout.strip() or "000"


def restart_appliance(**extra_env):
    """`scripts/lab start` again with the suite's data-plane flags, plus `extra_env` (e.g. a
    syslog target for control)."""
    start_appliance(**extra_env)


BLOCK_BOB = """
[[rule]]
name = "block-bob-openai"
identities = ["engineering"]
categories = ["openai-api"]
action = "block"
"""


def with_rule_first(text, rule):
    i = text.index("[[rule]]")
    return text[:i] + rule.strip() + "\n\n" + text[i:]


class ControlApi(unittest.TestCase):
    def test_tokens_roles_and_rule_versions(self):
        self.assertEqual(api("GET", "/v1/health")[0], 401)
        self.assertEqual(api("GET", "/v1/flows")[0], 401)
        code, body = api("GET", "/v1/health", "SLUICE_FEEDER_TOKEN")
        self.assertEqual(code, 200, body)
        rules = current_rules()
        self.assertEqual(api("PUT", "/v1/rules", "SLUICE_ANALYST_TOKEN", rules)[0], 403)
        self.assertEqual(api("GET", "/v1/flows", "SLUICE_FEEDER_TOKEN")[0], 403)
        self.assertEqual(api("PUT", "/v1/identities/10.20.9.99", "SLUICE_ANALYST_TOKEN", '{"user": "x"}')[0], 403)
        code, body = api("GET", "/v1/ca.pem", "SLUICE_ANALYST_TOKEN")
        self.assertIn("BEGIN CERTIFICATE", body)
        self.assertNotIn("PRIVATE KEY", body)
        code, body = api("GET", "/v1/openapi.json", "SLUICE_ANALYST_TOKEN")
        self.assertEqual(code, 200)
        self.assertIn("/v1/identities/{ip}", json.loads(body)["paths"])

    def test_sluicectl_without_or_with_a_wrong_token_is_refused(self):
        r = ctl("status", token=None)
        self.assertEqual(r.returncode, 2)
        self.assertIn("SLUICE_TOKEN", r.stderr)
        r = subprocess.run([SLUICECTL, "status"], capture_output=True, text=True, timeout=30,
                           env=dict(os.environ, SLUICE_URL=env()["SLUICE_URL"], SLUICE_CA=env()["SLUICE_API_CA"],
                                    SLUICE_TOKEN="not-a-token"))
        self.assertEqual(r.returncode, 1)
        self.assertIn("HTTP 401", r.stderr)
        self.assertNotIn("not-a-token", r.stderr + r.stdout)
        r = ctl("rules", "push", os.path.join(ROOT, "rules", "default.toml"), token="SLUICE_ANALYST_TOKEN")
        self.assertEqual(r.returncode, 1)
        self.assertIn("HTTP 403", r.stderr)


class Follow:
    """`sluicectl tail --json ARGS` in the background: the records it prints gather in `got`;
    `stop()` ends it and gives its standard error."""

    def __init__(self, *args):
        e = env()
        self.p = subprocess.Popen([SLUICECTL, "tail", "--json", *args],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  env=dict(os.environ, SLUICE_URL=e["SLUICE_URL"], SLUICE_CA=e["SLUICE_API_CA"],
                                           SLUICE_TOKEN=e["SLUICE_ANALYST_TOKEN"]))
        self.got = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        time.sleep(1)  # subscribed

    def _read(self):
        for line in self.p.stdout:
            self.got.append(json.loads(line))

    def stop(self):
        self.p.terminate()
        self.p.wait(timeout=10)
        self.reader.join(timeout=10)
        err = self.p.stderr.read()
        self.p.stdout.close()
        self.p.stderr.close()
        return err


class Tail(unittest.TestCase):
    def test_sluicectl_tail_follows_new_records(self):
        tail = Follow("--type", "flow", "--src", "10.20.2.20")
        got = tail.got
        try:
            deadline = time.time() + 25
            while time.time() < deadline and not any(r.get("dport") == 80 for r in got):
                curl("bob", "http://example.org/tail-probe", "-o", "/dev/null")
                time.sleep(2)
        finally:
            err = tail.stop()
        self.assertTrue(any(r.get("dport") == 80 for r in got), err)
        self.assertTrue(all(r["type"] == "flow" and r["src"] == "10.20.2.20" for r in got), got)
        self.assertTrue(all(r.get("dataplane") for r in got), "tail records name their data plane")

    def test_jsonl_export_pages_with_a_cursor_header(self):
        e = env()
        args = ["curl", "-sS", "-D", "-", "--cacert", e["SLUICE_API_CA"], "-H", "Authorization: Bearer " + e["SLUICE_ANALYST_TOKEN"]]
        r = subprocess.run(args + [e["SLUICE_URL"] + "/v1/flows?format=jsonl&limit=2"], capture_output=True, text=True, timeout=30)
        head, _, body = r.stdout.partition("\n\n")
        self.assertIn("content-type: application/x-ndjson", head.lower())
        lines = body.splitlines()
        self.assertEqual(len(lines), 2)
        self.assertTrue(all(json.loads(x)["type"] == "flow" for x in lines))
        cursor = [h.split(":", 1)[1].strip() for h in head.splitlines() if h.lower().startswith("x-next-cursor:")]
        self.assertTrue(cursor, head)
        r = subprocess.run(args + [e["SLUICE_URL"] + "/v1/flows?format=jsonl&limit=2&cursor=" + cursor[0]],
                           capture_output=True, text=True, timeout=30)
        more = r.stdout.partition("\n\n")[2].splitlines()
        self.assertTrue(more and not set(more) & set(lines), "the next page continues after the first")
        self.assertEqual(api("GET", "/v1/flows?format=xml", "SLUICE_ANALYST_TOKEN")[0], 400)

    def test_rules_show_prints_the_current_text(self):
        r = ctl("rules", "show", token="SLUICE_ANALYST_TOKEN")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout, current_rules())
        self.assertIn("# version", r.stderr)


class RulePush(unittest.TestCase):
    """Rule sets pushed with sluicectl are enforced by the data plane before the push returns."""

    def setUp(self):
        self.original = current_rules()
        self.path = os.path.join(env()["SLUICE_LAB_STATE"], "pushed.toml")

    def tearDown(self):
        push_rules(self.original)

    def push(self, text):
        with open(self.path, "w") as f:
            f.write(text)
        return ctl("rules", "push", self.path)

    def test_push_blocks_bob_at_his_next_connection(self):
        self.assertEqual(models("bob"), "200")
        t0 = time.time()
        r = self.push(with_rule_first(self.original, BLOCK_BOB))
        took = time.time() - t0
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("applied", r.stdout)
        # The push returned once the data plane acknowledged: the very next connection follows it.
        self.assertIn(models("bob"), ("403", "000"))
        print("\n  push acknowledged by the data plane in %.0f ms" % (took * 1000))
        self.assertEqual(models("alice"), "200", "alice's rule is unchanged")
        hist = ctl("rules", "history", "--json")
        self.assertEqual(json.loads(hist.stdout)[0]["note"], "push")
        # Roll back to the version before: bob is allowed again.
        versions = [h["version"] for h in json.loads(hist.stdout)]
        r = ctl("rules", "rollback", str(versions[1]))
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(models("bob"), "200")
        d = ctl("rules", "diff", str(versions[1]), str(versions[0]))
        self.assertEqual(d.returncode, 0, d.stderr)
        self.assertIn("block-bob-openai", d.stdout)

    def test_established_connections_keep_their_verdict(self):
        script = ("import http.client, sys\n"
                  "c = http.client.HTTPSConnection('api.openai.com', timeout=10)\n"
                  "for _ in range(2):\n"
                  "    c.request('GET', '/v1/models'); r = c.getresponse(); r.read()\n"
                  "    print(r.status, flush=True)\n"
                  "    sys.stdin.readline()\n")
        p = subprocess.Popen([os.path.join(ROOT, "scripts", "lab"), "exec", "bob", "--", "python3", "-c", script],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            self.assertEqual(p.stdout.readline().strip(), "200")
            r = self.push(with_rule_first(self.original, BLOCK_BOB))
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn(models("bob"), ("403", "000"), "a new connection follows the new rules")
            p.stdin.write("\n")
            p.stdin.flush()
            self.assertEqual(p.stdout.readline().strip(), "200", "the open connection kept its verdict")
            p.stdin.write("\n")
            p.stdin.flush()
        finally:
            out, err = p.communicate(timeout=30)
        self.assertEqual(p.returncode, 0, err)

    def test_broken_push_is_refused_with_line_and_column_and_changes_nothing(self):
        before = status()["rules_version"]
        broken = self.original + '\n[[rule]]\nname = "x"\ncategories = ["nope"]\naction = "allow"\n'
        r = self.push(broken)
        self.assertEqual(r.returncode, 1)
        self.assertIn("HTTP 422", r.stderr)
        line = broken[: broken.index('["nope"]')].count("\n") + 1
        self.assertRegex(r.stderr, r"pushed\.toml:%d:\d+: .*nope" % line)
        self.assertEqual(status()["rules_version"], before)
        self.assertEqual(models("alice"), "200")
        self.assertIn(models("guest"), ("403", "000"), "the old rules still hold")
        code, body = api("GET", "/v1/audit", "SLUICE_ADMIN_TOKEN")
        self.assertIn("rules.push.refused", [a["action"] for a in json.loads(body)])


class IdentityFeed(unittest.TestCase):
    """A feeder places guest in finance: guest's next flow follows finance's rule."""

    GUEST = "10.20.9.99"

    def tearDown(self):
        api("DELETE", "/v1/identities/" + self.GUEST, "SLUICE_FEEDER_TOKEN")

    def test_feed_moves_guest_into_finance_and_back(self):
        self.assertIn(models("guest"), ("403", "000"))
        r = ctl("identities", "set", self.GUEST, "gina@corp", "--group", "finance", "--ttl", "600",
                token="SLUICE_FEEDER_TOKEN")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("1 entries", r.stdout)
        self.assertIn("lab-", r.stdout)
        self.assertIn("applied", r.stdout)
        self.assertEqual(models("guest", "?" + FED), "200")
        deadline = time.time() + 15
        while time.time() < deadline:
            reqs = json.loads(api("GET", "/v1/requests?user=gina%40corp", "SLUICE_ANALYST_TOKEN")[1])["records"]
            if reqs:
                break
            time.sleep(0.5)
        self.assertTrue(reqs, "no request record names the fed user")
        self.assertEqual(reqs[0]["identity"], "finance")
        listed = ctl("identities", "list", "--json", token="SLUICE_ANALYST_TOKEN")
        self.assertEqual(json.loads(listed.stdout)[0]["user"], "gina@corp")
        r = ctl("identities", "rm", self.GUEST, token="SLUICE_FEEDER_TOKEN")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn(models("guest"), ("403", "000"))

    def test_bad_feed_entries_are_refused_whole(self):
        body = json.dumps({"identities": [{"ip": "10.20.9.99", "user": "ok"}, {"ip": "10.20.9.98", "user": ""}]})
        code, text = api("POST", "/v1/identities", "SLUICE_FEEDER_TOKEN", body)
        self.assertEqual(code, 422, text)
        self.assertIn("identities[1]", text)
        self.assertEqual(json.loads(api("GET", "/v1/identities", "SLUICE_FEEDER_TOKEN")[1]), [])
        self.assertEqual(api("PUT", "/v1/identities/not-an-ip", "SLUICE_FEEDER_TOKEN", '{"user":"x"}')[0], 400)


class SyslogTcpCef(unittest.TestCase):
    """The TCP transport (octet-counted frames) with CEF messages."""

    @classmethod
    def setUpClass(cls):
        cls.srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        cls.srv.bind(("127.0.0.1", 0))
        cls.srv.listen(4)
        cls.srv.settimeout(0.5)
        cls.data = b""
        cls.stop = False
        cls.reader = threading.Thread(target=cls.read, daemon=True)
        cls.reader.start()
        restart_appliance(SLUICE_SYSLOG_FORMAT="cef", SLUICE_SYSLOG="tcp://127.0.0.1:%d" % cls.srv.getsockname()[1])

    @classmethod
    def read(cls):
        while not cls.stop:
            try:
                conn, _ = cls.srv.accept()
            except socket.timeout:
                continue
            conn.settimeout(0.5)
            while not cls.stop:
                try:
                    chunk = conn.recv(65536)
                except socket.timeout:
                    continue
                if not chunk:
                    break
                cls.data += chunk
            conn.close()

    @classmethod
    def tearDownClass(cls):
        cls.stop = True
        cls.reader.join()
        cls.srv.close()
        restart_appliance()

    @staticmethod
    def frames(data):
        out = []
        while data:
            n, _, rest = data.partition(b" ")
            n = int(n)
            out.append(rest[:n].decode())
            data = rest[n:]
        return out

    def test_cef_over_tcp(self):
        models("guest")
        deadline = time.time() + 20
        hit = None
        while time.time() < deadline and hit is None:
            hit = next((m for m in self.frames(self.data) if "request-block" in m and "src=10.20.9.99" in m), None)
            time.sleep(0.5)
        self.assertIsNotNone(hit, self.data[-500:])
        self.assertRegex(hit, r"^<132>1 \S+ \S+ sluice - request - CEF:0\|Sluice\|Sluice\|[^|]+\|request-block\|AI request blocked\|7\|")
        self.assertIn("cs4=unknown-no-openai", hit)
        self.assertIn("act=block", hit)


class RestartAndSyslog(unittest.TestCase):
    """Records emitted while control is down are spooled and replayed: the store ends with
    exactly the flow records the data plane emitted. Records also reach a syslog collector."""

    @classmethod
    def setUpClass(cls):
        cls.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        cls.sock.bind(("127.0.0.1", 0))
        cls.sock.settimeout(0.5)
        cls.received = []
        cls.stop = False
        cls.reader = threading.Thread(target=cls.read, daemon=True)
        cls.reader.start()
        restart_appliance(SLUICE_SYSLOG="udp://127.0.0.1:%d" % cls.sock.getsockname()[1])

    @classmethod
    def read(cls):
        while not cls.stop:
            try:
                cls.received.append(cls.sock.recv(65536).decode())
            except socket.timeout:
                pass

    @classmethod
    def tearDownClass(cls):
        cls.stop = True
        cls.reader.join()
        cls.sock.close()
        restart_appliance()

    def test_syslog_collector_receives_rfc5424_records(self):
        curl("bob", "http://example.org/syslog-probe")
        deadline = time.time() + 20
        hit = None
        while time.time() < deadline and hit is None:
            hit = next((m for m in list(self.received) if '"src":"10.20.2.20"' in m and '"dport":80' in m), None)
            time.sleep(0.5)
        self.assertIsNotNone(hit, "no syslog message for bob's flow; got %d messages" % len(self.received))
        self.assertRegex(hit, r"^<13[23]>1 \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z \S+ sluice - flow - \{")

    def test_a_new_client_is_discovered_once_in_syslog(self):
        """A client the host never showed (here a TLS configuration of its own, a JA4 no other
        run has: a random choice of cipher suites) raises one discovery, however many flows."""
        from test_dataplane import on, wait_for_flow
        tag = secrets.token_hex(4)
        suites = ["ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384",
                  "ECDHE-RSA-AES256-GCM-SHA384", "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
                  "ECDHE-RSA-AES128-SHA", "ECDHE-RSA-AES256-SHA", "AES128-GCM-SHA256", "AES256-GCM-SHA384",
                  "AES128-SHA", "AES256-SHA"]
        chosen = random.sample(suites, random.randint(3, 9))
        script = ("import socket, ssl\n"
                  "ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT); ctx.check_hostname = False\n"
                  "ctx.verify_mode = ssl.CERT_NONE; ctx.set_ciphers(%r)\n"
                  "for i in range(3):\n"
                  "    try:\n"
                  "        with ctx.wrap_socket(socket.create_connection(('example.org', 443), timeout=10),\n"
                  "                             server_hostname='disc-%s.example.org') as s: pass\n"
                  "    except OSError: pass\n") % (":".join(chosen), tag)
        tail = Follow("--type", "discovery")
        on("guest", "python3", "-c", script)
        sni = "disc-%s.example.org" % tag
        flow = wait_for_flow(lambda r: r.get("sni") == sni)
        self.assertEqual(flow["app"], "unknown", flow)
        ja4 = flow["ja4"]

        def discoveries():
            found = []
            for m in list(self.received):
                head, _, body = m.partition(" - {")
                if head.endswith(" sluice - discovery"):
                    d = json.loads("{" + body)
                    if d.get("ja4") == ja4 and d.get("src") == flow["src"]:
                        found.append((head, d))
            return found
        deadline = time.time() + 20
        while time.time() < deadline and not discoveries():
            time.sleep(0.5)
        time.sleep(3)  # the later flows' records arrive too: still one discovery
        err = tail.stop()
        found = discoveries()
        self.assertEqual(len(found), 1, found)
        head, d = found[0]
        self.assertEqual((d["event"], d["app"], d["sni"]), ("new-unknown-client", "unknown", sni))
        self.assertRegex(head, r"^<13[0-7]>1 ")
        # The live tail carried it too, once.
        tailed = [r for r in tail.got if r.get("ja4") == ja4 and r.get("src") == flow["src"]]
        self.assertEqual([(r["type"], r["event"]) for r in tailed], [("discovery", "new-unknown-client")], err)

    def test_dlp_alert_forwards_records_and_reaches_syslog(self):
        """An alert profile lets the request through, records the finding, and the record
        reaches the collector as a warning."""
        from test_dataplane import wait_for_record
        from test_intercept import upstream
        rules = current_rules()
        alert = """
[[rule]]
name = "engineering-alert"
identities = ["engineering"]
categories = ["openai-api"]
action = "inspect"
dlp = "alert-credentials"
"""
        push_rules(with_rule_first(rules, alert))
        try:
            body = json.dumps({"model": "gpt-4o-mini", "messages": [
                {"role": "user", "content": "key AKIAJ7QXRZ3EXAMPLEQ2 (e2e-alert)"}]})
            r = curl("bob", "https://api.openai.com/v1/chat/completions", "-H", "Content-Type: application/json",
                     "--data-binary", body, "-o", "/dev/null", "-w", "%{http_code}")
            self.assertEqual(r.stdout.strip(), "200", r.stderr)
            self.assertTrue(any("e2e-alert" in e["body"] for e in upstream("api.openai.com")), "forwarded")
            rec = wait_for_record("request", lambda r: r["src"] == "10.20.2.20" and r.get("dlp_action") == "alert")
            self.assertEqual((rec["rule"], rec["dlp_findings"][0]["detector"]),
                             ("engineering-alert", "aws_access_key_id"))
            deadline = time.time() + 20
            hit = None
            while time.time() < deadline and hit is None:
                hit = next((m for m in list(self.received) if '"dlp_action":"alert"' in m), None)
                time.sleep(0.5)
            self.assertIsNotNone(hit, "no syslog message for the alert")
            self.assertTrue(hit.startswith("<132>1 "), "a warning: " + hit[:40])
            self.assertNotIn("AKIAJ7QXRZ3EXAMPLEQ2", hit, "findings, never values")
        finally:
            push_rules(rules)

    def test_no_record_lost_across_a_control_restart(self):
        state = env()["SLUICE_LAB_STATE"]
        pidfile = os.path.join(state, "control.pid")
        stop = threading.Event()

        def traffic():
            while not stop.is_set():
                curl("alice", "http://example.org/restart-probe", "-o", "/dev/null")

        t = threading.Thread(target=traffic)
        t.start()
        try:
            time.sleep(2)
            with open(pidfile) as f:
                pid = int(f.read())
            os.kill(pid, 9)
            time.sleep(4)  # flows end and are spooled while control is away
            # Started as scripts/lab starts it: the pid file names the daemon, `lab stop` ends it.
            subprocess.run(["setsid", "-f", "bash", "-c", 'echo $$ > "$0"; exec "$1" --config "$2" >> "$3" 2>&1 < /dev/null',
                            pidfile, os.path.join(ROOT, "target", "release", "sluice-control"),
                            os.path.join(state, "control", "control.toml"), os.path.join(state, "control.log")],
                           check=True, timeout=10)
            time.sleep(2)
        finally:
            stop.set()
            t.join()
        with open(os.path.join(state, "dataplane.log")) as f:
            self.assertIn("control unreachable, records are spooled", f.read())
        # Once the flows have ended and the spool has drained, the counts agree exactly.
        deadline = time.time() + 30
        while time.time() < deadline:
            emitted = sum(1 for r in local_records() if r.get("type") == "flow")
            st = status()
            stored = st["stored"]["flows"]
            main = [d for d in st["dataplanes"] if d["name"] == "lab-" + env()["SLUICE_LAB"]]
            if emitted == stored and main and main[0]["connected"]:
                break
            time.sleep(1)
        self.assertEqual(stored, emitted, "flow records: stored by control vs emitted by the data plane")
        print("\n  %d flow records emitted, %d stored" % (emitted, stored))
        probes = json.loads(api("GET", "/v1/flows?src=10.20.1.10&limit=1000", "SLUICE_ANALYST_TOKEN")[1])["records"]
        self.assertGreater(len([r for r in probes if r.get("dport") == 80]), 5)
        # And the chains are intact: nothing changed, missing or stored twice.
        r = ctl("audit", "verify", token="SLUICE_AUDITOR_TOKEN", timeout=120)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)


class KeptState(unittest.TestCase):
    """A data plane restarted while control is away enforces the rule set and the identity feed
    control pushed last, from its state directory."""

    GUEST = "10.20.9.99"

    def test_a_restart_while_control_is_away_keeps_identities_and_policy(self):
        state = env()["SLUICE_LAB_STATE"]
        r = ctl("identities", "set", self.GUEST, "gina@corp", "--group", "finance", "--ttl", "600",
                token="SLUICE_FEEDER_TOKEN")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(models("guest", "?" + FED), "200", "the feed places guest in finance")
        try:
            with open(os.path.join(state, "control.pid")) as f:
                os.kill(int(f.read()), 9)
            # The data plane alone, started again as the lab started it: same argv, same netns.
            with open(os.path.join(state, "dataplane.pid")) as f:
                pid = int(f.read())
            with open("/proc/%d/cmdline" % pid, "rb") as f:
                argv = [a.decode() for a in f.read().split(b"\0") if a]
            ns = subprocess.run(["ip", "netns", "identify", str(pid)], capture_output=True, text=True,
                                check=True).stdout.strip()
            log = os.path.join(state, "dataplane.log")
            with open(log) as f:
                before = len(f.readlines())
            os.kill(pid, 15)
            deadline = time.time() + 20
            while time.time() < deadline and os.path.exists("/proc/%d" % pid):
                time.sleep(0.1)
            self.assertFalse(os.path.exists("/proc/%d" % pid), "the data plane did not stop")
            subprocess.run(["ip", "netns", "exec", ns, "setsid", "-f", "bash", "-c",
                            'echo $$ > "$0"; exec "$@" >> "%s" 2>&1 < /dev/null' % log,
                            os.path.join(state, "dataplane.pid"), *argv], check=True, timeout=10)
            deadline = time.time() + 30
            started = []
            while time.time() < deadline:
                with open(log) as f:
                    started = f.readlines()[before:]
                if any("forwarding" in x for x in started):
                    break
                time.sleep(0.2)
            text = "".join(started)
            self.assertIn("forwarding", text)
            self.assertIn("identity feed kept from the last run in force", text)
            self.assertIn("pushed", text, "the pushed rule set kept on disk is the one in force")
            # Control is still away: guest is still in finance.
            self.assertEqual(models("guest", "?" + FED), "200", "the kept feed places guest in finance")
        finally:
            restart_appliance()
            api("DELETE", "/v1/identities/" + self.GUEST, "SLUICE_FEEDER_TOKEN")
        self.assertIn(models("guest"), ("403", "000"), "the feed's entry removed, guest is a guest again")


class CrashUnderLoad(unittest.TestCase):
    """A data plane killed (SIGKILL) while clients make inspected requests loses no request
    record: every request a client saw answered is stored by control once the data plane is
    back (the record is in the spool, a file, within milliseconds of the answer)."""

    ALICE = "10.20.1.10"

    def test_sigkill_under_load_loses_no_request_record(self):
        since = int(time.time() * 1000)
        stop = threading.Event()
        attempted, answered = set(), set()

        def client(w):
            i = 0
            while not stop.is_set():
                ua = "crash-probe-%d-%d" % (w, i)
                i += 1
                attempted.add(ua)
                r = curl("alice", "https://api.openai.com/v1/models", "-A", ua, "-o", "/dev/null",
                         "-w", "%{http_code}", "-m", "4")
                if r.returncode == 0 and r.stdout.strip() not in ("", "000"):
                    answered.add(ua)

        workers = [threading.Thread(target=client, args=(w,)) for w in range(4)]
        for t in workers:
            t.start()
        try:
            time.sleep(4)
            with open(os.path.join(env()["SLUICE_LAB_STATE"], "dataplane.pid")) as f:
                os.kill(int(f.read()), 9)
            time.sleep(0.5)
        finally:
            stop.set()
            for t in workers:
                t.join()
        restart_appliance()
        self.assertGreater(len(answered), 10, "too little load before the kill")
        stored, deadline = set(), time.time() + 30
        while time.time() < deadline:
            code, body = api("GET", "/v1/requests?src=%s&since=%d&limit=1000" % (self.ALICE, since),
                             "SLUICE_ANALYST_TOKEN")
            self.assertEqual(code, 200, body)
            stored = {r.get("user_agent") for r in json.loads(body)["records"]
                      if (r.get("user_agent") or "").startswith("crash-probe-")}
            if answered <= stored:
                break
            time.sleep(1)
        print("\n  SIGKILL under load: %d requests sent, %d answered, %d request records stored"
              % (len(attempted), len(answered), len(stored)))
        self.assertEqual(sorted(answered - stored), [], "answered requests without a stored record")
        self.assertTrue(stored <= attempted, "records of requests never made")
        # The data plane's chain went on from its spool after the kill: it verifies whole.
        r = ctl("audit", "verify", token="SLUICE_AUDITOR_TOKEN", timeout=120)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)


if __name__ == "__main__":
    unittest.main()
