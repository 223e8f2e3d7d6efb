//! Seeds of the targets whose input is a stream or a file: HTTP/2 client bytes with
//! HPACK blocks from a real encoder (loona-hpack, with its dynamic table), agent disk cache
//! bodies built from certs-dev, and the configuration examples of conf/.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use keycard::wire::proto as pb;
use prost::Message as _;
use serde_json::json;

use super::seeds::good_bundle_json;
use super::{common, disk_cache, fuzz_dir};

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    f.extend_from_slice(&[kind, flags]);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// Two gRPC requests as a client connection sends them after the preface: SETTINGS, a
/// WINDOW_UPDATE, then HEADERS (HPACK with the dynamic table) and DATA per request.
/// `split` sends the first block as a padded, prioritised HEADERS and a CONTINUATION.
fn grpc_stream(authority: &str, split: bool) -> Vec<u8> {
    let mut encoder = loona_hpack::Encoder::new();
    let headers: Vec<(&[u8], &[u8])> = [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/SpiffeWorkloadAPI/FetchJWTSVID"),
        (":authority", authority),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
        ("workload.spiffe.io", "true"),
    ]
    .iter()
    .map(|(n, v)| (n.as_bytes(), v.as_bytes()))
    .collect();
    let message = keycard_workload_api::proto::JwtsvidRequest {
        audience: vec!["fuzz-audience".into()],
        spiffe_id: String::new(),
    }
    .encode_to_vec();
    let mut grpc = vec![0, 0, 0, 0, message.len() as u8];
    grpc.extend_from_slice(&message);
    let mut out = frame(0x4, 0, 0, &[0, 2, 0, 0, 0, 0]);
    out.extend(frame(0x8, 0, 0, &[0, 0x0f, 0, 0]));
    for stream in [1u32, 3] {
        let block = encoder.encode(headers.iter().copied());
        if split && stream == 1 {
            let (a, b) = block.split_at(block.len() / 2);
            let mut payload = vec![3];
            payload.extend_from_slice(&[0, 0, 0, 0, 15]);
            payload.extend_from_slice(a);
            payload.extend_from_slice(&[0, 0, 0]);
            out.extend(frame(0x1, 0x8 | 0x20, stream, &payload));
            out.extend(frame(0x9, 0x4, stream, b));
        } else {
            out.extend(frame(0x1, 0x4, stream, &block));
        }
        out.extend(frame(0x0, 0x1, stream, &grpc));
    }
    out
}

/// h2_authority: byte 0 is the piece size, then the client bytes after the preface.
pub(super) fn h2_authority_seeds() -> Vec<Vec<u8>> {
    let with_piece = |piece: u8, bytes: Vec<u8>| {
        let mut out = vec![piece];
        out.extend(bytes);
        out
    };
    let bad = grpc_stream("tmp%2Fagent.sock", false);
    let cut = bad.len() - 40;
    vec![
        with_piece(31, grpc_stream("localhost", false)),
        with_piece(31, bad.clone()),
        with_piece(6, grpc_stream("/run/keycard/agent.sock", true)),
        with_piece(0, grpc_stream("localhost", true)),
        with_piece(12, bad[..cut].to_vec()),
    ]
}

/// The body of a good disk cache file: certs-dev's SVID for entry `web`, and `entry`
/// changed by `edit` (for the seeds that must be refused).
fn cache_body(edit: impl FnOnce(&mut pb::Entry, &mut serde_json::Value)) -> String {
    use x509_cert::der::Decode as _;
    let chain = common::pem_blocks(common::SVID_PEM);
    let leaf = x509_cert::Certificate::from_der(&chain[0]).unwrap();
    let mut entry = pb::Entry {
        id: "web".into(),
        spiffe_id: "spiffe://example.org/workload/web".into(),
        selectors: vec!["unix:uid:1000".into()],
        dns_names: disk_cache::dns_names(&leaf).into_iter().collect(),
        revision: 1,
        ..Default::default()
    };
    let now = common::NOW_SECS;
    let mut svid = json!({
        "entry_id": "web",
        "chain": chain.iter().map(|c| STANDARD.encode(c)).collect::<Vec<_>>(),
        "key": STANDARD.encode(common::pem_first(common::SVID_KEY_PEM)),
        "serial": "1",
        "issued_at": now - 60,
        "renew_at": now + 1800,
    });
    edit(&mut entry, &mut svid);
    json!({
        "revision": 1,
        "saved_at": now,
        "entries": [STANDARD.encode(entry.encode_to_vec())],
        "bundle": good_bundle_json(),
        "tainted_authority_ids": [],
        "svids": [svid],
    })
    .to_string()
}

/// disk_cache: byte 0 is the mode (1: body to seal, 0: whole file).
pub(super) fn disk_cache_seeds() -> Vec<Vec<u8>> {
    let body = |text: String| {
        let mut out = vec![1];
        out.extend(text.into_bytes());
        out
    };
    let other_key = STANDARD.encode(common::pem_first(common::NODE1_KEY_PEM));
    let good = cache_body(|_, _| {});
    let mut sealed = vec![0];
    sealed.extend(disk_cache::seal(&good));
    vec![
        body(good),
        body(cache_body(|e, _| e.spiffe_id = "spiffe://example.org/other".into())),
        body(cache_body(|e, _| e.dns_names = vec!["x.example.org".into()])),
        body(cache_body(|_, s| s["key"] = json!(other_key))),
        body(cache_body(|_, s| s["entry_id"] = json!("gone"))),
        sealed,
        br#"x{"version":1}"#.to_vec(),
    ]
}

/// config: byte 0 picks server (0) or agent (1), then the TOML text.
pub(super) fn config_seeds() -> Vec<Vec<u8>> {
    let root = fuzz_dir().join("../..");
    let file = |which: u8, text: &str| {
        let mut out = vec![which];
        out.extend_from_slice(text.as_bytes());
        out
    };
    let server = std::fs::read_to_string(root.join("conf/server.toml")).unwrap();
    let agent = std::fs::read_to_string(root.join("conf/agent.toml")).unwrap();
    vec![
        file(0, &server),
        file(1, &agent),
        file(0, "trust_domain = \"example.org\"\n"),
        file(
            0,
            "trust_domain = \"example.org\"\nca_ttl = \"1h\"\ndefault_x509_svid_ttl = \"1h\"\n",
        ),
        file(0, "trust_domain = \"example.org\"\njwt_key_type = \"ed25519\"\nbackdate = \"2d\"\n"),
        file(
            0,
            "trust_domain = \"example.org\"\nsvids_per_second_per_agent = 0\nhealth_address = \"127.0.0.1:8081\"\n",
        ),
        file(1, "trust_domain = \"example.org\"\nserver_address = \"127.0.0.1:8081\"\n"),
        file(1, "trust_domain = \"example.org\"\nserver_address = \"h:1\"\njoin_token = \" t \"\n"),
        file(
            1,
            "trust_domain = \"example.org\"\nserver_address = \"h:1\"\n[x509pop]\ncert_file = \"c\"\n",
        ),
        file(
            1,
            "trust_domain = \"example.org\"\nserver_address = \"h:1\"\nsync_interval = \"0s\"\n",
        ),
    ]
}
