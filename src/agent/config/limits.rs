//! `[workload_api]` of the agent config: the caps on Workload API connections
//! ([`ConnectionLimits`]).
//!
//! | Key | Default | Meaning |
//! |-----|---------|---------|
//! | `max_connections` | `8192` | Connections the agent holds at once, from all local users together; more are closed at accept. The last eighth is kept for root, the agent's uid and uids an entry selects by `unix:uid` |
//! | `max_connections_per_uid` | `512` | Connections held at once from one uid; must not exceed `max_connections` |
//! | `first_request_timeout` | `10s` | A connection that makes no request within this time is closed |
//!
//! At start-up the agent raises its soft `RLIMIT_NOFILE` to the hard limit and lowers the
//! caps (with a warning) when even that cannot hold 3 descriptors per connection.

use super::file::FileWorkloadApi;
use super::{CONFIG, conflict, invalid};
use crate::agent::workload_api::limits::ConnectionLimits;
use crate::config::{ConfigError, parse_positive_duration};

/// Checks `[workload_api]` and fills in defaults.
pub(super) fn connection_limits(
    f: Option<FileWorkloadApi>,
) -> Result<ConnectionLimits, ConfigError> {
    let f = f.unwrap_or_default();
    let mut limits = ConnectionLimits::default();
    if let Some(n) = f.max_connections {
        if n == 0 {
            return Err(invalid("workload_api.max_connections", "must be at least 1"));
        }
        limits.max_connections = n;
    }
    if let Some(n) = f.max_connections_per_uid {
        if n == 0 {
            return Err(invalid("workload_api.max_connections_per_uid", "must be at least 1"));
        }
        limits.max_connections_per_uid = n;
    }
    if limits.max_connections_per_uid > limits.max_connections {
        return Err(conflict(
            "workload_api.max_connections_per_uid",
            "workload_api.max_connections",
            format!(
                "one uid may not hold more connections ({}) than the agent holds in all ({}); \
                 keep the per-uid cap far below the total so one user cannot starve the others",
                limits.max_connections_per_uid, limits.max_connections
            ),
        ));
    }
    if let Some(v) = f.first_request_timeout {
        limits.first_request_timeout =
            parse_positive_duration(CONFIG, "workload_api.first_request_timeout", &v)?;
    }
    Ok(limits)
}
