//! The refresher's fetcher: HTTPS GET of a bundle endpoint ([`super::fetch`]).

use std::time::Duration;

use keycard_workload_api::bundle_json::SpiffeBundle;

use super::fetch::fetch_bundle;
use super::refresh::{BoxFuture, BundleFetcher};
use crate::server::datastore::FederationRecord;

/// How long one fetch may take, connection and redirects included.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Fetches over HTTPS, as the relationship's profile says.
#[derive(Debug, Clone)]
pub struct HttpsFetcher {
    timeout: Duration,
}

impl Default for HttpsFetcher {
    fn default() -> Self {
        Self { timeout: FETCH_TIMEOUT }
    }
}

impl BundleFetcher for HttpsFetcher {
    fn fetch<'a>(
        &'a self,
        rel: &'a FederationRecord,
        held: Option<&'a SpiffeBundle>,
    ) -> BoxFuture<'a, Result<SpiffeBundle, String>> {
        Box::pin(async move {
            fetch_bundle(&rel.trust_domain, &rel.endpoint_url, &rel.profile, held, self.timeout)
                .await
                .map_err(|e| e.to_string())
        })
    }
}
