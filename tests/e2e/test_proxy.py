"""End-to-end tests of the explicit proxy (ARCHITECTURE.md, "Explicit proxy"): a data plane
with no ports (`--proxy-listen`, started by `scripts/lab proxy start` in its own namespace on
the router's third port) that clients name as their HTTPS proxy. The OpenAI SDK and curl reach
api.openai.com through it with DLP applied and records made (flow records `"via": "proxy"`,
request records from the proxy's data plane); a client without the proxy is not affected; a
tunnel to the proxy's own host, or whose ClientHello names another host than its CONNECT, is
refused; plain http:// is forwarded when allowed; `Proxy-Authorization` with a virtual key
decides as its user; control's PAC file sends what rules inspect or block to the proxy.

Expects the lab up and the appliance started (scripts/test does both).
"""

import json
import os
import subprocess
import time
import unittest
import urllib.request

from test_dataplane import api, env, lab, on, records, until


def upstream_log():
    return [json.loads(x) for x in lab("upstream-log").stdout.splitlines()]

PROXY = "http://10.40.0.2:3128"
CARD = "4111 1111 1111 1111"
ALICE = "10.20.1.10"
BOB = "10.20.2.20"


def proxied(host, *cmd, timeout=60):
    """`cmd` in `host` with the proxy in its environment, as users set it."""
    return on(host, "env", "HTTPS_PROXY=" + PROXY, "https_proxy=" + PROXY, *cmd, timeout=timeout)


SDK = r"""
import json, sys, openai
client = openai.OpenAI(api_key="sk-lab-proxy-1", max_retries=0, timeout=20)
try:
    r = client.chat.completions.create(model="gpt-4o-mini",
                                       messages=[{"role": "user", "content": sys.argv[1]}])
    print(json.dumps({"status": 200, "content": r.choices[0].message.content}))
except openai.APIStatusError as e:
    print(json.dumps({"status": e.status_code, "body": e.response.text}))
"""


def proxy_name():
    return "proxy-" + env()["SLUICE_LAB"]


def proxy_flows():
    path = os.path.join(env()["SLUICE_LAB_STATE"], "proxy", "flows.jsonl")
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


class ExplicitProxy(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        lab("proxy", "start", timeout=300)

    @classmethod
    def tearDownClass(cls):
        lab("proxy", "stop", check=False)

    def test_sdk_through_the_proxy_is_inspected_and_recorded(self):
        r = proxied("alice", "python3", "-c", SDK, "hello through the proxy")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(json.loads(r.stdout)["status"], 200, r.stdout)
        # A card number is refused by the proxy's DLP (alice: finance, blocking profile).
        r = proxied("alice", "python3", "-c", SDK, "my card is " + CARD)
        self.assertEqual(r.returncode, 0, r.stderr)
        out = json.loads(r.stdout)
        self.assertEqual(out["status"], 403, out)
        self.assertNotIn(CARD, r.stdout)
        # Records: the request records are the proxy's (the inline appliance saw a tunnel to
        # the proxy, never the TLS), the flow records say so.
        name = proxy_name()
        blocked = until("the proxy's blocked request", lambda: [
            x for x in records("requests", "dataplane=%s&src=%s&verdict=block" % (name, ALICE))])
        self.assertEqual(blocked[0]["identity"], "finance", blocked[0])
        self.assertEqual(blocked[0]["dlp_findings"][0]["detector"], "credit_card", blocked[0])
        flow = until("the tunnel's flow record", lambda: [
            f for f in proxy_flows() if f.get("type") == "flow" and f.get("src") == ALICE
            and f.get("sni") == "api.openai.com"])[-1]
        self.assertEqual((flow["via"], flow["action"], flow["identity"], flow["dport"]),
                         ("proxy", "inspect", "finance", 443), flow)
        self.assertGreater(flow["bytes_out"], 0)
        self.assertGreater(flow["bytes_in"], 0)
        self.assertTrue(records("flows", "dataplane=%s&src=%s" % (name, ALICE)))

    def test_curl_through_the_proxy_sees_the_enterprise_ca(self):
        r = on("bob", "curl", "-sS", "-m", "10", "-x", PROXY, "-v", "-o", "/dev/null", "-w", "%{http_code}",
               "https://api.openai.com/v1/models")
        self.assertEqual(r.stdout.strip(), "200", r.stderr)
        self.assertIn("Sluice Lab Enterprise CA", r.stderr, "re-terminated by the proxy")
        # A name no rule inspects is spliced: the client sees the server's own certificate.
        r = on("bob", "curl", "-sS", "-m", "10", "-x", PROXY, "-v", "-o", "/dev/null", "-w", "%{http_code}",
               "https://example.org/")
        self.assertEqual(r.stdout.strip(), "200", r.stderr)
        self.assertIn("Sluice Lab Public Root CA", r.stderr)

    def test_a_client_without_the_proxy_is_not_affected(self):
        before = len([f for f in proxy_flows() if f.get("src") == BOB])
        r = on("bob", "curl", "-sS", "-m", "10", "-o", "/dev/null", "-w", "%{http_code}",
               "https://example.org/no-proxy")
        self.assertEqual(r.stdout.strip(), "200", r.stderr)
        time.sleep(1)
        self.assertEqual(len([f for f in proxy_flows() if f.get("src") == BOB]), before)

    def test_the_proxy_refuses_its_own_host_and_mismatched_names(self):
        for target in ("127.0.0.1:22", "10.40.0.2:3128", "169.254.169.254:80"):
            r = on("alice", "curl", "-sS", "-m", "10", "-o", "/dev/null", "-w", "%{http_code}", "-x", PROXY,
                   "--proxytunnel", "http://%s/" % target)
            self.assertIn("403", r.stdout + r.stderr, target)
        # A CONNECT to example.org carrying a hello for api.openai.com: refused, recorded.
        r = on("alice", "openssl", "s_client", "-proxy", "10.40.0.2:3128", "-connect", "example.org:443",
               "-servername", "api.openai.com", "-brief", timeout=30)
        self.assertNotEqual(r.returncode, 0, r.stdout)
        flow = until("the refused tunnel's record", lambda: [
            f for f in proxy_flows() if f.get("src") == ALICE and f.get("sni") == "api.openai.com"
            and f.get("action") == "block"])[-1]
        self.assertEqual(flow["reason"], "the ClientHello names another host than the CONNECT", flow)
        # Plain http:// is decided by host: allowed ones are forwarded (from the proxy's
        # address), those a rule inspects are refused rather than passed uninspected.
        r = on("alice", "curl", "-sS", "-m", "10", "-o", "/dev/null", "-w", "%{http_code}", "-x", PROXY,
               "http://example.org/plain-through-proxy")
        self.assertEqual(r.stdout.strip(), "200", r.stderr)
        seen = [e for e in upstream_log() if e.get("path") == "/plain-through-proxy"]
        self.assertEqual(seen[-1]["client"], "10.40.0.2", seen)
        # (alice's plain HTTP names no approved app: the sandbox's block rule answers before
        # the inspect rule would.)
        r = on("alice", "curl", "-sS", "-m", "10", "-w", "\n%{http_code}", "-x", PROXY,
               "http://api.openai.com/v1/models?plain-refused")
        self.assertTrue(r.stdout.endswith("403"), r.stdout)
        self.assertFalse([e for e in upstream_log() if "plain-refused" in e.get("path", "")])
        # The client's Host never reaches the origin: the URI's host decides, and is sent.
        r = on("alice", "curl", "-sS", "-m", "10", "-o", "/dev/null", "-w", "%{http_code}", "-x", PROXY,
               "-H", "Host: api.openai.com", "http://example.org/host-swap")
        self.assertEqual(r.stdout.strip(), "200", r.stderr)
        seen = [e for e in upstream_log() if e.get("path") == "/host-swap"]
        self.assertEqual((seen[-1]["server"], seen[-1]["host"]), ("example.org", "example.org"), seen)
        # Plain HTTP inside a CONNECT to a name the rules inspect: the CONNECT's name decides.
        r = on("alice", "curl", "-sS", "-m", "10", "-x", PROXY, "--proxytunnel",
               "http://api.openai.com/v1/models?plain-in-tunnel")
        self.assertNotEqual(r.returncode, 0, r.stdout)
        self.assertFalse([e for e in upstream_log() if "plain-in-tunnel" in e.get("path", "")])
        until("the plain tunnel's record", lambda: [
            f for f in proxy_flows() if f.get("src") == ALICE and f.get("sni") == "api.openai.com"
            and f.get("dport") == 80 and f.get("verdict") == "block"])
        # A CONNECT to an address with a hello for a name that does not resolve there.
        r = on("alice", "openssl", "s_client", "-proxy", "10.40.0.2:3128", "-connect", "198.51.100.80:443",
               "-servername", "api.openai.com", "-brief", timeout=30)
        self.assertNotEqual(r.returncode, 0, r.stdout)
        until("the fronted tunnel's record", lambda: [
            f for f in proxy_flows() if f.get("src") == ALICE and f.get("dst") == "198.51.100.80"
            and f.get("reason") == "the ClientHello's name does not resolve to the CONNECT's address"])
        # Refusals are recorded too.
        until("the own-host refusal's record", lambda: [
            f for f in proxy_flows() if f.get("src") == ALICE and f.get("sni") == "127.0.0.1"
            and f.get("reason") == "the proxy does not connect to its own host"])
        # Malformed and non-proxy requests get a clear error.
        r = on("alice", "curl", "-sS", "-m", "10", "-w", "%{http_code}", "http://10.40.0.2:3128/")
        self.assertIn("not a proxy request", r.stdout)


class ProxyCredentials(unittest.TestCase):
    """`Proxy-Authorization: Basic USER:VIRTUAL-KEY`: the user a virtual key was issued to,
    with the identity feed's groups, decides instead of the client's address."""

    USER = "dana@corp"
    FEED_IP = "10.20.9.200"  # where the feed last saw dana (no client of the lab)

    @classmethod
    def setUpClass(cls):
        lab("proxy", "start", timeout=300)
        code, body = api("POST", "/v1/keys/virtual", "SLUICE_ADMIN_TOKEN", json.dumps({"user": cls.USER}))
        assert code == 200, body
        v = json.loads(body)["result"]
        cls.key, cls.key_id = v["key"], v["virtual_key"]["id"]
        # The feed puts dana in finance (a group naming an identity places its user there).
        code, body = api("PUT", "/v1/identities/" + cls.FEED_IP, "SLUICE_FEEDER_TOKEN",
                         json.dumps({"user": cls.USER, "groups": ["finance"]}))
        assert code == 200, body

    @classmethod
    def tearDownClass(cls):
        api("DELETE", "/v1/identities/" + cls.FEED_IP, "SLUICE_FEEDER_TOKEN")
        api("DELETE", "/v1/keys/virtual/" + cls.key_id, "SLUICE_ADMIN_TOKEN")
        lab("proxy", "stop", check=False)

    def via(self, user, key):
        return "http://%s:%s@10.40.0.2:3128" % (user.replace("@", "%40"), key)

    def test_the_proved_user_decides_and_bad_credentials_are_refused(self):
        # bob (engineering: findings redacted) proves to be dana (finance: refused).
        proxy = self.via(self.USER, self.key)
        r = on("bob", "env", "HTTPS_PROXY=" + proxy, "python3", "-c", SDK, "card " + CARD, timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(json.loads(r.stdout)["status"], 403, r.stdout)
        rec = until("dana's request record", lambda: [
            x for x in records("requests", "dataplane=%s&src=%s&verdict=block" % (proxy_name(), BOB))
            if x.get("user") == self.USER])[0]
        self.assertEqual(rec["identity"], "finance", rec)
        # Another user's name with dana's key, and a key nobody issued: 407, nothing tunnelled.
        for creds in (self.via("mallory@corp", self.key), self.via(self.USER, "svk-not-issued")):
            r = on("bob", "curl", "-sS", "-m", "10", "-o", "/dev/null", "-w", "%{http_connect}", "-x", creds,
                   "https://api.openai.com/v1/models")
            self.assertEqual(r.stdout.strip(), "407", r.stderr)
        self.assertNotIn(self.key, json.dumps(proxy_flows()), "no key in the records")


class ProxyAutoConfig(unittest.TestCase):
    def test_the_pac_file_sends_what_rules_inspect_or_block_to_the_proxy(self):
        with open(os.path.join(env()["SLUICE_LAB_STATE"], "control", "pac_url")) as f:
            url = f.read().strip()
        with urllib.request.urlopen(url, timeout=10) as r:
            self.assertEqual(r.headers["Content-Type"], "application/x-ns-proxy-autoconfig")
            pac = r.read().decode()
        # Evaluated as a browser would (dnsDomainIs as PAC engines define it).
        js = (pac + "\nfunction dnsDomainIs(h, d) { return h.length >= d.length && h.slice(-d.length) === d; }\n"
              "for (const h of process.argv.slice(1)) console.log(h + ' ' + FindProxyForURL('https://' + h + '/', h));")
        out = subprocess.run(["node", "-e", js, "api.openai.com", "API.OpenAI.com.", "chatgpt.com",
                              "example.org", "openai.com.evil.example"],
                             capture_output=True, text=True, timeout=30)
        self.assertEqual(out.returncode, 0, out.stderr)
        got = dict(line.split(" ", 1) for line in out.stdout.splitlines())
        self.assertEqual(got["api.openai.com"], "PROXY " + PROXY.split("//")[1])
        self.assertEqual(got["API.OpenAI.com."], "PROXY " + PROXY.split("//")[1])
        self.assertEqual(got["chatgpt.com"], "PROXY " + PROXY.split("//")[1])
        self.assertEqual(got["example.org"], "DIRECT")
        self.assertEqual(got["openai.com.evil.example"], "DIRECT")


if __name__ == "__main__":
    unittest.main()
