use super::*;

struct Heads(Vec<(String, Vec<u8>)>);

impl HeaderSource for Heads {
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, v)| &v[..])
    }
}

/// A captured head (`testdata/NAME.head`): the request line and header fields.
fn head(text: &str) -> (String, Heads) {
    let mut lines = text.split("\r\n");
    let path = lines.next().and_then(|l| l.split(' ').nth(1)).unwrap_or("/").to_owned();
    let fields = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().as_bytes().to_vec()))
        .collect();
    (path, Heads(fields))
}

fn heads(pairs: &[(&str, &str)]) -> Heads {
    Heads(pairs.iter().map(|(n, v)| ((*n).to_owned(), v.as_bytes().to_vec())).collect())
}

fn testdata(name: &str) -> Vec<u8> {
    let path = format!("{}/apps/testdata/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn ja4_of(hello: &[u8]) -> (String, Option<String>) {
    let mut scratch = Vec::new();
    match sluice_hello::parse_client_hello(hello, &mut scratch) {
        sluice_hello::HelloParse::Hello(h) => (h.ja4(), h.sni().map(str::to_owned)),
        other => panic!("not a whole hello: {other:?}"),
    }
}

#[test]
fn the_shipped_catalog_compiles() {
    let c = shipped();
    assert!(c.apps().len() >= 10);
    assert!(!c.version.is_empty());
    for a in c.apps() {
        assert_eq!(c.id(&a.name).map(|i| c.name(Some(i))), Some(&*a.name));
    }
    assert_eq!(c.name(None), "unknown");
}

/// Each lab client's captured hello and head are identified as the catalog says: the hello
/// names the stack, the head the app on it (and its version), and the two agree.
#[test]
fn captured_clients_are_identified() {
    let c = shipped();
    let cases = [
        // capture name, app of the hello, app of the request, version
        ("curl", "curl", "curl", Some("7.88.1")),
        ("openai-python", "python", "openai-python", Some("3.57.0")),
        ("httpx-h2", "python", "httpx", Some("0.29.0")),
        ("python-urllib", "python", "python-urllib", Some("3.11")),
        ("python-websockets", "python", "python-websockets", Some("17.4")),
        ("openai-node", "node", "openai-node", Some("7.60.0")),
        ("codex-cli", "rustls", "codex-cli", Some("0.171.0")),
        ("chromium", "chromium", "chromium", Some("156.0.0.0")),
    ];
    for (name, stack, app, version) in cases {
        let (ja4, sni) = ja4_of(&testdata(&format!("{name}.hello")));
        let h = c.by_hello(&ja4, sni.as_deref());
        assert_eq!(c.name(h.app), stack, "{name}: hello {ja4}");
        assert!(h.evidence.contains(Evidence::JA4));
        let text = String::from_utf8(testdata(&format!("{name}.head"))).unwrap();
        let (path, hs) = head(&text);
        let facts = RequestFacts { authority: "api.openai.com", path: &path, headers: &hs };
        let r = c.by_request(&facts);
        assert_eq!(r.map(|r| c.name(Some(r.app))), Some(app), "{name}: head");
        let id = c.identify(h, r);
        assert_eq!(c.name(id.app), app, "{name}");
        assert_eq!(id.version.as_deref(), version, "{name}");
        assert_eq!(id.claimed, None, "{name}");
    }
}

/// The lab's other TLS clients (their hellos only) are known too.
#[test]
fn captured_tools_are_identified_by_their_hello() {
    let c = shipped();
    for (name, app) in [("nghttp", "nghttp2"), ("openssl-s-client", "openssl-cli")] {
        let (ja4, sni) = ja4_of(&testdata(&format!("{name}.hello")));
        assert_eq!(c.name(c.by_hello(&ja4, sni.as_deref()).app), app, "{name}: {ja4}");
    }
}

#[test]
fn a_claim_the_hello_contradicts_is_kept_as_a_claim() {
    let c = shipped();
    let (ja4, sni) = ja4_of(&testdata("chromium.hello"));
    let hello = c.by_hello(&ja4, sni.as_deref());
    // The Python SDK's headers, from a browser's TLS: not believed.
    let hs = heads(&[("user-agent", "OpenAI/Python 1.0.0"), ("x-stainless-lang", "python")]);
    let facts =
        RequestFacts { authority: "api.openai.com", path: "/v1/chat/completions", headers: &hs };
    let id = c.identify(hello, c.by_request(&facts));
    assert_eq!(c.name(id.app), "chromium");
    assert_eq!(id.claimed, c.id("openai-python"));
    assert!(id.evidence.contains(Evidence::MISMATCH));
    assert_eq!(id.evidence.to_string(), "ja4+mismatch");
    // From an unknown hello, a claim of an app with a stack is not believed either.
    let id = c.identify(HelloMatch::default(), c.by_request(&facts));
    assert_eq!(id.app, None);
    assert_eq!(id.claimed, c.id("openai-python"));
    // A web app is believed from any browser's hello (ChatGPT in the browser)...
    let hs = heads(&[("user-agent", "Mozilla/5.0 (X11) Firefox/140.0")]);
    let facts =
        RequestFacts { authority: "chatgpt.com", path: "/backend-api/conversation", headers: &hs };
    let id = c.identify(hello, c.by_request(&facts));
    assert_eq!(c.name(id.app), "chatgpt-web");
    assert_eq!(id.evidence.to_string(), "ja4+ua+path+host");
    // ...not from a script's: a browser's user agent from Python stays Python.
    let (ja4, _) = ja4_of(&testdata("openai-python.hello"));
    let python = c.by_hello(&ja4, None);
    let id = c.identify(python, c.by_request(&facts));
    assert_eq!((c.name(id.app), id.claimed), ("python", c.id("chatgpt-web")));
    // An app with a fingerprint of its own (curl) is believed from its own hello only.
    let hs = heads(&[("user-agent", "curl/8.0.0")]);
    let facts = RequestFacts { authority: "api.openai.com", path: "/v1/models", headers: &hs };
    let id = c.identify(python, c.by_request(&facts));
    assert_eq!((c.name(id.app), id.claimed), ("python", c.id("curl")));
    let id = c.identify(HelloMatch::default(), c.by_request(&facts));
    assert_eq!((id.app, id.claimed), (None, c.id("curl")));
}

#[test]
fn the_best_signature_wins() {
    let c = shipped();
    // A browser to chatgpt.com's back end is ChatGPT on the web, elsewhere the browser.
    let ua = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/156.0.0.0 Safari/537.36";
    let hs = heads(&[("user-agent", ua)]);
    let on = |authority, path| {
        let f = RequestFacts { authority, path, headers: &hs };
        c.by_request(&f).map(|r| c.name(Some(r.app)).to_owned())
    };
    assert_eq!(on("chatgpt.com", "/backend-api/conversation").as_deref(), Some("chatgpt-web"));
    assert_eq!(on("chatgpt.com", "/").as_deref(), Some("chromium"));
    assert_eq!(on("example.org", "/backend-api/x").as_deref(), Some("chromium"));
    // The SDK's user agent without its header is not the SDK.
    let hs = heads(&[("user-agent", "OpenAI/Python 1.0")]);
    let f = RequestFacts { authority: "api.openai.com", path: "/v1/models", headers: &hs };
    assert_eq!(c.by_request(&f), None);
    // Nothing to go on.
    let hs = heads(&[]);
    let f = RequestFacts { authority: "api.openai.com", path: "/v1/models", headers: &hs };
    assert_eq!(c.by_request(&f), None);
}

#[test]
fn versions_are_bounded_tokens() {
    let c = shipped();
    for (ua, want) in [
        ("curl/8.1.2", Some("8.1.2")),
        ("curl/", None),
        ("curl/ 8", None),
        ("curl/<script>", None),
        (&*format!("curl/{}", "1".repeat(40)), None),
        ("curl/1.0-rc1+x (linux)", Some("1.0-rc1+x")),
    ] {
        let hs = heads(&[("user-agent", ua)]);
        let f = RequestFacts { authority: "x", path: "/", headers: &hs };
        let r = c.by_request(&f).unwrap_or_else(|| panic!("{ua}"));
        assert_eq!(r.version, want, "{ua}");
    }
}

#[test]
fn hello_lookups_cover_partial_masked_and_scoped_entries() {
    let text = r#"
version = "1"
description = "test"
[[app]]
name = "stack"
title = "S"
kind = "stack"
ja4 = ["t13d1516??_8daaf6152771", "t13d0000h2_000000000000_000000000000"]
[[app]]
name = "web"
title = "W"
kind = "web"
runs_on = "stack"
sni = ["chat.example", "*.chat.example"]
"#;
    let c = AppCatalog::parse(&[("t", text)]).unwrap();
    let stack = c.id("stack");
    let web = c.id("web");
    let m = |ja4: &str, sni: Option<&str>| c.by_hello(ja4, sni).app;
    assert_eq!(m("t13d1516h2_8daaf6152771_02713d6af862", Some("x.org")), stack);
    assert_eq!(m("t13d1516h1_8daaf6152771_ffffffffffff", None), stack);
    assert_eq!(m("t13d1516h2_8daaf6152771_02713d6af862", Some("a.CHAT.example.")), web);
    assert_eq!(
        c.by_hello("t13d1516h2_8daaf6152771_02713d6af862", Some("chat.example")).evidence,
        Evidence::JA4 | Evidence::SNI
    );
    assert_eq!(m("t13d0000h2_000000000000_000000000000", None), stack);
    assert_eq!(m("t13d0000h1_000000000000_000000000000", None), None);
    assert_eq!(m("t13d1516h2_8daaf6152771", None), None, "a lookup is a whole JA4");
    assert_eq!(m("", None), None);
    assert_eq!(m("t13d1516h2_8daaf6152771_02713d6af86\u{e9}", None), None);
    assert!(c.runs_on(web.unwrap(), stack.unwrap()));
    assert_eq!(c.root(web.unwrap()), stack.unwrap());
    assert!(!c.has_header_only_apps());
    assert!(!shipped().has_header_only_apps(), "every shipped app has a stack or a hello");
    // An app with neither is believed from its headers whatever the hello: an unknown hello
    // may carry it, so a rule `app = "unknown"` cannot decide at the hello.
    let loose = format!(
        "{text}[[app]]\nname = \"tool\"\ntitle = \"T\"\nkind = \"library\"\n[app.request]\nuser_agent = [\"tool/\"]\n"
    );
    assert!(AppCatalog::parse(&[("t", &loose)]).unwrap().has_header_only_apps());
}

#[test]
fn bad_catalogs_are_refused_with_the_reason() {
    let app = |body: &str| {
        format!(
            "version = \"1\"\ndescription = \"d\"\n[[app]]\nname = \"a\"\ntitle = \"A\"\nkind = \"stack\"\n{body}\n"
        )
    };
    for (body, want) in [
        ("ja4 = [\"t13d\"]", "is not a JA4"),
        ("ja4 = [\"T13d1516h2_8daaf6152771\"]", "is not a JA4"),
        ("runs_on = \"b\"", "unknown app `b`"),
        ("runs_on = \"a\"", "circle"),
        ("sni = [\"x.org\"]", "needs `runs_on`"),
        ("[app.request]\nversion = \"ua:x\"", "needs `user_agent`"),
        ("[app.request]\nuser_agent = [\"*\"]", "expected `*text`"),
        ("[app.request]\npaths = [\"v1\"]", "starting with `/`"),
        ("[app.request]\nuser_agent = [\"x/\"]\nversion = \"body:x\"", "expected `header:NAME`"),
        ("[app.request]\nheaders = { \"bad name\" = \"x\" }", "not a header name"),
        ("[app.request]\nheaders = { \"user-agent\" = \"x\" }", "with `user_agent`"),
        ("colour = 1", "unknown field"),
    ] {
        let e = AppCatalog::parse(&[("t", &app(body))]).unwrap_err().to_string();
        assert!(e.contains(want), "{body}: {e}");
    }
    let twice = format!("{}[[app]]\nname = \"a\"\ntitle = \"A\"\nkind = \"stack\"\n", app(""));
    assert!(AppCatalog::parse(&[("t", &twice)]).unwrap_err().to_string().contains("twice"));
    let dup = app("ja4 = [\"t13d1516h2_8daaf6152771\", \"t13d1516h2_8daaf6152771\"]");
    assert!(AppCatalog::parse(&[("t", &dup)]).unwrap_err().to_string().contains("already"));
    let unknown = app("").replace("name = \"a\"", "name = \"unknown\"");
    assert!(AppCatalog::parse(&[("t", &unknown)]).is_err());
}
