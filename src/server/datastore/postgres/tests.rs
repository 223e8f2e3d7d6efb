//! What is particular to the PostgreSQL store: URLs and their errors, a database that is
//! down, silent or locked, schema versions, broken connections, all-or-nothing calls
//! (failures injected with a trigger), and use from inside a tokio runtime. What every
//! store does is in the shared suite (`datastore/suite`).

use std::net::TcpListener;
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use keycard_workload_api::SpiffeId;

use super::{Limits, PostgresDataStore, redact_url};
use crate::selector::Selector;
use crate::server::datastore::suite::{Backend as _, Postgres};
use crate::server::datastore::{DataStore, DataStoreError};
use crate::server::entry::EntrySpec;

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn spec(path: &str, selector: &str) -> EntrySpec {
    EntrySpec {
        spiffe_id: SpiffeId::parse(&format!("spiffe://example.org{path}")).unwrap(),
        parent_id: SpiffeId::parse("spiffe://example.org/agent").unwrap(),
        selectors: [Selector::parse(selector).unwrap()].into_iter().collect(),
        x509_ttl: None,
        jwt_ttl: None,
        dns_names: vec![],
        hint: String::new(),
        admin: false,
        jwt_svid_binding: crate::server::entry::JwtSvidBinding::None,
        federates_with: Vec::new(),
    }
}

fn backend_error(result: Result<PostgresDataStore, DataStoreError>) -> String {
    match result {
        Err(DataStoreError::Backend(message)) => message,
        other => panic!("expected a backend error, got {other:?}"),
    }
}

const SHORT: Limits =
    Limits { connect: Duration::from_millis(500), call: Duration::from_secs(1), connections: 2 };

#[test]
fn passwords_never_show() {
    assert_eq!(redact_url("postgres://u:secret@h:5432/db"), "postgres://u:***@h:5432/db");
    assert_eq!(
        redact_url("postgres://u@h/db?password=secret&x=1"),
        "postgres://u@h/db?password=***&x=1"
    );
    assert_eq!(redact_url("postgres://u@/db?host=/run/pg"), "postgres://u@/db?host=/run/pg");
    let message = backend_error(PostgresDataStore::open("postgres://u:secret@h/db?bogus=1"));
    assert!(message.contains("postgres://u:***@h/db?bogus=1"), "{message}");
    assert!(message.contains("postgres://USER@HOST:PORT/DATABASE"), "names the fix: {message}");
    assert!(!message.contains("secret"), "{message}");
}

#[test]
fn tls_is_refused_with_the_fix() {
    let message =
        backend_error(PostgresDataStore::open("postgres://u@127.0.0.1/db?sslmode=require"));
    assert!(message.contains("sslmode=require") && message.contains("Unix socket"), "{message}");
}

#[test]
fn a_database_that_is_down_fails_fast() {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("postgres://keycard:pw@127.0.0.1:{port}/keycard");
    let start = Instant::now();
    let message = backend_error(PostgresDataStore::open(&url));
    assert!(start.elapsed() < Duration::from_secs(3), "took {:?}", start.elapsed());
    assert!(message.contains("cannot connect") && message.contains(":***@"), "{message}");
}

#[test]
fn a_database_that_never_answers_times_out() {
    // The kernel completes the TCP handshake; nothing ever speaks.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let url =
        format!("postgres://keycard@127.0.0.1:{}/keycard", silent.local_addr().unwrap().port());
    let start = Instant::now();
    let message = backend_error(PostgresDataStore::open_with(&url, SHORT));
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(400) && took < Duration::from_secs(3), "took {took:?}");
    assert!(message.contains("no answer") || message.contains("did not answer"), "{message}");
}

#[test]
fn a_newer_schema_is_refused_untouched() {
    let pg = Postgres::new();
    drop(pg.open());
    pg.execute("UPDATE schema_version SET version = 99");
    let message = backend_error(PostgresDataStore::open(pg.url()));
    assert!(message.contains("newer than this keycard knows"), "{message}");
    // Untouched: still 99, so a second attempt says the same.
    let again = backend_error(PostgresDataStore::open(pg.url()));
    assert!(again.contains("schema version 99"), "{again}");
}

#[test]
fn a_call_held_up_by_a_lock_fails_within_its_limit_and_the_store_recovers() {
    let pg = Postgres::new();
    let store = PostgresDataStore::open_with(pg.url(), SHORT).unwrap();
    // Another session holds the revision counter and does not let go.
    let (locked_send, locked) = mpsc::channel();
    let (release, release_receive) = mpsc::channel::<()>();
    let url = pg.url().to_owned();
    let holder = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let (client, conn) =
                tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
            let driver = tokio::spawn(conn);
            client.batch_execute("BEGIN; LOCK TABLE store_revision;").await.unwrap();
            locked_send.send(()).unwrap();
            let _ = release_receive.recv_timeout(Duration::from_secs(30));
            client.batch_execute("ROLLBACK").await.unwrap();
            drop(client);
            let _ = driver.await;
        });
    });
    locked.recv_timeout(Duration::from_secs(10)).unwrap();
    let start = Instant::now();
    let err = store.create_entry(&spec("/a", "unix:uid:1"), at(1)).unwrap_err();
    let took = start.elapsed();
    assert!(matches!(err, DataStoreError::Backend(_)), "{err:?}");
    assert!(took < Duration::from_secs(3), "took {took:?}");
    // Reads do not wait for the writer's lock.
    store.ping().unwrap();
    release.send(()).unwrap();
    holder.join().unwrap();
    let created = store.create_entry(&spec("/a", "unix:uid:1"), at(1)).unwrap();
    assert_eq!(created.revision, 1, "the failed call consumed no revision");
}

#[test]
fn a_broken_connection_is_replaced() {
    let pg = Postgres::new();
    let store = PostgresDataStore::open(pg.url()).unwrap();
    store.create_entry(&spec("/a", "unix:uid:1"), at(1)).unwrap();
    pg.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid()",
    );
    // A read that finds its pooled connection closed reads again on a new one; the
    // backends end asynchronously, so try a few reads while they do.
    for _ in 0..5 {
        assert_eq!(store.count_entries().unwrap(), 1);
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn a_statement_failing_inside_a_call_leaves_no_partial_write() {
    let pg = Postgres::new();
    let store = PostgresDataStore::open(pg.url()).unwrap();
    let kept = store.create_entry(&spec("/kept", "unix:uid:1"), at(1)).unwrap();
    pg.execute(
        "CREATE FUNCTION boom() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF TG_TABLE_NAME = 'entry_tombstones' OR NEW.value = 'uid:666' THEN
                 RAISE EXCEPTION 'injected failure';
             END IF;
             RETURN NEW;
         END $$;
         CREATE TRIGGER boom BEFORE INSERT ON entry_selectors
             FOR EACH ROW EXECUTE FUNCTION boom();
         CREATE TRIGGER no_tombstones BEFORE INSERT ON entry_tombstones
             FOR EACH ROW EXECUTE FUNCTION boom();",
    );
    let err = store.create_entry(&spec("/new", "unix:uid:666"), at(2)).unwrap_err();
    assert!(matches!(&err, DataStoreError::Backend(m) if m.contains("injected")), "{err:?}");
    let err = store.update_entry(&kept.id, &spec("/kept", "unix:uid:666"), at(3)).unwrap_err();
    assert!(matches!(err, DataStoreError::Backend(_)), "{err:?}");
    let err = store.delete_entry(&kept.id).unwrap_err();
    assert!(matches!(err, DataStoreError::Backend(_)), "{err:?}");
    assert_eq!(store.count_entries().unwrap(), 1);
    assert_eq!(store.get_entry(&kept.id).unwrap(), Some(kept.clone()));
    let changes = store.entry_changes_since(0, 0).unwrap();
    assert_eq!((changes.changed, changes.revision), (vec![kept], 1), "no revision consumed");
}

#[test]
fn a_unix_socket_url_works() {
    let pg = Postgres::new();
    let store = PostgresDataStore::open(pg.url()).unwrap();
    store.save_journal("s1", b"{}").unwrap();
    let (send, receive) = mpsc::channel();
    let url = pg.url().to_owned();
    let admin_url = url.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let (client, conn) =
                tokio_postgres::connect(&admin_url, tokio_postgres::NoTls).await.unwrap();
            tokio::spawn(conn);
            let row = client
                .query_one(
                    "SELECT current_database(), current_setting('unix_socket_directories')",
                    &[],
                )
                .await
                .unwrap();
            send.send((row.get::<_, String>(0), row.get::<_, String>(1))).unwrap();
        });
    })
    .join()
    .unwrap();
    let (db, dirs) = receive.recv().unwrap();
    let dir = dirs.split(',').next().unwrap().trim();
    let port = url.rsplit(':').next().unwrap().split('/').next().unwrap();
    let socket_url = format!("postgres://postgres@/{db}?host={dir}&port={port}");
    let over_socket = PostgresDataStore::open(&socket_url).unwrap();
    assert_eq!(over_socket.load_journal("s1").unwrap().as_deref(), Some(&b"{}"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_works_and_drops_on_a_tokio_worker() {
    let pg = Postgres::new();
    let store = PostgresDataStore::open(pg.url()).unwrap();
    store.create_entry(&spec("/a", "unix:uid:1"), at(1)).unwrap();
    assert_eq!(store.count_entries().unwrap(), 1);
    assert_eq!(store.kind(), "postgres");
    drop(store);
}

#[tokio::test(flavor = "current_thread")]
async fn the_store_works_on_a_single_threaded_runtime() {
    let pg = Postgres::new();
    let store = PostgresDataStore::open(pg.url()).unwrap();
    store.ping().unwrap();
    drop(store);
}

/// PostgreSQL's plans for `queries` (sequential scans disabled, so that a tiny table still
/// shows whether an index can serve the query).
fn plans(url: &str, queries: &[&str]) -> Vec<String> {
    let url = url.to_owned();
    let queries: Vec<String> = queries.iter().map(|q| q.to_string()).collect();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let (client, conn) =
                tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
            tokio::spawn(conn);
            client.batch_execute("SET enable_seqscan = off").await.unwrap();
            let mut plans = Vec::new();
            for q in queries {
                let rows = client.query(&format!("EXPLAIN {q}"), &[]).await.unwrap();
                plans.push(
                    rows.iter().map(|r| r.get::<_, String>(0)).collect::<Vec<_>>().join("\n"),
                );
            }
            plans
        })
    })
    .join()
    .unwrap()
}

#[test]
fn the_hot_queries_use_indexes() {
    let pg = Postgres::new();
    drop(pg.open());
    let found = plans(
        pg.url(),
        &[
            "SELECT id FROM entries WHERE revision > 5 ORDER BY revision",
            "SELECT id FROM entry_tombstones WHERE revision > 1 AND revision <= 9",
            "SELECT id FROM entries WHERE identity_hash = '\\x00' AND id <> 'd'",
            "SELECT id FROM entries WHERE parent_id = 'b' ORDER BY id",
            "SELECT 1 FROM entries WHERE spiffe_id = 'a'",
            "SELECT 1 FROM join_tokens WHERE agent_id = 'a'",
        ],
    );
    let indexes = [
        "entries_by_revision",
        "entry_tombstones_by_revision",
        "entries_by_identity",
        "entries_by_parent",
        "entries_by_spiffe_id",
        "join_tokens_by_agent",
    ];
    for (plan, index) in found.iter().zip(indexes) {
        assert!(plan.contains(index), "expected {index}:\n{plan}");
        assert!(!plan.contains("Seq Scan"), "{plan}");
    }
}
