//! Catalogs shipped with Sluice (`rules/catalog/*.toml`), embedded in the binary so that a rule
//! set compiles the same wherever it is pushed, and the include loaders that resolve
//! `include = [...]`.

use std::path::{Path, PathBuf};

/// The shipped catalogs: name and TOML text.
pub const SHIPPED: &[(&str, &str)] = &[
    ("openai-api", include_str!("../catalog/openai-api.toml")),
    ("chatgpt", include_str!("../catalog/chatgpt.toml")),
    ("openai-auth", include_str!("../catalog/openai-auth.toml")),
    ("codex", include_str!("../catalog/codex.toml")),
    ("sora", include_str!("../catalog/sora.toml")),
    ("agent", include_str!("../catalog/agent.toml")),
    ("connectors", include_str!("../catalog/connectors.toml")),
    ("azure-openai", include_str!("../catalog/azure-openai.toml")),
    ("other-ai", include_str!("../catalog/other-ai.toml")),
    ("doh-resolvers", include_str!("../catalog/doh-resolvers.toml")),
    ("ech-public-names", include_str!("../catalog/ech-public-names.toml")),
];

/// The text of a shipped catalog.
pub fn shipped(name: &str) -> Option<&'static str> {
    SHIPPED.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}

/// True when a ClientHello with an `encrypted_client_hello` extension and outer name `outer`
/// hides its real server name: no outer name at all, or an ECH public name. GREASE ECH
/// (Chrome's, to every server) carries the real name outside. One answer for the packet path
/// and the interception engine.
pub fn ech_hides_name(outer: Option<&str>) -> bool {
    outer.is_none_or(|n| n.is_empty() || is_ech_public_name(n))
}

/// True when `sni` is (or is under) the public name of a known ECH configuration (the shipped
/// `ech-public-names` catalog): an outer ClientHello naming it hides the real server.
pub fn is_ech_public_name(sni: &str) -> bool {
    static NAMES: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let names = NAMES.get_or_init(|| {
        shipped("ech-public-names")
            .and_then(|t| toml::from_str::<crate::schema::CatalogFile>(t).ok())
            .map(|c| c.domains.into_iter().map(|d| d.into_inner().to_ascii_lowercase()).collect())
            .unwrap_or_default()
    });
    let sni = sni.trim_end_matches('.');
    names.iter().any(|n| {
        sni.eq_ignore_ascii_case(n)
            || (sni.len() > n.len()
                && sni.as_bytes()[sni.len() - n.len() - 1] == b'.'
                && sni[sni.len() - n.len()..].eq_ignore_ascii_case(n))
    })
}

/// Resolves the names in `include = [...]` to catalog texts.
pub trait IncludeLoader {
    /// Returns the display name (for diagnostics) and text of `name`, or why it cannot.
    fn load(&self, name: &str) -> Result<(String, String), String>;

    /// Reads a data file (a dictionary of a custom detector): (display name, text).
    fn load_data(&self, name: &str) -> Result<(String, String), String> {
        Err(format!("cannot read `{name}`: data files are not available here"))
    }
}

/// Resolves only the shipped catalogs. Pure: no file access.
#[derive(Debug, Default, Clone, Copy)]
pub struct ShippedOnly;

impl IncludeLoader for ShippedOnly {
    fn load(&self, name: &str) -> Result<(String, String), String> {
        shipped(name).map(|t| (format!("catalog/{name}.toml"), t.to_owned())).ok_or_else(|| {
            let names: Vec<_> = SHIPPED.iter().map(|(n, _)| *n).collect();
            format!("unknown catalog `{name}`: expected one of {}", names.join(", "))
        })
    }
}

/// Resolves shipped catalogs by name, and paths (containing `/` or ending in `.toml`)
/// relative to the directory of the rule file. The only file access in this crate.
#[derive(Debug, Clone)]
pub struct FsLoader {
    base: PathBuf,
}

impl FsLoader {
    /// A loader resolving relative paths against `base` (the rule file's directory).
    pub fn new(base: impl Into<PathBuf>) -> Self {
        FsLoader { base: base.into() }
    }

    /// A loader for includes of the rule file at `rule_file`.
    pub fn for_file(rule_file: &Path) -> Self {
        FsLoader::new(rule_file.parent().unwrap_or(Path::new(".")))
    }
}

impl IncludeLoader for FsLoader {
    fn load(&self, name: &str) -> Result<(String, String), String> {
        if !name.contains('/') && !name.ends_with(".toml") {
            return ShippedOnly.load(name);
        }
        let path = self.base.join(name);
        std::fs::read_to_string(&path)
            .map(|t| (path.display().to_string(), t))
            .map_err(|e| format!("cannot read catalog file {}: {e}", path.display()))
    }

    fn load_data(&self, name: &str) -> Result<(String, String), String> {
        let path = self.base.join(name);
        std::fs::read_to_string(&path)
            .map(|t| (path.display().to_string(), t))
            .map_err(|e| format!("cannot read {}: {e}", path.display()))
    }
}
