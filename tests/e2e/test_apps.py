"""Apps and discovery in the lab (ARCHITECTURE.md, "Apps and discovery"): the lab's clients
named by their TLS hello on spliced flows and by their headers on inspected ones, an unknown
client sandboxed, the inventory of alice's apps, bob's uploads refused while his chats pass,
and a personal ChatGPT account refused while the company's passes."""
import json
import os
import secrets
import time
import unittest

from test_control import ctl, current_rules, with_rule_first
from test_dataplane import ROOT, curl, env, on, push_rules, wait_for_flow, wait_for_record
from test_intercept import sdk, upstream

RULE = 'name = "finance-openai-inspect"\n'
JSON = ["-H", "Content-Type: application/json"]
CHAT = '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hello"}]}'


def status(host, url, *extra):
    """HTTP status a client got ("000": no answer) and the body."""
    r = curl(host, url, "-w", "\n%{http_code}", *extra)
    body, _, code = r.stdout.rpartition("\n")
    return code.strip() or "000", body


class Identification(unittest.TestCase):

    def test_hellos_name_the_stack_on_spliced_flows(self):
        # example.org is spliced: the hello is all there is to read.
        tag = secrets.token_hex(4)
        curl("bob", "https://example.org/?apps-" + tag, "-k", "-o", "/dev/null")
        flow = wait_for_flow(lambda r: r.get("src") == "10.20.2.20" and r.get("sni") == "example.org"
                             and r.get("app") == "curl")
        self.assertEqual((flow["app_evidence"], flow["action"]), ("ja4", "allow"))
        on("bob", "python3", "-c", "import ssl, urllib.request\n"
           "try: urllib.request.urlopen('https://example.org/?py-%s', timeout=10, context=ssl._create_unverified_context())\n"
           "except Exception: pass\n" % tag)
        wait_for_flow(lambda r: r.get("src") == "10.20.2.20" and r.get("sni") == "example.org"
                      and r.get("app") == "python")
        # HTTPX offering HTTP/2: Python's stack too (its ALPN differs, the catalog's entry
        # leaves the ALPN open).
        sni = "h2-%s.example.org" % tag
        on("bob", "python3", "-c", "import httpx\n"
           "try: httpx.Client(http2=True, verify=False, timeout=10).get('https://example.org/',"
           " extensions={'sni_hostname': %r})\n"
           "except Exception: pass\n" % sni)
        flow = wait_for_flow(lambda r: r.get("src") == "10.20.2.20" and r.get("sni") == sni)
        self.assertEqual((flow["app"], flow["app_evidence"], sorted(flow["alpn"])),
                         ("python", "ja4", ["h2", "http/1.1"]), flow)
        # The OpenAI Python SDK, spliced: its hello is Python's (what a hello can tell), sent
        # with a server name of its own to find its flow.
        sni = "sdk-%s.example.org" % tag
        on("bob", "python3", "-c", "import httpx, openai\n"
           "hook = lambda req: req.extensions.__setitem__('sni_hostname', %r)\n"
           "c = openai.OpenAI(api_key='sk-x', base_url='https://example.org/v1', max_retries=0,\n"
           "    http_client=httpx.Client(verify=False, timeout=10, event_hooks={'request': [hook]}))\n"
           "try: c.models.list()\n"
           "except Exception: pass\n" % sni)
        flow = wait_for_flow(lambda r: r.get("src") == "10.20.2.20" and r.get("sni") == sni)
        self.assertEqual((flow["app"], flow["action"]), ("python", "allow"), flow)
        self.assertEqual(flow["app_evidence"], "ja4", flow)
        # A browser's hello, sent raw (Chromium's, captured by rules/apps/testdata/capture.sh),
        # its server name changed to one no rule names (same length: the hello stays valid).
        hello = open(os.path.join(ROOT, "rules", "apps", "testdata", "chromium.hello"), "rb").read()
        name = ("b%s.example" % tag[:5]).encode()
        self.assertEqual(len(name), len(b"api.openai.com"))
        self.assertEqual(hello.count(b"api.openai.com"), 1)
        path = os.path.join(env()["SLUICE_LAB_STATE"], "browser-%s.hello" % tag)
        with open(path, "wb") as f:
            f.write(hello.replace(b"api.openai.com", name))
        on("bob", "python3", "-c", "import socket, sys\n"
           "s = socket.create_connection(('example.org', 443), timeout=10)\n"
           "s.sendall(open(sys.argv[1], 'rb').read())\n"
           "try: s.recv(4096)\n"
           "except OSError: pass\n", path)
        flow = wait_for_flow(lambda r: r.get("src") == "10.20.2.20" and r.get("sni") == name.decode())
        self.assertEqual((flow["app"], flow["app_evidence"]), ("chromium", "ja4"), flow)

    def test_headers_name_the_app_on_inspected_flows(self):
        r = sdk("alice", "print(len(client.models.list().data))\n")
        self.assertEqual(r.returncode, 0, r.stderr)
        rec = wait_for_record("request", lambda r: r["src"] == "10.20.1.10" and r.get("app") == "openai-python")
        self.assertEqual(rec["app_evidence"], "ja4+ua+headers")
        self.assertTrue(rec.get("app_version"), rec)
        self.assertEqual(rec["operation"], "other")
        code, _ = status("alice", "https://api.openai.com/v1/chat/completions", "-d", CHAT, *JSON)
        self.assertEqual(code, "200")
        rec = wait_for_record("request", lambda r: r["src"] == "10.20.1.10" and r.get("app") == "curl"
                              and r["path"] == "/v1/chat/completions")
        self.assertEqual((rec["operation"], rec["app_evidence"]), ("chat", "ja4+ua"))
        # HTTPX offering HTTP/2 (what it gets depends on the server).
        r = on("alice", "python3", "-c", "import httpx\n"
               "with httpx.Client(http2=True, timeout=20) as c:\n"
               "    print(c.get('https://api.openai.com/v1/models?httpx-h2', headers={'authorization': 'Bearer x'}).status_code)\n")
        self.assertEqual(r.stdout.strip(), "200", r.stdout + r.stderr)
        rec = wait_for_record("request", lambda r: r["src"] == "10.20.1.10" and r.get("app") == "httpx")
        self.assertEqual(rec["app_evidence"], "ja4+ua")

    def test_the_inventory_lists_alice_apps(self):
        sdk("alice", "client.models.list()\n")
        status("alice", "https://api.openai.com/v1/models")
        wait_for_record("request", lambda r: r["src"] == "10.20.1.10" and r.get("app") == "curl")
        r = ctl("inventory", "--host", "10.20.1.10", "--json", token="SLUICE_ANALYST_TOKEN")
        self.assertEqual(r.returncode, 0, r.stderr)
        rows = json.loads(r.stdout)["rows"]
        apps = {row["app"] for row in rows}
        self.assertTrue({"curl", "openai-python"} <= apps, rows)
        sdk_row = next(row for row in rows if row["app"] == "openai-python")
        self.assertEqual((sdk_row["identity"], sdk_row["destinations"]), ("finance", ["api.openai.com"]))
        self.assertLessEqual(sdk_row["first_seen_ms"], sdk_row["last_seen_ms"])
        self.assertGreater(sdk_row["requests"], 0)
        # Seen in the last week: the SDK's row; seen in the future: nothing.
        r = ctl("inventory", "--host", "10.20.1.10", "--since", "7d", "--json", token="SLUICE_ANALYST_TOKEN")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("openai-python", {row["app"] for row in json.loads(r.stdout)["rows"]})
        later = str(int(time.time() * 1000) + 3_600_000)
        r = ctl("inventory", "--host", "10.20.1.10", "--since", later, "--json", token="SLUICE_ANALYST_TOKEN")
        self.assertEqual((r.returncode, json.loads(r.stdout)["rows"]), (0, []), r.stderr)
        r = ctl("inventory", "--discoveries", "--json", token="SLUICE_ANALYST_TOKEN")
        found = [d for d in json.loads(r.stdout)["records"] if d["src"] == "10.20.1.10"]
        self.assertTrue(any(d["app"] == "openai-python" for d in found), found)
        self.assertEqual(len([d for d in found if d["app"] == "openai-python"]), 1, "once per host and app")

    def test_the_accounts_chatgpt_lists_reach_the_inventory(self):
        # The web app asks for the signed-in user's accounts as it starts; the answer shows
        # the personal account behind a session that works in the company workspace.
        code, _ = status("alice", "https://chatgpt.com/backend-api/accounts/check/v4-2023-04-27",
                         "-H", "ChatGPT-Account-Id: acc-corp-1", "--compressed")
        self.assertEqual(code, "200")
        rec = wait_for_record("request", lambda r: r["src"] == "10.20.1.10"
                              and r["path"].startswith("/backend-api/accounts/check"))
        self.assertEqual(rec.get("chatgpt_accounts_listed"), ["personal:lab-personal-7", "workspace:acc-corp-1"], rec)
        deadline = time.time() + 20
        while True:
            r = ctl("inventory", "--host", "10.20.1.10", "--app", "curl", "--json", token="SLUICE_ANALYST_TOKEN")
            accounts = {a for row in json.loads(r.stdout)["rows"] for a in row["accounts"]}
            if "chatgpt-personal:lab-personal-7" in accounts or time.time() > deadline:
                break
            time.sleep(0.5)
        self.assertTrue({"chatgpt:acc-corp-1", "chatgpt-personal:lab-personal-7",
                         "chatgpt-workspace:acc-corp-1"} <= accounts, accounts)


class Policy(unittest.TestCase):

    def setUp(self):
        self.before = current_rules()

    def tearDown(self):
        push_rules(self.before)

    def test_an_unknown_client_is_sandboxed(self):
        # The default rules (rules/default.toml, "The app sandbox"): no rule pushed.
        # A script with a TLS configuration of its own: a hello the catalog does not know.
        tag = secrets.token_hex(4)
        script = ("import http.client, ssl\n"
                  "ctx = ssl.create_default_context(); ctx.set_ciphers('ECDHE+AESGCM'); ctx.set_alpn_protocols(['http/1.1'])\n"
                  "ctx.options |= ssl.OP_NO_TICKET\n"
                  "c = http.client.HTTPSConnection('api.openai.com', context=ctx, timeout=20)\n"
                  "c.connect(); port = c.sock.getsockname()[1]\n"
                  "c.request('GET', '/v1/models?custom-tls-%s'); print(c.getresponse().status, port)\n" % tag)
        for host, src, rule in (("alice", "10.20.1.10", "finance-unapproved-apps"),
                                ("bob", "10.20.2.20", "engineering-unapproved-apps")):
            r = on(host, "python3", "-c", script)
            code, _, port = r.stdout.strip().partition(" ")
            self.assertEqual(code, "403", r.stdout + r.stderr)
            flow = wait_for_flow(lambda r: r.get("src") == src and r.get("sport") == int(port))
            self.assertEqual((flow["rule"], flow["app"], flow.get("app_evidence")), (rule, "unknown", None), flow)
        self.assertFalse(any("custom-tls-" + tag in e["path"] for e in upstream("api.openai.com")),
                         "the sandboxed requests never left")
        # Known clients go on as before, the SDK and curl.
        self.assertEqual(status("alice", "https://api.openai.com/v1/models")[0], "200")
        r = sdk("bob", "print(len(client.models.list().data))\n")
        self.assertEqual(r.returncode, 0, r.stderr)
        r = ctl("inventory", "--unknown", "--host", "10.20.1.10", "--json", token="SLUICE_ANALYST_TOKEN")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertTrue(any(row["app"] == "unknown" for row in json.loads(r.stdout)["rows"]), r.stdout)

    def test_uploads_are_refused_for_bob_while_his_chats_pass(self):
        no_upload = '''
[[rule]]
name = "engineering-no-upload"
identities = ["engineering"]
categories = ["openai-api"]
operations = ["upload"]
action = "block"
'''
        push_rules(with_rule_first(self.before, no_upload))
        code, body = status("bob", "https://api.openai.com/v1/files", "-F", "purpose=assistants",
                            "-F", "file=@/etc/hostname")
        self.assertEqual(code, "403", body)
        self.assertIn("blocked_by_policy", body)
        rec = wait_for_record("request", lambda r: r["src"] == "10.20.2.20" and r["path"] == "/v1/files")
        self.assertEqual((rec["verdict"], rec["rule"], rec["operation"]), ("block", "engineering-no-upload", "upload"))
        code, body = status("bob", "https://api.openai.com/v1/chat/completions", "-d", CHAT, *JSON)
        self.assertEqual(code, "200", body)
        wait_for_record("request", lambda r: r["src"] == "10.20.2.20" and r["path"] == "/v1/chat/completions")
        # The records by operation, through sluicectl: the upload, not the chat.
        r = ctl("requests", "--src", "10.20.2.20", "--operation", "upload", "--since", "10m", "--json",
                token="SLUICE_ANALYST_TOKEN")
        self.assertEqual(r.returncode, 0, r.stderr)
        got = [json.loads(x) for x in r.stdout.splitlines()]
        self.assertTrue(got and all(x["operation"] == "upload" for x in got), got)
        self.assertIn("/v1/files", {x["path"] for x in got})
        # alice's uploads are not bob's rule's.
        code, _ = status("alice", "https://api.openai.com/v1/files", "-F", "purpose=assistants",
                         "-F", "file=@/etc/hostname")
        self.assertEqual(code, "200")

    def test_a_personal_chatgpt_account_is_refused(self):
        push_rules(self.before.replace(RULE, RULE + 'chatgpt_accounts = ["acc-corp-1"]\n', 1))
        url = "https://chatgpt.com/backend-api/f/conversation"
        code, body = status("alice", url, "-H", "ChatGPT-Account-Id: personal-7", "-d", "{}", *JSON)
        self.assertEqual(code, "403", body)
        self.assertIn("personal-7", body)
        rec = wait_for_record("request", lambda r: r["src"] == "10.20.1.10" and r.get("chatgpt_account") == "personal-7")
        self.assertEqual(rec["code"], "chatgpt_account_not_allowed")
        code, body = status("alice", url, "-H", "ChatGPT-Account-Id: acc-corp-1", "-d", "{}", *JSON)
        self.assertEqual(code, "200", body)


if __name__ == "__main__":
    unittest.main()
