//! What the API's handlers share (ARCHITECTURE.md, "Control"): the stores, the data
//! planes' links, the record hub, the evidence state.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use crate::auth::Tokens;
use crate::hub::Hub;
use crate::identstore::IdentityStore;
use crate::link::Links;
use crate::records::RecordStore;
use crate::rulestore::RuleLog;

/// How long a rule push waits for the data planes' answers.
pub const PUSH_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// What the handlers share.
#[derive(Debug)]
pub struct AppState {
    /// The API tokens.
    pub tokens: Tokens,
    /// Rule versions and the audit log.
    pub rules: Mutex<Box<dyn RuleLog>>,
    /// The record store (flows and requests).
    pub flows: Mutex<Box<dyn RecordStore>>,
    /// The identity feed.
    pub identities: Mutex<Box<dyn IdentityStore>>,
    /// Brokered provider keys and virtual keys.
    pub keys: Mutex<crate::keystore::KeyStore>,
    /// The connected data planes.
    pub links: Links,
    /// The fleet's quota counts, pushed to the data planes.
    pub quotas: crate::quotas::Totals,
    /// Held requests.
    pub approvals: Mutex<crate::approvals::ApprovalStore>,
    /// The fleet's CA and enrolled data planes.
    pub fleet: Mutex<crate::fleet::Fleet>,
    /// The TLS link listener's configuration, once the fleet has a CA.
    fleet_tls: std::sync::RwLock<Option<Arc<rustls::ServerConfig>>>,
    /// The prompts of held requests whose rule lets reviewers read them (memory only).
    pub prompts: crate::approvals::Prompts,
    /// The approval webhook's queue.
    pub webhook: Option<tokio::sync::mpsc::Sender<serde_json::Value>>,
    /// Fan-out of new records (live tail, syslog).
    pub hub: Hub,
    /// Serialises rule pushes so data planes get versions in order.
    pub push_lock: tokio::sync::Mutex<()>,
    /// The enterprise CA certificate (PEM), if configured.
    pub ca_pem: Option<String>,
    /// Start time.
    pub started: Instant,
    /// The console's sessions (memory only).
    pub console: crate::console::Sessions,
    /// The PAC file of the current rule version (`[proxy]`).
    pub pac: crate::pac::PacCache,
    /// Evidence: the checkpoint signer and its settings.
    pub audit: AuditState,
}

/// What the evidence routes and tasks share.
#[derive(Debug, Default)]
pub struct AuditState {
    /// Signs checkpoints (none: no key, as in tests that build state by hand).
    pub checkpointer: Option<Mutex<crate::checkpointer::Checkpointer>>,
    /// `[audit]`.
    pub cfg: crate::checkpointer::AuditConfig,
    /// The state directory (evidence exports are put together there); none: a temporary one.
    pub state_dir: Option<std::path::PathBuf>,
    /// Where recordings' sealed bytes are kept in files (SQLite's record store on disk).
    pub recordings_dir: Option<std::path::PathBuf>,
    /// When each token was last written to the audit log as used.
    pub token_uses: Mutex<std::collections::HashMap<String, Instant>>,
    /// Refused calls written to the audit log in the current minute, and that minute.
    pub refusals: Mutex<(u64, u64)>,
}

/// The stores control keeps its state in.
#[derive(Debug)]
pub struct Stores {
    /// Rule versions and the audit log.
    pub rules: Box<dyn RuleLog>,
    /// Flow and request records.
    pub flows: Box<dyn RecordStore>,
    /// The identity feed.
    pub identities: Box<dyn IdentityStore>,
    /// Brokered provider keys and virtual keys.
    pub keys: crate::keystore::KeyStore,
    /// Held requests.
    pub approvals: crate::approvals::ApprovalStore,
    /// The fleet's CA and enrolments.
    pub fleet: crate::fleet::Fleet,
}

impl AppState {
    /// State over the given stores, with no data plane connected yet; `webhook`: the queue of
    /// the approval webhook, if one is configured.
    pub fn new(
        tokens: Tokens,
        stores: Stores,
        hub: Hub,
        ca_pem: Option<String>,
        webhook: Option<tokio::sync::mpsc::Sender<serde_json::Value>>,
    ) -> AppState {
        let fleet_tls = match stores.fleet.server_config() {
            Ok(c) => c,
            Err(e) => {
                tracing::error!("the fleet's link listener has no TLS: {e}");
                None
            }
        };
        AppState {
            tokens,
            rules: Mutex::new(stores.rules),
            flows: Mutex::new(stores.flows),
            identities: Mutex::new(stores.identities),
            keys: Mutex::new(stores.keys),
            approvals: Mutex::new(stores.approvals),
            fleet: Mutex::new(stores.fleet),
            fleet_tls: std::sync::RwLock::new(fleet_tls),
            prompts: Default::default(),
            webhook,
            links: Links::default(),
            quotas: Default::default(),
            hub,
            push_lock: tokio::sync::Mutex::new(()),
            ca_pem,
            started: Instant::now(),
            console: Default::default(),
            pac: Default::default(),
            audit: AuditState::default(),
        }
    }

    /// The state with its evidence set up.
    pub fn with_audit(mut self, audit: AuditState) -> AppState {
        self.audit = audit;
        self
    }
}

impl AppState {
    /// The TLS link listener's configuration, once the fleet has a CA.
    pub fn fleet_tls(&self) -> Option<Arc<rustls::ServerConfig>> {
        self.fleet_tls.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Puts the link listener's TLS in force (after `fleet init`).
    pub fn set_fleet_tls(&self, cfg: Arc<rustls::ServerConfig>) {
        *self.fleet_tls.write().unwrap_or_else(PoisonError::into_inner) = Some(cfg);
    }

    /// What the data planes get of the key store: the provider keys (unsealed), the virtual
    /// keys in force and the DLP salt.
    pub fn key_push(&self) -> Result<crate::keystore::KeyPush, crate::keystore::KeyError> {
        let k = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(crate::keystore::KeyPush {
            keys: k.secrets()?,
            virtual_keys: k.link_virtual_keys()?,
            dlp_salt: k.dlp_salt()?,
        })
    }
}

pub(crate) type Shared = Arc<AppState>;
