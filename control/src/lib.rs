//! # sluice-control
//!
//! The control plane of Sluice: the `sluice-control` daemon (HTTPS API with bearer tokens and
//! roles, rule-set versions with history, diff and rollback, the audit log, flow queries) and
//! the `sluicectl` CLI. Data planes connect over a Unix socket or, from other hosts, over TCP
//! with mutual TLS ([`link`], [`link_tls`], [`fleet`]): rule sets and the
//! identity feed go down, flow and request records come up into the [`store`], the live tail
//! and the syslog exporter ([`hub`], [`syslog`]).

pub mod api;
pub mod approvals;
pub mod approvals_api;
pub mod audit_api;
pub mod audit_key;
pub mod audit_verify;
pub mod auth;
mod blocks;
pub mod chains;
pub mod chainstore;
pub mod checkpointer;
pub mod client;
pub mod config;
pub mod console;
pub mod evidence;
pub mod evidence_api;
pub mod evidence_bundle;
pub mod evidence_summary;
pub mod fleet;
pub mod fleet_api;
pub mod hub;
pub mod identities_api;
pub mod identstore;
pub mod inventory;
pub mod inventory_api;
pub(crate) mod inventory_pending;
pub mod keys_api;
pub mod keystore;
pub mod link;
pub mod link_tls;
pub mod metrics;
pub mod notes;
pub mod outbox;
pub mod pac;
pub mod pg;
pub mod quotas;
pub mod record;
pub mod recordings;
pub mod recordings_api;
pub mod records;
pub mod records_api;
pub mod rules_api;
pub mod rulestore;
pub mod sealed_files;
pub mod series;
pub mod serve;
pub mod state;
pub mod status_api;
pub mod store;
pub mod syslog;
pub mod tls;
pub mod usage_api;
pub mod utc;
pub mod webhook;
