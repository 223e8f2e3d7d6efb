//! Telemetry shared by both daemons: Prometheus metrics, health endpoints, audit events.

pub mod agent_metrics;
pub mod health;
pub mod logging;
pub mod metrics;

pub use agent_metrics::AgentMetrics;
pub use metrics::ServerMetrics;

/// The tracing target of audit events: one structured event per attestation, issuance,
/// entry change and authority change.
pub const AUDIT_TARGET: &str = "keycard::audit";
