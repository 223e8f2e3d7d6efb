//! The agent's Prometheus metrics.
//!
//! One [`AgentMetrics`] value is shared (behind an `Arc`) by the agent's parts: the sync
//! loop counts renewals and rounds, the Workload API counts attestations and connections,
//! and `/metrics` renders the registry as Prometheus text (prefix `keycard_agent`).

use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// A label set with one `result` label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `ok`, or what went wrong.
    pub result: String,
}

/// Labels of workload SVID metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SvidLabels {
    /// `issued` (first SVID of an entry), `renewed`, or `failed`.
    pub outcome: String,
}

/// Labels of refused Workload API connections.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabels {
    /// `uid_limit`, `total_limit`, `first_request_timeout` or `no_peer_credentials`.
    pub reason: String,
}

/// Labels of the server-in-use gauge.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServerLabels {
    /// The server's `host:port`, as configured.
    pub address: String,
}

/// Labels of SDS requests.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SdsLabels {
    /// `StreamSecrets`, `FetchSecrets` or `DeltaSecrets`.
    pub rpc: String,
    /// `request` (new resource names), `ack`, `nack`, `stale_nonce` (ignored), `ok` (a
    /// fetch answered), or `error` (refused: unknown name, no identity, over the cap).
    pub outcome: String,
}

/// Every metric the agent exports.
pub struct AgentMetrics {
    registry: Mutex<Registry>,
    /// The address [`AgentMetrics::server`] shows as in use (set to 0 when another is).
    server_in_use: Mutex<Option<String>>,
    /// Switches from one configured server to the next because the one in use stopped
    /// answering.
    pub server_failovers: Counter,
    /// 1 for the server the agent talks to now, 0 for those it talked to before.
    pub server: Family<ServerLabels, Gauge>,
    /// Entries the agent holds for its workloads.
    pub cache_entries: Gauge,
    /// Workload X.509-SVIDs in the cache.
    pub cache_svids: Gauge,
    /// Workload SVIDs obtained or refused, by outcome.
    pub svids: Family<SvidLabels, Counter>,
    /// Sync rounds with the server, by result.
    pub sync_rounds: Family<ResultLabels, Counter>,
    /// Renewals of the agent's own SVID.
    pub agent_renewals: Counter,
    /// Node attestations made by the agent (first start and re-attestation), by result.
    pub node_attestations: Family<ResultLabels, Counter>,
    /// Seconds until the agent SVID expires (negative once expired).
    pub agent_svid_expiry_seconds: Gauge,
    /// Workload attestations, by result.
    pub workload_attestations: Family<ResultLabels, Counter>,
    /// Time to attest one workload, in seconds.
    pub workload_attestation_latency: Histogram,
    /// Workload API connections accepted.
    pub workload_connections: Counter,
    /// Workload API connections open now.
    pub workload_connections_open: Gauge,
    /// Workload API connections closed by the agent before serving them: over a cap, or no
    /// request in time.
    pub workload_connections_refused: Family<RefusedLabels, Counter>,
    /// SDS requests from Envoy, by RPC and outcome.
    pub sds_requests: Family<SdsLabels, Counter>,
    /// SDS responses sent, by RPC.
    pub sds_responses: Family<SdsLabels, Counter>,
}

impl fmt::Debug for AgentMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentMetrics").finish_non_exhaustive()
    }
}

impl Default for AgentMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl AgentMetrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("keycard_agent");
        let cache_entries = Gauge::default();
        registry.register("cache_entries", "Entries held for workloads", cache_entries.clone());
        let cache_svids = Gauge::default();
        registry.register("cache_svids", "Workload X.509-SVIDs in the cache", cache_svids.clone());
        let svids = Family::<SvidLabels, Counter>::default();
        registry.register("svids", "Workload SVIDs obtained or refused", svids.clone());
        let sync_rounds = Family::<ResultLabels, Counter>::default();
        registry.register("sync_rounds", "Sync rounds with the server", sync_rounds.clone());
        let agent_renewals = Counter::default();
        registry.register("agent_renewals", "Renewals of the agent SVID", agent_renewals.clone());
        let node_attestations = Family::<ResultLabels, Counter>::default();
        registry.register("node_attestations", "Node attestations", node_attestations.clone());
        let agent_svid_expiry_seconds = Gauge::default();
        registry.register(
            "agent_svid_expiry_seconds",
            "Seconds until the agent SVID expires",
            agent_svid_expiry_seconds.clone(),
        );
        let workload_attestations = Family::<ResultLabels, Counter>::default();
        registry.register(
            "workload_attestations",
            "Workload attestations",
            workload_attestations.clone(),
        );
        let workload_attestation_latency =
            Histogram::new([0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1.0]);
        registry.register(
            "workload_attestation_latency_seconds",
            "Time to attest one workload",
            workload_attestation_latency.clone(),
        );
        let workload_connections = Counter::default();
        registry.register(
            "workload_api_connections",
            "Workload API connections accepted",
            workload_connections.clone(),
        );
        let workload_connections_open = Gauge::default();
        registry.register(
            "workload_api_connections_open",
            "Workload API connections open now",
            workload_connections_open.clone(),
        );
        let workload_connections_refused = Family::<RefusedLabels, Counter>::default();
        registry.register(
            "workload_api_connections_refused",
            "Workload API connections closed unserved: over a cap or idle",
            workload_connections_refused.clone(),
        );
        let sds_requests = Family::<SdsLabels, Counter>::default();
        registry.register(
            "sds_requests",
            "SDS requests, by RPC and outcome (request, ack, nack, stale_nonce, ok, error)",
            sds_requests.clone(),
        );
        let sds_responses = Family::<SdsLabels, Counter>::default();
        registry.register("sds_responses", "SDS responses sent, by RPC", sds_responses.clone());
        let server_failovers = Counter::default();
        registry.register(
            "server_failovers",
            "Switches to the next server because the one in use stopped answering",
            server_failovers.clone(),
        );
        let server = Family::<ServerLabels, Gauge>::default();
        registry.register("server", "1 for the server in use, by address", server.clone());
        Self {
            registry: Mutex::new(registry),
            server_in_use: Mutex::new(None),
            server_failovers,
            server,
            cache_entries,
            cache_svids,
            svids,
            sync_rounds,
            agent_renewals,
            node_attestations,
            agent_svid_expiry_seconds,
            workload_attestations,
            workload_attestation_latency,
            workload_connections,
            workload_connections_open,
            workload_connections_refused,
            sds_requests,
            sds_responses,
        }
    }

    /// Counts one SDS request of `rpc` with `outcome`.
    pub fn sds_request(&self, rpc: &str, outcome: &str) {
        let labels = SdsLabels { rpc: rpc.into(), outcome: outcome.into() };
        self.sds_requests.get_or_create(&labels).inc();
    }

    /// Counts one SDS response sent on `rpc`.
    pub fn sds_response(&self, rpc: &str) {
        let labels = SdsLabels { rpc: rpc.into(), outcome: "sent".into() };
        self.sds_responses.get_or_create(&labels).inc();
    }

    /// Counts one Workload API connection closed unserved, by reason.
    pub fn workload_refused(&self, reason: &str) {
        let labels = RefusedLabels { reason: reason.into() };
        self.workload_connections_refused.get_or_create(&labels).inc();
    }

    /// Shows `address` as the server in use (and the one before as no longer).
    pub fn server_in_use(&self, address: &str) {
        let mut current = self.server_in_use.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(old) = current.as_deref()
            && old != address
        {
            self.server.get_or_create(&ServerLabels { address: old.into() }).set(0);
        }
        self.server.get_or_create(&ServerLabels { address: address.into() }).set(1);
        *current = Some(address.to_owned());
    }

    /// Counts a switch to the server at `to`, and shows it as in use.
    pub fn server_failover(&self, to: &str) {
        self.server_failovers.inc();
        self.server_in_use(to);
    }

    /// Counts workload SVIDs with `outcome` (`issued`, `renewed`, `failed`).
    pub fn svids(&self, outcome: &str, n: usize) {
        let labels = SvidLabels { outcome: outcome.into() };
        self.svids.get_or_create(&labels).inc_by(n as u64);
    }

    /// Counts one sync round.
    pub fn sync_round(&self, result: &str) {
        self.sync_rounds.get_or_create(&ResultLabels { result: result.into() }).inc();
    }

    /// Counts one node attestation.
    pub fn node_attested(&self, result: &str) {
        self.node_attestations.get_or_create(&ResultLabels { result: result.into() }).inc();
    }

    /// Counts one workload attestation and its latency.
    pub fn workload_attested(&self, result: &str, took: Duration) {
        self.workload_attestations.get_or_create(&ResultLabels { result: result.into() }).inc();
        self.workload_attestation_latency.observe(took.as_secs_f64());
    }

    /// The registry in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text_with_every_family() {
        let m = AgentMetrics::new();
        m.cache_entries.set(2);
        m.cache_svids.set(1);
        m.svids("renewed", 3);
        m.sync_round("ok");
        m.agent_renewals.inc();
        m.node_attested("ok");
        m.agent_svid_expiry_seconds.set(120);
        m.workload_attested("ok", Duration::from_micros(300));
        m.workload_connections.inc();
        m.workload_connections_open.set(1);
        m.workload_refused("uid_limit");
        m.server_in_use("10.0.0.1:8081");
        m.server_failover("10.0.0.2:8081");
        let text = m.render();
        for needle in [
            "keycard_agent_cache_entries 2",
            "keycard_agent_cache_svids 1",
            "keycard_agent_svids_total{outcome=\"renewed\"} 3",
            "keycard_agent_sync_rounds_total{result=\"ok\"} 1",
            "keycard_agent_agent_renewals_total 1",
            "keycard_agent_node_attestations_total{result=\"ok\"} 1",
            "keycard_agent_agent_svid_expiry_seconds 120",
            "keycard_agent_workload_attestations_total{result=\"ok\"} 1",
            "keycard_agent_workload_attestation_latency_seconds_count 1",
            "keycard_agent_workload_api_connections_total 1",
            "keycard_agent_workload_api_connections_open 1",
            "keycard_agent_workload_api_connections_refused_total{reason=\"uid_limit\"} 1",
            "keycard_agent_server_failovers_total 1",
            "keycard_agent_server{address=\"10.0.0.1:8081\"} 0",
            "keycard_agent_server{address=\"10.0.0.2:8081\"} 1",
            "# EOF",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
        }
    }
}
