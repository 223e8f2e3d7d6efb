//! The embedded SQLite datastore (written next).

/// Placeholder type until the SQLite implementation lands.
#[derive(Debug)]
pub struct SqliteDataStore;
