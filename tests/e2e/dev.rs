//! `keycard dev`, as a newcomer uses it: start, paste the printed fetch command, get an
//! SVID; Ctrl-C; start again on the same state.

use crate::support::{Dev, keycard};

#[test]
fn dev_mode_gives_the_calling_user_an_svid_and_reuses_its_state() {
    let dir = tempfile::tempdir().unwrap();
    let dev = Dev::start(&dir.path().join(".keycard-dev"));
    let fetch = dev
        .printed
        .iter()
        .find(|l| l.contains("api fetch x509 --socket"))
        .expect("dev prints a fetch command")
        .trim()
        .strip_prefix("cargo run --release -- ")
        .expect("the fetch command is a cargo run line")
        .to_owned();
    let args: Vec<&str> = fetch.split_whitespace().collect();
    let deadline = std::time::Instant::now() + crate::support::PATIENCE;
    let text = loop {
        let out = keycard().args(&args).output().unwrap();
        if out.status.success() {
            break String::from_utf8(out.stdout).unwrap();
        }
        assert!(std::time::Instant::now() < deadline, "the printed fetch failed: {out:?}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let took = dev.started.elapsed();
    assert!(text.contains("SPIFFE ID:         spiffe://example.org/user/"), "{text}");
    println!("first SVID {took:.1?} after `keycard dev` started");
    let entries = dev.admin(&["entry", "show"]);
    assert_eq!(entries["entries"].as_array().map(Vec::len), Some(1), "{entries}");
    dev.stop();

    // Again, on the same state: same CA, same single entry, the agent's SVID reused.
    let dev = Dev::start(&dir.path().join(".keycard-dev"));
    let again = dev.api_until_ok(None, &["fetch", "x509"]);
    assert!(again.contains("spiffe://example.org/user/"), "{again}");
    let entries = dev.admin(&["entry", "show"]);
    assert_eq!(entries["entries"].as_array().map(Vec::len), Some(1), "{entries}");
    let agents = dev.admin(&["agent", "list"]);
    assert_eq!(agents["agents"].as_array().map(Vec::len), Some(1), "{agents}");
    dev.stop();
}
