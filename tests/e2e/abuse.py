"""Hostile load on the interception engine, run inside a lab client's namespace.

  idle   --count N --seconds S: opens N TCP connections to HOST:443 and sends nothing (a
         slowloris); after S seconds prints how many were still open, reset or never opened.
  hellos --seconds S --threads T: completes TLS handshakes as fast as T threads can and closes
         each at once (certificate not verified: an attacker does not care); prints how many.
"""

import argparse
import errno
import json
import resource
import selectors
import socket
import ssl
import threading
import time


def idle(host, count, seconds):
    resource.setrlimit(resource.RLIMIT_NOFILE, (count + 1024, count + 1024))
    addr = socket.getaddrinfo(host, 443, socket.AF_INET, socket.SOCK_STREAM)[0][4]
    sel = selectors.DefaultSelector()
    socks, failed = [], 0
    for _ in range(count):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        err = s.connect_ex(addr)
        if err not in (0, errno.EINPROGRESS):
            failed += 1
            s.close()
            continue
        socks.append(s)
        sel.register(s, selectors.EVENT_WRITE)
    # Wait for the handshakes to finish: connected, or reset (accepted past a limit).
    pending, deadline = set(socks), time.time() + 20
    while pending and time.time() < deadline:
        for key, _ in sel.select(timeout=0.5):
            sel.unregister(key.fileobj)
            pending.discard(key.fileobj)
    done = [s for s in socks if s not in pending]
    time.sleep(seconds)
    # A connection the kernel completed but the listener's full queue never passed on looks
    # open from here until a byte makes the server take it (and the engine refuse it): one
    # byte of a hello each, then a pause, before counting.
    for s in done:
        try:
            s.send(b"\x16")
        except OSError:
            pass
    time.sleep(3)
    alive, reset = 0, 0
    for s in done:
        if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) != 0:
            reset += 1
            continue
        try:
            data = s.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            if data == b"":
                reset += 1  # closed by the other end
            else:
                alive += 1
        except BlockingIOError:
            alive += 1
        except OSError:
            reset += 1
    for s in socks:
        s.close()
    return {"answered": len(done), "unanswered": count - len(done), "open_after": alive, "reset": reset}


def hellos(host, seconds, threads):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    addr = socket.getaddrinfo(host, 443, socket.AF_INET, socket.SOCK_STREAM)[0][4]
    counts = {"handshakes": 0, "failed": 0}
    lock = threading.Lock()
    end = time.time() + seconds

    def run():
        ok = bad = 0
        while time.time() < end:
            try:
                with socket.create_connection(addr, timeout=5) as raw:
                    with ctx.wrap_socket(raw, server_hostname=host):
                        ok += 1
            except OSError:
                bad += 1
        with lock:
            counts["handshakes"] += ok
            counts["failed"] += bad

    ts = [threading.Thread(target=run) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return counts


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["idle", "hellos"])
    ap.add_argument("--host", default="api.openai.com")
    ap.add_argument("--count", type=int, default=10000)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--threads", type=int, default=8)
    a = ap.parse_args()
    if a.mode == "idle":
        print(json.dumps(idle(a.host, a.count, a.seconds)))
    else:
        print(json.dumps(hellos(a.host, a.seconds, a.threads)))


if __name__ == "__main__":
    main()
