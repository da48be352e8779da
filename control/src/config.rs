//! The daemon's configuration file (`sluice-control --config FILE`, TOML): where it listens,
//! where it keeps its state, its TLS certificate, the enterprise CA certificate it serves, and
//! the API tokens — stored as SHA-256 hashes, never in clear.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::auth::Role;

/// A token entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenDef {
    /// Who holds it (written to the audit log).
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// Hex SHA-256 of the token (`sluicectl token hash` prints it).
    pub sha256: String,
    /// The person holding it (`alice@corp`, as the identity feed or a virtual key names
    /// users): a reviewer may not approve a request of their own.
    #[serde(default)]
    pub user: Option<String>,
}

/// The configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Management address of the HTTPS API.
    pub listen: SocketAddr,
    /// Directory of the stores (rules, audit, flows) and of a generated certificate.
    pub state_dir: PathBuf,
    /// The shared store, `postgres://USER@HOST/DB` (or libpq's `host=… dbname=…`): what
    /// several controls share goes there (ARCHITECTURE.md, "The stores"); none: SQLite files
    /// in `state_dir`.
    pub store: Option<String>,
    /// The CA certificate(s) (PEM) the store's server certificate must chain to when TLS is
    /// used (`sslmode`; required for a server on the network); default: Mozilla's roots.
    pub store_ca: Option<PathBuf>,
    /// API certificate (PEM); with `tls_key`. Absent: a self-signed one is made on first start.
    pub tls_cert: Option<PathBuf>,
    /// API private key (PEM).
    pub tls_key: Option<PathBuf>,
    /// The enterprise CA certificate served at `/v1/ca.pem` (never its key).
    pub ca_cert: Option<PathBuf>,
    /// Unix socket the data planes connect to (mode 0600); default `STATE_DIR/dataplane.sock`.
    pub dataplane_socket: Option<PathBuf>,
    /// Address the data planes of other hosts connect to (TCP, mutual TLS with the fleet CA
    /// that `sluicectl fleet init` makes); none: the Unix socket only.
    pub link_listen: Option<SocketAddr>,
    /// Retention of flow and request records.
    #[serde(default)]
    pub retention: Retention,
    /// Export of records to a syslog collector.
    pub syslog: Option<crate::syslog::SyslogConfig>,
    /// API tokens.
    #[serde(default)]
    pub tokens: Vec<TokenDef>,
    /// Just-in-time approval: whom to notify when a request waits.
    #[serde(default)]
    pub approvals: ApprovalsConfig,
    /// Evidence: how often chains' heads are signed.
    #[serde(default)]
    pub audit: crate::checkpointer::AuditConfig,
    /// The explicit proxy: its addresses, and where the PAC file is served.
    #[serde(default)]
    pub proxy: crate::pac::ProxyConfig,
}

/// `[approvals]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalsConfig {
    /// URL (`https://…`, or `http://…` for a relay on a trusted network) that gets a JSON
    /// POST for each request that starts waiting: who, where, model, findings and the id (never
    /// the prompt). Slack-style `text` is included for chat tools.
    pub webhook: Option<String>,
    /// CA certificate (PEM) the webhook's server is verified with (default: Mozilla's roots).
    pub webhook_ca: Option<PathBuf>,
}

/// `[retention]`: records older than `max_age_days`, and the oldest beyond `max_rows` per
/// kind, are deleted (checked every minute).
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    /// Days a record is kept.
    #[serde(default = "default_age")]
    pub max_age_days: u64,
    /// Most records kept per kind (flows, requests).
    #[serde(default = "default_rows")]
    pub max_rows: u64,
    /// Days a recording is kept (on its own: recordings may go sooner, or stay longer, than
    /// the records that name them).
    #[serde(default = "default_age")]
    pub recordings_max_age_days: u64,
}

fn default_age() -> u64 {
    30
}

fn default_rows() -> u64 {
    20_000_000
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            max_age_days: default_age(),
            max_rows: default_rows(),
            recordings_max_age_days: default_age(),
        }
    }
}

/// Why the configuration was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// Unreadable.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Not valid TOML for this schema.
    #[error("{path}: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// What toml said (with line and column).
        message: String,
    },
    /// Valid TOML, invalid content.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// What toml says of an error, without its quote of the line when that line is `store`'s
/// (a connection string may hold a password).
fn without_store_line(text: &str, e: &toml::de::Error) -> String {
    let Some(span) = e.span() else { return e.to_string() };
    let start = text[..span.start.min(text.len())].rfind('\n').map_or(0, |i| i + 1);
    let line = text[start..].lines().next().unwrap_or("");
    if line.trim_start().starts_with("store") {
        let n = text[..start].matches('\n').count() + 1;
        format!("line {n} (the store's connection string, not quoted here): {}", e.message())
    } else {
        e.to_string()
    }
}

impl Config {
    /// The data-plane socket's path.
    pub fn socket(&self) -> PathBuf {
        self.dataplane_socket.clone().unwrap_or_else(|| self.state_dir.join("dataplane.sock"))
    }

    /// Reads and checks a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Io { path: path.to_owned(), source })?;
        Config::parse(path, &text)
    }

    /// Parses and checks configuration text (`path` names it in errors).
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let c: Config = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: path.to_owned(),
            message: without_store_line(text, &e),
        })?;
        let invalid = |message: String| ConfigError::Invalid { path: path.to_owned(), message };
        for (i, t) in c.tokens.iter().enumerate() {
            if t.sha256.len() != 64 || !t.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(invalid(format!(
                    "token `{}`: sha256 must be 64 hex digits (the hash, never the token)",
                    t.name
                )));
            }
            if c.tokens[..i].iter().any(|o| o.name == t.name) {
                return Err(invalid(format!("token name `{}` is used twice", t.name)));
            }
        }
        if !c.tokens.iter().any(|t| t.role == Role::Admin) {
            return Err(invalid("no admin token: nobody could change the rules".into()));
        }
        if c.retention.max_age_days == 0 || c.retention.max_rows == 0 {
            return Err(invalid("retention: max_age_days and max_rows must be at least 1".into()));
        }
        if c.tls_cert.is_some() != c.tls_key.is_some() {
            return Err(invalid("tls_cert and tls_key go together".into()));
        }
        if let Some(p) = c.proxy.problem() {
            return Err(invalid(p));
        }
        if let Some(store) = &c.store {
            // (The connection string is not repeated: it may hold a password.)
            // The text is not repeated: it may hold a password.
            if let Err(e) = store.parse::<tokio_postgres::Config>() {
                return Err(invalid(format!("store: not a PostgreSQL connection string: {e}")));
            }
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "[[tokens]]\nname = \"ops\"\nrole = \"admin\"\nsha256 = \"0000000000000000000000000000000000000000000000000000000000000000\"\n";

    fn parse(top: &str) -> Result<Config, ConfigError> {
        let text = format!("listen = \"127.0.0.1:8443\"\nstate_dir = \"/tmp/x\"\n{top}\n{TOKEN}");
        Config::parse(Path::new("control.toml"), &text)
    }

    #[test]
    fn a_store_s_password_is_never_in_an_error() {
        assert!(parse("store = \"postgres://sluice:hunter2@db/sluice\"").is_ok());
        // A TOML syntax error on its line (a backslash), and a string that is no connection
        // string: the error says where, not what.
        for top in [
            "store = \"postgres://sluice:hunter2\\q@db/sluice\"",
            "store = \"host=db password=hunter2 sslmode=bogus\"",
            "store = \"postgres://sluice:hunter2@db/sluice?sslmode=bogus\"",
        ] {
            let e = parse(top).unwrap_err().to_string();
            assert!(!e.contains("hunter2"), "{e}");
            assert!(e.contains("store") || e.contains("line 3"), "{e}");
        }
        // Other syntax errors keep toml's quote of the line.
        let e = parse("bogus = = 1").unwrap_err().to_string();
        assert!(e.contains("bogus = = 1"), "{e}");
    }
}
