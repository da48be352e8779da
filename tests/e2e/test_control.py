"""End-to-end tests of the control daemon the lab starts beside the data plane: tokens and
roles, rule pushes checked and versioned, the audit log. (The daemon's link to the data plane
is not built yet: pushed rule sets are versioned, not yet enforced.)
"""

import json
import os
import subprocess
import unittest

from test_dataplane import ROOT, env


def api(method, path, token=None, body=None):
    e = env()
    args = ["curl", "-sS", "-o", "-", "-w", "\n%{http_code}", "--cacert", e["SLUICE_API_CA"],
            "--resolve", "localhost:%s:127.0.0.1" % e["SLUICE_URL"].rsplit(":", 1)[1], "-X", method]
    if token:
        args += ["-H", "Authorization: Bearer " + e[token]]
    if body is not None:
        args += ["--data-binary", body]
    url = "https://localhost:%s%s" % (e["SLUICE_URL"].rsplit(":", 1)[1], path)
    r = subprocess.run(args + [url], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    text, code = r.stdout.rsplit("\n", 1)
    return int(code), text


class ControlApi(unittest.TestCase):
    def test_tokens_roles_and_rule_versions(self):
        self.assertEqual(api("GET", "/v1/health")[0], 401)
        code, body = api("GET", "/v1/health", "SLUICE_FEEDER_TOKEN")
        self.assertEqual(code, 200, body)
        with open(os.path.join(ROOT, "rules", "default.toml")) as f:
            rules = f.read()
        self.assertEqual(api("PUT", "/v1/rules", "SLUICE_ANALYST_TOKEN", rules)[0], 403)
        code, body = api("PUT", "/v1/rules", "SLUICE_ADMIN_TOKEN", rules)
        self.assertEqual(code, 200, body)
        version = json.loads(body)["version"]
        code, body = api("PUT", "/v1/rules", "SLUICE_ADMIN_TOKEN", rules + "\n[[rule]]\nname = \"x\"\ncategories = [\"nope\"]\naction = \"allow\"\n")
        self.assertEqual(code, 422, body)
        err = json.loads(body)["errors"][0]
        self.assertGreater(err["line"], 0)
        self.assertIn("nope", err["message"])
        code, body = api("GET", "/v1/rules", "SLUICE_ANALYST_TOKEN")
        self.assertEqual(json.loads(body)["version"], version, "the refused push changed nothing")
        code, body = api("GET", "/v1/ca.pem", "SLUICE_ANALYST_TOKEN")
        self.assertIn("BEGIN CERTIFICATE", body)
        self.assertNotIn("PRIVATE KEY", body)
        code, body = api("GET", "/v1/audit", "SLUICE_ADMIN_TOKEN")
        actions = [a["action"] for a in json.loads(body)]
        self.assertIn("rules.push.refused", actions)


if __name__ == "__main__":
    unittest.main()
