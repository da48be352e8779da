#!/usr/bin/env python3
"""Writes the labelled DLP corpus (corpus.jsonl beside this script): true positives for every
detector, embedded in prompt-like sentences, and hard negatives that look like them (Luhn-
invalid card numbers, UUIDs, hashes, order and tracking numbers, versions, base64 blobs,
dates, prose that contains key prefixes). Deterministic (fixed seed). Run: python3 make-corpus.py
"""
import base64
import json
import os
import random
import string

R = random.Random(20261122)
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus.jsonl")

LEAD = ["Please review this: {}", "Can you check why {} fails?", "my value is {} thanks",
        "Summarise the ticket. Details: {}.", "{}", "Context:\n{}\nEnd of context.",
        "The customer wrote \"{}\" in the form", "log line: user_data={} status=ok"]


def wrap(s):
    return R.choice(LEAD).format(s)


def rand(cs, n):
    return "".join(R.choice(cs) for _ in range(n))


ALNUM = string.ascii_letters + string.digits
URL = ALNUM + "-_"
HEX = "0123456789abcdef"
B32 = string.ascii_uppercase + "234567"
B64 = ALNUM + "+/"


def mixed(cs, n):
    while True:
        s = rand(cs, n)
        if any(c.isdigit() for c in s) and any(c.isalpha() for c in s):
            return s


def luhn_complete(prefix, length):
    digits = [int(c) for c in prefix] + [R.randrange(10) for _ in range(length - len(prefix) - 1)]
    for check in range(10):
        d = digits + [check]
        total = 0
        for i, x in enumerate(reversed(d)):
            if i % 2 == 1:
                x *= 2
                if x > 9:
                    x -= 9
            total += x
        if total % 10 == 0:
            return "".join(map(str, d))


def fmt_card(n):
    style = R.randrange(3)
    if style == 0 or len(n) not in (15, 16):
        return n
    sep = " " if style == 1 else "-"
    if len(n) == 15:
        return sep.join([n[:4], n[4:10], n[10:]])
    return sep.join(n[i:i + 4] for i in range(0, 16, 4))


def card():
    brand = R.choice(["visa", "mc", "mc2", "amex", "disc", "jcb", "diners"])
    p, l = {"visa": ("4", 16), "mc": (str(R.randint(51, 55)), 16), "mc2": (str(R.randint(2221, 2720)), 16),
            "amex": (R.choice(["34", "37"]), 15), "disc": ("6011", 16), "jcb": (str(R.randint(3528, 3589)), 16),
            "diners": (R.choice(["36", "38"]), 14)}[brand]
    return fmt_card(luhn_complete(p, l))


def ssn():
    area = R.choice([a for a in range(1, 900) if a != 666])
    s = "%03d-%02d-%04d" % (area, R.randint(1, 99), R.randint(1, 9999))
    return s if R.random() < 0.8 else "SSN " + s.replace("-", "")


IBAN_LEN = {"GB": 22, "DE": 22, "FR": 27, "ES": 24, "NL": 18, "IT": 27, "BE": 16, "CH": 21}


def iban():
    cc = R.choice(list(IBAN_LEN))
    n = IBAN_LEN[cc]
    if cc in ("GB", "NL"):
        bban = rand(string.ascii_uppercase, 4) + rand(string.digits, n - 8)
    else:
        bban = rand(string.digits, n - 4)
    num = "".join(str(int(c, 36)) for c in bban + cc + "00")
    check = 98 - int(num) % 97
    s = cc + "%02d" % check + bban
    return " ".join(s[i:i + 4] for i in range(0, len(s), 4)) if R.random() < 0.5 else s


def email():
    return "%s.%s@%s.%s" % (rand(string.ascii_lowercase, R.randint(3, 8)), rand(string.ascii_lowercase, 4),
                            rand(string.ascii_lowercase, R.randint(4, 9)), R.choice(["com", "org", "co.uk", "io", "de"]))


def phone():
    a, b, c = R.randint(201, 989), R.randint(200, 999), R.randint(0, 9999)
    while a % 100 == 11 or b % 100 == 11:
        a, b = R.randint(201, 989), R.randint(200, 999)
    return R.choice(["(%d) %d-%04d" % (a, b, c), "%d-%d-%04d" % (a, b, c), "+1 %d %d %04d" % (a, b, c),
                     "+44 20 %04d %04d" % (R.randint(1000, 9999), R.randint(0, 9999)),
                     "020 %04d %04d" % (R.randint(1000, 9999), R.randint(0, 9999)),
                     "+49 30 %d" % R.randint(10000000, 99999999)])


def nino():
    first = R.choice("ABCEGHJKLMNPRSTWXYZ")
    second = R.choice("ABCEGHJKLMNPRSTWXYZ")
    while first + second in ("BG", "GB", "NK", "KN", "TN", "NT", "ZZ"):
        second = R.choice("ABCEGHJKLMNPRSTWXYZ")
    d = rand(string.digits, 6)
    suf = R.choice("ABCD")
    return first + second + d + suf if R.random() < 0.5 else "%s%s %s %s %s %s" % (first, second, d[:2], d[2:4], d[4:], suf)


def ip():
    return ".".join(str(R.randint(1, 254)) for _ in range(4))


def b64u(obj):
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")


def pem(label):
    body = "\n".join(rand(B64, 64) for _ in range(R.randint(4, 10)))
    return "-----BEGIN %s-----\n%s\n-----END %s-----" % (label, body, label)


CRED = {
    "aws_access_key_id": lambda: R.choice(["AKIA", "ASIA"]) + rand(B32, 16),
    "aws_secret_access_key": lambda: "aws_secret_access_key = " + mixed(B64, 40),
    "openai_api_key": lambda: R.choice(["sk-proj-", "sk-", "sk-svcacct-"]) + mixed(URL, R.randint(40, 120)),
    "openai_admin_key": lambda: "sk-admin-" + mixed(URL, 60),
    "anthropic_api_key": lambda: "sk-ant-api03-" + mixed(URL, 93) + "AA",
    "anthropic_admin_key": lambda: "sk-ant-admin01-" + mixed(URL, 93) + "AA",
    "google_api_key": lambda: "AIza" + mixed(URL, 35),
    "google_oauth_secret": lambda: "GOCSPX-" + mixed(URL, 28),
    "google_oauth_token": lambda: "ya29." + mixed(URL, 120),
    "azure_storage_key": lambda: "DefaultEndpointsProtocol=https;AccountName=acme;AccountKey=" + mixed(B64, 86) + "==;EndpointSuffix=core.windows.net",
    "azure_client_secret": lambda: rand(ALNUM, 3) + str(R.randint(0, 9)) + "Q~" + mixed(ALNUM + "_-.", 34),
    "github_token": lambda: "ghp_" + mixed(ALNUM, 36),
    "github_oauth_token": lambda: "gho_" + mixed(ALNUM, 36),
    "github_app_token": lambda: R.choice(["ghu_", "ghs_"]) + mixed(ALNUM, 36),
    "github_refresh_token": lambda: "ghr_" + mixed(ALNUM, 36),
    "github_fine_grained_pat": lambda: "github_pat_" + mixed(ALNUM, 22) + "_" + mixed(ALNUM, 59),
    "gitlab_token": lambda: "glpat-" + mixed(URL, 20),
    "gitlab_runner_token": lambda: "glrt-" + mixed(URL, 20),
    "gitlab_deploy_token": lambda: "gldt-" + mixed(URL, 20),
    "slack_bot_token": lambda: "xoxb-%d-%d-%s" % (R.randint(10**10, 10**11), R.randint(10**10, 10**11), mixed(ALNUM, 24)),
    "slack_user_token": lambda: "xoxp-%d-%d-%d-%s" % (R.randint(10**10, 10**11), R.randint(10**10, 10**11), R.randint(10**10, 10**11), rand(HEX, 32)),
    "slack_app_token": lambda: "xapp-1-A%s-%d-%s" % (rand(string.ascii_uppercase + string.digits, 10), R.randint(10**12, 10**13), rand(HEX, 64)),
    "slack_webhook": lambda: "https://hooks.slack.com/services/T%s/B%s/%s" % (rand(string.ascii_uppercase + string.digits, 8), rand(string.ascii_uppercase + string.digits, 10), mixed(ALNUM, 24)),
    "stripe_key": lambda: "sk_live_" + mixed(ALNUM, 99),
    "stripe_restricted_key": lambda: "rk_live_" + mixed(ALNUM, 99),
    "stripe_test_key": lambda: "sk_test_" + mixed(ALNUM, 99),
    "twilio_key": lambda: "SK" + rand(HEX, 32),
    "sendgrid_key": lambda: "SG." + mixed(URL, 22) + "." + mixed(URL, 43),
    "npm_token": lambda: "npm_" + mixed(ALNUM, 36),
    "pypi_token": lambda: "pypi-AgEIcHlwaS5vcmc" + mixed(URL, 150),
    "huggingface_token": lambda: "hf_" + mixed(ALNUM, 34),
    "shopify_token": lambda: R.choice(["shpat_", "shpss_", "shpca_", "shppa_"]) + rand(HEX, 32),
    "digitalocean_token": lambda: R.choice(["dop_v1_", "doo_v1_"]) + rand(HEX, 64),
    "databricks_token": lambda: "dapi" + rand(HEX, 32),
    "vault_token": lambda: "hvs." + mixed(URL, 90),
    "doppler_token": lambda: "dp.pt." + mixed(ALNUM, 43),
    "linear_api_key": lambda: "lin_api_" + mixed(ALNUM, 40),
    "atlassian_token": lambda: "ATATT3x" + mixed(URL, 185),
    "grafana_token": lambda: "glsa_" + mixed(ALNUM, 32) + "_" + rand(HEX, 8),
    "new_relic_key": lambda: "NRAK-" + rand(string.ascii_uppercase + string.digits, 27),
    "sentry_token": lambda: "sntrys_" + mixed(ALNUM, 120),
    "postman_key": lambda: "PMAK-" + rand(HEX, 24) + "-" + rand(HEX, 34),
    "dockerhub_token": lambda: "dckr_pat_" + mixed(URL, 27),
    "age_secret_key": lambda: "AGE-SECRET-KEY-1" + rand("QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L", 58),
    "telegram_bot_token": lambda: "%d:AA%s" % (R.randint(10**8, 10**10 - 1), mixed(URL, 33)),
    "jwt": lambda: "%s.%s.%s" % (b64u({"alg": "HS256", "typ": "JWT"}), b64u({"sub": rand(string.digits, 8), "name": rand(string.ascii_letters, 6), "iat": R.randint(10**9, 2 * 10**9)}), mixed(URL, 43)),
    "private_key": lambda: pem(R.choice(["RSA PRIVATE KEY", "EC PRIVATE KEY", "PRIVATE KEY", "ENCRYPTED PRIVATE KEY"])),
    "ssh_private_key": lambda: pem("OPENSSH PRIVATE KEY"),
    "pgp_private_key": lambda: pem("PGP PRIVATE KEY BLOCK"),
    "connection_string_password": lambda: R.choice([
        "postgres://app:%s@db.internal:5432/prod" % mixed(ALNUM + "!#", 14),
        "mongodb+srv://svc:%s@cluster0.abcd.mongodb.net/test" % mixed(ALNUM, 16),
        "Server=tcp:sql.acme.net,1433;Database=crm;User ID=crm;Password=%s;" % mixed(ALNUM + "!#", 14),
        "redis://default:%s@cache:6379/0" % mixed(ALNUM, 20)]),
    "generic_secret": lambda: R.choice(["password: \"%s\"", "client_secret=%s", "DB_PASSWORD=%s", "\"api_key\": \"%s\"", "secret_token = %s"]) % mixed(ALNUM + "!#%&*", R.randint(16, 32)),
}

PII = {"credit_card": card, "us_ssn": ssn, "iban": iban, "email": email, "phone": phone, "uk_nino": nino, "ip_address": ip}


def negatives():
    out = []
    for _ in range(60):  # Luhn-invalid card-like numbers
        n = luhn_complete("4", 16)
        bad = n[:-1] + str((int(n[-1]) + R.randint(1, 9)) % 10)
        out.append(wrap(fmt_card(bad)))
    for _ in range(30):  # valid Luhn, no card brand
        out.append(wrap(luhn_complete(R.choice(["1", "7", "8", "9"]), 16)))
    for _ in range(50):
        out.append(wrap("request id %08x-%04x-4%03x-%04x-%012x" % (R.getrandbits(32), R.getrandbits(16), R.getrandbits(12), R.getrandbits(16), R.getrandbits(48))))
    for _ in range(40):
        out.append(wrap("commit %s" % rand(HEX, 40)))
        out.append(wrap("sha256 %s" % rand(HEX, 64)))
    for _ in range(40):
        out.append(wrap("Order #%d shipped" % R.randint(10**7, 10**9)))
        out.append(wrap("tracking 1Z%s%s" % (rand(string.ascii_uppercase + string.digits, 6), rand(string.digits, 10))))
    for _ in range(40):
        out.append(wrap("upgrade to v%d.%d.%d" % (R.randint(0, 30), R.randint(0, 99), R.randint(0, 999))))
        out.append(wrap("build %d.%d.%d.%d" % (R.randint(1, 20), R.randint(0, 9), R.randint(1000, 30000), R.randint(256, 9999))))
    for _ in range(40):
        out.append(wrap("blob %s" % base64.b64encode(bytes(R.getrandbits(8) for _ in range(33))).decode()))
    for _ in range(40):
        y, m, d = R.randint(1990, 2030), R.randint(1, 12), R.randint(1, 28)
        out.append(wrap(R.choice(["%d-%02d-%02d", "%d/%02d/%02d"]) % (y, m, d)))
        out.append(wrap("%02d/%02d/%d at %02d:%02d" % (d, m, y, R.randint(0, 23), R.randint(0, 59))))
    prose = ["ask-me-anything session", "task-4711 is blocked", "the token count was 1500", "password reset link sent",
             "the secret is to keep it simple", "our API key rotation policy", "use the access_key field", "risk-based-authentication",
             "desk-booking tool", "skip the sk-learn import", "mask-rcnn model", "AKIA prefix means a long-term key",
             "set password: ********", "password=${DB_PASSWORD}", "token: <your token here>", "secret = changeme",
             "email me at bob at example dot com", "call 555-0100", "room 404-B", "ISBN 978-3-16-148410-0",
             "price $1,234.56", "SW1A 1AA", "color #ff8800", "ssn field left blank", "000-12-3456 is invalid",
             "666-45-6789", "GB82 WEST 1234 5698 7654 33", "eyJhbGciOi is how a JWT starts", "postgres://localhost/db",
             "mysql://user@host/db", "-----BEGIN CERTIFICATE-----", "-----BEGIN PUBLIC KEY-----", "glpat is a GitLab prefix",
             "hf_hub_download(repo)", "npm_config_cache", "xoxb tokens are bot tokens", "sk_live keys start with sk_live_",
             "see https://example.com/a@b", "ticket SK-1234", "version 10.0.19045.2965"]
    for p in prose:
        for _ in range(3):
            out.append(wrap(p))
    return out


def main():
    rows = []
    for name, gen in list(PII.items()) + list(CRED.items()):
        n = 40 if name in PII else 12
        for _ in range(n):
            rows.append({"text": wrap(gen()), "expect": [name]})
    for t in negatives():
        rows.append({"text": t, "expect": []})
    with open(OUT, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    pos = sum(1 for r in rows if r["expect"])
    print("wrote %s: %d true positives, %d hard negatives" % (OUT, pos, len(rows) - pos))


if __name__ == "__main__":
    main()
