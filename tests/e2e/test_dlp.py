"""End-to-end tests of what DLP reads, written as the attacks of issue 15: each way of hiding a
card from the extractor (encodings, charsets, parts, forms, Unicode tricks, numbers and keys,
base64, a number split across messages, the request head) is sent by alice (finance: the
default blocking profile, on_unscanned = block) over real TLS through the appliance, and must
be refused before it reaches the server. Also every credential kind of the default profile,
content DLP cannot read, and what redaction cannot replace for bob (engineering: redact).

Expects the lab up and the appliance started with rules/default.toml (scripts/test does both).
"""

import base64
import gzip
import json
import os
import subprocess
import unittest

from test_dataplane import ROOT, on, wait_for_record
from test_intercept import RulesVariant, upstream

CARD = "4111 1111 1111 1111"
ALICE = "10.20.1.10"
BOB = "10.20.2.20"

# Sends one request over TLS (the lab CA trusted through SSL_CERT_FILE) with the exact header
# lines given (repeats allowed) and prints the status and body as JSON.
SEND = r"""
import base64, http.client, json, ssl, sys
method, path, server = sys.argv[1], sys.argv[2], sys.argv[5]
body, headers = base64.b64decode(sys.argv[3]), json.loads(sys.argv[4])
c = http.client.HTTPSConnection(server, 443, timeout=20, context=ssl.create_default_context())
c.putrequest(method, path, skip_accept_encoding=True)
c.putheader("User-Agent", "sluice-e2e-dlp")
for k, v in headers:
    c.putheader(k, v)
c.putheader("Content-Length", str(len(body)))
c.endheaders(body)
r = c.getresponse()
print(json.dumps({"status": r.status, "body": r.read().decode("utf-8", "replace")}))
"""


def send(host, path, body, headers=(), method="POST", server="api.openai.com"):
    args = [method, path, base64.b64encode(body).decode(), json.dumps(list(headers)), server]
    r = on(host, "python3", "-c", SEND, *args, timeout=40)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def chat(content, model="gpt-4o-mini"):
    return json.dumps({"model": model, "messages": [{"role": "user", "content": content}]}).encode()


def chat_raw(content):
    """A chat body with `content` written as is (no JSON escaping of non-ASCII)."""
    return ('{"model":"gpt-4o-mini","messages":[{"role":"user","content":"%s"}]}' % content).encode()


def multipart(boundary, part_head, data):
    head = ("--%s\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nassistants\r\n"
            "--%s\r\nContent-Disposition: form-data; name=\"file\"; filename=\"notes.bin\"\r\n%s\r\n\r\n"
            % (boundary, boundary, part_head)).encode()
    return head + data + ("\r\n--%s--\r\n" % boundary).encode()


JSON = [("Content-Type", "application/json")]


def _utf8_with_one_bad_byte():
    b = chat_raw("caf\u00e9 card %s" % CARD)
    i = b.index(b"\xc3")
    return b[:i] + b"\xe9" + b[i + 2:]


def _latin1():
    return ('{"messages":[{"role":"user","content":"caf\u00e9 card %s"}]}' % CARD).encode("latin-1")


# name: (path, body, headers, status, code, finding path)
ATTACKS = {
    "json_with_one_invalid_utf8_byte": ("/v1/chat/completions", _utf8_with_one_bad_byte(), JSON, 403, "dlp_violation",
                                        "$.messages[0].content"),
    "utf16_json": ("/v1/chat/completions", chat("card " + CARD).decode().encode("utf-16-le"), JSON, 403,
                   "dlp_violation", "$.messages[0].content"),
    "latin1_json": ("/v1/chat/completions", _latin1(),
                    [("Content-Type", "application/json; charset=iso-8859-1")], 403, "dlp_violation",
                    "$.messages[0].content"),
    "two_content_encoding_lines": ("/v1/chat/completions", gzip.compress(chat("card " + CARD)),
                                   JSON + [("Content-Encoding", "gzip"), ("Content-Encoding", "identity")],
                                   400, "ambiguous_request", None),
    "gzip_without_the_header": ("/v1/chat/completions", gzip.compress(chat("card " + CARD)), JSON, 403,
                                "dlp_violation", "$.messages[0].content"),
    "multipart_octet_stream_part": ("/v1/files", multipart("XyZ", "Content-Type: application/octet-stream",
                                                           ("card %s\n" % CARD).encode()),
                                    [("Content-Type", "multipart/form-data; boundary=XyZ")], 403,
                                    "dlp_violation", "$.file(notes.bin)"),
    "multipart_gzip_part": ("/v1/files", multipart("XyZ", "Content-Type: application/gzip",
                                                   gzip.compress(("card %s\n" % CARD).encode())),
                            [("Content-Type", "multipart/form-data; boundary=XyZ")], 403, "dlp_violation",
                            "$.file(notes.bin)"),
    "multipart_base64_part": ("/v1/files", multipart("XyZ", "Content-Type: text/plain\r\nContent-Transfer-Encoding: base64",
                                                     base64.b64encode(("card %s\n" % CARD).encode())),
                              [("Content-Type", "multipart/form-data; boundary=XyZ")], 403, "dlp_violation",
                              "$.file(notes.bin)"),
    "multipart_wrong_boundary": ("/v1/files", multipart("RealOne", "Content-Type: text/plain",
                                                        ("card %s" % CARD).encode()),
                                 [("Content-Type", "multipart/form-data; boundary=Declared")], 403,
                                 "dlp_violation", "$.file(notes.bin)"),
    "form_urlencoded_body": ("/v1/completions", ("model=gpt-4o-mini&prompt=card+%s" % CARD.replace(" ", "+")).encode(),
                             [("Content-Type", "application/x-www-form-urlencoded")], 403, "dlp_violation",
                             "$.prompt"),
    "zero_width_space": ("/v1/chat/completions", chat_raw("card 4111\u200b1111\u200b1111\u200b1111"), JSON, 403,
                         "dlp_violation", "$.messages[0].content"),
    "zero_width_joiner": ("/v1/chat/completions", chat_raw("card 4\u200d111 1111 1111 1111"), JSON, 403,
                          "dlp_violation", "$.messages[0].content"),
    "soft_hyphen": ("/v1/chat/completions", chat_raw("card 4111\u00ad1111\u00ad1111\u00ad1111"), JSON, 403,
                    "dlp_violation", "$.messages[0].content"),
    "nbsp_between_digits": ("/v1/chat/completions", chat_raw("card 4111\u00a01111\u00a01111\u00a01111"), JSON, 403,
                            "dlp_violation", "$.messages[0].content"),
    "full_width_digits": ("/v1/chat/completions", chat("card \uff14\uff11\uff11\uff11 \uff11\uff11\uff11\uff11 "
                                                       "\uff11\uff11\uff11\uff11 \uff11\uff11\uff11\uff11"),
                          JSON, 403, "dlp_violation", "$.messages[0].content"),
    "arabic_indic_digits": ("/v1/chat/completions", chat("card \u0664\u0661\u0661\u0661 \u0661\u0661\u0661\u0661 "
                                                         "\u0661\u0661\u0661\u0661 \u0661\u0661\u0661\u0661"),
                            JSON, 403, "dlp_violation", "$.messages[0].content"),
    "dots_as_separators": ("/v1/chat/completions", chat("card 4111.1111.1111.1111"), JSON, 403, "dlp_violation",
                           "$.messages[0].content"),
    "newlines_as_separators": ("/v1/chat/completions", chat("card\n4111\n1111\n1111\n1111\n"), JSON, 403,
                               "dlp_violation", "$.messages[0].content"),
    "card_as_a_json_number": ("/v1/chat/completions",
                              b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"pay"}],"ref":4111111111111111}',
                              JSON, 403, "dlp_violation", "$.ref"),
    "card_as_a_json_key": ("/v1/chat/completions",
                           b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"pay"}],'
                           b'"metadata":{"4111111111111111":"card"}}',
                           JSON, 403, "dlp_violation", "$.metadata(key)"),
    "base64_prompt_in_a_text_field": ("/v1/chat/completions",
                                      chat("decode and answer: " + base64.b64encode(
                                          ("my card is %s" % CARD).encode()).decode()),
                                      JSON, 403, "dlp_violation", "$.messages[0].content(base64)"),
    "number_split_across_two_messages": ("/v1/chat/completions", json.dumps({
        "model": "gpt-4o-mini", "messages": [{"role": "user", "content": "my card starts 4111 1111"},
                                             {"role": "user", "content": "1111 1111 is the rest"}]}).encode(),
        JSON, 403, "dlp_violation", "$.messages[0].content + $.messages[1].content"),
    "card_in_the_query_string": ("/v1/chat/completions?note=card+4111+1111+1111+1111", chat("hello"), JSON, 403,
                                 "dlp_violation", "query.note"),
    "card_in_a_free_text_header": ("/v1/chat/completions", chat("hello"), JSON + [("X-Note", "card " + CARD)], 403,
                                   "dlp_violation", "header.x-note"),
    "card_in_a_cookie": ("/v1/chat/completions", chat("hello"), JSON + [("Cookie", "note=" + CARD.replace(" ", "-"))],
                         403, "dlp_violation", "header.cookie"),
}


class Evasions(unittest.TestCase):
    """Every way around the extractor that issue 15 lists, tried by alice: refused."""


def _attack(name, spec):
    path, body, headers, status, code, finding = spec

    def test(self):
        marker = "e2e-dlp-" + name.replace("_", "-")
        sep = "&" if "?" in path else "?"
        got = send("alice", path + sep + "t=" + marker, body, headers)
        self.assertEqual(got["status"], status, got)
        self.assertEqual(json.loads(got["body"])["error"]["code"], code, got)
        self.assertNotIn("4111", got["body"], "the answer names detectors, never values")
        self.assertFalse(any(marker in e["path"] for e in upstream("api.openai.com")), "reached the server")
        if finding:
            rec = wait_for_record("request", lambda r: r["src"] == ALICE and r.get("dlp_action") == "block" and any(
                finding in f["paths"] for f in r.get("dlp_findings", [])))
            self.assertEqual(rec["dlp_action"], "block", rec)
            self.assertIn(finding, [p for f in rec["dlp_findings"] for p in f["paths"]], rec)
            # (Its times aside: a Unix ms such as 1796411125040 has "4111" in it.)
            self.assertNotIn("4111", json.dumps({k: v for k, v in rec.items() if not k.endswith("_ms")}))

    test.__name__ = "test_" + name
    return test


for _name, _spec in ATTACKS.items():
    setattr(Evasions, "test_" + _name, _attack(_name, _spec))


def credential_examples():
    """The first example of each credential detector in the DLP quality corpus."""
    families = {}
    with open(os.path.join(ROOT, "rules", "src", "detectors.rs")) as f:
        for line in f:
            parts = line.strip().split('"')
            if len(parts) >= 5 and parts[3] in ("credential", "financial", "pii"):
                families[parts[1]] = parts[3]
    seen = {}
    with open(os.path.join(ROOT, "dlp", "testdata", "corpus.jsonl")) as f:
        for line in f:
            row = json.loads(line)
            for e in row["expect"]:
                if families.get(e) == "credential" and e not in seen:
                    seen[e] = row["text"]
    return seen


# Sends each (detector, text) of argv[1] as a chat prompt on one connection; prints the answers.
SEND_MANY = r"""
import http.client, json, ssl, sys
c = http.client.HTTPSConnection("api.openai.com", 443, timeout=20, context=ssl.create_default_context())
out = {}
for name, text in json.loads(sys.argv[1]).items():
    body = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]})
    c.request("POST", "/v1/chat/completions?t=e2e-cred-" + name, body, {"Content-Type": "application/json"})
    r = c.getresponse()
    out[name] = [r.status, r.read().decode("utf-8", "replace")]
print(json.dumps(out))
"""


class Profiles(unittest.TestCase):
    """The shipped profiles, as a new user gets them."""

    def test_every_credential_kind_is_blocked_for_alice(self):
        examples = credential_examples()
        self.assertGreaterEqual(len(examples), 50)
        r = on("alice", "python3", "-c", SEND_MANY, json.dumps(examples), timeout=120)
        self.assertEqual(r.returncode, 0, r.stderr)
        answers = json.loads(r.stdout)
        missed = [n for n, (status, body) in answers.items()
                  if status != 403 or n not in json.loads(body)["error"]["message"]]
        self.assertEqual(missed, [], "credential kinds that reached the API")
        self.assertFalse(any("e2e-cred-" in e["path"] for e in upstream("api.openai.com")))

    def test_unreadable_content_is_refused_for_alice_and_recorded_for_bob(self):
        archive = b"7z\xbc\xaf\x27\x1c\0\x04\x8d\x9b\xd5\x0f" + os.urandom(64)
        body = multipart("B", "Content-Type: application/octet-stream", archive)
        headers = [("Content-Type", "multipart/form-data; boundary=B")]
        got = send("alice", "/v1/files?t=e2e-unscanned-alice", body, headers)
        self.assertEqual(got["status"], 403, got)
        self.assertEqual(json.loads(got["body"])["error"]["code"], "unscanned_content")
        got = send("bob", "/v1/files?t=e2e-unscanned-bob", body, headers)
        self.assertEqual(got["status"], 200, got)
        rec = wait_for_record("request", lambda r: r["src"] == BOB and r.get("unscanned") == [
            "$.file(notes.bin) (7z archive)"])
        self.assertEqual(rec["dlp_action"], "unscanned")

    def test_images_pass_recorded_and_documents_are_read(self):
        png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01\x08\x06\0\0\0"
        headers = [("Content-Type", "multipart/form-data; boundary=B")]
        got = send("alice", "/v1/files?t=e2e-image-alice", multipart("B", "Content-Type: image/png", png), headers)
        self.assertEqual(got["status"], 200, got)
        rec = wait_for_record("request", lambda r: r["src"] == ALICE and r.get("unscanned") == [
            "$.file(notes.bin) (PNG image)"])
        self.assertEqual(rec["dlp_action"], "unscanned")
        import io
        import zipfile
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr("[Content_Types].xml", "<Types/>")
            z.writestr("xl/sharedStrings.xml", "<sst><si><t>ssn 123-45-6789</t></si></sst>")
        got = send("alice", "/v1/files?t=e2e-xlsx-alice", multipart("B", "Content-Type: application/octet-stream",
                                                                    buf.getvalue()), headers)
        self.assertEqual(got["status"], 403, got)
        self.assertIn("us_ssn", got["body"])

    def test_what_bob_cannot_have_redacted_is_refused(self):
        split = json.dumps({"model": "gpt-4o-mini",
                            "messages": [{"role": "user", "content": "my card starts 4111 1111"},
                                         {"role": "user", "content": "1111 1111 is the rest"}]}).encode()
        got = send("bob", "/v1/chat/completions?t=e2e-split-bob", split, JSON)
        self.assertEqual(got["status"], 403, got)
        self.assertIn("cannot be redacted where it is", got["body"])
        got = send("bob", "/v1/chat/completions?t=e2e-header-bob", chat("hello"), JSON + [("X-Note", CARD)])
        self.assertEqual(got["status"], 403, got)
        got = send("bob", "/v1/chat/completions?t=e2e-redact-bob", chat("card \uff14\uff11\uff11\uff11 "
                                                                         "\uff11\uff11\uff11\uff11 \uff11\uff11\uff11"
                                                                         "\uff11 \uff11\uff11\uff11\uff11 ok"), JSON)
        self.assertEqual(got["status"], 200, got)
        sent = [e for e in upstream("api.openai.com") if "e2e-redact-bob" in e["path"]]
        self.assertTrue(sent)
        self.assertIn("card [REDACTED:credit_card] ok", json.loads(sent[-1]["body"])["messages"][0]["content"])


class ChatGpt(unittest.TestCase):
    """ChatGPT's web surfaces for alice: conversations, signed-out use, and uploads, whose
    bytes go by PUT to an oaiusercontent.com blob URL."""

    def test_f_conversation_parts_are_scanned(self):
        body = json.dumps({"action": "next", "messages": [{
            "id": "m1", "author": {"role": "user"},
            "content": {"content_type": "multimodal_text", "parts": [
                {"content_type": "image_asset_pointer", "asset_pointer": "file-service://file-x"},
                "refund card %s please" % CARD]}}],
            "model": "auto", "parent_message_id": "client-created-root"}).encode()
        got = send("alice", "/backend-api/f/conversation?t=e2e-chatgpt-parts", body, JSON, server="chatgpt.com")
        self.assertEqual(got["status"], 403, got)
        rec = wait_for_record("request", lambda r: r["src"] == ALICE and r.get("sni") == "chatgpt.com"
                              and r.get("dlp_action") == "block")
        self.assertIn("$.messages[0].content.parts[1]", rec["dlp_findings"][0]["paths"])
        self.assertFalse(any("e2e-chatgpt-parts" in e["path"] for e in upstream("chatgpt.com")))

    def test_signed_out_chatgpt_is_refused(self):
        body = json.dumps({"action": "next", "messages": []}).encode()
        got = send("alice", "/backend-anon/conversation?t=e2e-anon", body, JSON, server="chatgpt.com")
        self.assertEqual(got["status"], 403, got)
        self.assertEqual(json.loads(got["body"])["error"]["code"], "chatgpt_signed_out")
        rec = wait_for_record("request", lambda r: r["src"] == ALICE and r.get("path") == "/backend-anon/conversation")
        self.assertEqual((rec.get("chatgpt_account"), rec["verdict"]), ("anonymous", "block"), rec)
        got = send("alice", "/backend-api/conversation?t=e2e-signed-in", json.dumps(
            {"action": "next", "messages": [{"content": {"content_type": "text", "parts": ["hello"]}}]}).encode(),
            JSON, server="chatgpt.com")
        self.assertEqual(got["status"], 200, got)

    def test_an_upload_put_to_the_blob_host_is_scanned(self):
        csv = "name,ssn\nbob,123-45-6789\nann,234-56-7890\n".encode()
        path = "/file-e2eupload?se=2026-12-01T00%3A00%3A00Z&sp=cw&sv=2024-08-04&sr=b&sig=Xy%2Bq0Qm9ZyR5N8Wq%3D&t=e2e-upload-ssn"
        headers = [("Content-Type", "text/csv"), ("x-ms-blob-type", "BlockBlob")]
        got = send("alice", path, csv, headers, method="PUT", server="files.oaiusercontent.com")
        self.assertEqual(got["status"], 403, got)
        self.assertIn("us_ssn", got["body"])
        self.assertFalse(any("e2e-upload-ssn" in e["path"] for e in upstream("files.oaiusercontent.com")))
        clean = "name,team\nbob,finance\n".encode()
        got = send("alice", path.replace("e2e-upload-ssn", "e2e-upload-clean"), clean, headers, method="PUT",
                   server="files.oaiusercontent.com")
        self.assertEqual(got["status"], 200, got)
        self.assertTrue(any("e2e-upload-clean" in e["path"] for e in upstream("files.oaiusercontent.com")))


class Codex(unittest.TestCase):
    """The Codex CLI sends its Responses bodies zstd-compressed, to ChatGPT's codex backend and
    to the API."""

    def test_zstd_codex_bodies_are_read(self):
        body = json.dumps({"model": "gpt-5-codex", "instructions": "You are Codex.", "input": [
            {"type": "message", "role": "user", "content": [
                {"type": "input_text", "text": "deploy with key AKIAIOSFODNN7EXAMPLE please"}]}],
            "stream": True}).encode()
        packed = subprocess.run(["zstd", "-q", "-c"], input=body, capture_output=True, check=True).stdout
        headers = JSON + [("Content-Encoding", "zstd"), ("originator", "codex_cli_rs")]
        for server, path in [("chatgpt.com", "/backend-api/codex/responses"), ("api.openai.com", "/v1/responses")]:
            got = send("alice", path + "?t=e2e-codex-zstd", packed, headers, server=server)
            self.assertEqual(got["status"], 403, (server, got))
            self.assertIn("aws_access_key_id", got["body"])
            self.assertFalse(any("e2e-codex-zstd" in e["path"] for e in upstream(server)))
        rec = wait_for_record("request", lambda r: r["src"] == ALICE and r.get("path") == "/backend-api/codex/responses"
                              and r.get("dlp_action") == "block")
        self.assertIn("$.input[0].content[0].text", rec["dlp_findings"][0]["paths"])


class TokenIds(unittest.TestCase):
    """Embeddings input as token ids (cl100k_base for text-embedding-3-small)."""

    def test_token_id_embeddings_input_is_decoded(self):
        # "refund card 4111 1111 1111 1111 (e2e-tokens)"
        ids = [69583, 3786, 220, 17337, 16, 220, 5037, 16, 220, 5037, 16, 220, 5037, 16, 320, 68, 17, 68, 2442, 9912, 8]
        body = json.dumps({"model": "text-embedding-3-small", "input": ids}).encode()
        got = send("alice", "/v1/embeddings?t=e2e-token-ids", body, JSON)
        self.assertEqual(got["status"], 403, got)
        self.assertIn("credit_card", got["body"])
        self.assertFalse(any("e2e-token-ids" in e["path"] for e in upstream("api.openai.com")))
        rec = wait_for_record("request", lambda r: r["src"] == ALICE and r.get("path") == "/v1/embeddings"
                              and r.get("dlp_action") == "block")
        self.assertEqual(rec["dlp_findings"][0]["paths"], ["$.input(tokens)"])


class ModelAllowList(RulesVariant):
    """bob's rule allows only gpt-4o-mini: a model named inside a compressed or multipart body
    is read all the same, and one that cannot be read is refused."""

    edit = staticmethod(lambda t: t.replace(
        'dlp = "redact-sensitive"\n', 'dlp = "redact-sensitive"\nallowed_models = ["gpt-4o-mini"]\n', 1))

    def code(self, got):
        return json.loads(got["body"])["error"]["code"] if got["status"] != 200 else "ok"

    def test_gzip_and_multipart_bodies_against_the_model_allow_list(self):
        gz = gzip.compress(chat("hello", model="gpt-4o"))
        got = send("bob", "/v1/chat/completions?t=e2e-model-gzip", gz, JSON + [("Content-Encoding", "gzip")])
        self.assertEqual((got["status"], self.code(got)), (403, "model_not_allowed"), got)
        got = send("bob", "/v1/chat/completions?t=e2e-model-gzip-bare", gz, JSON)
        self.assertEqual((got["status"], self.code(got)), (403, "model_unreadable"), got)
        form = ("--B\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\ngpt-4o\r\n"
                "--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n"
                "Content-Type: audio/wav\r\n\r\nRIFF\x24\x00\x00\x00WAVEfmt \r\n--B--\r\n").encode("latin-1")
        got = send("bob", "/v1/audio/transcriptions?t=e2e-model-multipart", form,
                   [("Content-Type", "multipart/form-data; boundary=B")])
        self.assertEqual((got["status"], self.code(got)), (403, "model_not_allowed"), got)
        got = send("bob", "/v1/chat/completions?t=e2e-model-ok", gzip.compress(chat("hello")),
                   JSON + [("Content-Encoding", "gzip")])
        self.assertEqual(got["status"], 200, got)
        seen = [e["path"] for e in upstream("api.openai.com") if "e2e-model-" in e["path"]]
        self.assertEqual([p for p in seen if "e2e-model-ok" not in p], [], "refused ones never went up")


class ResponsesAndTools(unittest.TestCase):
    """The Responses API's items and tool-call arguments, as the SDKs write them."""

    def test_responses_api_with_a_card_in_input_file(self):
        csv = base64.b64encode(("name,card\nbob,%s\n" % CARD).encode()).decode()
        body = json.dumps({"model": "gpt-4.1-mini", "input": [{"role": "user", "content": [
            {"type": "input_text", "text": "total the file"},
            {"type": "input_file", "filename": "cards.csv", "file_data": "data:text/csv;base64," + csv}]}]}).encode()
        got = send("alice", "/v1/responses?t=e2e-responses-file", body, JSON)
        self.assertEqual(got["status"], 403, got)
        where = "$.input[0].content[1].file_data(base64)"
        rec = wait_for_record("request", lambda r: r["src"] == ALICE and r.get("path") == "/v1/responses" and any(
            where in f["paths"] for f in r.get("dlp_findings", [])))
        self.assertEqual(rec["dlp_action"], "block")

    def test_a_tool_call_argument_carrying_a_secret(self):
        args = json.dumps({"db_url": "postgres://app:S3cretPassw0rd!@db.internal/prod"})
        body = json.dumps({"model": "gpt-4o-mini", "messages": [
            {"role": "user", "content": "connect"},
            {"role": "assistant", "tool_calls": [{"id": "call_1", "type": "function",
                                                   "function": {"name": "connect", "arguments": args}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "ok"}]}).encode()
        got = send("alice", "/v1/chat/completions?t=e2e-tool-args", body, JSON)
        self.assertEqual(got["status"], 403, got)
        self.assertIn("connection_string_password", got["body"])
        where = "$.messages[1].tool_calls[0].function.arguments(json).db_url"
        rec = wait_for_record("request", lambda r: r["src"] == ALICE and any(
            where in f["paths"] for f in r.get("dlp_findings", [])))
        self.assertEqual(rec["dlp_action"], "block")


if __name__ == "__main__":
    unittest.main()
