//! The datastore test suite: what every [`DataStore`] must do, run against each store on
//! a real database (a SQLite file in a temporary directory; a fresh PostgreSQL database on
//! the cluster of `KEYCARD_TEST_POSTGRES_URL`, see `scripts/pg.sh`).
//!
//! Each test takes a [`Backend`]: it opens stores on one database, as many as it wants
//! (several servers sharing a database are several stores). Tests that depend on one
//! store's mechanics (SQLite's file modes, WAL and migrations; PostgreSQL's connection
//! handling) stay beside that store.

use std::sync::Arc;

use super::{DataStore, PostgresDataStore, SqliteDataStore};
use crate::server::datastore::postgres::TestDatabase;

mod entries;
mod federation;
mod ha;
mod records;

/// One database under test.
pub(crate) trait Backend {
    /// A new store on the database (each call opens another, as another server would).
    fn open(&self) -> Arc<dyn DataStore>;
    /// Runs SQL on the database behind the store's back (to damage rows).
    fn execute(&self, sql: &str);
}

/// A SQLite file in a temporary directory.
pub(crate) struct Sqlite {
    dir: tempfile::TempDir,
}

impl Sqlite {
    pub(crate) fn new() -> Self {
        Self { dir: tempfile::tempdir().unwrap() }
    }

    fn path(&self) -> std::path::PathBuf {
        self.dir.path().join("keycard.db")
    }
}

impl Backend for Sqlite {
    fn open(&self) -> Arc<dyn DataStore> {
        Arc::new(SqliteDataStore::open(&self.path()).unwrap())
    }

    fn execute(&self, sql: &str) {
        rusqlite::Connection::open(self.path()).unwrap().execute_batch(sql).unwrap();
    }
}

/// A fresh PostgreSQL database, dropped at the end of the test.
pub(crate) struct Postgres {
    db: TestDatabase,
}

impl Postgres {
    pub(crate) fn new() -> Self {
        Self { db: TestDatabase::from_env() }
    }

    pub(crate) fn url(&self) -> &str {
        self.db.url()
    }
}

impl Backend for Postgres {
    fn open(&self) -> Arc<dyn DataStore> {
        Arc::new(PostgresDataStore::open(self.db.url()).unwrap())
    }

    fn execute(&self, sql: &str) {
        let url = self.db.url().to_owned();
        let sql = sql.to_owned();
        // On a thread of its own: the test may be running on a tokio runtime.
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let (client, conn) =
                    tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
                let driver = tokio::spawn(conn);
                client.batch_execute(&sql).await.unwrap();
                drop(client);
                let _ = driver.await;
            });
        })
        .join()
        .unwrap();
    }
}

/// Declares one `#[test]` per suite test, each on a new backend made by `$backend`.
macro_rules! suite {
    ($backend:expr; $($module:ident :: $name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                let backend = $backend;
                super::$module::$name(&backend);
            }
        )*
    };
}

/// Every test of the suite, for one backend.
macro_rules! whole_suite {
    ($backend:expr) => {
        suite!($backend;
            entries::entries_are_created_read_updated_and_deleted_with_revisions,
            entries::duplicates_are_refused_whatever_the_selector_order,
            entries::paging_returns_every_entry_exactly_once,
            entries::filters_narrow_the_listing,
            entries::an_incremental_cache_follows_the_store,
            entries::a_cut_feed_stops_at_the_last_entry_it_returns,
            entries::batches_are_stored_or_refused_whole,
            records::agents_are_stored_replaced_listed_banned_and_deleted,
            records::a_renewal_keeps_the_previous_serial_until_the_new_one_is_confirmed,
            records::join_tokens_are_single_use_and_expire,
            records::racing_stores_accept_a_token_exactly_once,
            records::bundles_are_stored_and_replaced_per_trust_domain,
            records::an_agent_row_that_does_not_decode_is_corrupt,
            records::everything_survives_closing_and_reopening,
            federation::federations_are_created_read_updated_and_deleted,
            federation::a_refresh_keeps_the_last_good_bundle_when_a_fetch_fails,
            federation::foreign_bundles_are_listed_and_deleted,
            federation::racing_servers_claim_a_due_refresh_exactly_once,
            ha::each_server_keeps_its_own_journal,
            ha::a_revoked_mark_is_never_downgraded,
            ha::servers_announce_themselves,
            ha::concurrent_writers_are_followed_revision_by_revision,
            ha::racing_duplicates_store_exactly_one,
            ha::servers_starting_at_once_all_open_the_store,
        );
    };
}

mod on_sqlite {
    whole_suite!(super::Sqlite::new());
}

mod on_postgres {
    whole_suite!(super::Postgres::new());
}
