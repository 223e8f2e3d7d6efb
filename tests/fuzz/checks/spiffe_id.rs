//! SPIFFE ID and trust domain parsing against the SPIFFE-ID standard, written out again
//! here: keycard must accept exactly what the rules allow (both ways), and whatever it
//! accepts must print back to the same bytes and parse again to an equal value.

use keycard_workload_api::{SpiffeId, TrustDomain};

/// Longest SPIFFE ID, in bytes (implementations must accept at least this many).
const MAX_ID_LEN: usize = 2048;
/// Longest trust domain name, in bytes.
const MAX_TD_LEN: usize = 255;

/// The standard's trust domain rule: 1 to 255 bytes of `[a-z0-9.-_]`.
fn td_rule(td: &[u8]) -> Result<(), &'static str> {
    if td.is_empty() {
        return Err("empty trust domain");
    }
    if td.len() > MAX_TD_LEN {
        return Err("trust domain over 255 bytes");
    }
    if !td.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b".-_".contains(c)) {
        return Err("trust domain character outside [a-z0-9.-_]");
    }
    Ok(())
}

/// The standard's SPIFFE ID rule: `spiffe://`, a trust domain, then `/segment`s of
/// `[a-zA-Z0-9.-_]`, none empty, `.` or `..`; no query, fragment, percent-encoding.
fn id_rule(id: &[u8]) -> Result<(), &'static str> {
    if id.len() > MAX_ID_LEN {
        return Err("longer than 2048 bytes");
    }
    let rest = id.strip_prefix(b"spiffe://").ok_or("scheme is not spiffe://")?;
    let (td, path) = rest.split_at(rest.iter().position(|&c| c == b'/').unwrap_or(rest.len()));
    td_rule(td)?;
    if path.is_empty() {
        return Ok(());
    }
    for segment in path[1..].split(|&c| c == b'/') {
        if segment.is_empty() {
            return Err("empty segment or trailing slash");
        }
        if segment == b"." || segment == b".." {
            return Err("dot segment");
        }
        if !segment.iter().all(|c| c.is_ascii_alphanumeric() || b".-_".contains(c)) {
            return Err("path character outside [a-zA-Z0-9.-_]");
        }
    }
    Ok(())
}

/// Parses `data` as a SPIFFE ID and as a trust domain and checks every invariant;
/// returns whether it was accepted as a SPIFFE ID.
pub fn check(data: &[u8]) -> bool {
    let rule = id_rule(data);
    let accepted = match SpiffeId::from_bytes(data) {
        Ok(id) => {
            assert!(rule.is_ok(), "accepted {:?}, which breaks: {rule:?}", lossy(data));
            let text = id.to_string();
            assert_eq!(text.as_bytes(), data, "printing changed the ID");
            assert_eq!(SpiffeId::parse(&text).as_ref(), Ok(&id), "round trip");
            let td = id.trust_domain();
            assert_eq!(format!("spiffe://{}{}", td.name(), id.path()), text);
            assert!(id.is_member_of(&td));
            assert_eq!(id.is_root(), id.path().is_empty());
            assert_eq!(TrustDomain::new(td.name()).as_ref(), Ok(&td), "trust domain round trip");
            assert_eq!(td.id().trust_domain(), td);
            assert_eq!(td.spiffe_id(id.path()).as_ref(), Ok(&id), "rebuilt from its parts");
            true
        }
        Err(e) => {
            assert!(rule.is_err(), "refused {:?} ({e}), which follows every rule", lossy(data));
            assert!(!e.to_string().is_empty());
            false
        }
    };

    // A trust domain is given bare (`example.org`) or as a path-less SPIFFE ID.
    let td_expected = if data.windows(3).any(|w| w == b"://") {
        id_rule(data).and_then(|()| {
            let host = &data[b"spiffe://".len()..];
            if host.contains(&b'/') { Err("trust domain with a path") } else { Ok(host) }
        })
    } else {
        td_rule(data).map(|()| data)
    };
    match TrustDomain::from_bytes(data) {
        Ok(td) => {
            let name = td_expected.unwrap_or_else(|e| {
                panic!("accepted trust domain {:?}, which breaks: {e}", lossy(data))
            });
            assert_eq!(td.name().as_bytes(), name);
            assert_eq!(TrustDomain::new(&td.to_string()).as_ref(), Ok(&td), "round trip");
            assert_eq!(TrustDomain::new(td.id().as_str()).as_ref(), Ok(&td), "via its ID");
        }
        Err(e) => assert!(
            td_expected.is_err(),
            "refused trust domain {:?} ({e}), which follows every rule",
            lossy(data)
        ),
    }
    accepted
}

fn lossy(data: &[u8]) -> String {
    String::from_utf8_lossy(data).into_owned()
}
