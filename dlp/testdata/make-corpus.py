#!/usr/bin/env python3
"""Writes the labelled DLP corpus (corpus.jsonl beside this script).

Every detector gets true positives built from its vendor's documented key format (or, for
cards, the card networks' published test numbers; IBANs from the ISO 13616 registry examples;
SSN, NINO, phone and IP rules from SSA, HMRC, Ofcom/NANP and RFC 5737), pasted into the kind of
prompt people send to a chatbot: .env files, YAML/JSON configs, code, curl commands, CI files,
log lines, e-mails, spreadsheet rows. Beside each detector sit hard negatives: the right prefix
with the wrong length or charset, Luhn-invalid cards with real brand prefixes, SSNs with
impossible areas, IBANs with a bad check digit, documentation placeholders, public values that
look like keys (publishable keys, public keys, DSNs), and generic look-alikes (UUIDs, hashes,
versions, dates, order numbers, base64 blobs).

Sources, per detector, are in SOURCES.md beside this script (`# source:` comments below point
there). Deterministic (fixed seed). Line format: {"text": ..., "expect": [detector names]}; a
negative has "expect": []. Run: python3 make-corpus.py
"""
import base64
import json
import os
import random
import string
import zlib

R = random.Random(20261122)
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus.jsonl")

ALNUM = string.ascii_letters + string.digits
URL = ALNUM + "-_"
HEX = "0123456789abcdef"
B32 = string.ascii_uppercase + "234567"
B64 = ALNUM + "+/"
UPPER_ALNUM = string.ascii_uppercase + string.digits
LOWER_ALNUM = string.ascii_lowercase + string.digits
BECH32 = "qpzry9x8gf2tvdw0s3jn54khce6mua7l".upper()
BASE62 = string.digits + string.ascii_uppercase + string.ascii_lowercase


# ---------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------

def pick(xs):
    return R.choice(xs)


def rand(cs, n):
    return "".join(R.choice(cs) for _ in range(n))


def mixed(cs, n):
    """A random string of `cs` that holds at least one digit and one letter (as real keys do)."""
    while True:
        s = rand(cs, n)
        if any(c.isdigit() for c in s) and any(c.isalpha() for c in s):
            return s


def letters_only(n):
    return rand(string.ascii_letters, n)


def b62(n, width):
    out = ""
    while n:
        n, r = divmod(n, 62)
        out = BASE62[r] + out
    return out.rjust(width, "0")


def crc_token(prefix, n_random=30):
    """GitHub / npm style: 30 random base62 characters and a 6-character base62 CRC32."""
    while True:
        body = rand(ALNUM, n_random)
        tok = body + b62(zlib.crc32(body.encode()) & 0xFFFFFFFF, 6)
        if any(c.isdigit() for c in tok) and any(c.isalpha() for c in tok):
            return prefix + tok


def b64u(obj):
    return base64.urlsafe_b64encode(json.dumps(obj, separators=(",", ":")).encode()).decode().rstrip("=")


def luhn_ok(digits):
    total = 0
    for i, x in enumerate(reversed([int(c) for c in digits])):
        if i % 2 == 1:
            x *= 2
            if x > 9:
                x -= 9
        total += x
    return total % 10 == 0


def luhn_complete(prefix, length):
    digits = prefix + rand(string.digits, length - len(prefix) - 1)
    for check in "0123456789":
        if luhn_ok(digits + check):
            return digits + check


def luhn_break(n):
    bad = n[:-1] + str((int(n[-1]) + R.randint(1, 9)) % 10)
    assert not luhn_ok(bad)
    return bad


def fmt_card(n, style=None):
    style = R.randrange(4) if style is None else style
    if style == 0:
        return n
    sep = " " if style in (1, 3) else "-"
    if len(n) == 15:
        return sep.join([n[:4], n[4:10], n[10:]])
    if len(n) == 14:
        return sep.join([n[:4], n[4:10], n[10:]])
    if len(n) == 16:
        return sep.join(n[i:i + 4] for i in range(0, 16, 4))
    return n


# ---------------------------------------------------------------------------------------------
# Prompt framing: what people paste into a chatbot
# ---------------------------------------------------------------------------------------------

ASKS = [
    "Can you help me debug this? I keep getting a 401.\n\n{}",
    "Why does this config not load?\n```\n{}\n```",
    "Here's my setup, what am I doing wrong?\n\n{}",
    "Please convert this to YAML:\n{}",
    "{}\n\nwhat does this error mean??",
    "Review this before I push it to the repo:\n```\n{}\n```",
    "Bonjour ! Peux-tu vérifier ce fichier, s'il te plaît ?\n{}",
    "Hallo, kannst du mir bei diesem Fehler helfen? Danke!\n{}",
    "¿Puedes revisar esto? No funciona.\n{}",
    "Explain this to me like I'm new to DevOps:\n{}",
    "{}",
    "Context:\n{}\nEnd of context. Make it production ready.",
    "I'm getting an auth failure from the API with the following, any idea?\n{}",
    "Refactor this so it reads from environment variables instead:\n```\n{}\n```",
]

DOC_ASKS = [
    "Summarise this email for me:\n\n{}",
    "Translate this into German, keep the formatting:\n{}",
    "Fix the formatting of this CSV and sort by last name:\n{}",
    "Draft a polite reply to this:\n\n{}",
    "Extract the key facts from this into a table:\n{}",
    "Can you spot any mistakes in this form before I submit it?\n{}",
    "{}",
    "Résume ce message en deux phrases :\n{}",
    "Turn this into JSON:\n{}",
    "Is this invoice complete?\n{}",
]


def ask(content):
    return pick(ASKS).format(content)


def doc(content):
    return pick(DOC_ASKS).format(content)


# Benign config lines that hold nothing any detector looks for.
BENIGN_ENV = ["NODE_ENV=production", "PORT=8080", "LOG_LEVEL=debug", "APP_NAME=billing-api",
              "REDIS_HOST=cache", "FEATURE_FLAGS=beta,search", "TZ=Europe/Berlin", "WORKERS=4",
              "REGION=eu-west-1", "DEBUG=false", "MAX_UPLOAD_MB=25", "CACHE_TTL=300"]


def benign(k):
    return R.sample(BENIGN_ENV, k)


def cred_context(var, secret, header=None, host="api.example.com"):
    """Puts a credential into one of the shapes people paste: .env, YAML, JSON, code, curl, CI,
    Kubernetes, Docker, logs, chat."""
    lower = var.lower()
    kind = R.randrange(19)
    if kind == 0:
        lines = benign(2) + [f"{var}={secret}"] + benign(1)
        return ".env:\n" + "\n".join(lines)
    if kind == 1:
        return f"export {var}=\"{secret}\"\n./run.sh --verbose"
    if kind == 2:
        svc = lower.split("_")[0]
        return f"{svc}:\n  {lower}: {secret}\n  timeout: 30\n  retries: 3"
    if kind == 3:
        return json.dumps({lower: secret, "region": "eu-west-1", "timeout": 30}, indent=2)
    if kind == 4:
        return f"import os\n\n{var} = \"{secret}\"  # TODO move to vault\nclient = Client()\nprint(client.ping())"
    if kind == 5 and "WEBHOOK" in var:
        return f"await fetch('{secret}', {{ method: 'POST', body: JSON.stringify({{ text: 'build failed' }}) }});"
    if kind == 5:
        return f"const client = new Client({{ apiKey: '{secret}', retries: 2 }});\nawait client.ping();"
    if kind == 6:
        h = header or "Authorization: Bearer"
        return f"curl -sS https://{host}/v1/me \\\n  -H \"{h} {secret}\" \\\n  -H \"Content-Type: application/json\""
    if kind == 7:
        return f"jobs:\n  deploy:\n    runs-on: ubuntu-latest\n    env:\n      {var}: {secret}\n    steps:\n      - run: make deploy"
    if kind == 8:
        return f"apiVersion: v1\nkind: Secret\nmetadata:\n  name: app-creds\ntype: Opaque\nstringData:\n  {var}: {secret}"
    if kind == 9:
        return f"FROM python:3.12-slim\nENV {var}={secret}\nCOPY . /app\nCMD [\"python\", \"main.py\"]"
    if kind == 10:
        h = header or "Authorization: Bearer"
        hname, hval = h.split(":", 1)
        value = (hval.strip() + " " + secret).strip()
        return f"2024-06-03T12:44:09Z DEBUG http.client send headers={{'{hname}': '{value}'}} status=401"
    if kind == 11:
        return pick([
            f"I rotated the key but the old one still works?? old: {secret} - is that expected",
            f"hey, quick one: is {secret} supposed to have read access to prod? it's the {var} from staging",
            f"The vendor support agent asked me to paste my key here: {secret}. Is that normal?",
        ])
    if kind == 12:
        return f"[default]\n{lower} = {secret}\noutput = json"
    if kind == 14:
        return f"services:\n  api:\n    image: acme/api:1.4\n    environment:\n      - {var}={secret}\n      - LOG_LEVEL=info"
    if kind == 15:
        return (f"diff --git a/config/settings.py b/config/settings.py\n@@ -12,3 +12,3 @@\n"
                f"-{var} = os.environ[\"{var}\"]\n+{var} = \"{secret}\"  # temporary, revert before merge")
    if kind == 16:
        return f"%env {var}={secret}\nimport os\nprint(len(os.environ[\"{var}\"]))"
    if kind == 17 and "WEBHOOK" not in var:
        return (f"Traceback (most recent call last):\n  File \"sync.py\", line 88, in <module>\n    resp.raise_for_status()\n"
                f"requests.exceptions.HTTPError: 401 Client Error: Unauthorized for url: https://{host}/v2/items?access_token={secret}")
    return f"| name | value |\n|------|-------|\n| {var} | {secret} |"


def pii_frame(content):
    return doc(content)


# ---------------------------------------------------------------------------------------------
# Credentials: generators of the documented formats.  Each returns the secret only; the
# context is added by cred_context() unless the detector needs its own (see SELF_CONTEXT).
# ---------------------------------------------------------------------------------------------

def aws_access_key_id():  # source: AWS IAM unique-ID prefixes (see SOURCES.md)
    prefix = R.choices(["AKIA", "ASIA", "ABIA", "ACCA"], [8, 3, 1, 1])[0]
    return prefix + rand(B32, 16)


def aws_secret():
    return mixed(B64, 40)


def aws_secret_access_key():  # source: AWS IAM access keys doc; 40-char secret beside a keyword
    s = aws_secret()
    kid = "AKIA" + rand(B32, 16)
    return pick([
        (f"[default]\naws_access_key_id = {kid}\naws_secret_access_key = {s}\nregion = eu-west-1", ["aws_access_key_id"]),
        (f"AWS_SECRET_ACCESS_KEY={s}\nAWS_DEFAULT_REGION=us-east-1", []),
        (f"s3 = boto3.client(\"s3\", aws_access_key_id=\"{kid}\", aws_secret_access_key=\"{s}\")", ["aws_access_key_id"]),
        (json.dumps({"AccessKey": {"UserName": "ci-deployer", "AccessKeyId": kid, "Status": "Active",
                                   "SecretAccessKey": s}}, indent=2), ["aws_access_key_id"]),
        (f"aws_secret_key: \"{s}\"\naws_region: eu-central-1", []),
    ])


def openai_api_key():  # source: OpenAI API auth docs; structure per public scanners (T3BlbkFJ)
    kind = R.randrange(3)
    if kind == 0:
        return "sk-proj-" + rand(URL, pick([74, 58])) + "T3BlbkFJ" + rand(URL, pick([74, 58]))
    if kind == 1:
        return "sk-svcacct-" + rand(URL, pick([74, 58])) + "T3BlbkFJ" + rand(URL, pick([74, 58]))
    return "sk-" + rand(ALNUM, 20) + "T3BlbkFJ" + rand(ALNUM, 20)


def openai_admin_key():  # source: OpenAI Admin API keys; sk-admin- structure per public scanners
    return "sk-admin-" + rand(URL, 58) + "T3BlbkFJ" + rand(URL, 58)


def anthropic_api_key():  # source: Anthropic API docs (x-api-key); sk-ant-api03-<93>AA
    return "sk-ant-api03-" + mixed(URL, 93) + "AA"


def anthropic_admin_key():  # source: Anthropic Admin API docs; sk-ant-admin01-<93>AA
    return "sk-ant-admin01-" + mixed(URL, 93) + "AA"


def google_api_key():  # source: Google Cloud "Use API keys" (AIzaSy... 39 chars)
    return "AIzaSy" + mixed(URL, 33)


def google_oauth_secret():  # source: Google OAuth client secrets, GOCSPX- + 28
    return "GOCSPX-" + mixed(URL, 28)


def google_oauth_token():  # source: Google OAuth 2.0 access tokens (ya29.)
    return "ya29.a0" + mixed(URL, R.randint(150, 230))


def azure_storage_key():  # source: Azure Storage connection strings (AccountKey=<88 base64>)
    key = mixed(B64, 86) + "=="
    acct = pick(["acmeprodstore", "billingdata01", "mlartifacts", "backupsweu"])
    cs = f"DefaultEndpointsProtocol=https;AccountName={acct};AccountKey={key};EndpointSuffix=core.windows.net"
    return pick([
        f"AZURE_STORAGE_CONNECTION_STRING=\"{cs}\"",
        json.dumps({"Values": {"AzureWebJobsStorage": cs, "FUNCTIONS_WORKER_RUNTIME": "python"}}, indent=2),
        f"blob = BlobServiceClient.from_connection_string(\"{cs}\")",
        f"<add key=\"StorageConnection\" value=\"{cs}\" />",
    ])


def azure_client_secret():  # source: Microsoft Entra client secrets (3 chars, digit, Q~, 31-34)
    return rand(ALNUM + "_~.", 3) + str(R.randint(0, 9)) + "Q~" + mixed(ALNUM + "_~.-", 34).rstrip(".")


def github_token():  # source: GitHub token formats blog (ghp_ + 30 + CRC32)
    return crc_token("ghp_")


def github_oauth_token():  # source: GitHub token formats blog (gho_)
    return crc_token("gho_")


def github_app_token():  # source: GitHub token formats blog (ghu_, ghs_)
    return crc_token(pick(["ghu_", "ghs_"]))


def github_refresh_token():  # source: GitHub token formats blog (ghr_)
    return crc_token("ghr_")


def github_fine_grained_pat():  # source: GitHub fine-grained PATs (github_pat_<22>_<59>)
    return "github_pat_11" + mixed(UPPER_ALNUM, 20) + "_" + mixed(ALNUM, 59)


def gitlab_token():  # source: GitLab token overview, token prefixes (glpat-)
    if R.random() < 0.25:  # routable format: glpat-<payload>.<version><crc>
        return "glpat-" + mixed(URL, R.randint(27, 40)) + ".01" + rand(LOWER_ALNUM, 7)
    return "glpat-" + mixed(URL, 20)


def gitlab_runner_token():  # source: GitLab token overview, token prefixes (glrt-)
    if R.random() < 0.3:
        return "glrt-t" + str(R.randint(1, 3)) + "_" + mixed(URL, 27)
    return "glrt-" + mixed(URL, 20)


def gitlab_deploy_token():  # source: GitLab token overview, token prefixes (gldt-)
    return "gldt-" + mixed(URL, 20)


def slack_ids():
    return R.randint(10**10, 10**13 - 1), R.randint(10**10, 10**13 - 1)


def slack_bot_token():  # source: Slack token types (xoxb-)
    a, b = slack_ids()
    return f"xoxb-{a}-{b}-{mixed(ALNUM, 24)}"


def slack_user_token():  # source: Slack token types (xoxp-)
    a, b = slack_ids()
    return f"xoxp-{a}-{b}-{R.randint(10**10, 10**13 - 1)}-{rand(HEX, 32)}"


def slack_app_token():  # source: Slack token types (xapp-)
    return f"xapp-1-A{rand(UPPER_ALNUM, 10)}-{R.randint(10**12, 10**13 - 1)}-{rand(HEX, 64)}"


def slack_webhook():  # source: Slack incoming webhooks (hooks.slack.com/services/T/B/secret)
    return "https://hooks.slack.com/services/T%s/B%s/%s" % (
        rand(UPPER_ALNUM, R.randint(8, 10)), rand(UPPER_ALNUM, R.randint(8, 10)), mixed(ALNUM, 24))


def stripe_key():  # source: Stripe API keys (sk_live_)
    return "sk_live_" + mixed(ALNUM, pick([24, 99]))


def stripe_restricted_key():  # source: Stripe API keys (rk_live_)
    return "rk_live_" + mixed(ALNUM, pick([24, 99]))


def stripe_test_key():  # source: Stripe API keys (sk_test_)
    return "sk_test_" + mixed(ALNUM, pick([24, 99]))


def twilio_key():  # source: Twilio Key resource (SID SK + 32 hex)
    return "SK" + rand(HEX, 32)


def sendgrid_key():  # source: Twilio SendGrid API keys (SG.<22>.<43>, 69 chars)
    return "SG." + mixed(URL, 22) + "." + mixed(URL, 43)


def npm_token():  # source: GitHub blog, npm's new access token format (npm_ + 30 + CRC32)
    return crc_token("npm_")


def pypi_token():  # source: PyPI API tokens (pypi- + macaroon, base64 of pypi.org header)
    return "pypi-AgEIcHlwaS5vcmc" + mixed(URL, R.randint(120, 170))


def huggingface_token():  # source: Hugging Face User access tokens (hf_ + 34 letters)
    return "hf_" + letters_only(34)


def shopify_token():  # source: Shopify changelog, access token / app secret prefixes
    return pick(["shpat_", "shpss_", "shpca_", "shppa_"]) + rand(HEX, 32)


def digitalocean_token():  # source: DigitalOcean API token format release note
    return pick(["dop_v1_", "doo_v1_", "dor_v1_"]) + rand(HEX, 64)


def databricks_token():  # source: Databricks Token API (dapi + 32 hex)
    return "dapi" + rand(HEX, 32) + ("-2" if R.random() < 0.2 else "")


def vault_token():  # source: HashiCorp Vault 1.10+ tokens (hvs. + at least 95 characters)
    return "hvs." + mixed(URL, R.randint(95, 110))


def doppler_token():  # source: Doppler auth token formats (dp.pt., dp.ct., dp.sa., dp.st.<config>.)
    return pick(["dp.pt.", "dp.pt.", "dp.ct.", "dp.sa.", "dp.st.prd.", "dp.st.dev."]) + mixed(ALNUM, 43)


def linear_api_key():  # source: Linear personal API keys (lin_api_ + 40)
    return "lin_api_" + mixed(ALNUM, 40)


def atlassian_token():  # source: Atlassian API tokens (ATATT3 + 186, ending =<crc>)
    return "ATATT3x" + mixed(URL, 176) + "=" + rand("0123456789ABCDEF", 8)


def grafana_token():  # source: Grafana service account tokens (glsa_<32>_<8 hex>)
    return "glsa_" + mixed(ALNUM, 32) + "_" + rand(HEX, 8)


def new_relic_key():  # source: New Relic API keys (user key NRAK- + 27)
    return "NRAK-" + mixed(UPPER_ALNUM, 27)


def sentry_token():  # source: Sentry auth tokens, org token sntrys_<base64 json>_<secret>
    payload = {"iat": round(R.uniform(1.68e9, 1.75e9), 6), "url": "https://sentry.io",
               "region_url": pick(["https://us.sentry.io", "https://de.sentry.io"]),
               "org": pick(["acme", "billing-team", "mobile-apps"])}
    enc = base64.b64encode(json.dumps(payload, separators=(",", ":")).encode()).decode()
    return "sntrys_" + enc + "_" + rand(ALNUM + "+/", 43)


def postman_key():  # source: Postman API keys (PMAK-<24 hex>-<34 hex>)
    return "PMAK-" + rand(HEX, 24) + "-" + rand(HEX, 34)


def dockerhub_token():  # source: Docker personal access tokens (dckr_pat_)
    return "dckr_pat_" + mixed(URL, 27)


def age_secret_key():  # source: age v1 spec (AGE-SECRET-KEY-1 + bech32)
    return "AGE-SECRET-KEY-1" + rand(BECH32, 58)


def telegram_bot_token():  # source: Telegram Bot API, authorizing your bot (<id>:<35 chars>)
    return "%d:AA%s" % (R.randint(10**8, 10**10 - 1), mixed(URL, 33))


def jwt():  # source: RFC 7519 (header.payload.signature, base64url JSON)
    alg = pick(["HS256", "RS256", "ES256"])
    header = b64u({"alg": alg, "typ": "JWT"})
    payload = b64u({"sub": rand(string.digits, 8), "name": pick(["Jane Roe", "svc-deployer", "ana"]),
                    "iat": R.randint(1_700_000_000, 1_760_000_000), "scope": pick(["read", "admin", "read write"])})
    sig = mixed(URL, {"HS256": 43, "RS256": 342, "ES256": 86}[alg])
    return f"{header}.{payload}.{sig}"


PEM_LEAD = {
    "RSA PRIVATE KEY": "MIIEpAIBAAKCAQEA",
    "EC PRIVATE KEY": "MHcCAQEEI",
    "PRIVATE KEY": "MIIEvQIBADANBgkqhkiG9w0BAQEFAASC",
    "ENCRYPTED PRIVATE KEY": "MIIFHDBOBgkqhkiG9w0BBQ0wQTApBgkqhkiG9w0BBQwwHAQI",
    "DSA PRIVATE KEY": "MIIBuwIBAAKBgQD",
    "OPENSSH PRIVATE KEY": "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW",
    "PGP PRIVATE KEY BLOCK": "lQOYBG",
}


def pem_block(label, lines=None, width=64):
    lines = lines or R.randint(5, 12)
    body = PEM_LEAD[label] + rand(B64, width * lines - len(PEM_LEAD[label]))
    rows = [body[i:i + width] for i in range(0, len(body), width)]
    if label == "PGP PRIVATE KEY BLOCK":
        rows = ["", *rows, "=" + rand(B64, 4)]
    return "-----BEGIN %s-----\n%s\n-----END %s-----" % (label, "\n".join(rows), label)


def private_key():  # source: RFC 7468 textual encodings (PKCS#1, SEC1, PKCS#8)
    label = pick(["RSA PRIVATE KEY", "EC PRIVATE KEY", "PRIVATE KEY", "ENCRYPTED PRIVATE KEY", "DSA PRIVATE KEY"])
    return pick([
        "Here is the key from the server, why does nginx say bad decrypt?\n" + pem_block(label),
        "ssl:\n  key: |\n" + "\n".join("    " + x for x in pem_block(label).split("\n")),
        "cat tls.key\n" + pem_block(label),
    ])


def ssh_private_key():  # source: OpenSSH PROTOCOL.key (-----BEGIN OPENSSH PRIVATE KEY-----)
    return pick([
        "$ cat ~/.ssh/id_ed25519\n" + pem_block("OPENSSH PRIVATE KEY", R.randint(5, 7), 70),
        "deploy key for the runner (paste into secrets):\n" + pem_block("OPENSSH PRIVATE KEY", R.randint(5, 7), 70),
        "ssh -i key.pem fails with invalid format, contents:\n" + pem_block("OPENSSH PRIVATE KEY", R.randint(20, 27), 70),
    ])


def pgp_private_key():  # source: RFC 4880 ASCII armor (PGP PRIVATE KEY BLOCK)
    return pick([
        "gpg --import says no valid OpenPGP data found:\n" + pem_block("PGP PRIVATE KEY BLOCK", R.randint(8, 14)),
        "exported with gpg --armor --export-secret-keys:\n" + pem_block("PGP PRIVATE KEY BLOCK", R.randint(8, 14)),
    ])


def password_value(in_url=False):
    # In a URL's userinfo only unreserved characters and a few sub-delims may appear unencoded
    # (RFC 3986); key=value strings take anything but the separator.
    return mixed(ALNUM + ("-._~!*" if in_url else "!#%*^-_"), R.randint(12, 20))


def connection_string_password():  # source: libpq URIs, MongoDB/AMQP URIs, ADO.NET / JDBC strings
    pw = password_value(in_url=True)
    return pick([
        f"DATABASE_URL=postgresql://app_user:{pw}@db.internal.acme.io:5432/orders",
        f"spring.datasource.url=jdbc:postgresql://pg-prod:5432/crm?user=crm&password={pw}&ssl=true",
        f"mongo_uri: \"mongodb+srv://svc-reporting:{pw}@cluster0.ab12c.mongodb.net/analytics?retryWrites=true\"",
        f"\"ConnectionStrings\": {{ \"Default\": \"Server=tcp:sql-prod.database.windows.net,1433;Database=crm;User ID=crm_app;Password={pw};Encrypt=True;\" }}",
        f"CELERY_BROKER_URL=amqp://worker:{pw}@rabbitmq:5672/jobs",
        f"engine = create_engine(\"mysql+pymysql://report:{pw}@mysql.internal:3306/sales\")",
        f"Driver={{ODBC Driver 18 for SQL Server}};Server=sqlsrv01;Database=hr;Uid=hr_ro;Pwd={pw};",
        f"ftp://deploy:{pw}@files.acme-corp.com/uploads/",
    ])


def generic_secret():  # source: no vendor format; keyword + high-entropy value (cf. gitleaks generic-api-key)
    v32 = rand(HEX, 32)
    return pick([
        f"DD_API_KEY={v32}",
        f"STRIPE_WEBHOOK_SECRET=whsec_{mixed(ALNUM, 32)}",
        f"JWT_SECRET={mixed(ALNUM + '!#%', 40)}",
        f"session:\n  secret: \"{mixed(ALNUM, 48)}\"\n  max_age: 3600",
        f"\"api_key\": \"{mixed(ALNUM, 32)}\",\n\"endpoint\": \"https://api.mailer.example/v3\"",
        f"DB_PASSWORD={password_value()}",
        f"client_secret = \"{mixed(ALNUM + '-_', 34)}\"",
        f"X-Auth-Token: {mixed(ALNUM, 40)}",
        f"mailgun:\n  apikey: key-{v32}",
        f"SESSION_SECRET='{mixed(ALNUM + '-_', 64)}'",
        f"password: \"{password_value()}\"",
        f"ALGOLIA_ADMIN_API_KEY={rand(HEX, 32)}",
    ])


# detector -> (generator, variable names, header)
TOKENS = {
    "aws_access_key_id": (aws_access_key_id, ["AWS_ACCESS_KEY_ID"], None),
    "openai_api_key": (openai_api_key, ["OPENAI_API_KEY"], None),
    "openai_admin_key": (openai_admin_key, ["OPENAI_ADMIN_KEY"], None),
    "anthropic_api_key": (anthropic_api_key, ["ANTHROPIC_API_KEY"], "x-api-key:"),
    "anthropic_admin_key": (anthropic_admin_key, ["ANTHROPIC_ADMIN_KEY"], "x-api-key:"),
    "google_api_key": (google_api_key, ["GOOGLE_MAPS_API_KEY", "GEMINI_API_KEY", "FIREBASE_API_KEY"], "X-goog-api-key:"),
    "google_oauth_secret": (google_oauth_secret, ["GOOGLE_CLIENT_SECRET"], None),
    "google_oauth_token": (google_oauth_token, ["GOOGLE_ACCESS_TOKEN"], None),
    "azure_client_secret": (azure_client_secret, ["AZURE_CLIENT_SECRET"], None),
    "github_token": (github_token, ["GITHUB_TOKEN", "GH_TOKEN"], "Authorization: token"),
    "github_oauth_token": (github_oauth_token, ["GITHUB_OAUTH_TOKEN"], None),
    "github_app_token": (github_app_token, ["GITHUB_APP_TOKEN", "INSTALLATION_TOKEN"], None),
    "github_refresh_token": (github_refresh_token, ["GITHUB_REFRESH_TOKEN"], None),
    "github_fine_grained_pat": (github_fine_grained_pat, ["GITHUB_PAT", "GH_TOKEN"], None),
    "gitlab_token": (gitlab_token, ["GITLAB_TOKEN", "CI_PUSH_TOKEN"], "PRIVATE-TOKEN:"),
    "gitlab_runner_token": (gitlab_runner_token, ["RUNNER_TOKEN", "CI_RUNNER_TOKEN"], None),
    "gitlab_deploy_token": (gitlab_deploy_token, ["DEPLOY_TOKEN"], None),
    "slack_bot_token": (slack_bot_token, ["SLACK_BOT_TOKEN"], None),
    "slack_user_token": (slack_user_token, ["SLACK_USER_TOKEN"], None),
    "slack_app_token": (slack_app_token, ["SLACK_APP_TOKEN"], None),
    "slack_webhook": (slack_webhook, ["SLACK_WEBHOOK_URL"], None),
    "stripe_key": (stripe_key, ["STRIPE_SECRET_KEY"], None),
    "stripe_restricted_key": (stripe_restricted_key, ["STRIPE_RESTRICTED_KEY"], None),
    "stripe_test_key": (stripe_test_key, ["STRIPE_SECRET_KEY", "STRIPE_TEST_KEY"], None),
    "twilio_key": (twilio_key, ["TWILIO_API_KEY"], None),
    "sendgrid_key": (sendgrid_key, ["SENDGRID_API_KEY"], None),
    "npm_token": (npm_token, ["NPM_TOKEN", "NODE_AUTH_TOKEN"], None),
    "pypi_token": (pypi_token, ["TWINE_PASSWORD", "PYPI_API_TOKEN"], None),
    "huggingface_token": (huggingface_token, ["HF_TOKEN"], None),
    "shopify_token": (shopify_token, ["SHOPIFY_ACCESS_TOKEN"], "X-Shopify-Access-Token:"),
    "digitalocean_token": (digitalocean_token, ["DIGITALOCEAN_TOKEN", "DO_TOKEN"], None),
    "databricks_token": (databricks_token, ["DATABRICKS_TOKEN"], None),
    "vault_token": (vault_token, ["VAULT_TOKEN"], "X-Vault-Token:"),
    "doppler_token": (doppler_token, ["DOPPLER_TOKEN"], None),
    "linear_api_key": (linear_api_key, ["LINEAR_API_KEY"], "Authorization:"),
    "atlassian_token": (atlassian_token, ["JIRA_API_TOKEN", "CONFLUENCE_TOKEN"], None),
    "grafana_token": (grafana_token, ["GRAFANA_TOKEN"], None),
    "new_relic_key": (new_relic_key, ["NEW_RELIC_API_KEY"], "API-Key:"),
    "sentry_token": (sentry_token, ["SENTRY_AUTH_TOKEN"], None),
    "postman_key": (postman_key, ["POSTMAN_API_KEY"], "X-Api-Key:"),
    "dockerhub_token": (dockerhub_token, ["DOCKERHUB_TOKEN"], None),
    "age_secret_key": (age_secret_key, ["SOPS_AGE_KEY"], None),
    "telegram_bot_token": (telegram_bot_token, ["TELEGRAM_BOT_TOKEN"], None),
    "jwt": (jwt, ["ACCESS_TOKEN", "ID_TOKEN"], None),
}

# Detectors whose generator returns the whole snippet (and possibly extra labels).
SELF_CONTEXT = {
    "aws_secret_access_key": aws_secret_access_key,
    "azure_storage_key": azure_storage_key,
    "private_key": private_key,
    "ssh_private_key": ssh_private_key,
    "pgp_private_key": pgp_private_key,
    "connection_string_password": connection_string_password,
    "generic_secret": generic_secret,
}

# Contexts a few formats are usually seen in, besides the generic ones.
EXTRA_CONTEXT = {
    "npm_token": lambda s: f".npmrc:\n//registry.npmjs.org/:_authToken={s}\nalways-auth=true",
    "pypi_token": lambda s: f"~/.pypirc\n[pypi]\nusername = __token__\npassword = {s}",
    "huggingface_token": lambda s: f"huggingface-cli login --token {s}",
    "dockerhub_token": lambda s: f"echo {s} | docker login -u acmebot --password-stdin",
    "age_secret_key": lambda s: f"# created: 2024-05-02T10:11:12+02:00\n# public key: age1{rand(BECH32.lower(), 58)}\n{s}",
    "github_token": lambda s: f"git clone https://{s}@github.com/acme/infra.git",
    "jwt": lambda s: f"GET /api/v2/orders HTTP/1.1\nHost: shop.example.com\nAuthorization: Bearer {s}",
    "slack_webhook": lambda s: f"curl -X POST -H 'Content-type: application/json' --data '{{\"text\":\"deploy done\"}}' {s}",
    "telegram_bot_token": lambda s: f"bot = telegram.Bot(token=\"{s}\")\nbot.send_message(chat_id=CHAT_ID, text=\"ping\")",
    "databricks_token": lambda s: f"[DEFAULT]\nhost = https://adb-1234567890123456.7.azuredatabricks.net\ntoken = {s}",
    "vault_token": lambda s: f"$ vault login\nToken (will be hidden):\nSuccess! You are now authenticated.\nKey                  Value\n---                  -----\ntoken                {s}\ntoken_duration       768h",
    "twilio_key": lambda s: f"client = Client(\"{s}\", os.environ[\"TWILIO_API_SECRET\"], account_sid)",
    "google_api_key": lambda s: f"<script src=\"https://maps.googleapis.com/maps/api/js?key={s}&callback=initMap\"></script>",
}


def credential_positive(name):
    if name in SELF_CONTEXT:
        out = SELF_CONTEXT[name]()
        snippet, extra = out if isinstance(out, tuple) else (out, [])
        return ask(snippet), [name] + extra
    gen, variables, header = TOKENS[name]
    secret = gen()
    if name in EXTRA_CONTEXT and R.random() < 0.35:
        return ask(EXTRA_CONTEXT[name](secret)), [name]
    text = cred_context(pick(variables), secret, header)
    return (text if secret in text.split("\n")[0] and R.random() < 0.7 else ask(text)), [name]


# ---------------------------------------------------------------------------------------------
# Personal and financial data
# ---------------------------------------------------------------------------------------------

# source: published test numbers (Stripe testing, PayPal sandbox card testing, Adyen test cards)
TEST_CARDS = """4242424242424242 4000056655665556 5555555555554444 2223003122003222 5200828282828210
5105105105105100 378282246310005 371449635398431 6011111111111117 6011000990139424 6011981111111113
3056930009020004 36227206271667 6555900000604105 3566002020360505 6200000000000005 6200000000000047
6205500000000000004 376680816376961 36259600000004 6304000000000000 5063516945005047
2223000048400011 4005519200000004 4012000033330026 4012000077777777 4012888888881881
4217651111111119 4500600000000061 4772129056533503 4915805038587737 4111111111111111
5500000000000004 4400000000000008 370000000000002 4007000000027 4012888818888 6011000000000012
38000000000006 3530111333300000 30569309025904 38520000023237 5424000000000015""".split()
# source: card networks' IIN ranges (Visa 4, Mastercard 51-55/2221-2720, Amex 34/37, Discover
# 6011/644-649/65, JCB 3528-3589, Diners 36/38, UnionPay 62)
IIN = [("4", 16), ("51", 16), ("53", 16), ("55", 16), ("2221", 16), ("2720", 16), ("34", 15),
       ("37", 15), ("6011", 16), ("65", 16), ("3528", 16), ("3589", 16), ("36", 14), ("62", 16)]

NAMES = ["Jane Roe", "Max Mustermann", "Aiko Tanaka", "Olu Adeyemi", "Chloé Martin", "Sven Larsen",
         "Priya Nair", "Tomás García", "Mia Wong", "Jonas Weber"]


def card_number():
    if R.random() < 0.6:
        return pick(TEST_CARDS)
    p, n = pick(IIN)
    return luhn_complete(p, n)


def credit_card():  # source: Stripe/PayPal/Adyen test cards; IIN ranges
    n = fmt_card(card_number())
    name = pick(NAMES)
    return pick([
        f"Customer called in: card {n}, exp 09/27, CVC 123. Please refund order #48213.",
        f"name,card_number,expiry\n{name},{n},11/26",
        f"Hi team,\n\nplease charge my company card {n} (exp 03/28) for the annual plan.\n\nThanks, {name}",
        f"{{\"customer\": \"{name}\", \"pan\": \"{n}\", \"amount\": 129.00, \"currency\": \"EUR\"}}",
        f"Ticket #5521: customer says card ending in {n[-4:]} was declined; full number they sent: {n}",
        f"Meine Kreditkarte {n} wurde doppelt belastet, bitte prüfen.",
    ])


def ssn_value():
    while True:
        area = R.randint(1, 899)
        if area != 666:
            break
    return "%03d-%02d-%04d" % (area, R.randint(1, 99), R.randint(1, 9999))


def us_ssn():  # source: SSA SSN randomization (no area 000/666/9xx, group 00, serial 0000)
    s = ssn_value()
    name = pick(NAMES)
    return pick([
        f"employee_id,name,ssn,start_date\nE{R.randint(1000, 9999)},{name},{s},2023-02-01",
        f"W-4 follow up: {name}, SSN {s}, filing status single.",
        f"My social security number is {s} and the IRS letter says it doesn't match, help me write a reply",
        f"SSN: {s.replace('-', '')}\nDOB: 1987-06-14\nName: {name}",
        f"{{\"applicant\": \"{name}\", \"ssn\": \"{s}\", \"income\": 72000}}",
        f"Background check for {name} (SSN {s.replace('-', ' ')}) came back clear.",
    ])


def email_addr():
    first, last = pick(["jane", "max", "aiko", "olu", "chloe", "sven", "priya", "tomas"]), pick(
        ["roe", "mustermann", "tanaka", "adeyemi", "martin", "larsen", "nair", "garcia"])
    user = pick([f"{first}.{last}", f"{first[0]}{last}", f"{first}+billing", f"{first}_{last}{R.randint(1, 99)}"])
    dom = pick(["example.com", "example.org", "acme-corp.co.uk", "mail.example.net", "globex.io",
                "initech.de", "umbrella-health.com"])
    return f"{user}@{dom}"


def email():  # source: RFC 5322 addr-spec; RFC 2606 example domains
    e = email_addr()
    name = pick(NAMES)
    return pick([
        f"From: {name} <{e}>\nSubject: Re: contract renewal\n\nHi, see the attached draft.",
        f"Please add {e} to the beta list.",
        f"name,email,plan\n{name},{e},pro",
        f"{{\"user\": {{\"name\": \"{name}\", \"email\": \"{e}\"}}}}",
        f"2024-05-01 10:22:13 INFO signup ok user={e} plan=free",
        f"Kontakt: {name}, E-Mail {e}",
    ])


def phone_number():
    kind = R.randrange(7)
    if kind == 0:  # NANP fictional 555-01xx
        a = R.choice([212, 415, 312, 617, 206, 303])
        return pick(["(%d) 555-01%02d", "%d-555-01%02d", "+1 %d 555 01%02d", "%d.555.01%02d"]) % (a, R.randint(0, 99))
    if kind == 1:  # Ofcom drama London
        return pick(["020 7946 0%03d", "+44 20 7946 0%03d"]) % R.randint(0, 999)
    if kind == 2:  # Ofcom drama mobile
        return pick(["07700 900%03d", "+44 7700 900%03d"]) % R.randint(0, 999)
    if kind == 3:  # Ofcom drama Manchester
        return "0161 496 0%03d" % R.randint(0, 999)
    if kind == 4:  # ACMA fictitious mobile, international form
        return "+61 491 570 %03d" % pick([156, 157, 158, 159, 110])
    if kind == 5:
        return "+49 30 %d" % R.randint(10000000, 99999999)
    return "+1-%d-555-01%02d" % (R.choice([202, 646, 702]), R.randint(0, 99))


def phone():  # source: ITU-T E.164; NANP 555-01xx; Ofcom drama numbers; ACMA fictitious numbers
    p = phone_number()
    name = pick(NAMES)
    return pick([
        f"Best regards,\n{name}\nAccount Manager\nTel: {p}",
        f"Can you call the customer back on {p}? She asked about the refund.",
        f"name,phone,city\n{name},{p},Leeds",
        f"{{\"contact\": \"{name}\", \"phone\": \"{p}\"}}",
        f"Rückruf bitte unter {p}, danke.",
    ])


def nino_value(spaced):
    ok1 = [c for c in string.ascii_uppercase if c not in "DFIQUV"]
    ok2 = [c for c in ok1 if c != "O"]
    while True:
        pre = pick(ok1) + pick(ok2)
        if pre not in ("BG", "GB", "NK", "KN", "TN", "NT", "ZZ"):
            break
    d = rand(string.digits, 6)
    suf = pick("ABCD")
    return f"{pre} {d[:2]} {d[2:4]} {d[4:]} {suf}" if spaced else f"{pre}{d}{suf}"


def uk_nino():  # source: HMRC National Insurance Manual NIM39110
    n = nino_value(R.random() < 0.5)
    name = pick(NAMES)
    return pick([
        f"New starter form\nName: {name}\nNI number: {n}\nTax code: 1257L",
        f"payroll_id,name,nino\nP{R.randint(100, 999)},{name},{n}",
        f"Hi, my National Insurance number is {n} - can you check my contributions record?",
        f"{{\"employee\": \"{name}\", \"ni_number\": \"{n}\"}}",
    ])


# source: SWIFT IBAN registry (ISO 13616) example IBANs
REGISTRY_IBANS = ["GB82WEST12345698765432", "DE89370400440532013000", "FR1420041010050500013M02606",
                  "ES9121000418450200051332", "NL91ABNA0417164300", "IT60X0542811101000000123456",
                  "BE68539007547034", "CH9300762011623852957", "AT611904300234573201",
                  "IE29AIBK93115212345678", "PL61109010140000071219812874", "SE4550000000058398257466",
                  "NO9386011117947", "DK5000400440116243", "FI2112345600000785", "PT50000201231234567890154"]

BBAN = {  # country: list of (charset, count)
    "GB": [(string.ascii_uppercase, 4), (string.digits, 14)],
    "DE": [(string.digits, 18)],
    "FR": [(string.digits, 10), (UPPER_ALNUM, 11), (string.digits, 2)],
    "ES": [(string.digits, 20)],
    "NL": [(string.ascii_uppercase, 4), (string.digits, 10)],
    "IT": [(string.ascii_uppercase, 1), (string.digits, 10), (UPPER_ALNUM, 12)],
    "BE": [(string.digits, 12)],
    "CH": [(string.digits, 5), (UPPER_ALNUM, 12)],
    "AT": [(string.digits, 16)],
    "IE": [(string.ascii_uppercase, 4), (string.digits, 14)],
    "PL": [(string.digits, 24)],
}


def iban_check(cc, bban):
    num = "".join(str(int(c, 36)) for c in bban + cc + "00")
    return "%02d" % (98 - int(num) % 97)


def iban_value():
    if R.random() < 0.4:
        return pick(REGISTRY_IBANS)
    cc = pick(list(BBAN))
    bban = "".join(rand(cs, n) for cs, n in BBAN[cc])
    return cc + iban_check(cc, bban) + bban


def iban_print(s):
    return " ".join(s[i:i + 4] for i in range(0, len(s), 4))


def iban():  # source: ISO 13616 / SWIFT IBAN registry (country length, mod-97)
    s = iban_value()
    s = iban_print(s) if R.random() < 0.5 else s
    name = pick(NAMES)
    return pick([
        f"Invoice 2024-117\nPayee: {name}\nIBAN: {s}\nBIC: DEUTDEFFXXX\nAmount due: EUR 1,450.00",
        f"Please update my bank details to {s} from next month's salary.",
        f"supplier,iban,currency\nAcme GmbH,{s},EUR",
        f"{{\"beneficiary\": \"{name}\", \"iban\": \"{s}\", \"reference\": \"INV-2291\"}}",
        f"Bitte überweisen Sie den Betrag auf {s}.",
    ])


def ip_value():
    kind = R.randrange(6)
    if kind == 0:
        return "192.0.2.%d" % R.randint(1, 254)
    if kind == 1:
        return "198.51.100.%d" % R.randint(1, 254)
    if kind == 2:
        return "203.0.113.%d" % R.randint(1, 254)
    if kind == 3:
        return "10.%d.%d.%d" % (R.randint(0, 255), R.randint(0, 255), R.randint(1, 254))
    if kind == 4:
        return "172.%d.%d.%d" % (R.randint(16, 31), R.randint(0, 255), R.randint(1, 254))
    return "192.168.%d.%d" % (R.randint(0, 255), R.randint(1, 254))


def ip_address():  # source: RFC 791 dotted quad; RFC 5737 documentation and RFC 1918 private ranges
    ip = ip_value()
    return pick([
        f"{ip} - - [10/Oct/2024:13:55:36 +0000] \"GET /admin HTTP/1.1\" 403 512 \"-\" \"curl/8.4.0\"",
        f"Jun  3 04:12:55 web01 sshd[2231]: Failed password for invalid user admin from {ip} port 52144 ssh2",
        f"resource \"aws_security_group_rule\" \"office\" {{\n  cidr_blocks = [\"{ip}/32\"]\n}}",
        f"The VPN gives me {ip} but I can't reach the printer, why?",
        f"NAME        STATUS   INTERNAL-IP\nworker-1    Ready    {ip}",
    ])


PII = {"credit_card": credit_card, "iban": iban, "us_ssn": us_ssn, "email": email, "phone": phone,
       "uk_nino": uk_nino, "ip_address": ip_address}


def combined():
    """Realistic rows with several kinds of personal data at once."""
    name = pick(NAMES)
    e, p = email_addr(), phone_number()
    kind = R.randrange(4)
    if kind == 0:
        return doc(f"Kind regards,\n{name}\nHead of Finance\n{e} | {p}"), ["email", "phone"]
    if kind == 1:
        s = ssn_value()
        return doc(f"id,name,email,ssn\n{R.randint(100, 999)},{name},{e},{s}"), ["email", "us_ssn"]
    if kind == 2:
        i = iban_print(iban_value())
        return doc(f"Refund request from {e}: please send EUR 80 back to {i}."), ["email", "iban"]
    n = fmt_card(card_number(), 1)
    return doc(f"Caller {name}, tel. {p}, wants to update the card on file to {n}."), ["phone", "credit_card"]


# ---------------------------------------------------------------------------------------------
# Hard negatives beside each detector: near misses that must not match anything.
# ---------------------------------------------------------------------------------------------

NEG_DEV = [
    "Is this the right format? {}",
    "The docs show `{}` - what goes there?",
    "Our secret scanner flagged this line, false positive?\n{}",
    "In the README it says:\n> {}",
    "Context: {}\nQuestion: is that a real credential or a placeholder?",
    "Voilà l'exemple de la doc : {}",
    "Can you explain this line from our runbook?\n```\n{}\n```",
    "{}",
]
NEG_DOC = [
    "What is this value in column C of the export? {}",
    "Summarise the ticket. Details: {}.",
    "Is this number valid? {}",
    "The form rejected this, why? {}",
    "Warum ist das ungültig: {}",
    "{}",
    "Translate to Spanish: \"{}\"",
]


def wrap_neg(s, family="credential"):
    return pick(NEG_DEV if family == "credential" else NEG_DOC).format(s)


def neg_aws_access_key_id():  # truncated, too long, wrong charset, other IAM id prefixes, prose
    return [
        "AKIA" + rand(B32, 12) + " (truncated in the screenshot)",
        "AKIA" + rand(B32, 20),
        "AKIA" + rand("0189", 4) + rand(B32, 12),
        "akia" + rand(B32.lower(), 16),
        "IAM user id " + "AIDA" + rand(B32, 17) + " and role id AROA" + rand(B32, 17),
        "AKIA is the prefix of long-term access key ids, ASIA of temporary ones",
        "aws_access_key_id = <AKIA...>",
    ]


def neg_aws_secret_access_key():
    return [
        "aws_secret_access_key = " + mixed(B64, 39)[:30] + "...",
        "aws_secret_access_key = ${AWS_SECRET_ACCESS_KEY}",
        "aws_secret_access_key = <redacted>",
        "aws_secret_access_key = ****************************************",
        "the aws_secret_access_key field must be exactly 40 characters",
        "aws_secret_access_key: !Ref SecretKeyParam",
        "checksum " + rand(B64, 40) + " (sha1, base64)",
    ]


def neg_openai_api_key():
    return [
        "OPENAI_API_KEY=sk-...",
        "sk-proj-" + rand(URL, 12),
        "sk-this-is-not-a-real-key-replace-me",
        "skip the sk-learn import, it's called scikit-learn",
        "task-force-" + rand(string.ascii_lowercase, 24),
        "sk-ant-api03-" + rand(URL, 10),
        "Keys start with sk-proj- for project keys.",
    ]


def neg_openai_admin_key():
    return [
        "OPENAI_ADMIN_KEY=sk-admin-...",
        "sk-admin-" + mixed(URL, 12),
        "sk-admin-key-goes-here",
        "sk-admin- prefixed keys can only call the Admin API",
        "desk-admin-" + rand(string.ascii_lowercase, 20),
        "SK-ADMIN-" + rand(UPPER_ALNUM, 10),
    ]


def neg_anthropic_api_key():
    return [
        "ANTHROPIC_API_KEY=sk-ant-...",
        "sk-ant-api03-" + mixed(URL, 20),
        "Keys look like sk-ant-api03-... and go in the x-api-key header",
        "sk-ant-" + rand(string.ascii_lowercase, 6),
        "x-api-key: $ANTHROPIC_API_KEY",
        "sk-ant-api is the prefix; the rest is secret",
    ]


def neg_anthropic_admin_key():
    return [
        "ANTHROPIC_ADMIN_KEY=sk-ant-admin01-...",
        "sk-ant-admin01-" + mixed(URL, 18),
        "Admin keys (sk-ant-admin…) cannot call /v1/messages",
        "sk-ant-admin" + " key rotation every 90 days",
        "sk-ant-admin01-xxxxxxxx",
    ]


def neg_google_api_key():
    return [
        "AIzaSy" + mixed(URL, 31),
        "AIzaSy" + mixed(URL, 36),
        "AIza" + rand(string.ascii_letters, 35),
        "key=AIzaSy...&callback=initMap",
        "Google API keys start with AIza",
        "AIzaSyXXXXXXXXXXXX",
    ]


def neg_google_oauth_secret():
    return [
        "GOCSPX-test-secret",
        "GOCSPX-" + mixed(URL, 20),
        "GOCSPX-" + mixed(URL, 34),
        "GOCSPX-xxxxx (placeholder in the README)",
        "client secrets now start with GOCSPX-",
        "client_id: 1234567890-" + rand(LOWER_ALNUM, 32) + ".apps.googleusercontent.com",
    ]


def neg_google_oauth_token():
    return [
        "ya29.xxx",
        "ya29." + mixed(URL, 20),
        "Authorization: Bearer ya29...",
        "ya29.<ACCESS_TOKEN>",
        "maya29.jpg and soya29." + rand(string.ascii_lowercase, 10),
        "access tokens from Google start with ya29. and expire after an hour",
    ]


def neg_azure_storage_key():
    return [
        "DefaultEndpointsProtocol=https;AccountName=acme;AccountKey=<your-key>;EndpointSuffix=core.windows.net",
        "AccountKey=" + mixed(B64, 60) + ";",
        "AccountKey=${STORAGE_KEY};AccountName=acme",
        "UseDevelopmentStorage=true",
        "AccountKey=" + mixed(B64, 92),
        "AccountName=acmeprodstore;EndpointSuffix=core.windows.net",
    ]


def neg_azure_client_secret():
    return [
        rand(ALNUM, 3) + str(R.randint(0, 9)) + "Q~" + mixed(ALNUM, 20),
        rand(ALNUM, 3) + str(R.randint(0, 9)) + "Q~" + mixed(ALNUM, 40),
        "abcQ~" + mixed(ALNUM, 34),
        "cd ~/projects && ls Q~backup",
        "client_id: " + "%08x-%04x-%04x-%04x-%012x" % (R.getrandbits(32), R.getrandbits(16), R.getrandbits(16), R.getrandbits(16), R.getrandbits(48)),
        "secrets created in Entra contain Q~ after the fourth character",
    ]


def neg_gh(prefix, name):
    return [
        prefix + mixed(ALNUM, 30),
        prefix + mixed(ALNUM, 44),
        prefix + "x" * 36,
        prefix + "YOUR_TOKEN_HERE",
        f"{prefix} tokens are {name}",
        prefix + mixed(ALNUM, 18) + "-" + mixed(ALNUM, 17),
    ]


def neg_github_token():
    return neg_gh("ghp_", "classic personal access tokens") + [
        "old tokens were 40 hex chars like e72e16c7e42f292c6912e7710c838347ae178b4a"]


def neg_github_oauth_token():
    return neg_gh("gho_", "OAuth access tokens")


def neg_github_app_token():
    return neg_gh("ghs_", "installation tokens") + ["ghu_" + mixed(ALNUM, 20)]


def neg_github_refresh_token():
    # the detector accepts ghr_ bodies of 36 to 76 characters, so "too long" means over 76
    return [x for x in neg_gh("ghr_", "refresh tokens") if len(x) != 48] + ["ghr_" + mixed(ALNUM, 80)]


def neg_github_fine_grained_pat():
    return [
        "github_pat_11" + mixed(UPPER_ALNUM, 20) + "_" + mixed(ALNUM, 30),
        "github_pat_XXXXXXXX",
        "github_pat_ tokens are fine-grained",
        "github_pat_" + mixed(ALNUM, 120),
        "GH_TOKEN=github_pat_...",
    ]


def neg_gl(prefix):
    return [
        prefix + mixed(URL, 10),
        prefix + "x" * 20,
        f"{prefix}<token>",
        prefix + mixed(URL, 70),
        f"{prefix} is a GitLab prefix",
    ]


def neg_gitlab_token():
    return neg_gl("glpat-") + ["glptt-" + rand(HEX, 8)]


def neg_gitlab_runner_token():
    return neg_gl("glrt-") + ["glrt-tx_xxxxxxxxxxxxxxxxxxxxxxxxxxx.xxxxxxxxx"]


def neg_gitlab_deploy_token():
    return neg_gl("gldt-")


def neg_slack(prefix):
    return [
        f"{prefix}your-token",
        f"{prefix}1234",
        f"{prefix}...",
        f"{prefix.upper()}{R.randint(10**10, 10**11)}-{mixed(ALNUM, 24)}",
        f"{prefix}not-a-real-token-just-docs-example",
        f"{prefix} tokens are Slack tokens",
    ]


def neg_slack_bot_token():
    return neg_slack("xoxb-")


def neg_slack_user_token():
    return neg_slack("xoxp-")


def neg_slack_app_token():
    return neg_slack("xapp-")


def neg_slack_webhook():
    return [
        "https://hooks.slack.com/services/T1234567/AAAAAAAA/ZZZZZZ",
        "https://hooks.slack.com/services/",
        "https://hooks.slack.com/services/${SLACK_WEBHOOK_PATH}",
        "https://api.slack.com/messaging/webhooks",
        "https://hooks.slack.com/services/T0123/B0456/abc",
        "hooks.slack.com/services/<team>/<channel>/<secret>",
    ]


def neg_stripe(prefix):
    return [
        f"{prefix}...",
        prefix + mixed(ALNUM, 10),
        prefix + "x" * 24,
        f"{prefix} keys are shown once in the Dashboard",
    ]


def neg_stripe_key():
    return neg_stripe("sk_live_") + ["pk_live_" + mixed(ALNUM, 99), "risk_live_results_" + rand(string.ascii_lowercase, 24)]


def neg_stripe_restricted_key():
    return neg_stripe("rk_live_") + ["pk_live_" + mixed(ALNUM, 24), "rk_test_" + mixed(ALNUM, 24)]


def neg_stripe_test_key():
    return neg_stripe("sk_test_") + ["pk_test_" + mixed(ALNUM, 99),
                                     "risk_test_cases_for_" + rand(string.ascii_lowercase, 20)]


def neg_twilio_key():
    return [
        "SK" + rand(HEX, 31),
        "SK" + rand(HEX, 34),
        "SKU-" + rand(string.digits, 6),
        "ticket SK-1234 is blocked",
        "account sid AC" + rand(HEX, 32),
        "TASK" + rand(HEX, 32),
    ]


def neg_sendgrid_key():
    return [
        "SG." + mixed(URL, 10),
        "SG." + mixed(URL, 22) + "." + mixed(URL, 40),
        "SG." + mixed(URL, 20) + "." + mixed(URL, 43),
        "SG.<your key>",
        "Our office in SG. is closed on Monday",
        "SG." + mixed(URL, 22) + "." + mixed(URL, 44),
    ]


def neg_npm_token():
    return [
        "npm_config_cache=/tmp/.npm",
        "npm_" + mixed(ALNUM, 20),
        "npm_" + mixed(ALNUM, 40),
        "npm_" + "x" * 36,
        "process.env.npm_package_version",
        "//registry.npmjs.org/:_authToken=${NPM_TOKEN}",
    ]


def neg_pypi_token():
    return [
        "pypi-AgEIcHlwaS5vcmc" + mixed(URL, 20),
        "password = pypi-...",
        "username = __token__",
        "pypi-<token>",
        "pip install --index-url https://pypi.org/simple/ requests",
        "PyPI tokens start with pypi-AgEIcHlwaS5vcmc",
    ]


def neg_huggingface_token():
    return [
        "hf_hub_download(repo_id=\"bert-base-uncased\", filename=\"config.json\")",
        "hf_" + letters_only(20),
        "hf_" + letters_only(45),
        "HF_TOKEN=hf_...",
        "hf_xxxxxxxxxxxxxxxx",
        "from transformers import hf_argparser",
    ]


def neg_shopify_token():
    return [
        "shpat_" + rand(HEX, 31),
        "shpat_..." ,
        "shpat_" + rand("ghijklmnopqrstuvwxyz", 32),
        "shpss_ prefix marks the app secret",
        "shpat_xxxxxxxxxxxxxxxxxxxxxxxx",
        "shpca_" + rand(HEX, 20),
    ]


def neg_digitalocean_token():
    return [
        "dop_v1_" + rand(HEX, 63)[:40],
        "dop_v1_" + rand(HEX, 66),
        "dop_v1_...",
        "dop_v2_" + rand(HEX, 64),
        "DO tokens start with dop_v1_",
        "sha256:" + rand(HEX, 64),
    ]


def neg_databricks_token():
    return [
        "dapi" + rand(HEX, 31),
        "dapi" + rand(HEX, 40),
        "personal_access_token: dapi...",
        "dapi" + rand("ghijklmnopqrstuvwxyz", 32),
        "tokens start with dapi",
        "https://adb-1234567890123456.7.azuredatabricks.net/?o=1234567890123456",
    ]


def neg_vault_token():
    return [
        "hvs." + mixed(URL, 10),
        "hvs.CAESIABcDeFgHiJkLmNoPqRsTuVwXyZ",
        "X-Vault-Token: hvs....",
        "hvs.<token>",
        "Vault service tokens start with hvs.",
        "vault token lookup -accessor " + mixed(ALNUM, 24),
    ]


def neg_doppler_token():
    return [
        "dp.pt." + mixed(ALNUM, 30),
        "dp.pt." + mixed(ALNUM, 50),
        "echo 'dp.st.prd.xxxx' | doppler configure set token --scope /usr/src/app",
        "dp.pt.<personal token>",
        "Doppler personal tokens start with dp.pt.",
    ]


def neg_linear_api_key():
    return [
        "lin_api_" + mixed(ALNUM, 39),
        "lin_api_" + mixed(ALNUM, 41),
        "lin_api_...",
        "lin_api_xxxxxxxxxxxxxxxx",
        "Linear keys start with lin_api_",
    ]


def neg_atlassian_token():
    return [
        "ATATT3x" + mixed(URL, 20),
        "ATATT3x...",
        "ATATT3xFfGF0",
        "Atlassian tokens start with ATATT",
        "JIRA_API_TOKEN=<ATATT3x...>",
    ]


def neg_grafana_token():
    return [
        "glsa_" + mixed(ALNUM, 20),
        "glsa_" + mixed(ALNUM, 32) + "_" + mixed(ALNUM, 30),
        "glsa_xxxxxxxxxxxx",
        "Service account token: glsa_...",
        "glsa is the prefix of Grafana service account tokens",
    ]


def neg_new_relic_key():
    return [
        "NRAK-" + mixed(UPPER_ALNUM, 26),
        "NRAK-" + mixed(UPPER_ALNUM, 30),
        "browser key NRJS-" + rand(HEX, 19),
        "NRAK-...",
        "NRAK-" + mixed(string.ascii_lowercase + string.digits, 27),
        "User keys start with NRAK-",
    ]


def neg_sentry_token():
    return [
        "sntrys_" + mixed(ALNUM, 20),
        "SENTRY_AUTH_TOKEN=sntrys_...",
        "sntrys_<org token>",
        "Org tokens start with sntrys_ and user tokens with sntryu_",
        "sentry-cli releases new " + rand(HEX, 12),
    ]


def neg_postman_key():
    return [
        "PMAK-" + rand(HEX, 24),
        "PMAK-...",
        "PMAK-" + rand(HEX, 40) + "-" + rand(HEX, 40),
        "Postman API keys start with PMAK-",
        "X-Api-Key: {{postman_api_key}}",
    ]


def neg_dockerhub_token():
    return [
        "dckr_pat_test",
        "dckr_pat_" + mixed(URL, 12),
        "dckr_pat_" + mixed(URL, 45),
        "dckr_pat_...",
        "docker login -u acmebot --password-stdin < token.txt",
    ]


def neg_age_secret_key():
    return [
        "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p",
        "AGE-SECRET-KEY-1" + rand(BECH32, 40),
        "AGE-SECRET-KEY-1...",
        "AGE-SECRET-KEY-1" + rand("BIO1", 58),
        "AGE-PLUGIN-YUBIKEY-1" + rand(BECH32, 20),
        "recipient: age1" + rand(BECH32.lower(), 58),
    ]


def neg_telegram_bot_token():
    return [
        "123456:ABC-DEF1234ghIkl-zyx57W2v1u123ew11",
        "%d:AA%s" % (R.randint(10**8, 10**9), mixed(URL, 20)),
        "%d:AA%s" % (R.randint(10**8, 10**9), mixed(URL, 40)),
        "%d:AA%s" % (R.randint(10**6, 10**7 - 1), mixed(URL, 33)),
        "TELEGRAM_BOT_TOKEN=<bot id>:<secret>",
        "Bot tokens look like 123456:ABC-DEF... from @BotFather",
    ]


def neg_jwt():
    return [
        "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9 is just the header",
        "Authorization: Bearer <token>",
        "eyJ is how a base64 JSON object starts",
        b64u({"user": "bob", "role": "viewer"}) + " (base64 of a JSON object, no dots)",
        "the id_token starts with eyJhbGciOi... and is long",
        b64u({"alg": "HS256"}) + "." + b64u({"sub": "1"}) + ".abc",
    ]


def neg_private_key():
    return [
        pem_public("PUBLIC KEY"),
        pem_public("CERTIFICATE"),
        pem_public("RSA PUBLIC KEY"),
        pem_public("CERTIFICATE REQUEST"),
        "-----BEGIN PRIVATE KEY----- (truncated)",
        "openssl genpkey -algorithm ed25519 -out key.pem",
    ]


def neg_ssh_private_key():
    return [
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI" + rand(B64, 43) + " jane@laptop",
        "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQ" + rand(B64, 180) + " deploy@ci",
        "~/.ssh/id_ed25519 has the wrong permissions (0644)",
        "Host key fingerprint is SHA256:" + rand(ALNUM + "+/", 43),
        "-----BEGIN OPENSSH PRIVATE KEY-----\n(key redacted)",
    ]


def neg_pgp_private_key():
    return [
        pem_public("PGP PUBLIC KEY BLOCK"),
        pem_public("PGP SIGNATURE"),
        pem_public("PGP MESSAGE"),
        "gpg --armor --export-secret-keys ABCD1234 > private.asc",
        "Key fingerprint = " + " ".join(rand("0123456789ABCDEF", 4) for _ in range(10)),
    ]


def pem_public(label):
    body = rand(B64, 64 * R.randint(3, 6))
    rows = [body[i:i + 64] for i in range(0, len(body), 64)]
    return "-----BEGIN %s-----\n%s\n-----END %s-----" % (label, "\n".join(rows), label)


def neg_connection_string_password():
    return [
        "postgres://localhost/db",
        "postgresql://db.internal:5432/orders?sslmode=require",
        "mysql://user:${DB_PASSWORD}@mysql:3306/app",
        "mongodb://<user>:<pass>@mongo:27017",
        "postgresql://app:****@db:5432/app",
        "Server=sqlsrv01;Database=hr;Integrated Security=true;",
        "mysql://user:password@host/db",
        "jdbc:postgresql://pg-prod:5432/crm?ssl=true",
    ]


def neg_generic_secret():
    return [
        "password: ********",
        "password=${DB_PASSWORD}",
        "token: <your token here>",
        "secret = changeme",
        "api_key: YOUR_API_KEY",
        "max_tokens: 4096",
        "password_min_length: 12",
        "the secret is to keep it simple",
        "PASSWORD_RESET_TIMEOUT=3600",
        "Failed password for root from host web01",
        "secret_santa_budget = 25.00",
    ]


def neg_credit_card():
    out = []
    for p, n in [pick([("4", 16), ("51", 16), ("2221", 16)]), ("55", 16), pick([("34", 15), ("37", 15)]),
                 pick([("6011", 16), ("3530", 16), ("62", 16)])]:
        out.append("card " + fmt_card(luhn_break(luhn_complete(p, n))))
    out += [
        "order ref " + luhn_complete(pick(["1", "7", "8", "9"]), 16),
        "IMEI " + luhn_complete("35", 15),
        "SIM ICCID " + luhn_complete("8944", 19),
        "4111-1111 1111-1111",
        "card ending in 4242, exp 12/27",
        "Visa " + luhn_complete("4", 15) + " (15 digits)",
        "Amex " + luhn_complete("37", 16) + " (16 digits)",
    ]
    return out


def neg_iban():
    good = iban_value()
    i = 2 if good[2] != "9" else 3
    bad = good[:i] + str((int(good[i]) + R.randint(1, 8)) % 10) + good[i + 1:]
    return [
        "IBAN " + iban_print(bad),
        "GB82 WEST 1234 5698 7654 33",
        "IBAN " + "GB82WEST123456987654",
        "XX82WEST12345698765432",
        "BIC DEUTDEFF500",
        "sort code 20-00-00, account 55779911",
    ]


def neg_us_ssn():
    return [
        "000-%02d-%04d" % (R.randint(1, 99), R.randint(1, 9999)),
        "666-%02d-%04d" % (R.randint(1, 99), R.randint(1, 9999)),
        "ITIN 9%02d-7%d-%04d" % (R.randint(0, 99), R.randint(0, 9), R.randint(1, 9999)),
        "%03d-00-%04d" % (R.randint(1, 665), R.randint(1, 9999)),
        "%03d-%02d-0000" % (R.randint(1, 665), R.randint(1, 99)),
        "078-05-1120 is the famous Woolworth wallet number",
        "SSN 078051120 (sample card)",
        "ssn: 987-65-4321 (advertising range)",
        "order id %d" % R.randint(100000000, 999999999),
        "EIN %02d-%07d" % (R.randint(10, 99), R.randint(0, 9999999)),
        "ZIP 94105-1234",
    ]


def neg_email():
    return [
        "email me at bob at example dot com",
        "ping @jane_doe on Slack",
        "user@localhost",
        "npm i lodash@4.17.21 react@18.2.0",
        "@app.route(\"/users\")",
        "docker pull nginx@sha256:" + rand(HEX, 16),
        "x@y.c is not a valid address",
        "contact jane(at)example(dot)org",
    ]


def neg_phone():
    return [
        "2024-01-15",
        "version 1.2.3",
        "coordinates 51.5074, -0.1278",
        "(123) 456-7890",
        "911-555-0123",
        "Order #4155552671",
        "ISBN 978-3-16-148410-0",
        "price 1,234,567.89",
        "meeting 10:30-11:45, room 4.12",
    ]


def neg_uk_nino():
    return [
        "QQ 12 34 56 A",
        "GB123456A",
        "BG 12 34 56 C",
        "AB123456E",
        "AO123456B",
        "SW1A 1AA",
        "VAT GB123456789",
        "AB12 CDE",
        "TN 12 34 56 A",
    ]


def neg_ip_address():
    return [
        "10.20.300.1",
        "192.168.1",
        "01.02.03.04",
        "1.3.6.1.4.1.311",
        "version 10.0.19045.2965",
        "Chrome/120.0.6099.109",
        "2001:db8::1",
        "00:1A:2B:3C:4D:5E",
    ]


NEG = {
    "aws_access_key_id": neg_aws_access_key_id, "aws_secret_access_key": neg_aws_secret_access_key,
    "openai_api_key": neg_openai_api_key, "openai_admin_key": neg_openai_admin_key,
    "anthropic_api_key": neg_anthropic_api_key, "anthropic_admin_key": neg_anthropic_admin_key,
    "google_api_key": neg_google_api_key, "google_oauth_secret": neg_google_oauth_secret,
    "google_oauth_token": neg_google_oauth_token, "azure_storage_key": neg_azure_storage_key,
    "azure_client_secret": neg_azure_client_secret, "github_token": neg_github_token,
    "github_oauth_token": neg_github_oauth_token, "github_app_token": neg_github_app_token,
    "github_refresh_token": neg_github_refresh_token, "github_fine_grained_pat": neg_github_fine_grained_pat,
    "gitlab_token": neg_gitlab_token, "gitlab_runner_token": neg_gitlab_runner_token,
    "gitlab_deploy_token": neg_gitlab_deploy_token, "slack_bot_token": neg_slack_bot_token,
    "slack_user_token": neg_slack_user_token, "slack_app_token": neg_slack_app_token,
    "slack_webhook": neg_slack_webhook, "stripe_key": neg_stripe_key,
    "stripe_restricted_key": neg_stripe_restricted_key, "stripe_test_key": neg_stripe_test_key,
    "twilio_key": neg_twilio_key, "sendgrid_key": neg_sendgrid_key, "npm_token": neg_npm_token,
    "pypi_token": neg_pypi_token, "huggingface_token": neg_huggingface_token,
    "shopify_token": neg_shopify_token, "digitalocean_token": neg_digitalocean_token,
    "databricks_token": neg_databricks_token, "vault_token": neg_vault_token,
    "doppler_token": neg_doppler_token, "linear_api_key": neg_linear_api_key,
    "atlassian_token": neg_atlassian_token, "grafana_token": neg_grafana_token,
    "new_relic_key": neg_new_relic_key, "sentry_token": neg_sentry_token,
    "postman_key": neg_postman_key, "dockerhub_token": neg_dockerhub_token,
    "age_secret_key": neg_age_secret_key, "telegram_bot_token": neg_telegram_bot_token,
    "jwt": neg_jwt, "private_key": neg_private_key, "ssh_private_key": neg_ssh_private_key,
    "pgp_private_key": neg_pgp_private_key, "connection_string_password": neg_connection_string_password,
    "generic_secret": neg_generic_secret, "credit_card": neg_credit_card, "iban": neg_iban,
    "us_ssn": neg_us_ssn, "email": neg_email, "phone": neg_phone, "uk_nino": neg_uk_nino,
    "ip_address": neg_ip_address,
}


def generic_negatives():
    """Look-alikes that belong to no detector: ids, hashes, versions, dates, blobs."""
    out = []
    for _ in range(30):
        out.append("request id %08x-%04x-4%03x-%04x-%012x" % (R.getrandbits(32), R.getrandbits(16), R.getrandbits(12), R.getrandbits(16), R.getrandbits(48)))
        out.append("commit %s" % rand(HEX, 40))
        out.append("sha256 %s" % rand(HEX, 64))
        out.append("Order #%d shipped via UPS 1Z%s%s" % (R.randint(10**7, 10**9), rand(UPPER_ALNUM, 6), rand(string.digits, 10)))
        out.append("upgrade to v%d.%d.%d" % (R.randint(0, 30), R.randint(0, 99), R.randint(0, 999)))
        out.append("blob %s" % base64.b64encode(bytes(R.getrandbits(8) for _ in range(33))).decode())
        y, m, d = R.randint(1990, 2030), R.randint(1, 12), R.randint(1, 28)
        out.append("meeting %02d/%02d/%d at %02d:%02d, room 4.12" % (d, m, y, R.randint(0, 23), R.randint(0, 59)))
        out.append("invoice total $%d,%03d.%02d due %d-%02d-%02d" % (R.randint(1, 99), R.randint(0, 999), R.randint(0, 99), y, m, d))
    return out


# ---------------------------------------------------------------------------------------------
# Assembly
# ---------------------------------------------------------------------------------------------

CREDENTIALS = list(TOKENS) + list(SELF_CONTEXT)
N_CRED = 18
N_PII = 40
NEG_ROUNDS = 2


def main():
    rows = []
    for name in CREDENTIALS:
        for _ in range(N_CRED):
            text, expect = credential_positive(name)
            rows.append({"text": text, "expect": expect})
    for name, gen in PII.items():
        for _ in range(N_PII):
            rows.append({"text": pii_frame(gen()), "expect": [name]})
    for _ in range(40):
        text, expect = combined()
        rows.append({"text": text, "expect": expect})
    for name, gen in NEG.items():
        for _ in range(NEG_ROUNDS):
            for s in gen():
                family = "credential" if name in CREDENTIALS or name == "huggingface_token" else "pii"
                rows.append({"text": wrap_neg(s, family), "expect": []})
    for s in generic_negatives():
        rows.append({"text": wrap_neg(s, pick(["credential", "pii"])), "expect": []})
    with open(OUT, "w") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    pos = sum(1 for r in rows if r["expect"])
    print("wrote %s: %d true positives, %d hard negatives" % (OUT, pos, len(rows) - pos))


if __name__ == "__main__":
    main()
