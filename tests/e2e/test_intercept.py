"""End-to-end tests of interception in the lab: divert through the TUN, re-termination with the
enterprise CA, strict upstream verification, HTTP/1.1 checks, header policy, block responses,
request records. Real clients: curl, the official OpenAI Python SDK, Python's ssl.

Expects the lab up and the appliance started with rules/default.toml (scripts/test does both).
"""

import json
import os
import subprocess
import threading
import time
import unittest

from test_dataplane import (LAB, ROOT, api, curl, env, flows, lab, on, push_rules, rss_kb, start_appliance,
                            wait_for_flow, wait_for_record)

RAWHTTPS = os.path.join(ROOT, "tests", "e2e", "rawhttps.py")
KEY = "sk-lab-alice-4f1c9e2a7b"


def upstream(server):
    return [json.loads(x) for x in lab("upstream-log", server).stdout.splitlines()]


def rawhttps(host, name, payload, ip=None):
    args = ["python3", RAWHTTPS, "--host", name, "--send", payload]
    if ip:
        args += ["--ip", ip]
    return on(host, *args)


def sdk(host, code, key=KEY):
    """Runs `code` with `client`, an openai.OpenAI for the real API host, in the client."""
    prelude = ("import json, sys, time, openai\n"
               "client = openai.OpenAI(api_key=%r, max_retries=0, timeout=20)\n" % key)
    return on(host, "python3", "-c", prelude + code, timeout=90)


def issuer(host, url, *extra):
    r = curl(host, url, "-v", "-o", "/dev/null", *extra)
    for line in r.stderr.splitlines():
        if "issuer:" in line:
            return line.split("issuer:", 1)[1].strip()
    return r.stderr


class Interception(unittest.TestCase):
    """alice's and bob's API traffic is decrypted, inspected and re-originated."""

    def test_reterminated_with_the_enterprise_ca_and_source_preserved(self):
        self.assertIn("Sluice Lab Enterprise CA", issuer("alice", "https://api.openai.com/v1/models"))
        r = curl("alice", "https://api.openai.com/v1/models?trace=e2e-source")
        self.assertEqual(r.returncode, 0, r.stderr)
        # The server saw alice's own address (the divert keeps sources), and the full request.
        log = upstream("api.openai.com")
        self.assertTrue(any(e["client"] == "10.20.1.10" and e["path"] == "/v1/models?trace=e2e-source" for e in log))
        rec = wait_for_record("request", lambda r: r["src"] == "10.20.1.10" and r["path"] == "/v1/models")
        self.assertEqual((rec["identity"], rec["rule"], rec["status"], rec["verdict"]),
                         ("finance", "finance-openai-inspect", 200, "allow"))
        flow = wait_for_flow(lambda r: r["src"] == "10.20.1.10" and r["verdict"] == "divert" and r.get("sni") == "api.openai.com")
        self.assertEqual(flow["action"], "inspect")

    def test_ipv6_flows_are_inspected_too(self):
        self.assertIn("Sluice Lab Enterprise CA", issuer("bob", "https://api.openai.com/v1/models", "-6"))
        self.assertTrue(any(e["client"] == "fd20::2:20" for e in upstream("api.openai.com")))

    def test_openai_sdk_through_inspection(self):
        code = ("r = client.chat.completions.create(model='gpt-4o-mini', messages=[{'role':'user','content':'hi'}])\n"
                "print('reply', r.choices[0].message.content)\n"
                "print('models', len(client.models.list().data))\n")
        r = sdk("alice", code)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("reply", r.stdout)
        rec = wait_for_record("request", lambda r: r["src"] == "10.20.1.10" and r["path"] == "/v1/chat/completions"
                              and "OpenAI/Python" in (r.get("user_agent") or ""))
        self.assertEqual(rec["model"], "gpt-4o-mini")
        self.assertTrue(rec["api_key_fp"].startswith("sha256:"), rec)
        self.assertIn("OpenAI/Python", rec["user_agent"])
        self.assertGreater(rec["bytes_out"], 0)
        # The key itself is never written.
        self.assertNotIn(KEY, lab("flows").stdout)

    def test_streamed_events_arrive_as_the_server_sends_them(self):
        # The mock server spaces its events 0.2 s apart; a buffering proxy would deliver them
        # together at the end.
        code = ("times = []\n"
                "s = client.chat.completions.create(model='gpt-4o-mini', stream=True, messages=[{'role':'user','content':'hi'}])\n"
                "for ev in s:\n"
                "    times.append(time.monotonic())\n"
                "print(json.dumps({'n': len(times), 'spread': times[-1] - times[0]}))\n")
        r = sdk("alice", code)
        self.assertEqual(r.returncode, 0, r.stderr)
        got = json.loads(r.stdout.strip().splitlines()[-1])
        self.assertGreaterEqual(got["n"], 3)
        self.assertGreater(got["spread"], 0.25, got)

    def test_bad_upstream_certificates_are_named_never_masked(self):
        start_ms = time.time() * 1000 - 1000
        for name, code in (("expired", "upstream_certificate_expired"),
                           ("wrong-host", "upstream_certificate_wrong_host"),
                           ("self-signed", "upstream_certificate_self_signed"),
                           ("untrusted-root", "upstream_certificate_untrusted")):
            r = curl("alice", "https://%s.badssl.lab/" % name, "-w", "\n%{http_code}")
            self.assertEqual(r.returncode, 0, r.stderr)
            body, status = r.stdout.rsplit("\n", 1)
            self.assertEqual(status, "403", (name, r.stdout))
            self.assertEqual(json.loads(body)["error"]["code"], code)
            rec = wait_for_record("request", lambda r, n=name: r.get("sni") == "%s.badssl.lab" % n
                                  and r["ts_ms"] >= start_ms)
            self.assertEqual((rec["verdict"], rec["code"]), ("block", code))
            # The request never reached the faulty server.
            self.assertFalse(any(e["client"] == "10.20.1.10" for e in upstream("%s.badssl.lab" % name)))

    def test_smuggling_and_fronting_are_refused(self):
        forms = [
            "POST /v1/smuggle-cl-te HTTP/1.1\\r\\nHost: api.openai.com\\r\\nContent-Length: 5\\r\\n"
            "Transfer-Encoding: chunked\\r\\n\\r\\n0\\r\\n\\r\\nGET /v1/smuggled HTTP/1.1\\r\\n\\r\\n",
            "POST /v1/smuggle-dup-cl HTTP/1.1\\r\\nHost: api.openai.com\\r\\nContent-Length: 2\\r\\n"
            "Content-Length: 40\\r\\n\\r\\nab",
            "POST /v1/smuggle-te HTTP/1.1\\r\\nHost: api.openai.com\\r\\nTransfer-Encoding: gzip, chunked\\r\\n\\r\\n",
            "POST /v1/smuggle-chunk HTTP/1.1\\r\\nHost: api.openai.com\\r\\nTransfer-Encoding: chunked\\r\\n\\r\\n"
            "-5\\r\\nhello\\r\\n0\\r\\n\\r\\n",
            "GET /v1/smuggle-fold HTTP/1.1\\r\\nHost: api.openai.com\\r\\nX-A: 1\\r\\n folded\\r\\n\\r\\n",
        ]
        for form in forms:
            r = rawhttps("alice", "api.openai.com", form)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn("HTTP/1.1 400", r.stdout, form)
            self.assertIn("request_smuggling", r.stdout, form)
        r = rawhttps("alice", "api.openai.com",
                     "GET /backend-api/fronted-e2e HTTP/1.1\\r\\nHost: chatgpt.com\\r\\n\\r\\n")
        self.assertIn("HTTP/1.1 403", r.stdout)
        self.assertIn("domain_fronting", r.stdout)
        # An absolute-form target naming another server than Host and SNI: fronting too.
        r = rawhttps("alice", "api.openai.com",
                     "GET https://chatgpt.com/backend-api/fronted-abs-e2e HTTP/1.1\\r\\nHost: api.openai.com\\r\\n\\r\\n")
        self.assertIn("HTTP/1.1 403", r.stdout)
        self.assertIn("domain_fronting", r.stdout)
        paths = [e["path"] for e in upstream("api.openai.com") + upstream("chatgpt.com")]
        self.assertFalse([p for p in paths if "smuggl" in p or "fronted" in p], paths)

    def test_pipelined_requests_on_one_connection(self):
        r = rawhttps("bob", "api.openai.com",
                     "GET /v1/models?n=1 HTTP/1.1\\r\\nHost: api.openai.com\\r\\n\\r\\n"
                     "GET /v1/models?n=2 HTTP/1.1\\r\\nHost: api.openai.com\\r\\nConnection: close\\r\\n\\r\\n")
        self.assertEqual(r.stdout.count("HTTP/1.1 200"), 2, r.stdout)

    def test_openssl_sees_the_minted_leaf_or_the_real_one(self):
        def leaf_issuer(host, name):
            r = on(host, "bash", "-c", "openssl s_client -connect %s:443 -servername %s </dev/null 2>/dev/null" % (name, name))
            return [l for l in r.stdout.splitlines() if l.strip().startswith("i:")][:1]
        self.assertIn("Sluice Lab Enterprise CA", str(leaf_issuer("alice", "api.openai.com")))
        self.assertIn("Sluice Lab Public Root CA", str(leaf_issuer("alice", "example.org")))

    def test_guest_sdk_gets_a_permission_error_and_does_not_retry(self):
        code = ("c = openai.OpenAI(api_key='sk-lab-guest-1', max_retries=3, timeout=20)\n"
                "try:\n"
                "    c.chat.completions.create(model='gpt-4o-mini', messages=[{'role':'user','content':'hi'}])\n"
                "    print('allowed')\n"
                "except openai.PermissionDeniedError as e:\n"
                "    print('denied', e.status_code, e.body['code'], e.response.headers.get('x-should-retry'))\n"
                "    print('message', e.body['message'])\n")
        start_ms = time.time() * 1000 - 1000
        r = sdk("guest", code, key="sk-lab-guest-1")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("denied 403 blocked_by_policy false", r.stdout)
        self.assertIn("Blocked by Sluice", r.stdout)
        # Exactly one attempt reached the appliance (no retry) and none reached the server.
        def attempts():
            return [x for x in flows() if x.get("type") == "request" and x["src"] == "10.20.9.99"
                    and x["path"] == "/v1/chat/completions" and x["ts_ms"] >= start_ms]
        # Records reach the log within a second; any retry would have come before the SDK
        # returned.
        wait_for_record("request", lambda x: x["src"] == "10.20.9.99" and x["ts_ms"] >= start_ms
                        and x["path"] == "/v1/chat/completions")
        time.sleep(1)
        recs = attempts()
        self.assertEqual(len(recs), 1, recs)
        self.assertFalse(any(e["client"] == "10.20.9.99" and "identity-feed-test" not in e["path"]
                             for e in upstream("api.openai.com")))

    def test_many_requests_on_one_connection_and_a_large_upload(self):
        args = []
        for i in range(20):
            args += ["https://api.openai.com/v1/models?keepalive=%d" % i, "-o", "/dev/null"]
        r = curl("bob", *args, "-w", "%{num_connects}\n")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(sum(int(x) for x in r.stdout.split()), 1, "one connection for 20 requests")
        n = sum(1 for e in upstream("api.openai.com") if e["path"].startswith("/v1/models?keepalive="))
        self.assertGreaterEqual(n, 20)
        # 5 MB, under the 8 MiB inspection limit: buffered, inspected, forwarded whole.
        script = ("import json,sys; sys.stdout.write(json.dumps({'purpose':'batch','data':'x'*5000000}))")
        r = on("bob", "bash", "-c", "python3 -c %s > /tmp/sluice-upload.json && curl -sS -m 60 -o /dev/null -w '%%{http_code}' "
               "-H 'Content-Type: application/json' --data-binary @/tmp/sluice-upload.json https://api.openai.com/v1/files; "
               "rm -f /tmp/sluice-upload.json" % json.dumps(script))
        self.assertEqual(r.stdout, "200", r.stderr)
        big = [e for e in upstream("api.openai.com") if e["path"] == "/v1/files" and e["body_len"] > 5000000]
        self.assertTrue(big)

    def test_a_clients_next_connection_reuses_its_idle_upstream_connection(self):
        def get(host, tag, *extra):
            r = curl(host, "https://api.openai.com/v1/models?reuse=%s" % tag, "-i", *extra)
            self.assertEqual(r.returncode, 0, r.stderr)
            return r.stdout.lower()
        def alices():
            return sum(1 for r in flows() if r.get("type") == "request" and r["src"] == "10.20.1.10"
                       and r.get("path") == "/v1/models")
        before = alices()
        # Connections of alice, one after the other; the first asks to close. Each
        # interception thread keeps its own idle connections and the kernel spreads alice's
        # connections over the threads, so by the third one at least one was reused.
        first = get("alice", "a1", "-H", "Connection: close")
        self.assertIn("connection: close", first, "the client is told its connection closes")
        for tag in ("a2", "a3", "a4"):
            get("alice", tag)
        get("bob", "b1")
        log = {e["path"].split("=")[-1]: e for e in upstream("api.openai.com") if "?reuse=" in e["path"]}
        ports = [log[t]["client_port"] for t in ("a1", "a2", "a3", "a4")]
        self.assertLess(len(set(ports)), 4, "alice's later connections went up on earlier upstream ones: %s" % ports)
        self.assertNotIn("connection", log["a1"]["headers"], "hop-by-hop headers stay on the client's hop")
        # Upstream connections leave with the client's address: bob's request came up from his.
        self.assertEqual(log["b1"]["client"], "10.20.2.20")
        self.assertTrue(all(log[t]["client"] == "10.20.1.10" for t in ("a1", "a2", "a3", "a4")))
        # Both of alice's requests are recorded.
        deadline = time.time() + 20
        while alices() < before + 4 and time.time() < deadline:
            time.sleep(0.5)
        self.assertGreaterEqual(alices(), before + 4)

    def test_chatgpt_workspace_header_is_injected(self):
        r = curl("alice", "https://chatgpt.com/backend-api/conversation", "-X", "POST",
                 "-H", "Content-Type: application/json", "-H", "ChatGPT-Allowed-Workspace-Id: someone-elses",
                 "-d", '{"messages":[{"content":{"parts":["hello"]}}]}')
        self.assertEqual(r.returncode, 0, r.stderr)
        got = [e for e in upstream("chatgpt.com") if e["client"] == "10.20.1.10" and e["method"] == "POST"]
        self.assertTrue(got, upstream("chatgpt.com"))
        self.assertEqual(got[-1]["headers"].get("chatgpt-allowed-workspace-id"), "00000000-0000-4000-8000-00000000f1a0")
        # bob's ChatGPT traffic is not inspected: no header.
        r = curl("bob", "https://chatgpt.com/backend-api/conversation", "-X", "POST", "-d", "{}")
        self.assertEqual(r.returncode, 0, r.stderr)
        got = [e for e in upstream("chatgpt.com") if e["client"] == "10.20.2.20" and e["method"] == "POST"]
        self.assertTrue(got)
        self.assertNotIn("chatgpt-allowed-workspace-id", got[-1]["headers"])

    def test_client_refusing_the_minted_certificate_is_recorded(self):
        # A client that trusts only the public roots (pinning-like): the handshake fails; the
        # default rules fail closed.
        pub = env()["SLUICE_LAB_PUBLIC_CA"]
        r = curl("alice", "https://api.openai.com/v1/models?pinned=1", "--cacert", pub)
        self.assertNotEqual(r.returncode, 0)
        wait_for_flow(lambda r: r["src"] == "10.20.1.10" and "refused the minted" in (r.get("reason") or ""))
        self.assertFalse(any("pinned=1" in e["path"] for e in upstream("api.openai.com")))


class RulesVariant(unittest.TestCase):
    """Base: runs the class with a changed copy of the current rule set (pushed through the
    control API), then pushes the original back."""

    edit = staticmethod(lambda text: text)

    @classmethod
    def setUpClass(cls):
        code, body = api("GET", "/v1/rules", "SLUICE_ADMIN_TOKEN")
        assert code == 200, body
        cls.original = json.loads(body)["text"]
        push_rules(cls.edit(cls.original))

    @classmethod
    def tearDownClass(cls):
        push_rules(cls.original)


class DivertAll(RulesVariant):
    """With `divert = "all"`, blocked flows get a block response; allowed ones are spliced."""

    edit = staticmethod(lambda t: t.replace('divert = "learned"', 'divert = "all"', 1).replace(
        'dlp = "redact-sensitive"\n', 'dlp = "redact-sensitive"\nallowed_models = ["gpt-4o-mini"]\n', 1))

    def test_blocked_api_client_gets_a_permission_error(self):
        code = ("try:\n"
                "    client.models.list()\n"
                "    print('allowed')\n"
                "except openai.PermissionDeniedError as e:\n"
                "    print('denied', e.status_code, e.body['code'], e.response.headers.get('x-should-retry'))\n")
        start_ms = time.time() * 1000 - 1000
        r = sdk("guest", code, key="sk-lab-guest-1")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("denied 403 blocked_by_policy false", r.stdout)
        rec = wait_for_record("request", lambda r: r["src"] == "10.20.9.99" and r.get("sni") == "api.openai.com"
                              and r["ts_ms"] >= start_ms)
        self.assertEqual((rec["verdict"], rec["rule"]), ("block", "unknown-no-openai"))

    def test_blocked_browser_gets_a_page(self):
        r = curl("guest", "https://chatgpt.com/", "-H", "Accept: text/html")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("This request was blocked", r.stdout)
        self.assertIn("unknown-no-openai", r.stdout)

    def test_allowed_flows_are_spliced_with_the_real_certificate(self):
        self.assertIn("Sluice Lab Public Root CA", issuer("alice", "https://example.org/"))
        flow = wait_for_flow(lambda r: r["src"] == "10.20.1.10" and r.get("sni") == "example.org" and r["verdict"] == "divert")
        self.assertIn("spliced", flow["reason"])

    def test_models_outside_the_rule_are_refused(self):
        code = ("for m in ('gpt-4o', 'gpt-4o-mini'):\n"
                "    try:\n"
                "        client.chat.completions.create(model=m, messages=[{'role':'user','content':'hi'}])\n"
                "        print(m, 'ok')\n"
                "    except openai.PermissionDeniedError as e:\n"
                "        print(m, 'denied', e.body['code'])\n")
        r = sdk("bob", code, key="sk-lab-bob-1")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("gpt-4o denied model_not_allowed", r.stdout)
        self.assertIn("gpt-4o-mini ok", r.stdout)


if __name__ == "__main__":
    unittest.main()


CARD = "4111 1111 1111 1111"
BAD_CARD = "4111 1111 1111 1112"
AWS_KEY = "AKIAIOSFODNN7EXAMPL2"


class Dlp(unittest.TestCase):
    """Prompts are scanned before they leave: blocked for alice, redacted for bob."""

    def chat(self, host, text, key):
        code = ("try:\n"
                "    r = client.chat.completions.create(model='gpt-4o-mini', messages=[{'role':'user','content':%r}])\n"
                "    print('ok', r.choices[0].message.content[:20])\n"
                "except openai.PermissionDeniedError as e:\n"
                "    print('denied', e.body['code'], '|', e.body['message'])\n" % text)
        r = sdk(host, code, key=key)
        self.assertEqual(r.returncode, 0, r.stderr)
        return r.stdout

    def test_card_number_blocked_for_alice(self):
        out = self.chat("alice", "Refund the order paid with card %s please (dlp-alice)" % CARD, "sk-lab-alice-dlp")
        self.assertIn("denied dlp_violation", out)
        self.assertIn("credit_card", out)
        self.assertNotIn("4111", out.split("|", 1)[1])
        self.assertFalse(any("dlp-alice" in e["body"] for e in upstream("api.openai.com")))
        rec = wait_for_record("request", lambda r: r["src"] == "10.20.1.10" and r.get("dlp_action") == "block"
                              and "OpenAI/Python" in (r.get("user_agent") or "")
                              and r["path"] == "/v1/chat/completions")
        self.assertEqual(rec["dlp_findings"][0]["detector"], "credit_card")
        self.assertEqual(rec["dlp_findings"][0]["paths"], ["$.messages[0].content"])
        self.assertNotIn("4111 1111", lab("flows").stdout)

    def test_card_number_redacted_for_bob(self):
        out = self.chat("bob", "Refund the order paid with card %s please (dlp-bob)" % CARD, "sk-lab-bob-dlp")
        self.assertIn("ok", out)
        got = [e for e in upstream("api.openai.com") if "dlp-bob" in e["body"]]
        self.assertTrue(got)
        self.assertIn("[REDACTED:credit_card]", got[-1]["body"])
        self.assertNotIn("4111", got[-1]["body"])
        rec = wait_for_record("request", lambda r: r["src"] == "10.20.2.20" and r.get("dlp_action") == "redact")
        self.assertEqual(rec["dlp_findings"][0]["count"], 1)

    def test_custom_keyword_detector_blocks_code_names(self):
        out = self.chat("alice", "What is the launch date of project bluebird? (dlp-codename)", "sk-lab-alice-dlp")
        self.assertIn("denied dlp_violation", out)
        self.assertIn("internal_codenames", out)
        self.assertFalse(any("dlp-codename" in e["body"] for e in upstream("api.openai.com")))

    def test_streamed_answer_with_a_key_is_masked_when_the_rule_asks(self):
        key = "sk_live_" + "4eC39HqLyjWDarjtT1zdp7dc" + "Xy12Zz34"
        # The prompt holds the key reversed (nothing DLP finds: bob's profile would redact the
        # key itself on the way out); the model answers it the right way round.
        code = ("s = client.chat.completions.create(model='gpt-4o-mini', stream=True, messages=[{'role':'user',"
                "'content':'reverse: %s'}])\n"
                "print('streamed', ''.join(ev.choices[0].delta.content or '' for ev in s if ev.choices))\n"
                "r = client.chat.completions.create(model='gpt-4o-mini', messages=[{'role':'user',"
                "'content':'reverse: %s'}])\n"
                "print('whole', r.choices[0].message.content)\n"
                % (("the key is %s ok" % key)[::-1], ("again %s" % key)[::-1]))
        # bob's rule masks responses: the key never reaches him, whole or split across events.
        r = sdk("bob", code, key="sk-lab-bob-mask")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("streamed the key is [REDACTED:stripe_key] ok", r.stdout)
        self.assertIn("whole again [REDACTED:stripe_key]", r.stdout)
        self.assertNotIn("4eC39", r.stdout)
        rec = wait_for_record("request", lambda r: r["src"] == "10.20.2.20"
                              and r.get("response_masked") == ["stripe_key"])
        self.assertEqual(rec["path"], "/v1/chat/completions")
        # alice's rule does not ask: her answer is untouched.
        r = sdk("alice", code, key="sk-lab-alice-mask")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("streamed the key is %s ok" % key, r.stdout)

    def test_luhn_invalid_number_passes_untouched(self):
        out = self.chat("alice", "Is %s a valid card? (dlp-luhn)" % BAD_CARD, "sk-lab-alice-dlp")
        self.assertIn("ok", out)
        got = [e for e in upstream("api.openai.com") if "dlp-luhn" in e["body"]]
        self.assertTrue(got)
        self.assertIn(BAD_CARD, got[-1]["body"])

    def test_file_upload_with_an_aws_key_is_blocked(self):
        code = ("try:\n"
                "    client.files.create(file=('creds.txt', b'[default]\\naws_access_key_id = %s\\n'), purpose='assistants')\n"
                "    print('uploaded')\n"
                "except openai.PermissionDeniedError as e:\n"
                "    print('denied', e.body['code'], e.body['message'])\n" % AWS_KEY)
        r = sdk("alice", code, key="sk-lab-alice-dlp")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("denied dlp_violation", r.stdout)
        self.assertIn("aws_access_key_id", r.stdout)
        self.assertFalse(any(AWS_KEY in e["body"] for e in upstream("api.openai.com")))


class FailOpen(RulesVariant):
    """With on_inspect_failure = "allow", a client that refuses the minted certificate (pinning)
    is recorded, and its next connections to that name are spliced."""

    edit = staticmethod(lambda t: t.replace('on_inspect_failure = "block"', 'on_inspect_failure = "allow"', 1))

    def test_pinned_client_is_spliced_after_refusing(self):
        pub = env()["SLUICE_LAB_PUBLIC_CA"]
        first = curl("bob", "https://api.openai.com/v1/models?pin=1", "--cacert", pub)
        self.assertNotEqual(first.returncode, 0, "the minted leaf is not trusted by this client")
        wait_for_flow(lambda r: r["src"] == "10.20.2.20" and "its next connections are spliced" in (r.get("reason") or ""))
        second = curl("bob", "https://api.openai.com/v1/models?pin=2", "--cacert", pub, "-v")
        self.assertEqual(second.returncode, 0, second.stderr)
        self.assertIn("Sluice Lab Public Root CA", second.stderr)
        self.assertTrue(any(e["path"] == "/v1/models?pin=2" for e in upstream("api.openai.com")))


class ConnectionCap(unittest.TestCase):
    """Beyond --max-intercepted, new diverted connections are reset at once, and recorded."""

    @classmethod
    def setUpClass(cls):
        cls.args = os.environ.get("SLUICE_DATAPLANE_ARGS", "--report-interval 2")
        lab("start", "--rules", cls.rules(), check=True, timeout=300,
            env_extra={"SLUICE_DATAPLANE_ARGS": cls.args + " --max-intercepted 2"})

    @classmethod
    def tearDownClass(cls):
        lab("start", "--rules", cls.rules(), check=True, timeout=300, env_extra={"SLUICE_DATAPLANE_ARGS": cls.args})

    @staticmethod
    def rules():
        with open(os.path.join(env()["SLUICE_LAB_STATE"], "rules.path")) as f:
            return f.read().strip()

    def test_third_connection_is_refused(self):
        script = ("import socket, ssl, time\n"
                  "ctx = ssl.create_default_context()\n"
                  "held = []\n"
                  "for i in range(2):\n"
                  "    s = socket.create_connection(('api.openai.com', 443), timeout=5)\n"
                  "    held.append(ctx.wrap_socket(s, server_hostname='api.openai.com'))\n"
                  "try:\n"
                  "    s = socket.create_connection(('api.openai.com', 443), timeout=5)\n"
                  "    ctx.wrap_socket(s, server_hostname='api.openai.com')\n"
                  "    print('third accepted')\n"
                  "except OSError as e:\n"
                  "    print('third refused', type(e).__name__)\n")
        r = on("alice", "python3", "-c", script)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("third refused", r.stdout)
        wait_for_flow(lambda r: r["src"] == "10.20.1.10" and "connection cap" in (r.get("reason") or ""))


class Abuse(unittest.TestCase):
    """bob holds 10,000 idle connections to the API (a slowloris), then floods the interception
    listener with TLS handshakes: his connections beyond his share (an eighth of
    --max-intercepted) are reset at once, the data plane's memory stays bounded, and alice's
    requests are served throughout."""

    ABUSE = os.path.join(ROOT, "tests", "e2e", "abuse.py")

    def alice_during(self, attack):
        """Runs `attack` (a command in bob's namespace) while alice requests the API every
        0.3 s; returns the attack's JSON and alice's (answered, failed, worst latency ms)."""
        stop, results = threading.Event(), []

        def alice():
            while not stop.is_set():
                t0 = time.time()
                r = curl("alice", "https://api.openai.com/v1/models", "-o", "/dev/null", "-w", "%{http_code}")
                results.append((r.stdout.strip() == "200", (time.time() - t0) * 1000))
                time.sleep(0.3)

        t = threading.Thread(target=alice)
        t.start()
        try:
            out = subprocess.run([LAB, "exec", "bob", "--", "python3", self.ABUSE, *attack],
                                 capture_output=True, text=True, timeout=180)
        finally:
            stop.set()
            t.join()
        self.assertEqual(out.returncode, 0, out.stderr)
        ok = sum(1 for good, _ in results if good)
        return json.loads(out.stdout), (ok, len(results) - ok, max(ms for _, ms in results))

    def test_idle_connections_and_a_hello_flood_leave_alice_served(self):
        on("bob", "getent", "ahosts", "api.openai.com")  # learned: bob's connections are diverted
        with open(os.path.join(env()["SLUICE_LAB_STATE"], "dataplane.pid")) as f:
            pid = int(f.read())
        before = rss_kb(pid, "VmRSS")
        idle, alice1 = self.alice_during(["idle", "--count", "10000", "--seconds", "10"])
        during_idle = rss_kb(pid, "VmHWM")
        flood, alice2 = self.alice_during(["hellos", "--seconds", "10", "--threads", "8"])
        peak = rss_kb(pid, "VmHWM")
        print("\n  slowloris from bob: %s; alice: %d answered, %d failed, slowest %.0f ms"
              % (json.dumps(idle), *alice1))
        print("  hello flood from bob: %s; alice: %d answered, %d failed, slowest %.0f ms"
              % (json.dumps(flood), *alice2))
        print("  data plane RSS: %d MiB before, peak %d MiB during the idle connections, %d MiB in all"
              % (before // 1024, during_idle // 1024, peak // 1024))
        self.assertGreater(idle["answered"], 9000, idle)
        self.assertLessEqual(idle["open_after"], 8192 // 8, "bob held more than his share")
        self.assertGreater(idle["reset"], 0)
        self.assertGreater(flood["handshakes"], 100, flood)
        for ok, failed, _ in (alice1, alice2):
            self.assertGreater(ok, 5)
            self.assertEqual(failed, 0, "alice's requests failed during the abuse")
        self.assertLess(peak, 512 * 1024, "the data plane's memory grew past 512 MiB")
        wait_for_flow(lambda r: r["src"] == "10.20.2.20" and "intercepted-connection limit" in (r.get("reason") or ""))

