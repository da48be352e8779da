//! The control daemon under test: the real binary on loopback with a configuration of its
//! own, curl as the API client, and a data plane's end of the link spoken by hand.
#![allow(dead_code, clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use sluice_control::auth::token_hash;

pub mod web;

pub const ADMIN: &str = "admin-token-0123456789";
pub const ANALYST: &str = "analyst-token-0123456789";

pub struct Daemon {
    pub child: Child,
    pub port: u16,
    pub dir: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn start() -> Daemon {
    start_with("")
}

/// [`start`], `extra` appended to the configuration (more tokens, `[approvals]`).
pub fn start_with(extra: &str) -> Daemon {
    start_with_env(extra, &[])
}

/// [`start_with`], the daemon's environment given `env` besides.
pub fn start_with_env(extra: &str, env: &[(&str, &str)]) -> Daemon {
    start_configured("", extra, env)
}

/// The daemon with `top` among the configuration's top-level keys, `extra` after its tables.
pub fn start_configured(top: &str, extra: &str, env: &[(&str, &str)]) -> Daemon {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("sluice-control-test-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (child, port, log) = spawn_in(&dir, top, extra, env);
    wait_for(&log, "sluice-control serving", std::time::Duration::from_secs(60))
        .expect("daemon serving");
    Daemon { child, port, dir }
}

/// The daemon with its configuration and state in `dir` (`dir/state`), started: its
/// process, API port and log lines (drained as they come, so it never blocks on them).
pub fn spawn_in(
    dir: &Path,
    top: &str,
    extra: &str,
    env: &[(&str, &str)],
) -> (Child, u16, std::sync::mpsc::Receiver<String>) {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config = format!(
        "listen = \"127.0.0.1:{port}\"\nstate_dir = \"{}\"\n{top}\n\n[[tokens]]\nname = \"ops\"\nrole = \"admin\"\nsha256 = \"{}\"\n\n[[tokens]]\nname = \"soc\"\nrole = \"analyst\"\nsha256 = \"{}\"\n",
        dir.join("state").display(),
        token_hash(ADMIN),
        token_hash(ANALYST)
    );
    std::fs::write(dir.join("control.toml"), format!("{config}\n{extra}")).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice-control"))
        .arg("--config")
        .arg(dir.join("control.toml"))
        .envs(env.iter().copied())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(stderr).lines().map_while(Result::ok) {
            if std::env::var_os("SLUICE_TEST_LOG").is_some() {
                eprintln!("control: {l}");
            }
            let _ = tx.send(l);
        }
    });
    (child, port, rx)
}

/// Waits for a log line containing `what`; `None` if the log ends or `within` passes first.
pub fn wait_for(
    log: &std::sync::mpsc::Receiver<String>,
    what: &str,
    within: std::time::Duration,
) -> Option<String> {
    let until = std::time::Instant::now() + within;
    loop {
        let left = until.checked_duration_since(std::time::Instant::now())?;
        match log.recv_timeout(left) {
            Ok(l) if l.contains(what) => return Some(l),
            Ok(_) => {}
            Err(_) => return None,
        }
    }
}

/// `sluicectl ARGS` against the daemon with `token`: (exit code, stdout and stderr).
pub fn sluicectl(d: &Daemon, token: &str, args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sluicectl"))
        .env("SLUICE_URL", format!("https://127.0.0.1:{}", d.port))
        .env("SLUICE_TOKEN", token)
        .env("SLUICE_CA", d.dir.join("state").join("api.crt"))
        .args(args)
        .output()
        .unwrap();
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

/// (status, body) of a request made with curl, trusting the daemon's generated certificate.
pub fn call(
    d: &Daemon,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, String) {
    call_at(d.port, &d.dir, method, path, token, body)
}

/// [`call`] by port and directory (from another thread).
pub fn call_at(
    port: u16,
    dir: &Path,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, String) {
    let cert = dir.join("state").join("api.crt");
    let mut c = Command::new("curl");
    c.args(["-sS", "-o", "-", "-w", "\n%{http_code}", "--cacert"]).arg(&cert).args([
        "--resolve",
        &format!("localhost:{port}:127.0.0.1"),
        "-X",
        method,
    ]);
    if let Some(t) = token {
        c.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    if let Some(b) = body {
        c.args(["--data-binary", b]);
    }
    let out = c.arg(format!("https://localhost:{port}{path}")).output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "curl failed: {}", String::from_utf8_lossy(&out.stderr));
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.parse().unwrap(), body.to_owned())
}

pub fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap()
}

pub fn rules(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap()
}

/// A link's stream: the Unix socket, or TLS over TCP.
pub trait Stream: std::io::Read + std::io::Write + Send {}
impl<T: std::io::Read + std::io::Write + Send> Stream for T {}

/// A data plane's end of the link, speaking the protocol by hand.
pub struct FakeDataplane {
    pub sock: Box<dyn Stream>,
    dec: sluice_link::Decoder,
}

impl FakeDataplane {
    /// Connects to the link's TLS listener at `port` with the enrolment in `dir` (a TLS
    /// failure is the error) and says hello as `name`.
    pub fn connect_tls(port: u16, dir: &Path, name: &str) -> Result<FakeDataplane, String> {
        Ok(Self::handshake_tls(port, dir)?.hello(name))
    }

    /// Connects to the link's TLS listener and finishes the handshake, saying nothing yet.
    pub fn handshake_tls(port: u16, dir: &Path) -> Result<FakeDataplane, String> {
        let tls = sluice_certs::fleet::dataplane_tls(dir).map_err(|e| e.to_string())?;
        let tcp = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
        tcp.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
        let server = rustls::pki_types::ServerName::try_from("sluice-control").unwrap();
        let conn = rustls::ClientConnection::new(tls.config, server).unwrap();
        let mut s = rustls::StreamOwned::new(conn, tcp);
        while s.conn.is_handshaking() {
            s.conn.complete_io(&mut s.sock).map_err(|e| e.to_string())?;
        }
        Ok(FakeDataplane { sock: Box::new(s), dec: sluice_link::Decoder::new() })
    }

    /// Says hello as `name`.
    pub fn hello(mut self, name: &str) -> FakeDataplane {
        self.send(&sluice_link::Up::Hello {
            proto: sluice_link::PROTO_VERSION,
            dataplane: name.into(),
            next_seq: 1,
            policy_version: None,
            policy_sha256: String::new(),
        });
        self
    }

    pub fn connect(d: &Daemon, name: &str, proto: u32) -> FakeDataplane {
        use std::io::Write;
        let path = d.dir.join("state").join("dataplane.sock");
        // The link's socket is bound by a task of its own, right after the daemon says it
        // serves: a fast test waits for it.
        let mut tries = 0;
        let mut sock = loop {
            match std::os::unix::net::UnixStream::connect(&path) {
                Ok(s) => break s,
                Err(e) if tries < 100 => {
                    tries += 1;
                    let _ = e;
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(e) => panic!("connecting to {}: {e}", path.display()),
            }
        };
        sock.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
        let mut buf = Vec::new();
        let hello = sluice_link::Up::Hello {
            proto,
            dataplane: name.into(),
            next_seq: 1,
            policy_version: None,
            policy_sha256: String::new(),
        };
        sluice_link::encode(&hello, &mut buf).unwrap();
        sock.write_all(&buf).unwrap();
        FakeDataplane { sock: Box::new(sock), dec: sluice_link::Decoder::new() }
    }

    pub fn send(&mut self, m: &sluice_link::Up) {
        use std::io::Write;
        let mut buf = Vec::new();
        sluice_link::encode(m, &mut buf).unwrap();
        self.sock.write_all(&buf).unwrap();
    }

    /// Sends records as a data plane spools them (JSON objects with their `seq`).
    pub fn send_records(&mut self, records: &[serde_json::Value]) {
        use std::io::Write;
        let texts: Vec<String> = records.iter().map(ToString::to_string).collect();
        let mut buf = Vec::new();
        sluice_link::encode_records(&texts, &mut buf).unwrap();
        self.sock.write_all(&buf).unwrap();
    }

    /// Sends record texts exactly as given (chained records: their bytes are their link).
    pub fn send_texts(&mut self, texts: &[String]) {
        use std::io::Write;
        let mut buf = Vec::new();
        sluice_link::encode_records(texts, &mut buf).unwrap();
        self.sock.write_all(&buf).unwrap();
    }

    /// The next message, `None` when control closed the link.
    pub fn recv(&mut self) -> Option<sluice_link::Down> {
        self.try_recv().unwrap_or_else(|e| panic!("link read: {e}"))
    }

    /// The next message, `None` when control closed the link (a TLS peer's end without
    /// close_notify too), or the failure (a TLS alert).
    pub fn try_recv(&mut self) -> std::io::Result<Option<sluice_link::Down>> {
        use std::io::Read;
        let mut buf = [0u8; 65536];
        loop {
            if let Some(m) = self.dec.message().map_err(std::io::Error::other)? {
                return Ok(Some(m));
            }
            let n = match self.sock.read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => 0,
                Err(e) => return Err(e),
            };
            if n == 0 {
                return Ok(None);
            }
            self.dec.push(&buf[..n]);
        }
    }
}
