//! SPIFFE IDs and trust domains, parsed by the rules of the SPIFFE-ID standard.
//!
//! A [`SpiffeId`] or [`TrustDomain`] value can only be built by parsing, so every value in
//! the program is valid: code that receives one never checks it again. The rules are the
//! standard's, applied as strictly as go-spiffe applies them (lowercase trust domain only,
//! `spiffe://` scheme in lowercase), and each rule a caller can break has its own
//! [`SpiffeIdError`] variant so that a message names exactly what is wrong.

use std::fmt;
use std::str::FromStr;

/// The scheme prefix every SPIFFE ID starts with.
pub const SCHEME_PREFIX: &str = "spiffe://";

/// Longest trust domain name accepted, in bytes (the standard's limit for a URI host).
pub const MAX_TRUST_DOMAIN_LEN: usize = 255;

/// Longest SPIFFE ID accepted, in bytes (implementations must accept at least this many).
pub const MAX_SPIFFE_ID_LEN: usize = 2048;

/// Why a string is not a SPIFFE ID or trust domain: one variant per rule of the standard.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    /// The input was empty.
    #[error("SPIFFE ID is empty")]
    Empty,
    /// The input does not start with `spiffe://`.
    #[error("SPIFFE ID must start with the scheme \"spiffe://\"")]
    WrongScheme,
    /// Nothing between `spiffe://` and the path.
    #[error("SPIFFE ID has no trust domain")]
    MissingTrustDomain,
    /// The trust domain is longer than 255 bytes.
    #[error("trust domain is {0} bytes long; the limit is 255")]
    TrustDomainTooLong(usize),
    /// The whole ID is longer than 2048 bytes.
    #[error("SPIFFE ID is {0} bytes long; the limit is 2048")]
    TooLong(usize),
    /// The trust domain has an uppercase letter; trust domains are lowercase only.
    #[error("trust domain must be lowercase (found {0:?})")]
    UppercaseTrustDomain(char),
    /// The trust domain has a character outside `[a-z0-9.-_]`.
    #[error("trust domain may only contain a-z, 0-9, '.', '-' and '_' (found byte 0x{0:02x})")]
    BadTrustDomainChar(u8),
    /// The trust domain carries a port (`host:port`).
    #[error("trust domain must not include a port")]
    Port,
    /// The trust domain carries user info (`user@host`).
    #[error("trust domain must not include user info")]
    UserInfo,
    /// The ID has a query part (`?...`).
    #[error("SPIFFE ID must not include a query")]
    Query,
    /// The ID has a fragment (`#...`).
    #[error("SPIFFE ID must not include a fragment")]
    Fragment,
    /// The ID contains `%`: percent-encoding is not allowed anywhere.
    #[error("SPIFFE ID must not contain percent-encoded characters")]
    PercentEncoded,
    /// A path segment has a character outside `[a-zA-Z0-9.-_]`.
    #[error(
        "path segments may only contain a-z, A-Z, 0-9, '.', '-' and '_' (found byte 0x{0:02x})"
    )]
    BadPathSegmentChar(u8),
    /// The path has an empty segment (`//`).
    #[error("path must not contain empty segments")]
    EmptySegment,
    /// The path has a `.` or `..` segment.
    #[error("path must not contain '.' or '..' segments")]
    DotSegment,
    /// The path ends with `/`.
    #[error("path must not end with '/'")]
    TrailingSlash,
    /// A trust domain was expected, but the input has a path.
    #[error("a trust domain must not have a path")]
    TrustDomainWithPath,
    /// A path was expected to start with `/`.
    #[error("path must start with '/'")]
    NoLeadingSlash,
}

/// A SPIFFE trust domain name such as `example.org`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TrustDomain {
    name: String,
}

impl TrustDomain {
    /// Parses a trust domain from its bare name (`example.org`) or from a SPIFFE ID with no
    /// path (`spiffe://example.org`).
    pub fn new(input: &str) -> Result<Self, SpiffeIdError> {
        Self::from_bytes(input.as_bytes())
    }

    /// Parses a trust domain from raw bytes, with the same rules as [`TrustDomain::new`].
    pub fn from_bytes(input: &[u8]) -> Result<Self, SpiffeIdError> {
        if input.windows(3).any(|w| w == b"://") {
            let id = SpiffeId::from_bytes(input)?;
            if !id.path().is_empty() {
                return Err(SpiffeIdError::TrustDomainWithPath);
            }
            return Ok(id.trust_domain());
        }
        if input.is_empty() {
            return Err(SpiffeIdError::MissingTrustDomain);
        }
        if input.contains(&b'/') {
            return Err(SpiffeIdError::TrustDomainWithPath);
        }
        check_trust_domain(input)?;
        Ok(Self { name: ascii_string(input) })
    }

    /// The bare name, for example `example.org`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The trust domain's own SPIFFE ID, `spiffe://<name>`, as used for bundle map keys.
    pub fn id(&self) -> SpiffeId {
        SpiffeId { td_len: self.name.len(), id: format!("{SCHEME_PREFIX}{}", self.name) }
    }

    /// Builds a SPIFFE ID in this trust domain from a path that starts with `/`.
    pub fn spiffe_id(&self, path: &str) -> Result<SpiffeId, SpiffeIdError> {
        if !path.is_empty() && !path.starts_with('/') {
            return Err(SpiffeIdError::NoLeadingSlash);
        }
        SpiffeId::parse(&format!("{SCHEME_PREFIX}{}{path}", self.name))
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

impl fmt::Debug for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TrustDomain({})", self.name)
    }
}

impl FromStr for TrustDomain {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

/// A SPIFFE ID such as `spiffe://example.org/ns/prod/sa/web`.
///
/// The path may be empty: `spiffe://example.org` names the trust domain itself (the ID of
/// a signing certificate). Workload SVIDs need a non-root path; see [`SpiffeId::is_root`].
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SpiffeId {
    /// The whole ID, always valid ASCII.
    id: String,
    /// Length of the trust domain name, which starts right after `spiffe://`.
    td_len: usize,
}

impl SpiffeId {
    /// Parses a SPIFFE ID.
    pub fn parse(input: &str) -> Result<Self, SpiffeIdError> {
        Self::from_bytes(input.as_bytes())
    }

    /// Parses a SPIFFE ID from raw bytes (any byte outside the allowed sets is rejected).
    pub fn from_bytes(input: &[u8]) -> Result<Self, SpiffeIdError> {
        if input.is_empty() {
            return Err(SpiffeIdError::Empty);
        }
        let rest =
            input.strip_prefix(SCHEME_PREFIX.as_bytes()).ok_or(SpiffeIdError::WrongScheme)?;
        let td_end =
            rest.iter().position(|&b| matches!(b, b'/' | b'?' | b'#')).unwrap_or(rest.len());
        let (td, tail) = rest.split_at(td_end);
        check_trust_domain(td)?;
        if td.is_empty() {
            return Err(SpiffeIdError::MissingTrustDomain);
        }
        check_path(tail)?;
        if input.len() > MAX_SPIFFE_ID_LEN {
            return Err(SpiffeIdError::TooLong(input.len()));
        }
        Ok(Self { id: ascii_string(input), td_len: td.len() })
    }

    /// The trust domain this ID belongs to.
    pub fn trust_domain(&self) -> TrustDomain {
        TrustDomain { name: self.trust_domain_name().to_owned() }
    }

    /// The trust domain name, without allocating.
    pub fn trust_domain_name(&self) -> &str {
        &self.id[SCHEME_PREFIX.len()..SCHEME_PREFIX.len() + self.td_len]
    }

    /// The path, starting with `/`, or empty for the trust domain's own ID.
    pub fn path(&self) -> &str {
        &self.id[SCHEME_PREFIX.len() + self.td_len..]
    }

    /// True when the path is empty, so the ID names the trust domain itself.
    pub fn is_root(&self) -> bool {
        self.path().is_empty()
    }

    /// Whether this ID is a member of `td`.
    pub fn is_member_of(&self, td: &TrustDomain) -> bool {
        self.trust_domain_name() == td.name()
    }

    /// The ID as a string.
    pub fn as_str(&self) -> &str {
        &self.id
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id)
    }
}

impl fmt::Debug for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpiffeId({})", self.id)
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl AsRef<str> for SpiffeId {
    fn as_ref(&self) -> &str {
        &self.id
    }
}

impl serde::Serialize for SpiffeId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.id)
    }
}

impl<'de> serde::Deserialize<'de> for SpiffeId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl serde::Serialize for TrustDomain {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.name)
    }
}

impl<'de> serde::Deserialize<'de> for TrustDomain {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::new(&s).map_err(serde::de::Error::custom)
    }
}

/// Checks the bytes of a trust domain name (without scheme or path).
fn check_trust_domain(td: &[u8]) -> Result<(), SpiffeIdError> {
    for &b in td {
        match b {
            b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-' | b'_' => {}
            b'A'..=b'Z' => return Err(SpiffeIdError::UppercaseTrustDomain(b as char)),
            b':' => return Err(SpiffeIdError::Port),
            b'@' => return Err(SpiffeIdError::UserInfo),
            b'%' => return Err(SpiffeIdError::PercentEncoded),
            b'?' => return Err(SpiffeIdError::Query),
            b'#' => return Err(SpiffeIdError::Fragment),
            _ => return Err(SpiffeIdError::BadTrustDomainChar(b)),
        }
    }
    if td.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(SpiffeIdError::TrustDomainTooLong(td.len()));
    }
    Ok(())
}

/// Checks everything after the trust domain: empty, or `/segment` repeated.
fn check_path(path: &[u8]) -> Result<(), SpiffeIdError> {
    match path.first() {
        None => return Ok(()),
        Some(b'?') => return Err(SpiffeIdError::Query),
        Some(b'#') => return Err(SpiffeIdError::Fragment),
        Some(b'/') => {}
        Some(_) => return Err(SpiffeIdError::NoLeadingSlash),
    }
    let mut segments = path[1..].split(|&b| b == b'/').peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        for &b in segment {
            match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'.' | b'-' | b'_' => {}
                b'?' => return Err(SpiffeIdError::Query),
                b'#' => return Err(SpiffeIdError::Fragment),
                b'%' => return Err(SpiffeIdError::PercentEncoded),
                _ => return Err(SpiffeIdError::BadPathSegmentChar(b)),
            }
        }
        match segment {
            b"" if last => return Err(SpiffeIdError::TrailingSlash),
            b"" => return Err(SpiffeIdError::EmptySegment),
            b"." | b".." => return Err(SpiffeIdError::DotSegment),
            _ => {}
        }
    }
    Ok(())
}

/// Turns bytes already checked to be ASCII into a `String`.
fn ascii_string(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| b as char).collect()
}

#[cfg(test)]
mod tests {
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
}
