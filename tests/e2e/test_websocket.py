"""End-to-end tests of WebSocket inspection in the lab. Real clients: the OpenAI Python SDK's
Realtime connection, and the `websockets` library with permessage-deflate (as the Codex CLI's
WebSocket mode sends `response.create`). The mock answers Realtime and Responses events.

Expects the lab up and the appliance started with rules/default.toml (scripts/test does both).
"""

import json
import time
import unittest

from test_dataplane import lab, on, wait_for_record

RUN = str(int(time.time() * 1000))
CARD = "4111 1111 1111 1111"


def upstream(server="api.openai.com"):
    return [json.loads(x) for x in lab("upstream-log", server).stdout.splitlines()]


def ws_messages(tag):
    return [e for e in upstream() if e["method"] == "WS" and tag in e["body"]]


def realtime(host, text):
    """The SDK's Realtime connection: one conversation item, then the next event or the close."""
    code = (
        "import json, openai\n"
        "client = openai.OpenAI(api_key='sk-lab-rt', max_retries=0)\n"
        "out = {}\n"
        "try:\n"
        "    with client.realtime.connect(model='gpt-4o-realtime-preview', max_retries=0) as conn:\n"
        "        conn.conversation.item.create(item={'type': 'message', 'role': 'user',\n"
        "            'content': [{'type': 'input_text', 'text': %r}]})\n"
        "        out['event'] = json.loads(conn.recv_bytes())['type']\n"
        "except Exception as e:\n"
        "    out['error'] = type(e).__name__\n"
        "    out['detail'] = str(e)\n"
        "print(json.dumps(out))\n" % text)
    r = on(host, "python3", "-c", code, timeout=60)
    return json.loads(r.stdout.strip().splitlines()[-1]) if r.stdout.strip() else {"stderr": r.stderr}


def codex(host, texts, fragment=False):
    """`response.create` events over a compressed WebSocket to /v1/responses (websockets
    negotiates permessage-deflate with context takeover); the answers, or the close code."""
    code = (
        "import json, asyncio, websockets\n"
        "async def main():\n"
        "    out = {'got': []}\n"
        "    try:\n"
        "        async with websockets.connect('wss://api.openai.com/v1/responses',\n"
        "                additional_headers={'Authorization': 'Bearer sk-lab-codex'}) as ws:\n"
        "            out['extensions'] = [e.name for e in ws.protocol.extensions]\n"
        "            for t in %r:\n"
        "                ev = json.dumps({'type': 'response.create', 'response': {\n"
        "                    'instructions': 'You are Codex.', 'input': [{'type': 'message', 'role': 'user',\n"
        "                    'content': [{'type': 'input_text', 'text': t}]}]}})\n"
        "                if %r:\n"
        "                    await ws.send([ev[:40], ev[40:80], ev[80:]])\n"
        "                else:\n"
        "                    await ws.send(ev)\n"
        "                while True:\n"
        "                    m = json.loads(await ws.recv())\n"
        "                    out['got'].append(m)\n"
        "                    if m['type'] == 'response.done':\n"
        "                        break\n"
        "    except websockets.ConnectionClosed as e:\n"
        "        out['close'] = [e.rcvd.code, e.rcvd.reason] if e.rcvd else None\n"
        "    print(json.dumps(out))\n"
        "asyncio.run(main())\n" % (texts, fragment))
    r = on(host, "python3", "-c", code, timeout=60)
    return json.loads(r.stdout.strip().splitlines()[-1]) if r.stdout.strip() else {"stderr": r.stderr}


class WebSocket(unittest.TestCase):
    def test_a_realtime_card_number_is_blocked_for_alice(self):
        tag = "rt-block-" + RUN
        out = realtime("alice", "%s my card is %s" % (tag, CARD))
        self.assertIn("error", out, out)
        self.assertIn("1008", out.get("detail", ""), out)
        self.assertEqual(ws_messages(tag), [], "the message never reached the server")
        rec = wait_for_record("request", lambda r: (r.get("websocket") or {}).get("record") == "message"
                              and r.get("code") == "dlp_violation" and r.get("identity") == "finance")
        self.assertEqual(rec["websocket"]["event"], "conversation.item.create")
        conn = wait_for_record("request", lambda r: (r.get("websocket") or {}).get("record") == "connection"
                               and (r["websocket"].get("close_code") == 1008) and r.get("identity") == "finance")
        self.assertEqual(conn["path"], "/v1/realtime")
        self.assertEqual(conn["model"], "gpt-4o-realtime-preview")
        self.assertNotIn("4111", json.dumps(conn))

    def test_a_realtime_card_number_is_redacted_for_bob(self):
        tag = "rt-redact-" + RUN
        out = realtime("bob", "%s my card is %s" % (tag, CARD))
        self.assertEqual(out.get("event"), "conversation.item.created", out)
        seen = ws_messages(tag)
        self.assertEqual(len(seen), 1)
        self.assertIn("[REDACTED:credit_card]", seen[0]["body"])
        self.assertNotIn("4111", seen[0]["body"])
        wait_for_record("request", lambda r: (r.get("websocket") or {}).get("record") == "message"
                        and r.get("dlp_action") == "redact" and r.get("identity") == "engineering")

    def test_codex_response_create_over_permessage_deflate(self):
        tag = "codex-" + RUN
        out = codex("bob", ["%s list the files" % tag, "%s list them again" % tag])
        self.assertEqual(out.get("extensions"), ["permessage-deflate"], out)
        self.assertEqual([m["type"] for m in out["got"]], ["response.output_text.delta", "response.done"] * 2)
        seen = ws_messages(tag)
        self.assertEqual(len(seen), 2)
        self.assertTrue(all(e["headers"]["ws_compressed"] == "true" for e in seen), "relayed compressed, unchanged")
        # alice's rule blocks a key in a compressed message read against the earlier context.
        key = "sk-proj-" + "Zx9yWv8uTs7rQp6oNm5lKj4iHg3fEd2cBa1zYx0wVu9t"
        out = codex("alice", ["%s first" % tag, "%s use %s" % (tag, key)])
        self.assertEqual(out.get("close", [None])[0], 1008, out)
        self.assertIn("finance-openai-inspect", out["close"][1])
        self.assertFalse(any(key in e["body"] for e in upstream()))

    def test_fragmented_messages_are_inspected_whole(self):
        tag = "frag-" + RUN
        out = codex("alice", ["%s card %s" % (tag, CARD)], fragment=True)
        self.assertEqual(out.get("close", [None])[0], 1008, out)
        self.assertEqual(ws_messages(tag), [])
        out = codex("bob", ["%s card %s" % (tag, CARD)], fragment=True)
        self.assertEqual(len(out["got"]), 2, out)
        seen = ws_messages(tag)
        self.assertIn("[REDACTED:credit_card]", seen[-1]["body"])

    def test_a_server_message_with_an_api_key_is_masked_for_bob(self):
        out = codex("bob", ["please leak a key " + RUN])
        deltas = [m["delta"] for m in out["got"] if m["type"] == "response.output_text.delta"]
        self.assertEqual(len(deltas), 1, out)
        self.assertIn("[REDACTED:openai_api_key]", deltas[0])
        self.assertNotIn("Ab3dEf6hIj9k", deltas[0])


if __name__ == "__main__":
    unittest.main()
