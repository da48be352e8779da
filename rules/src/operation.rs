//! What a request does, not only where it goes (ARCHITECTURE.md, "Apps and discovery"): the
//! operation rules match with `operations = [...]` and records carry. Read from the method and
//! path here (pure, a table); the interception engine refines a chat by its body's shape (a
//! file inside is an upload, an MCP tool a connector call).

use serde::{Deserialize, Serialize};

/// An operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Operation {
    /// A prompt: chat completions, responses, completions, ChatGPT conversations.
    Chat,
    /// A file sent: API file uploads, ChatGPT attachments, a file inside a prompt.
    Upload,
    /// A file's content fetched.
    Download,
    /// Images made or edited.
    ImageGeneration,
    /// Speech in or out (transcription, text to speech).
    Voice,
    /// A coding agent's turn (Codex).
    CodeAgent,
    /// A connector or remote tool called (MCP, ChatGPT connectors).
    Connector,
    /// Signing in.
    Login,
    /// Organisation administration (users, keys, projects).
    Admin,
    /// Fine-tuning.
    FineTune,
    /// Files and vector stores listed, read or managed (not their content).
    Files,
    /// Assistants and threads.
    Assistants,
    /// A Realtime session.
    Realtime,
    /// Anything else (models list, embeddings, moderation, static pages).
    Other,
}

impl Operation {
    /// Every operation, in declaration order.
    pub const ALL: [Operation; 14] = [
        Operation::Chat,
        Operation::Upload,
        Operation::Download,
        Operation::ImageGeneration,
        Operation::Voice,
        Operation::CodeAgent,
        Operation::Connector,
        Operation::Login,
        Operation::Admin,
        Operation::FineTune,
        Operation::Files,
        Operation::Assistants,
        Operation::Realtime,
        Operation::Other,
    ];

    /// Its name, as rules and records write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Chat => "chat",
            Operation::Upload => "upload",
            Operation::Download => "download",
            Operation::ImageGeneration => "image-generation",
            Operation::Voice => "voice",
            Operation::CodeAgent => "code-agent",
            Operation::Connector => "connector",
            Operation::Login => "login",
            Operation::Admin => "admin",
            Operation::FineTune => "fine-tune",
            Operation::Files => "files",
            Operation::Assistants => "assistants",
            Operation::Realtime => "realtime",
            Operation::Other => "other",
        }
    }

    /// The operation named `s` (`tool-call` is a connector call).
    pub fn parse(s: &str) -> Option<Operation> {
        if s == "tool-call" {
            return Some(Operation::Connector);
        }
        Operation::ALL.into_iter().find(|o| o.as_str() == s)
    }

    /// Its bit in an [`OpSet`].
    fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

/// A set of operations. Copyable.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct OpSet(u16);

impl OpSet {
    /// Adds `op`.
    pub fn insert(&mut self, op: Operation) {
        self.0 |= op.bit();
    }

    /// True when `op` is in the set.
    pub fn contains(self, op: Operation) -> bool {
        self.0 & op.bit() != 0
    }

    /// True when every member of `other` is in `self`.
    pub fn is_superset(self, other: OpSet) -> bool {
        other.0 & !self.0 == 0
    }
}

/// `(method or "*", path prefix, operation)`, the first match wins: more specific first.
/// Sources: the OpenAI API's paths (openai-openapi), ChatGPT's back end as its web client
/// calls it, and the sign-in paths of auth.openai.com and chatgpt.com.
const TABLE: &[(&str, &str, Operation)] = &[
    ("GET", "/v1/files/", Operation::Download), // `…/{id}/content` below decides
    ("POST", "/v1/files", Operation::Upload),
    ("*", "/v1/uploads", Operation::Upload),
    ("*", "/v1/files", Operation::Files),
    ("*", "/v1/vector_stores", Operation::Files),
    ("*", "/v1/containers", Operation::Files),
    ("*", "/v1/images/", Operation::ImageGeneration),
    ("*", "/v1/audio/", Operation::Voice),
    ("*", "/v1/realtime", Operation::Realtime),
    ("*", "/v1/fine_tuning/", Operation::FineTune),
    ("*", "/v1/assistants", Operation::Assistants),
    ("*", "/v1/threads", Operation::Assistants),
    ("*", "/v1/organization/", Operation::Admin),
    ("*", "/v1/chat/completions", Operation::Chat),
    ("*", "/v1/responses", Operation::Chat),
    ("*", "/v1/completions", Operation::Chat),
    ("*", "/v1/conversations", Operation::Chat),
    ("POST", "/backend-api/files", Operation::Upload),
    ("GET", "/backend-api/files/", Operation::Download), // `…/download` below decides
    ("*", "/backend-api/files", Operation::Files),
    ("*", "/backend-api/codex/", Operation::CodeAgent),
    ("*", "/backend-api/wham/", Operation::CodeAgent),
    ("*", "/backend-api/aip/connectors", Operation::Connector),
    ("*", "/backend-api/connectors", Operation::Connector),
    ("*", "/backend-api/conversation", Operation::Chat),
    ("*", "/backend-api/f/conversation", Operation::Chat),
    ("*", "/backend-anon/conversation", Operation::Chat),
    ("*", "/backend-anon/f/conversation", Operation::Chat),
    ("*", "/backend-api/accounts/", Operation::Admin),
    ("*", "/api/auth/", Operation::Login),
    ("*", "/oauth/", Operation::Login),
    ("*", "/authorize", Operation::Login),
    ("*", "/u/login", Operation::Login),
    ("*", "/log-in", Operation::Login),
    ("*", "/api/accounts/", Operation::Login),
];

/// The operation of a request, from its method and path (query ignored; the path read as
/// [`normal_path`] reads it, so that `//`, `%63` or capitals do not hide it).
pub fn classify(method: &str, path: &str) -> Operation {
    let normal = normal_path(path);
    let path = normal.as_ref();
    for (m, prefix, op) in TABLE {
        if (*m == "*" || method.eq_ignore_ascii_case(m)) && starts_on_segment(path, prefix) {
            return match op {
                // A GET below files is a download only for the content itself.
                Operation::Download if !is_content(path) => Operation::Files,
                _ => *op,
            };
        }
    }
    // Chat endpoints under other prefixes (Azure OpenAI's `/openai/deployments/{d}/…`,
    // gateways): named by what they end in.
    for (suffix, op) in SUFFIXES {
        if path.trim_end_matches('/').ends_with(suffix) {
            let sends = method.eq_ignore_ascii_case("POST") || method.eq_ignore_ascii_case("PUT");
            return if *op == Operation::Upload && !sends { Operation::Files } else { *op };
        }
    }
    Operation::Other
}

/// Operations named by the end of the path, whatever comes before.
const SUFFIXES: &[(&str, Operation)] = &[
    ("/chat/completions", Operation::Chat),
    ("/completions", Operation::Chat),
    ("/responses", Operation::Chat),
    ("/images/generations", Operation::ImageGeneration),
    ("/images/edits", Operation::ImageGeneration),
    ("/audio/transcriptions", Operation::Voice),
    ("/audio/translations", Operation::Voice),
    ("/audio/speech", Operation::Voice),
    ("/files", Operation::Upload),
];

/// A request path as the operation table reads it: without query and fragment, `%XX` of
/// letters, digits and `-._~` decoded, runs of `/` collapsed, `.` segments dropped and `..`
/// applied, ASCII lowercased. (Servers read such paths alike; a client writing them so must
/// not step around a rule.)
pub fn normal_path(path: &str) -> std::borrow::Cow<'_, str> {
    let path = path.split(['?', '#']).next().unwrap_or("");
    let plain = !path.contains(['%', '.'])
        && !path.contains("//")
        && !path.bytes().any(|b| b.is_ascii_uppercase());
    if plain {
        return std::borrow::Cow::Borrowed(path);
    }
    let b = path.as_bytes();
    let mut decoded = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%'
            && let (Some(h), Some(l)) =
                (b.get(i + 1).and_then(|c| hex(*c)), b.get(i + 2).and_then(|c| hex(*c)))
        {
            let c = (h * 16 + l) as u8;
            if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') {
                decoded.push(c);
                i += 3;
                continue;
            }
        }
        decoded.push(b[i]);
        i += 1;
    }
    let text = String::from_utf8_lossy(&decoded).to_ascii_lowercase();
    let mut segs: Vec<&str> = Vec::new();
    for seg in text.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                segs.pop();
            }
            s => segs.push(s),
        }
    }
    let mut out = String::with_capacity(text.len() + 1);
    for s in &segs {
        out.push('/');
        out.push_str(s);
    }
    if out.is_empty() || (text.ends_with('/') && !segs.is_empty()) {
        out.push('/');
    }
    std::borrow::Cow::Owned(out)
}

/// `path` starts with `prefix`, and the prefix ends a segment (`/v1/files` is not a prefix of
/// `/v1/filesystem`).
fn starts_on_segment(path: &str, prefix: &str) -> bool {
    path.starts_with(prefix)
        && (prefix.ends_with('/') || matches!(path.as_bytes().get(prefix.len()), None | Some(b'/')))
}

fn is_content(path: &str) -> bool {
    let p = path.trim_end_matches('/');
    p.ends_with("/content") || p.ends_with("/download")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_named_by_what_they_do() {
        for (m, p, want) in [
            ("POST", "/v1/chat/completions", "chat"),
            ("POST", "/v1/responses?x=1", "chat"),
            ("GET", "/v1/responses/resp_1", "chat"),
            ("POST", "/v1/files", "upload"),
            ("POST", "/v1/uploads/up_1/parts", "upload"),
            ("GET", "/v1/files", "files"),
            ("GET", "/v1/files/file-1", "files"),
            ("GET", "/v1/files/file-1/content", "download"),
            ("DELETE", "/v1/files/file-1", "files"),
            ("GET", "/v1/filesystem", "other"),
            ("POST", "/v1/images/generations", "image-generation"),
            ("POST", "/v1/audio/transcriptions", "voice"),
            ("GET", "/v1/realtime?model=x", "realtime"),
            ("POST", "/v1/fine_tuning/jobs", "fine-tune"),
            ("POST", "/v1/threads/t/runs", "assistants"),
            ("GET", "/v1/organization/users", "admin"),
            ("POST", "/v1/embeddings", "other"),
            ("POST", "/backend-api/files", "upload"),
            ("GET", "/backend-api/files/file-1/download", "download"),
            ("POST", "/backend-api/conversation", "chat"),
            ("POST", "/backend-api/f/conversation", "chat"),
            ("POST", "/backend-anon/conversation", "chat"),
            ("POST", "/backend-api/codex/responses", "code-agent"),
            ("GET", "/backend-api/wham/tasks", "code-agent"),
            ("GET", "/backend-api/aip/connectors/links", "connector"),
            ("GET", "/api/auth/session", "login"),
            ("GET", "/", "other"),
            // Written to step around the table: read as the server reads them.
            ("POST", "/backend-api//conversation", "chat"),
            ("POST", "/backend-api/%63onversation", "chat"),
            ("POST", "/Backend-API/Files", "upload"),
            ("POST", "/v1/x/../files", "upload"),
            ("POST", "/v1/./files?purpose=x", "upload"),
            ("POST", "/v1/%2e%2e/v1/files", "upload"),
            // Other prefixes, by their end.
            ("POST", "/openai/deployments/gpt/chat/completions", "chat"),
            ("POST", "/openai/deployments/gpt/images/generations", "image-generation"),
            ("POST", "/openai/files", "upload"),
            ("GET", "/openai/files", "files"),
        ] {
            assert_eq!(classify(m, p).as_str(), want, "{m} {p}");
        }
    }

    #[test]
    fn names_round_trip() {
        for op in Operation::ALL {
            assert_eq!(Operation::parse(op.as_str()), Some(op));
        }
        assert_eq!(Operation::parse("tool-call"), Some(Operation::Connector));
        assert_eq!(Operation::parse("Chat"), None);
        let mut s = OpSet::default();
        s.insert(Operation::Upload);
        assert!(s.contains(Operation::Upload) && !s.contains(Operation::Chat));
    }
}
