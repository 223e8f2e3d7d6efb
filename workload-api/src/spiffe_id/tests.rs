use super::SpiffeIdError as E;
use super::*;

fn parse(s: &str) -> Result<SpiffeId, SpiffeIdError> {
    SpiffeId::parse(s)
}

/// What the standard says of byte `b` inside a trust domain `a<b>b` followed by a path.
fn expected_in_trust_domain(b: u8) -> Result<(), SpiffeIdError> {
    match b {
        b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-' | b'_' => Ok(()),
        // `/` ends the trust domain: `spiffe://a/b/path` is valid.
        b'/' => Ok(()),
        b'A'..=b'Z' => Err(E::UppercaseTrustDomain(b as char)),
        b':' => Err(E::Port),
        b'@' => Err(E::UserInfo),
        b'%' => Err(E::PercentEncoded),
        b'?' => Err(E::Query),
        b'#' => Err(E::Fragment),
        _ => Err(E::BadTrustDomainChar(b)),
    }
}

/// What the standard says of byte `b` inside a path segment `a<b>b`.
fn expected_in_path(b: u8) -> Result<(), SpiffeIdError> {
    match b {
        b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'.' | b'-' | b'_' | b'/' => Ok(()),
        b'%' => Err(E::PercentEncoded),
        b'?' => Err(E::Query),
        b'#' => Err(E::Fragment),
        _ => Err(E::BadPathSegmentChar(b)),
    }
}

#[test]
fn every_byte_in_the_trust_domain() {
    let mut accepted = 0;
    for b in 0..=255u8 {
        let mut input = b"spiffe://a".to_vec();
        input.push(b);
        input.extend_from_slice(b"b/path");
        let got = SpiffeId::from_bytes(&input).map(|_| ());
        assert_eq!(got, expected_in_trust_domain(b), "byte 0x{b:02x}");
        accepted += got.is_ok() as usize;
        // The same byte in a bare trust domain name.
        let bare = [b'a', b, b'b'];
        let got = TrustDomain::from_bytes(&bare).map(|_| ());
        let want = match b {
            b'/' => Err(E::TrustDomainWithPath),
            _ => expected_in_trust_domain(b),
        };
        assert_eq!(got, want, "bare byte 0x{b:02x}");
    }
    // 26 letters, 10 digits, '.', '-', '_' and '/'.
    assert_eq!(accepted, 40);
}

#[test]
fn every_byte_in_the_path() {
    let mut accepted = 0;
    for b in 0..=255u8 {
        let mut input = b"spiffe://example.org/a".to_vec();
        input.push(b);
        input.extend_from_slice(b"b");
        let got = SpiffeId::from_bytes(&input).map(|_| ());
        assert_eq!(got, expected_in_path(b), "byte 0x{b:02x}");
        accepted += got.is_ok() as usize;
    }
    // 52 letters, 10 digits, '.', '-', '_' and '/'.
    assert_eq!(accepted, 66);
}

#[test]
fn named_cases() {
    let td255 = "a".repeat(255);
    let td256 = "a".repeat(256);
    let long_path = format!("/{}", "a".repeat(2048 - "spiffe://td".len() - 1));
    let too_long_path = format!("{long_path}b");
    let cases: Vec<(String, Result<(), SpiffeIdError>)> = vec![
        ("spiffe://example.org".into(), Ok(())),
        ("spiffe://example.org/workload".into(), Ok(())),
        ("spiffe://example.org/ns/prod/sa/web".into(), Ok(())),
        ("spiffe://example.org/Mixed.Case-Path_1".into(), Ok(())),
        ("spiffe://1.2.3.4/ip".into(), Ok(())),
        ("spiffe://a_b-c.d/x".into(), Ok(())),
        ("spiffe://example.org/...".into(), Ok(())),
        ("spiffe://example.org/.hidden".into(), Ok(())),
        (format!("spiffe://{td255}/x"), Ok(())),
        (format!("spiffe://td{long_path}"), Ok(())),
        ("".into(), Err(E::Empty)),
        ("example.org/workload".into(), Err(E::WrongScheme)),
        ("https://example.org/workload".into(), Err(E::WrongScheme)),
        ("SPIFFE://example.org/workload".into(), Err(E::WrongScheme)),
        ("spiffe:/example.org/workload".into(), Err(E::WrongScheme)),
        ("spiffe://".into(), Err(E::MissingTrustDomain)),
        ("spiffe:///path".into(), Err(E::MissingTrustDomain)),
        (format!("spiffe://{td256}/x"), Err(E::TrustDomainTooLong(256))),
        (format!("spiffe://td{too_long_path}"), Err(E::TooLong(2049))),
        ("spiffe://Example.org/x".into(), Err(E::UppercaseTrustDomain('E'))),
        ("spiffe://example.org:8080/x".into(), Err(E::Port)),
        ("spiffe://user@example.org/x".into(), Err(E::UserInfo)),
        ("spiffe://user:pass@example.org/x".into(), Err(E::Port)),
        ("spiffe://example.org/x?a=b".into(), Err(E::Query)),
        ("spiffe://example.org?a=b".into(), Err(E::Query)),
        ("spiffe://example.org/x#frag".into(), Err(E::Fragment)),
        ("spiffe://example.org#frag".into(), Err(E::Fragment)),
        ("spiffe://example.org/x%20y".into(), Err(E::PercentEncoded)),
        ("spiffe://ex%41mple.org/x".into(), Err(E::PercentEncoded)),
        ("spiffe://[::1]/x".into(), Err(E::BadTrustDomainChar(b'['))),
        ("spiffe://exa mple.org/x".into(), Err(E::BadTrustDomainChar(b' '))),
        ("spiffe://example.org/x y".into(), Err(E::BadPathSegmentChar(b' '))),
        ("spiffe://example.org/x:y".into(), Err(E::BadPathSegmentChar(b':'))),
        ("spiffe://example.org/café".into(), Err(E::BadPathSegmentChar(0xc3))),
        ("spiffe://example.org//x".into(), Err(E::EmptySegment)),
        ("spiffe://example.org/x//y".into(), Err(E::EmptySegment)),
        ("spiffe://example.org/.".into(), Err(E::DotSegment)),
        ("spiffe://example.org/..".into(), Err(E::DotSegment)),
        ("spiffe://example.org/x/./y".into(), Err(E::DotSegment)),
        ("spiffe://example.org/x/../y".into(), Err(E::DotSegment)),
        ("spiffe://example.org/".into(), Err(E::TrailingSlash)),
        ("spiffe://example.org/x/".into(), Err(E::TrailingSlash)),
    ];
    assert!(cases.len() >= 30);
    for (input, want) in cases {
        assert_eq!(parse(&input).map(|_| ()), want, "{input:?}");
    }
}

#[test]
fn accessors() {
    let id = parse("spiffe://example.org/ns/web").unwrap();
    assert_eq!(id.trust_domain_name(), "example.org");
    assert_eq!(id.trust_domain(), TrustDomain::new("example.org").unwrap());
    assert_eq!(id.path(), "/ns/web");
    assert!(!id.is_root());
    assert!(id.trust_domain().id().is_root());
    assert_eq!(id.trust_domain().id().as_str(), "spiffe://example.org");
    assert_eq!(id.to_string(), "spiffe://example.org/ns/web");
    assert!(id.is_member_of(&TrustDomain::new("example.org").unwrap()));
    assert!(!id.is_member_of(&TrustDomain::new("example.com").unwrap()));
    let td = TrustDomain::new("spiffe://example.org").unwrap();
    assert_eq!(td.spiffe_id("/a/b").unwrap().as_str(), "spiffe://example.org/a/b");
    assert_eq!(td.spiffe_id("a"), Err(E::NoLeadingSlash));
    assert_eq!(TrustDomain::new("spiffe://example.org/x"), Err(E::TrustDomainWithPath));
    assert_eq!(TrustDomain::new(""), Err(E::MissingTrustDomain));
    let json = serde_json::to_string(&id).unwrap();
    assert_eq!(serde_json::from_str::<SpiffeId>(&json).unwrap(), id);
    assert!(serde_json::from_str::<SpiffeId>("\"spiffe://A/b\"").is_err());
}
