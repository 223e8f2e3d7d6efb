//! SPIFFE IDs and trust domains, parsed by the rules of the SPIFFE-ID standard.
//!
//! A [`SpiffeId`] or [`TrustDomain`] value can only be built by parsing, so every value in
//! the program is valid: code that receives one never checks it again. The rules are the
//! standard's, applied as strictly as go-spiffe applies them (lowercase trust domain only,
//! `spiffe://` scheme in lowercase), and each rule a caller can break has its own
//! [`SpiffeIdError`] variant so that a message names exactly what is wrong.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

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
        SpiffeId { td_len: self.name.len(), id: format!("{SCHEME_PREFIX}{}", self.name).into() }
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
/// Cloning one shares its text (an agent holds each workload's ID in several places).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SpiffeId {
    /// The whole ID, always valid ASCII.
    id: Arc<str>,
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
        Ok(Self { id: ascii_string(input).into(), td_len: td.len() })
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
mod tests;
