//! A throw-away database on a PostgreSQL server, for tests (unit and integration): one
//! fresh database per test on one shared cluster, dropped when the test ends.
//!
//! The cluster is the one `scripts/test.sh` starts (through `scripts/pg.sh`), named by the
//! `KEYCARD_TEST_POSTGRES_URL` environment variable.

use tokio_postgres::NoTls;

use super::{describe, redact_url};

/// A database created for one test and dropped (with its connections) when this value is.
#[derive(Debug)]
pub struct TestDatabase {
    /// The URL of the server's maintenance database, used to create and drop this one.
    admin_url: String,
    /// The database's name: `kc_` and random hex.
    name: String,
    /// The URL of this database.
    url: String,
}

impl TestDatabase {
    /// The environment variable that names the test cluster.
    pub const ENV: &'static str = "KEYCARD_TEST_POSTGRES_URL";

    /// A fresh database on the cluster named by [`ENV`](Self::ENV).
    ///
    /// # Panics
    /// When the variable is unset (the tests that need PostgreSQL fail rather than skip)
    /// or the database cannot be created.
    pub fn from_env() -> Self {
        let Ok(url) = std::env::var(Self::ENV) else {
            panic!(
                "{} is not set: this test needs a PostgreSQL server. Run the tests with \
                 scripts/test.sh, which starts a throw-away one, or start one with \
                 `eval \"$(scripts/pg.sh start)\"` and export the URL it prints",
                Self::ENV
            );
        };
        Self::create(&url).unwrap_or_else(|e| panic!("creating a test database: {e}"))
    }

    /// Creates a fresh database on the server at `admin_url` (a URL of any database the
    /// user may connect to, with the right to create databases).
    pub fn create(admin_url: &str) -> Result<Self, String> {
        let name = format!("kc_{}", hex::encode(rand::random::<[u8; 8]>()));
        let url = with_database(admin_url, &name);
        admin(admin_url, format!("CREATE DATABASE {name}"))?;
        Ok(Self { admin_url: admin_url.to_owned(), name, url })
    }

    /// The URL of this database, for [`PostgresDataStore::open`](super::PostgresDataStore::open).
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        if let Err(e) = admin(&self.admin_url, sql) {
            eprintln!("dropping test database {}: {e}", self.name);
        }
    }
}

/// `url` with its database replaced by `name`.
fn with_database(url: &str, name: &str) -> String {
    let (head, query) = match url.find('?') {
        Some(q) => url.split_at(q),
        None => (url, ""),
    };
    let authority_start = head.find("://").map_or(0, |i| i + 3);
    let base = match head[authority_start..].find('/') {
        Some(slash) => &head[..authority_start + slash],
        None => head,
    };
    format!("{base}/{name}{query}")
}

/// Runs one statement on the server at `url`, on a thread of its own (so that a test on a
/// tokio runtime may call it too).
fn admin(url: &str, sql: String) -> Result<(), String> {
    let url = url.to_owned();
    let shown = redact_url(&url);
    let work = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        runtime.block_on(async move {
            let connecting = tokio_postgres::connect(&url, NoTls);
            let (client, connection) =
                tokio::time::timeout(std::time::Duration::from_secs(10), connecting)
                    .await
                    .map_err(|_| format!("no answer from PostgreSQL at {shown}"))?
                    .map_err(|e| {
                        format!("connecting to PostgreSQL at {shown}: {}", describe(&e))
                    })?;
            let driver = tokio::spawn(connection);
            let result = client.batch_execute(&sql).await;
            drop(client);
            let _ = driver.await;
            result.map_err(|e| format!("{sql}: {}", describe(&e)))
        })
    });
    work.join().map_err(|_| "the PostgreSQL admin thread panicked".to_owned())?
}
