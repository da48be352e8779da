"""End-to-end tests of HTTP/2 interception in the lab. Real clients: curl (--http2, --http1.1),
nghttp (offers only h2), httpx with http2=True, and a hostile raw HTTP/2 client. Upstreams:
files.openai.com speaks HTTP/2 and HTTP/1.1, api.openai.com HTTP/1.1 only.

Expects the lab up and the appliance started with rules/default.toml (scripts/test does both).
"""

import json
import os
import time
import unittest

from test_dataplane import ROOT, curl, lab, on, wait_for_flow, wait_for_record

H2FLOOD = os.path.join(ROOT, "tests", "e2e", "h2flood.py")
CARD = "4111 1111 1111 1111"
# Tags paths, so what the mock logged in an earlier run is not counted.
RUN = str(int(time.time() * 1000))


def upstream(server):
    return [json.loads(x) for x in lab("upstream-log", server).stdout.splitlines()]


def httpx(host, code):
    """Runs `code` in the client with `client`, an httpx.Client(http2=True, http1=...)."""
    return on(host, "python3", "-c", "import json, httpx\n" + code, timeout=90)


def dataplane_rss_kib():
    state = [x for x in lab("env").stdout.splitlines() if x.startswith("export SLUICE_LAB_STATE=")]
    with open(os.path.join(state[0].split("=", 1)[1], "dataplane.pid")) as f:
        pid = f.read().strip()
    with open("/proc/%s/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


class Http2(unittest.TestCase):
    def test_h2_both_sides_with_an_h2_server(self):
        r = curl("alice", "https://files.openai.com/v1/models?h2=" + RUN, "--http2", "-o", "/dev/null",
                 "-w", "%{http_version}")
        self.assertEqual(r.stdout, "2", r.stderr)
        seen = [e for e in upstream("files.openai.com") if e["path"] == "/v1/models?h2=" + RUN]
        self.assertEqual(seen[-1]["http_version"], "2")
        rec = wait_for_record("request", lambda r: r.get("sni") == "files.openai.com"
                              and r.get("path") == "/v1/models" and r.get("http_version") == "2")
        self.assertEqual((rec["identity"], rec["status"]), ("finance", 200))
        flow = wait_for_flow(lambda f: f.get("sni") == "files.openai.com" and f.get("alpn_negotiated") == "h2")
        self.assertEqual(flow["action"], "inspect")

    def test_an_h2_only_client_is_inspected_and_translated_to_http1(self):
        r = on("alice", "nghttp", "-n", "-s", "https://api.openai.com/v1/models?h2only=" + RUN)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("200", r.stdout)
        seen = [e for e in upstream("api.openai.com") if e["path"] == "/v1/models?h2only=" + RUN]
        self.assertEqual(len(seen), 1, "inspected and re-originated, not spliced")
        self.assertEqual(seen[0]["http_version"], "1.1")
        self.assertEqual(seen[0]["headers"]["host"], "api.openai.com")
        rec = wait_for_record("request", lambda r: r.get("path") == "/v1/models" and r.get("http_version") == "2"
                              and r.get("sni") == "api.openai.com")
        self.assertEqual(rec["verdict"], "allow")
        flow = wait_for_flow(lambda f: f.get("sni") == "api.openai.com" and f.get("alpn_negotiated") == "h2")
        self.assertEqual(flow["action"], "inspect")

    def test_an_http1_client_stays_http1_to_an_h2_server(self):
        r = curl("alice", "https://files.openai.com/v1/models?h1=" + RUN, "--http1.1", "-o", "/dev/null",
                 "-w", "%{http_version}")
        self.assertEqual(r.stdout, "1.1", r.stderr)
        seen = [e for e in upstream("files.openai.com") if e["path"] == "/v1/models?h1=" + RUN]
        self.assertEqual(seen[-1]["http_version"], "1.1")

    def test_concurrent_streams_one_blocked_by_dlp_the_others_complete(self):
        for server in ("files.openai.com", "api.openai.com"):
            code = (
                "import asyncio\n"
                "async def main():\n"
                "    async with httpx.AsyncClient(http2=True, http1=False, timeout=20) as c:\n"
                "        def body(text):\n"
                "            return {'model': 'gpt-4o-mini', 'messages': [{'role': 'user', 'content': text}]}\n"
                "        url = 'https://%s/v1/chat/completions'\n"
                "        rs = await asyncio.gather(*[c.post(url + '?n=%s%%d' %% i, json=body(t))\n"
                "             for i, t in enumerate(['hello', 'charge %s now', 'bye'])])\n"
                "        print(json.dumps([[r.http_version, r.status_code, r.text] for r in rs]))\n"
                "asyncio.run(main())\n" % (server, RUN, CARD))
            r = httpx("alice", code)
            self.assertEqual(r.returncode, 0, r.stderr)
            got = json.loads(r.stdout)
            self.assertEqual([g[0] for g in got], ["HTTP/2"] * 3)
            self.assertEqual([g[1] for g in got], [200, 403, 200], got)
            self.assertIn("dlp_violation", got[1][2])
            self.assertNotIn("4111", got[1][2])
            seen = [e for e in upstream(server) if e["path"].startswith("/v1/chat/completions?n=" + RUN)]
            paths = sorted(e["path"][-1] for e in seen)
            self.assertEqual(paths, ["0", "2"], server)
            self.assertFalse(any("4111" in e["body"] for e in seen))
            rec = wait_for_record("request", lambda r: r.get("sni") == server and r.get("http_version") == "2"
                                  and r.get("dlp_action") == "block")
            self.assertEqual(rec["code"], "dlp_violation")

    def test_sse_over_h2_is_masked_event_by_event(self):
        body = json.dumps({"model": "gpt-4o-mini", "stream": True, "messages": [
            # Reversed, the key is nothing DLP finds on the way out; the model answers it the
            # right way round, and the answer is masked.
            {"role": "user", "content": "reverse: " + "use sk-proj-abcdefghij0123456789ABCDEFGHIJ0123456789abcd now"[::-1]}]})
        r = curl("bob", "https://files.openai.com/v1/chat/completions", "--http2", "-N", "-H",
                 "Content-Type: application/json", "-d", body, "-w", "\n%{http_version}")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertTrue(r.stdout.endswith("\n2"), r.stdout[-200:])
        # bob's rule masks credentials in the answer.
        self.assertNotIn("abcdefghij0123456789", r.stdout)
        streamed = "".join(json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
                           for line in r.stdout.splitlines() if line.startswith("data: {"))
        self.assertEqual(streamed, "use [REDACTED:openai_api_key] now")
        self.assertIn("data: [DONE]", r.stdout)

    def test_a_5mb_upload_over_h2(self):
        script = "import json,sys; sys.stdout.write(json.dumps({'purpose':'batch','data':'y'*5000000}))"
        r = on("bob", "bash", "-c", "python3 -c %s > /tmp/sluice-h2-upload.json && curl -sS -m 60 --http2 -o /dev/null "
               "-w '%%{http_version} %%{http_code}' -H 'Content-Type: application/json' "
               "--data-binary @/tmp/sluice-h2-upload.json https://files.openai.com/v1/files?h2upload=%s; "
               "rm -f /tmp/sluice-h2-upload.json" % (json.dumps(script), RUN), timeout=90)
        self.assertEqual(r.stdout, "2 200", r.stderr)
        big = [e for e in upstream("files.openai.com") if e["path"] == "/v1/files?h2upload=" + RUN]
        self.assertEqual(big[-1]["body_len"], 5000000 + len('{"purpose": "batch", "data": ""}'))
        self.assertEqual(big[-1]["http_version"], "2")

    def test_no_common_alpn_is_refused_and_not_taken_for_pinning(self):
        # A client offering only a protocol the engine does not speak: the handshake fails
        # with its real cause, and the client's next connections are still inspected.
        r = on("alice", "openssl", "s_client", "-connect", "api.openai.com:443", "-servername",
               "api.openai.com", "-alpn", "spdy/3", timeout=30)
        self.assertNotIn("ALPN protocol: spdy/3", r.stdout)
        flow = wait_for_flow(lambda f: f.get("sni") == "api.openai.com" and "no application protocol" in (f.get("reason") or ""))
        self.assertEqual(flow["action"], "block")
        r = curl("alice", "https://api.openai.com/v1/models?after-alpn=" + RUN, "-o", "/dev/null", "-w", "%{http_code}")
        self.assertEqual(r.stdout, "200", r.stderr)
        seen = [e for e in upstream("api.openai.com") if e["path"] == "/v1/models?after-alpn=" + RUN]
        self.assertEqual(len(seen), 1, "inspected (re-originated by the engine), not spliced")
        rec = wait_for_record("request", lambda r: r.get("path") == "/v1/models" and r.get("identity") == "finance")
        self.assertEqual(rec["verdict"], "allow")

    def test_a_rapid_reset_client_is_cut_off_and_memory_stays_bounded(self):
        before = dataplane_rss_kib()
        r = on("alice", "python3", H2FLOOD, "api.openai.com", "20000", RUN, timeout=120)
        self.assertEqual(r.returncode, 0, r.stderr)
        out = json.loads(r.stdout)
        self.assertTrue(out["goaway"] is not None or out["closed"], out)
        self.assertLess(out["opened"], 20000, "stopped before the end: %s" % out)
        after = dataplane_rss_kib()
        self.assertLess(after - before, 64 * 1024, "data plane grew %d KiB" % (after - before))
        # The flood's streams mostly never reached the server.
        reached = [e for e in upstream("api.openai.com") if e["path"] == "/v1/models?flood=" + RUN]
        self.assertLess(len(reached), 1000)
        # The appliance still serves.
        time.sleep(0.5)
        r = curl("alice", "https://api.openai.com/v1/models?after=flood", "-o", "/dev/null", "-w", "%{http_code}")
        self.assertEqual(r.stdout, "200", r.stderr)


if __name__ == "__main__":
    unittest.main()
