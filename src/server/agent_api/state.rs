//! What every handler shares ([`Inner`]): options, CA, datastore, metrics, clock, the
//! entry cache and the rate limiters; how a caller is authenticated as an agent; and the
//! helper that runs datastore calls off the async threads.

use std::net::IpAddr;
use std::sync::Arc;

use keycard_workload_api::SpiffeId;
use tonic::{Request, Status};

use super::authorized::AuthorizedEntries;
use super::error::AgentApiError;
use super::limits::KeyedLimiter;
use super::options::AgentApiOptions;
use super::tls::PeerInfo;
use crate::ca::CaManager;
use crate::clock::Clock;
use crate::server::datastore::{AgentRecord, DataStore, DataStoreError};
use crate::server::federation::foreign::ForeignBundles;
use crate::telemetry::AUDIT_TARGET;
use crate::telemetry::metrics::ServerMetrics;

/// Everything the handlers share.
#[derive(Debug)]
pub struct Inner {
    /// The server's options.
    pub options: AgentApiOptions,
    /// Signs SVIDs and provides the bundle.
    pub ca: Arc<CaManager>,
    /// Agents, join tokens (entries are read through `cache`).
    pub store: Arc<dyn DataStore>,
    /// Counters and histograms.
    pub metrics: Arc<ServerMetrics>,
    /// The time.
    pub clock: Arc<dyn Clock>,
    /// Registration entries in memory.
    pub cache: Arc<AuthorizedEntries>,
    /// The foreign bundles agents receive (read at most once a second).
    pub foreign: Arc<ForeignBundles>,
    /// Attestations per source address.
    pub attest_limiter: KeyedLimiter<IpAddr>,
    /// Signatures per agent, on the server clock (`clock`), so that tests drive it.
    pub sign_limiter: KeyedLimiter<SpiffeId, std::time::SystemTime>,
    /// Agent records read while the store showed one change mark (see [`AgentRecords`]).
    pub agents: AgentRecords,
}

/// Agent records as last read, valid while the datastore's
/// [`DataStore::change_mark`] is the one read before them: any commit (an eviction, a ban, a
/// renewal, by this server or another) moves the mark and empties the cache. So an agent's
/// every call is still checked against the store as it stands, without a datastore read
/// and a hand-off to a blocking thread per call. Stores without a mark are read each time.
#[derive(Debug, Default)]
pub struct AgentRecords {
    held: std::sync::Mutex<(Option<u64>, std::collections::HashMap<SpiffeId, AgentRecord>)>,
}

impl AgentRecords {
    fn held(
        &self,
    ) -> std::sync::MutexGuard<'_, (Option<u64>, std::collections::HashMap<SpiffeId, AgentRecord>)>
    {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The record of `id` if it was read at `mark`.
    fn get(&self, mark: Option<u64>, id: &SpiffeId) -> Option<AgentRecord> {
        let mut held = self.held();
        if mark.is_none() || held.0 != mark {
            *held = (mark, Default::default());
            return None;
        }
        held.1.get(id).cloned()
    }

    /// Keeps `record`, read after the store showed `mark`, unless the mark moved since.
    fn put(&self, mark: Option<u64>, record: &AgentRecord) {
        let mut held = self.held();
        if mark.is_some() && held.0 == mark {
            held.1.insert(record.id.clone(), record.clone());
        }
    }
}

/// Runs a blocking datastore call off the async threads.
pub async fn blocking<T: Send + 'static>(
    store: &Arc<dyn DataStore>,
    f: impl FnOnce(&dyn DataStore) -> Result<T, DataStoreError> + Send + 'static,
) -> Result<T, AgentApiError> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || f(store.as_ref()))
        .await
        .map_err(|e| AgentApiError::DataStore(DataStoreError::Backend(e.to_string())))?
        .map_err(AgentApiError::from)
}

impl Inner {
    /// The calling agent: the verified certificate's ID, whose record must exist, not be
    /// banned, and accept this certificate's serial (see [`Self::authenticate_svid`]).
    pub async fn authenticate<T>(&self, req: &Request<T>) -> Result<AgentRecord, AgentApiError> {
        Ok(self.authenticate_svid(req).await?.0)
    }

    /// [`Self::authenticate`] with the store's [`DataStore::change_mark`] as the caller read
    /// it at the start of its call (so that one call reads it once).
    pub async fn authenticate_at<T>(
        &self,
        req: &Request<T>,
        mark: Option<u64>,
    ) -> Result<AgentRecord, AgentApiError> {
        Ok(self.authenticate_svid_at(req, mark).await?.0)
    }

    /// [`Self::authenticate`], also giving the serial of the SVID the agent called with.
    ///
    /// Two serials are accepted after a renewal: the newest and the one it renewed from,
    /// because the agent may have lost the reply (or crashed before storing it). The first
    /// call with the newest SVID drops the previous serial for good.
    pub async fn authenticate_svid<T>(
        &self,
        req: &Request<T>,
    ) -> Result<(AgentRecord, String), AgentApiError> {
        self.authenticate_svid_at(req, self.store.change_mark()).await
    }

    async fn authenticate_svid_at<T>(
        &self,
        req: &Request<T>,
        mark: Option<u64>,
    ) -> Result<(AgentRecord, String), AgentApiError> {
        let chain = req
            .extensions()
            .get::<PeerInfo>()
            .and_then(|p| p.chain.clone())
            .ok_or(AgentApiError::NoAgentSvid)?;
        let leaf = chain.first().ok_or(AgentApiError::NoAgentSvid)?;
        let (id, serial) = id_and_serial_of(leaf)?;
        // Agent IDs are `/keycard/agent/...` by default, but an operator may choose any ID of
        // the trust domain for a join token: the agent record below is what decides.
        if !id.is_member_of(&self.options.trust_domain) || id == self.options.server_id() {
            return Err(AgentApiError::NotAnAgent(id.to_string()));
        }
        let mut record = match self.agents.get(mark, &id) {
            Some(record) => record,
            None => {
                let lookup = id.clone();
                let record = blocking(&self.store, move |s| s.get_agent(&lookup))
                    .await?
                    .ok_or_else(|| AgentApiError::UnknownAgent(id.to_string()))?;
                self.agents.put(mark, &record);
                record
            }
        };
        if record.banned {
            return Err(AgentApiError::BannedAgent(id.to_string()));
        }
        if record.svid_serial == serial {
            if let Some(previous) = record.previous_svid_serial.take() {
                let (agent, newest) = (id.clone(), serial.clone());
                blocking(&self.store, move |s| s.confirm_agent_svid(&agent, &newest)).await?;
                tracing::info!(target: AUDIT_TARGET, event = "agent_svid_confirmed",
                    agent = %id, serial = %serial, dropped = %previous);
            }
        } else if record.previous_svid_serial.as_deref() != Some(serial.as_str()) {
            return Err(AgentApiError::StaleAgentSvid { presented: serial });
        }
        Ok((record, serial))
    }

    /// The bundle as SPIFFE JSON bytes.
    pub fn bundle_json(&self) -> Result<Vec<u8>, AgentApiError> {
        let bundle = self.ca.bundle().map_err(AgentApiError::Ca)?;
        let json = bundle.to_json().map_err(|e| AgentApiError::Setup(e.to_string()))?;
        Ok(json.into_bytes())
    }

    /// Maps `err` to a status and counts the refusal.
    pub fn refuse(&self, method: &str, err: &AgentApiError) -> Status {
        let status = super::status::to_status(err);
        self.metrics.refused(method, status.code());
        status
    }
}

/// The SPIFFE ID of an agent's certificate and its serial number in lowercase hex, as
/// stored in agent records: from one parse.
fn id_and_serial_of(
    cert: &rustls_pki_types::CertificateDer<'_>,
) -> Result<(SpiffeId, String), AgentApiError> {
    let (id, serial) = keycard_workload_api::spiffe_id_and_serial_of(cert)
        .map_err(|e| AgentApiError::NotAnAgent(e.to_string()))?;
    Ok((id, hex::encode(serial)))
}
