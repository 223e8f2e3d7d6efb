//! A join-token agent killed right after the server recorded its renewed SVID (before it
//! could have finished its round, so perhaps before it stored the SVID) starts again from
//! its data directory without a new token, is accepted, and keeps renewing.

use std::path::Path;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags, OptionalExtension as _};

use crate::procs::{Agent, Server};

/// Agent SVIDs live 8 s (renewed after about 4 s), with little backdating.
const SERVER_CONFIG: &str = r#"
trust_domain = "example.org"
ca_ttl = "10m"
backdate = "1s"
default_x509_svid_ttl = "20s"
default_jwt_svid_ttl = "1m"
agent_svid_ttl = "8s"
"#;

/// Rounds every half second, so that a renewal follows soon after it is due.
const AGENT_CONFIG: &str = "sync_interval = \"500ms\"\n";

/// How long the test waits for anything the agent should do by itself.
const PATIENCE: Duration = Duration::from_secs(30);

/// The agent's serials as the server's datastore holds them: newest, previous.
type Serials = (String, Option<String>);

/// Reads the agent record of `id` straight from the server's SQLite file.
struct Records(Connection);

impl Records {
    fn open(path: &Path) -> Records {
        let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
        conn.busy_timeout(Duration::from_secs(5)).unwrap();
        Records(conn)
    }

    fn serials(&self, id: &str) -> Option<Serials> {
        let sql = "SELECT svid_serial, previous_svid_serial FROM agents WHERE id = ?1";
        self.0.query_row(sql, [id], |r| Ok((r.get(0)?, r.get(1)?))).optional().unwrap()
    }

    /// Polls (every 2 ms, at most [`PATIENCE`]) until `done` holds for the agent's serials.
    fn wait_for(&self, id: &str, what: &str, done: impl Fn(&Serials) -> bool) -> Serials {
        let start = Instant::now();
        while start.elapsed() < PATIENCE {
            if let Some(serials) = self.serials(id).filter(|s| done(s)) {
                return serials;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        panic!("{what} did not happen within {PATIENCE:?}: {:?}", self.serials(id));
    }
}

#[test]
fn a_join_token_agent_killed_right_after_renewing_keeps_its_identity() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(&dir.path().join("server"), "127.0.0.1:0", Some(SERVER_CONFIG));
    let bundle = dir.path().join("bundle.pem");
    std::fs::write(&bundle, server.admin_text(&["bundle", "show", "--format", "pem"])).unwrap();
    let config = dir.path().join("agent.toml");
    std::fs::write(&config, AGENT_CONFIG).unwrap();
    let (bundle, config) = (bundle.to_str().unwrap(), config.to_str().unwrap());
    let agent_id = "spiffe://example.org/node/1";
    let token = server.token("node/1");
    let records = Records::open(&dir.path().join("server").join("datastore.sqlite3"));

    let joined = ["--join-token", &token, "--trust-bundle", bundle, "--config", config];
    let agent = Agent::start(dir.path(), &server.address, &joined, false);
    let (attested, _) = records.wait_for(agent_id, "attestation", |_| true);
    let (renewed, _) = records.wait_for(agent_id, "a renewal", |(s, _)| *s != attested);
    // SIGKILL at once: the agent gets no chance to finish its round.
    drop(agent);

    // Restarted without a token, it must be accepted with whichever SVID it kept, renew,
    // and use the new SVID (which drops the previous serial on the server).
    let again = ["--trust-bundle", bundle, "--config", config];
    let agent = Agent::start(dir.path(), &server.address, &again, false);
    records.wait_for(agent_id, "a renewal by the restarted agent", |(s, previous)| {
        *s != attested && *s != renewed && previous.is_none()
    });
    agent.stop();
    server.stop();
}
