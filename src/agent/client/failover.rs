//! Several servers, one at a time. An agent may list several servers that share one
//! datastore (every one of them accepts its SVID): the client talks to the current one and,
//! when a call finds it gone ([`failover_reason`]: no answer within the deadline, no
//! connection, or `Unavailable`), drops the connection so that the next call dials the
//! next address, round robin. Refusals (`PermissionDenied`, `InvalidArgument`, a
//! `ResourceExhausted` that says when to retry) are the server's answer and move nothing.
//!
//! A sync cursor is only meaningful to the server that handed it out: after a switch the
//! manager drops it ([`ServerClient::take_switched`]) and syncs everything once.

use std::sync::Arc;
use std::time::Duration;

use keycard_workload_api::{TrustDomain, X509Bundle};

use super::{ClientError, ServerClient, TrustCell};
use crate::agent::server_tls::{CONNECT_TIMEOUT, open_channel_within, open_insecure_channel};
use crate::telemetry::AgentMetrics;

/// The servers the agent may use, in the configured order, and the one it uses now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerAddresses {
    list: Arc<[String]>,
    current: usize,
}

impl ServerAddresses {
    /// The list, starting with its first address; `None` when it is empty.
    pub fn new(list: Vec<String>) -> Option<Self> {
        (!list.is_empty()).then(|| Self { list: list.into(), current: 0 })
    }

    /// A single server.
    pub fn one(addr: &str) -> Self {
        Self { list: Arc::new([addr.to_owned()]), current: 0 }
    }

    /// The address in use, `host:port`.
    pub fn current(&self) -> &str {
        &self.list[self.current]
    }

    /// Every address, in order.
    pub fn all(&self) -> &[String] {
        &self.list
    }

    /// How many servers there are (at least one).
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Always false: a list holds at least one server.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Moves to the next address (after the last: the first); returns it.
    pub fn advance(&mut self) -> &str {
        self.current = (self.current + 1) % self.list.len();
        self.current()
    }
}

/// Why `error` means the current server is gone (so the client moves to the next one), or
/// `None` for an answer from the server. A status made by the client's own transport (the
/// connection reset or closed mid-call) counts as gone; so does `Unavailable` from the
/// server itself (its datastore or its authority is unusable now: another may do).
pub fn failover_reason(error: &ClientError) -> Option<&'static str> {
    match error {
        ClientError::Timeout { .. } => Some("no answer within the deadline"),
        ClientError::Connect { .. } => Some("cannot connect"),
        ClientError::Rpc(status) => match status.code() {
            tonic::Code::Unavailable => Some("unavailable"),
            tonic::Code::Cancelled => Some("call cancelled by the transport"),
            tonic::Code::Unknown | tonic::Code::Internal
                if std::error::Error::source(status).is_some()
                    || status.message().starts_with("h2 protocol error") =>
            {
                Some("connection failed mid-call")
            }
            _ => None,
        },
        _ => None,
    }
}

/// The dial deadline for a client whose calls have `request_timeout`: never longer.
pub(super) fn connect_timeout(request_timeout: Duration) -> Duration {
    CONNECT_TIMEOUT.min(request_timeout)
}

impl ServerClient {
    /// Connects without a client certificate (to attest) to the current server of
    /// `servers` only, trusting `bootstrap` for its certificate (`None`: the insecure
    /// bootstrap, which checks only the server's SPIFFE ID). The dial and every call
    /// have `request_timeout`.
    pub async fn dial(
        servers: ServerAddresses,
        trust_domain: TrustDomain,
        bootstrap: Option<X509Bundle>,
        request_timeout: Duration,
    ) -> Result<Self, ClientError> {
        let addr = servers.current();
        let within = connect_timeout(request_timeout);
        let (grpc, trust) = match bootstrap {
            Some(bundle) => {
                let trust: TrustCell = Arc::new(std::sync::RwLock::new(bundle));
                (open_channel_within(addr, &trust_domain, &trust, None, within).await?, trust)
            }
            None => {
                tracing::warn!(
                    server = addr,
                    "INSECURE BOOTSTRAP: the server is not authenticated until the agent has \
                     attested; anyone who can intercept this connection can impersonate the \
                     server. Use trust_bundle_path outside development."
                );
                let grpc = open_insecure_channel(addr, &trust_domain, within).await?;
                let empty = X509Bundle::new(trust_domain.clone());
                (grpc, Arc::new(std::sync::RwLock::new(empty)))
            }
        };
        Ok(Self::unattested(servers, trust_domain, trust, grpc, request_timeout))
    }

    /// Like [`ServerClient::dial`], but tries each server in turn from the current one
    /// and keeps the first that answers; when none does, the error names them all.
    pub async fn connect_to(
        mut servers: ServerAddresses,
        trust_domain: TrustDomain,
        bootstrap: Option<X509Bundle>,
        request_timeout: Duration,
    ) -> Result<Self, ClientError> {
        let mut reasons = Vec::new();
        for _ in 0..servers.len() {
            let attempt = servers.clone();
            match Self::dial(attempt, trust_domain.clone(), bootstrap.clone(), request_timeout)
                .await
            {
                Ok(client) => return Ok(client),
                Err(ClientError::Connect { addr, reason }) if servers.len() > 1 => {
                    tracing::warn!(server = %addr, %reason, "cannot connect; trying the next server");
                    reasons.push(format!("{addr}: {reason}"));
                    servers.advance();
                }
                Err(e) => return Err(e),
            }
        }
        Err(ClientError::Connect {
            addr: format!("any of {}", servers.all().join(", ")),
            reason: reasons.join("; "),
        })
    }

    /// The servers, and the one in use.
    pub fn servers(&self) -> &ServerAddresses {
        &self.servers
    }

    /// Counts switches between servers in `metrics` and shows the one in use there.
    pub fn with_metrics(mut self, metrics: Arc<AgentMetrics>) -> Self {
        metrics.server_in_use(self.servers.current());
        self.metrics = Some(metrics);
        self
    }

    /// Whether the client moved to another server since the last time this was asked.
    pub fn take_switched(&mut self) -> bool {
        std::mem::take(&mut self.switched)
    }

    /// After a failed call: if `error` means the server is gone ([`failover_reason`]),
    /// moves to the next server (with one server: the same one, after a timeout only) and
    /// opens a new connection to it (lazily: no dial yet). Without an agent SVID (during
    /// attestation) it does nothing: the caller dials the next server itself
    /// ([`ServerClient::dial`]).
    pub(super) async fn fail_over(&mut self, error: &ClientError) {
        let Some(reason) = failover_reason(error) else { return };
        // Attesting: the caller drops this client and dials the next server itself.
        let Some(identity) = self.identity.clone() else { return };
        if self.servers.len() > 1 {
            let from = self.servers.current().to_owned();
            let to = self.servers.advance().to_owned();
            self.switched = true;
            tracing::info!(from = %from, to = %to, reason, error = %error, "switching to the next server");
            if let Some(metrics) = &self.metrics {
                metrics.server_failover(&to);
            }
        } else if let ClientError::Timeout { call, after } = error {
            tracing::warn!(call, ?after, "the server did not answer in time; reconnecting");
        } else {
            // One server: the channel dials it again by itself on the next call.
            return;
        }
        let (addr, td) = (self.servers.current(), &self.trust_domain);
        let within = connect_timeout(self.request_timeout);
        match open_channel_within(addr, td, &self.trust, Some(&identity), within).await {
            Ok(grpc) => self.grpc = grpc,
            Err(e) => tracing::warn!(error = %e, "cannot set up a new connection"),
        }
    }
}

#[cfg(test)]
mod tests;
