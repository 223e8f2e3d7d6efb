//! The server's Prometheus metrics.
//!
//! One [`ServerMetrics`] value is shared (behind an `Arc`) by every part of the server;
//! each part updates the families it owns, and `/metrics` renders the registry as
//! Prometheus text. Names follow Prometheus conventions (`keycard_` prefix, `_total` for
//! counters, `_seconds` for durations) and SPIRE's vocabulary where it has a word.

use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Labels of SVID issuance metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IssuanceLabels {
    /// `x509` or `jwt`.
    pub kind: String,
    /// `workload` or `agent` (whose SVID it is).
    pub subject: String,
}

/// Labels of attestation metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AttestationLabels {
    /// `join_token` or `x509pop`.
    pub attestor: String,
    /// `ok`, or the reason for refusal (`unknown_token`, `expired`, `banned`, ...).
    pub result: String,
}

/// Labels of request-refusal metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabels {
    /// The gRPC method.
    pub method: String,
    /// The gRPC status code name.
    pub code: String,
}

/// Labels of authority metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuthorityLabels {
    /// `x509` or `jwt`.
    pub kind: String,
}

/// Labels of datastore metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DatastoreLabels {
    /// The datastore method, such as `create_entry` or `entry_changes_since`.
    pub op: &'static str,
}

/// Labels of bundle endpoint metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpCodeLabels {
    /// The HTTP status code answered, such as `200` or `404`.
    pub code: String,
}

/// Labels of foreign bundle fetches.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FederationLabels {
    /// The foreign trust domain.
    pub trust_domain: String,
    /// `ok` or `failed`.
    pub outcome: &'static str,
}

/// Every metric the server exports.
pub struct ServerMetrics {
    registry: Mutex<Registry>,
    /// SVIDs signed.
    pub svids_issued: Family<IssuanceLabels, Counter>,
    /// Time to sign one SVID, in seconds.
    pub signing_latency: Family<IssuanceLabels, Histogram>,
    /// Node attestations by attestor and result.
    pub attestations: Family<AttestationLabels, Counter>,
    /// Agent API requests refused, by method and status code.
    pub refusals: Family<RefusalLabels, Counter>,
    /// Registration entries in the datastore.
    pub entries: Gauge,
    /// Attested agents in the datastore.
    pub agents: Gauge,
    /// Seconds until the active authority expires.
    pub authority_expiry_seconds: Family<AuthorityLabels, Gauge>,
    /// Authority activations (scheduled or manual).
    pub rotations: Family<AuthorityLabels, Counter>,
    /// Time of each datastore call, by operation.
    pub datastore_latency: Family<DatastoreLabels, Histogram>,
    /// Datastore calls that failed (the database refused or did not answer), by
    /// operation; answers such as "not found" or "duplicate" are not failures.
    pub datastore_errors: Family<DatastoreLabels, Counter>,
    /// Requests the federation bundle endpoint answered, by HTTP status code.
    pub bundle_endpoint_requests: Family<HttpCodeLabels, Counter>,
    /// Fetches of foreign bundles from their endpoints, by trust domain and outcome.
    pub federation_refreshes: Family<FederationLabels, Counter>,
}

impl fmt::Debug for ServerMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerMetrics").finish_non_exhaustive()
    }
}

impl Default for ServerMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl ServerMetrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("keycard_server");
        let svids_issued = Family::<IssuanceLabels, Counter>::default();
        registry.register("svids_issued", "SVIDs signed", svids_issued.clone());
        let signing_latency = Family::<IssuanceLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0])
        });
        registry.register(
            "signing_latency_seconds",
            "Time to sign one SVID",
            signing_latency.clone(),
        );
        let attestations = Family::<AttestationLabels, Counter>::default();
        registry.register("attestations", "Node attestations by result", attestations.clone());
        let refusals = Family::<RefusalLabels, Counter>::default();
        registry.register("refusals", "Agent API requests refused", refusals.clone());
        let entries = Gauge::default();
        registry.register("entries", "Registration entries", entries.clone());
        let agents = Gauge::default();
        registry.register("agents", "Attested agents", agents.clone());
        let authority_expiry_seconds = Family::<AuthorityLabels, Gauge>::default();
        registry.register(
            "authority_expiry_seconds",
            "Seconds until the active authority expires",
            authority_expiry_seconds.clone(),
        );
        let rotations = Family::<AuthorityLabels, Counter>::default();
        registry.register("rotations", "Authority activations", rotations.clone());
        let datastore_latency = Family::<DatastoreLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1.0, 5.0])
        });
        registry.register(
            "datastore_latency_seconds",
            "Time of each datastore call",
            datastore_latency.clone(),
        );
        let datastore_errors = Family::<DatastoreLabels, Counter>::default();
        registry.register(
            "datastore_errors",
            "Datastore calls that failed",
            datastore_errors.clone(),
        );
        let bundle_endpoint_requests = Family::<HttpCodeLabels, Counter>::default();
        registry.register(
            "bundle_endpoint_requests",
            "Requests the federation bundle endpoint answered, by HTTP status code",
            bundle_endpoint_requests.clone(),
        );
        let federation_refreshes = Family::<FederationLabels, Counter>::default();
        registry.register(
            "federation_refreshes",
            "Fetches of foreign bundles from their bundle endpoints",
            federation_refreshes.clone(),
        );
        Self {
            registry: Mutex::new(registry),
            svids_issued,
            signing_latency,
            attestations,
            refusals,
            entries,
            agents,
            authority_expiry_seconds,
            rotations,
            datastore_latency,
            datastore_errors,
            bundle_endpoint_requests,
            federation_refreshes,
        }
    }

    /// Counts one signed SVID and how long it took.
    pub fn issued(&self, kind: &str, subject: &str, took: Duration) {
        let labels = IssuanceLabels { kind: kind.into(), subject: subject.into() };
        self.svids_issued.get_or_create(&labels).inc();
        self.signing_latency.get_or_create(&labels).observe(took.as_secs_f64());
    }

    /// Total SVIDs signed of `kind` for `subject` so far.
    pub fn issued_total(&self, kind: &str, subject: &str) -> u64 {
        let labels = IssuanceLabels { kind: kind.into(), subject: subject.into() };
        self.svids_issued.get_or_create(&labels).get()
    }

    /// Counts one attestation.
    pub fn attested(&self, attestor: &str, result: &str) {
        let labels = AttestationLabels { attestor: attestor.into(), result: result.into() };
        self.attestations.get_or_create(&labels).inc();
    }

    /// Counts one refused request.
    pub fn refused(&self, method: &str, code: tonic::Code) {
        let labels = RefusalLabels { method: method.into(), code: format!("{code:?}") };
        self.refusals.get_or_create(&labels).inc();
    }

    /// Counts one answer of the bundle endpoint.
    pub fn bundle_endpoint_request(&self, code: u16) {
        let labels = HttpCodeLabels { code: code.to_string() };
        self.bundle_endpoint_requests.get_or_create(&labels).inc();
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
        let m = ServerMetrics::new();
        m.issued("x509", "workload", Duration::from_millis(2));
        m.attested("join_token", "ok");
        m.refused("/keycard.agent.v1.Agent/BatchNewX509Svid", tonic::Code::InvalidArgument);
        m.entries.set(3);
        m.authority_expiry_seconds.get_or_create(&AuthorityLabels { kind: "x509".into() }).set(60);
        m.rotations.get_or_create(&AuthorityLabels { kind: "x509".into() }).inc();
        m.bundle_endpoint_request(404);
        let text = m.render();
        for needle in [
            "keycard_server_svids_issued_total{kind=\"x509\",subject=\"workload\"} 1",
            "keycard_server_signing_latency_seconds_count{kind=\"x509\",subject=\"workload\"} 1",
            "keycard_server_attestations_total{attestor=\"join_token\",result=\"ok\"} 1",
            "code=\"InvalidArgument\"",
            "keycard_server_entries 3",
            "keycard_server_authority_expiry_seconds{kind=\"x509\"} 60",
            "keycard_server_rotations_total{kind=\"x509\"} 1",
            "keycard_server_bundle_endpoint_requests_total{code=\"404\"} 1",
            "# EOF",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
        }
        assert_eq!(m.issued_total("x509", "workload"), 1);
        assert_eq!(m.issued_total("jwt", "workload"), 0);
    }
}
