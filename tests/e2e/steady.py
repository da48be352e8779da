"""Steady legitimate traffic for flood tests, run inside a lab client's namespace: one
established keep-alive HTTP connection and one new connection, each making a request every
100 ms for --seconds. Prints JSON: per kind, requests answered and failed, latency percentiles.
"""

import argparse
import http.client
import json
import threading
import time


def percentile(xs, p):
    if not xs:
        return None
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, int(len(xs) * p))], 1)


def run(kind, host, seconds, out):
    ok, failed, lat = 0, 0, []
    conn = None
    end = time.time() + seconds
    while time.time() < end:
        t0 = time.time()
        try:
            if conn is None or kind == "new":
                conn = http.client.HTTPConnection(host, 80, timeout=5)
            conn.request("GET", "/steady-%s" % kind, headers={"Host": "example.org"})
            r = conn.getresponse()
            r.read()
            if r.status != 200:
                raise OSError("status %d" % r.status)
            ok += 1
            lat.append((time.time() - t0) * 1000)
        except (OSError, http.client.HTTPException):
            failed += 1
            if conn is not None:
                conn.close()
            conn = None
        if kind == "new" and conn is not None:
            conn.close()
        time.sleep(max(0.0, 0.1 - (time.time() - t0)))
    out[kind] = {"ok": ok, "failed": failed, "p50_ms": percentile(lat, 0.5),
                 "p99_ms": percentile(lat, 0.99), "max_ms": round(max(lat), 1) if lat else None}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="198.51.100.80")
    ap.add_argument("--seconds", type=float, default=10)
    a = ap.parse_args()
    out = {}
    threads = [threading.Thread(target=run, args=(k, a.host, a.seconds, out)) for k in ("established", "new")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
