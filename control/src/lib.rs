//! # sluice-control
//!
//! The control plane of Sluice: the `sluice-control` daemon (HTTPS API with bearer tokens and
//! roles, rule-set versions with history, diff and rollback, the audit log, flow queries) and
//! the `sluicectl` CLI. The daemon's link to the data plane (policy down, records up) is the
//! next step; until then it validates, versions and audits rule sets and serves the flow store.

pub mod api;
pub mod auth;
pub mod config;
pub mod rulestore;
pub mod store;
pub mod tls;
