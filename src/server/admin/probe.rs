//! The datastore write probe behind `keycard healthcheck`.
//!
//! A read (`SELECT 1`) still answers when every write fails (disk full, read-only file
//! system, a lock held elsewhere), so health also writes: it stores a throw-away join token
//! that expired at the Unix epoch, through the same write path as every other change, and
//! deletes it again. Nobody can use it: its secret is random and never leaves this
//! function, it expired long ago, and it reserves no agent ID.

use std::time::{Duration, SystemTime};

use crate::server::datastore::{DataStore, DataStoreError, JoinTokenRecord};

/// Writes a probe record and removes it; an error means writes fail now.
pub fn probe_write(store: &dyn DataStore) -> Result<(), DataStoreError> {
    let hash: [u8; 32] = rand::random();
    let record = JoinTokenRecord {
        hash,
        token_id: format!("probe-{}", hex::encode(&hash[..4])),
        agent_id: None,
        expires_at: SystemTime::UNIX_EPOCH,
        used_at: None,
    };
    store.create_join_token(&record)?;
    // Tokens expired before 1 ms after the epoch: only probes (a real token expires after
    // it was made). A failed clean-up leaves a harmless record the next probe removes.
    store.prune_join_tokens(SystemTime::UNIX_EPOCH + Duration::from_millis(1)).map(drop)
}
