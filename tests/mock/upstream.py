#!/usr/bin/env python3
"""Mock "internet" servers of the Sluice lab.

Serves every lab host on its IPv4 and IPv6 address, HTTPS on 443 with the host's certificate
and plain HTTP on 80. The OpenAI hosts answer the API paths (JSON, and server-sent events when
the request asks to stream); ChatGPT answers backend-api conversations; other hosts answer a
short page. Every request is appended to a JSON-lines log (method, host, path, headers, body,
HTTP version) so tests can assert on what actually left the appliance.

Hosts marked "h2" also speak HTTP/2 (ALPN h2, then http/1.1), with the `h2` package (from the
lab venv's httpx[http2]); the others speak HTTP/1.1 only, with the standard library.

Usage: upstream.py --config hosts.json --log upstream.jsonl
hosts.json: [{"name": ..., "ips": [...], "cert": ..., "key": ..., "h2": bool}, ...]
"""

import argparse
import base64
import hashlib
import json
import socket
import ssl
import struct
import sys
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOG_LOCK = threading.Lock()
LOG_PATH = None


def record(entry):
    with LOG_LOCK:
        with open(LOG_PATH, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "lab-upstream/1"

    def log_message(self, fmt, *args):  # quiet
        pass

    def _body(self):
        n = int(self.headers.get("Content-Length") or 0)
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(n) if n else b""

    def _record(self, body):
        log_request(self.server.lab_name, self.server.scheme, self.client_address, self.command,
                    self.headers.get("Host", ""), self.path,
                    {k.lower(): v for k, v in self.headers.items()}, body, "1.1")

    def handle(self):
        if self.server.scheme == "https":
            try:
                self.connection.do_handshake()
            except (OSError, ssl.SSLError):
                return
            if self.connection.selected_alpn_protocol() == "h2":
                return serve_h2(self.connection, self.server.lab_name, self.client_address)
        return super().handle()

    def _send(self, status, ctype, payload, extra=None):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(payload)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _sse(self, events):
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for ev in events:
            chunk = ("data: " + ev + "\n\n").encode()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            self.wfile.flush()
            time.sleep(0.2)
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def do_GET(self):
        self._handle()

    def do_HEAD(self):
        self._handle()

    def do_POST(self):
        self._handle()

    def do_PUT(self):
        self._handle()

    def do_DELETE(self):
        self._handle()

    def _handle(self):
        body = self._body()
        self._record(body)
        if self.headers.get("Upgrade", "").lower() == "websocket":
            return self._websocket()
        plan = respond(self.server.lab_name, self.path, body)
        if plan[0] == "sse":
            return self._sse(plan[1])
        return self._send(*plan[1:])


    def _websocket(self):
        """A Realtime / Responses WebSocket: each client message logged (method WS, decoded),
        answered as the API would (created / delta / done events); permessage-deflate with
        context takeover when the client offers it (the server's frames go uncompressed)."""
        self.close_connection = True
        key = self.headers.get("Sec-WebSocket-Key", "")
        accept = base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest())
        deflate = "permessage-deflate" in self.headers.get("Sec-WebSocket-Extensions", "")
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept.decode())
        if deflate:
            self.send_header("Sec-WebSocket-Extensions", "permessage-deflate")
        self.end_headers()
        self.wfile.flush()
        inflater = zlib.decompressobj(-15) if deflate else None
        frags, first_op, compressed = [], 1, False

        def send(op, payload):
            n = len(payload)
            head = bytes([0x80 | op])
            head += bytes([n]) if n < 126 else (bytes([126]) + struct.pack(">H", n) if n < 65536 else bytes([127]) + struct.pack(">Q", n))
            self.wfile.write(head + payload)
            self.wfile.flush()

        while True:
            hdr = self.rfile.read(2)
            if len(hdr) < 2:
                return
            b0, b1 = hdr
            op, n = b0 & 0x0F, b1 & 0x7F
            if n == 126:
                n = struct.unpack(">H", self.rfile.read(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self.rfile.read(8))[0]
            mask = self.rfile.read(4) if b1 & 0x80 else b"\0\0\0\0"
            data = bytes(c ^ mask[i % 4] for i, c in enumerate(self.rfile.read(n)))
            if op == 8:
                send(8, data[:2] or b"\x03\xe8")
                return
            if op == 9:
                send(10, data)
                continue
            if op == 10:
                continue
            if op in (1, 2):
                frags, first_op, compressed = [data], op, bool(b0 & 0x40)
            else:
                frags.append(data)
            if not b0 & 0x80:
                continue
            payload = b"".join(frags)
            if compressed:
                payload = inflater.decompress(payload + b"\x00\x00\xff\xff")
            log_request(self.server.lab_name, "wss", self.client_address, "WS", self.headers.get("Host", ""),
                        self.path, {"ws_compressed": str(compressed).lower(), "ws_opcode": str(first_op)}, payload, "ws")
            if first_op != 1:
                continue
            try:
                ev = json.loads(payload)
            except ValueError:
                continue
            kind = ev.get("type") if isinstance(ev, dict) else None
            if kind == "conversation.item.create":
                replies = [{"type": "conversation.item.created", "item": ev.get("item", {})}]
            elif kind == "session.update":
                replies = [{"type": "session.updated", "session": ev.get("session", {})}]
            elif kind == "response.create":
                delta = "Hello from the lab"
                if "leak a key" in payload.decode("utf-8", "replace"):
                    delta = "here is a key: sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4zAb7dEf0hIj3k"
                replies = [{"type": "response.output_text.delta", "delta": delta}, {"type": "response.done"}]
            else:
                replies = []
            for r in replies:
                send(1, json.dumps(r).encode())


def log_request(name, scheme, client, method, host, path, headers, body, version):
    try:
        text = body.decode("utf-8")
        enc = "utf-8"
    except UnicodeDecodeError:
        text = base64.b64encode(body).decode()
        enc = "base64"
    record({
        "ts": time.time(),
        "server": name,
        "scheme": scheme,
        "client": client[0],
        "client_port": client[1],
        "method": method,
        "host": host,
        "path": path,
        "http_version": version,
        "headers": headers,
        "body": text,
        "body_encoding": enc,
        "body_len": len(body),
    })


def respond(name, full_path, body):
    """What a host answers: ("send", status, ctype, payload, extra) or ("sse", events)."""
    path = full_path.split("?")[0]
    try:
        req = json.loads(body) if body and body[:1] in (b"{", b"[") else {}
    except ValueError:
        req = {}
    if not isinstance(req, dict):
        req = {}
    model = req.get("model", "gpt-4o-mini")
    now = int(time.time())
    if name in ("api.openai.com", "files.openai.com") and path.startswith("/v1/"):
        rid = {"x-request-id": "req_mock_%d" % now}
        if path == "/v1/chat/completions":
            # "repeat after me: TEXT" makes the model say TEXT, "reverse: TXET" say it
            # reversed (a model leaking what the prompt never showed whole), streamed in
            # 7-character pieces, so anything in it is split across events.
            reply = "Hello from the lab"
            for m in req.get("messages") or []:
                c = m.get("content") if isinstance(m, dict) else None
                if isinstance(c, str) and "repeat after me:" in c:
                    reply = c.split("repeat after me:", 1)[1].strip()
                elif isinstance(c, str) and "reverse:" in c:
                    reply = c.split("reverse:", 1)[1].strip()[::-1]
            pieces = ["Hello", " from", " the", " lab"] if reply == "Hello from the lab" else \
                [reply[i:i + 7] for i in range(0, len(reply), 7)]
            # Tokens: a word of the prompt each, a piece of the reply each.
            words = sum(len(m["content"].split()) for m in req.get("messages") or []
                        if isinstance(m, dict) and isinstance(m.get("content"), str))
            usage = {"prompt_tokens": max(words, 1), "completion_tokens": len(pieces),
                     "total_tokens": max(words, 1) + len(pieces), "prompt_tokens_details": {"cached_tokens": 0}}
            if req.get("stream"):
                events = []
                for i, word in enumerate(pieces):
                    events.append(json.dumps({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": now,
                                              "model": model, "choices": [{"index": 0, "delta": {"content": word}, "finish_reason": None}]}))
                events.append(json.dumps({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": now,
                                          "model": model, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}))
                if (req.get("stream_options") or {}).get("include_usage"):
                    events.append(json.dumps({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": now,
                                              "model": model, "choices": [], "usage": usage}))
                events.append("[DONE]")
                return ("sse", events)
            resp = {"id": "chatcmpl-mock", "object": "chat.completion", "created": now, "model": model,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": reply},
                                 "finish_reason": "stop"}],
                    "usage": usage}
        elif path == "/v1/responses":
            # Each response its own id, as OpenAI's (a chain of them threads a conversation).
            resp = {"id": "resp_" + hashlib.sha256(str(time.time_ns()).encode()).hexdigest()[:24],
                    "object": "response", "created_at": now, "model": model, "status": "completed",
                    "output": [{"type": "message", "id": "msg_mock", "role": "assistant", "status": "completed",
                                "content": [{"type": "output_text", "text": "Hello from the lab", "annotations": []}]}],
                    "usage": {"input_tokens": 3, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 4,
                              "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 7}}
        elif path == "/v1/completions":
            resp = {"id": "cmpl-mock", "object": "text_completion", "created": now, "model": model,
                    "choices": [{"index": 0, "text": "Hello from the lab", "finish_reason": "stop"}]}
        elif path == "/v1/embeddings":
            resp = {"object": "list", "model": model, "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2, 0.3]}]}
        elif path == "/v1/models":
            resp = {"object": "list", "data": [{"id": "gpt-4o-mini", "object": "model", "owned_by": "lab"}]}
        else:
            resp = {"ok": True, "path": path}
        return ("send", 200, "application/json", json.dumps(resp).encode(), rid)
    if name == "chatgpt.com" and path.startswith("/backend-api/accounts/check"):
        # The signed-in user's accounts, as ChatGPT lists them (a company workspace and a
        # personal account).
        def account(i, structure, plan):
            return {"account": {"account_id": i, "structure": structure, "plan_type": plan}, "features": []}
        listing = {"accounts": {"acc-corp-1": account("acc-corp-1", "workspace", "team"),
                                "lab-personal-7": account("lab-personal-7", "personal", "free"),
                                "default": account("lab-personal-7", "personal", "free")},
                   "account_ordering": ["acc-corp-1", "lab-personal-7"]}
        return ("send", 200, "application/json", json.dumps(listing).encode(), None)
    if name == "chatgpt.com" and path.startswith("/backend-api/"):
        return ("send", 200, "application/json", json.dumps({"conversation_id": "conv-mock", "message": "ok"}).encode(), None)
    page = ("<!doctype html><title>%s</title><p>hello from %s</p>\n" % (name, name)).encode()
    return ("send", 200, "text/html; charset=utf-8", page, None)



def serve_h2(sock, name, client):
    """One HTTP/2 connection: each stream answered as `respond` says, on its own thread."""
    import h2.config
    import h2.connection
    import h2.events

    conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
    lock = threading.Lock()

    def flush():
        data = conn.data_to_send()
        if data:
            sock.sendall(data)

    def send_data(sid, payload, end):
        # Within the peer's flow-control window, in frames of the largest size it accepts.
        view = memoryview(payload)
        while True:
            with lock:
                n = min(len(view), conn.local_flow_control_window(sid), conn.max_outbound_frame_size)
                if n > 0 or not view:
                    conn.send_data(sid, bytes(view[:n]), end_stream=end and n == len(view))
                    flush()
                    view = view[n:]
                    if not view:
                        return
            time.sleep(0.005)

    def answer(sid, headers, body):
        path = headers.get(":path", "/")
        log_request(name, "https", client, headers.get(":method", ""), headers.get(":authority", ""), path,
                    {k: v for k, v in headers.items() if not k.startswith(":")}, body, "2")
        plan = respond(name, path, body)
        try:
            if plan[0] == "sse":
                with lock:
                    conn.send_headers(sid, [(":status", "200"), ("content-type", "text/event-stream"),
                                            ("cache-control", "no-cache")])
                    flush()
                for ev in plan[1]:
                    send_data(sid, ("data: " + ev + "\n\n").encode(), False)
                    time.sleep(0.2)
                send_data(sid, b"", True)
                return
            _, status, ctype, payload, extra = plan
            hdrs = [(":status", str(status)), ("content-type", ctype), ("content-length", str(len(payload)))]
            hdrs += [(k.lower(), v) for k, v in (extra or {}).items()]
            with lock:
                conn.send_headers(sid, hdrs, end_stream=not payload)
                flush()
            if payload:
                send_data(sid, payload, True)
        except Exception:  # the client reset the stream or went away
            pass

    with lock:
        conn.initiate_connection()
        flush()
    streams = {}
    while True:
        try:
            data = sock.recv(65536)
        except OSError:
            return
        if not data:
            return
        with lock:
            try:
                events = conn.receive_data(data)
            except Exception:
                flush()
                return
            for ev in events:
                if isinstance(ev, h2.events.RequestReceived):
                    streams[ev.stream_id] = (dict(ev.headers), bytearray())
                elif isinstance(ev, h2.events.DataReceived):
                    if ev.stream_id in streams:
                        streams[ev.stream_id][1].extend(ev.data)
                    conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                elif isinstance(ev, h2.events.StreamEnded):
                    # (A HEADERS frame with END_STREAM gives RequestReceived, then this.)
                    st = streams.pop(ev.stream_id, None)
                    if st is not None:
                        threading.Thread(target=answer, args=(ev.stream_id, st[0], bytes(st[1])), daemon=True).start()
                elif isinstance(ev, h2.events.StreamReset):
                    streams.pop(ev.stream_id, None)
                elif isinstance(ev, h2.events.ConnectionTerminated):
                    flush()
                    return
            flush()

class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr, family, lab_name, scheme):
        self.address_family = family
        self.lab_name = lab_name
        self.scheme = scheme
        super().__init__(addr, Handler)


def udp_sink(ip, name):
    """Records every datagram to UDP 443 (there is no QUIC server: tests check arrival)."""
    fam = socket.AF_INET6 if ":" in ip else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_DGRAM)
    s.bind((ip, 443))
    while True:
        data, peer = s.recvfrom(65535)
        record({"ts": time.time(), "server": name, "scheme": "udp", "client": peer[0], "method": "DATAGRAM",
                "host": name, "path": "", "headers": {}, "body": "", "body_encoding": "utf-8", "body_len": len(data)})


def main():
    global LOG_PATH
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("--log", required=True)
    args = ap.parse_args()
    LOG_PATH = args.log
    hosts = json.load(open(args.config, encoding="utf-8"))
    servers = []
    for h in hosts:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(h["cert"], h["key"])
        ctx.set_alpn_protocols(["h2", "http/1.1"] if h.get("h2") else ["http/1.1"])
        for ip in h["ips"]:
            fam = socket.AF_INET6 if ":" in ip else socket.AF_INET
            tls = Server((ip, 443), fam, h["name"], "https")
            tls.socket = ctx.wrap_socket(tls.socket, server_side=True, do_handshake_on_connect=False)
            plain = Server((ip, 80), fam, h["name"], "http")
            servers += [tls, plain]
            threading.Thread(target=udp_sink, args=(ip, h["name"]), daemon=True).start()
    for s in servers:
        threading.Thread(target=s.serve_forever, daemon=True).start()
    print("upstream: serving %d listeners" % len(servers), flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
