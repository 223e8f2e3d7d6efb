//! Registration entries: which SPIFFE ID a workload (or node) with given selectors gets.
//!
//! An [`EntrySpec`] is what an operator writes; the server checks it against its trust
//! domain ([`EntrySpec::check`]) before storing it as an [`Entry`], which adds the ID, the
//! revision and timestamps. The entry's SPIFFE ID, DNS names and TTLs are the only source
//! of what goes into an SVID: a CSR contributes nothing but its public key.

use std::time::{Duration, SystemTime};

use keycard_workload_api::{SpiffeId, TrustDomain};
use rand::Rng as _;
use serde::{Deserialize, Serialize};

use crate::selector::{SelectorError, SelectorSet};

/// Longest hint accepted (the Workload API says hints SHOULD stay under 1024 bytes).
pub const MAX_HINT_LEN: usize = 1024;
/// Most DNS names one entry may carry.
pub const MAX_DNS_NAMES: usize = 64;
/// Most selectors one entry may carry.
pub const MAX_SELECTORS: usize = 64;
/// Most foreign trust domains one entry may federate with.
pub const MAX_FEDERATES_WITH: usize = 64;
/// Path of the server's own SPIFFE ID; node-alias entries use it as their parent.
pub use crate::wire::SERVER_PATH;

/// What an operator specifies for an entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntrySpec {
    /// The SPIFFE ID the SVID will carry.
    pub spiffe_id: SpiffeId,
    /// Who may obtain the SVID: an agent's ID, the ID of another (node-alias) entry, or
    /// the server's ID for node-alias entries matched against agents' selectors.
    pub parent_id: SpiffeId,
    /// What the caller must have (a subset match); never empty.
    pub selectors: SelectorSet,
    /// X.509-SVID lifetime; the server default when `None`.
    pub x509_ttl: Option<Duration>,
    /// JWT-SVID lifetime; the server default when `None`.
    pub jwt_ttl: Option<Duration>,
    /// DNS SANs for the X.509-SVID.
    pub dns_names: Vec<String>,
    /// Free text passed to the workload in the `hint` field, to choose between SVIDs.
    pub hint: String,
    /// Whether the holder may call the admin API with this SVID.
    pub admin: bool,
    /// Whether the entry's JWT-SVIDs are bound to the holder's X.509-SVID (`cnf`).
    #[serde(default)]
    pub jwt_svid_binding: JwtSvidBinding,
    /// Foreign trust domains whose bundles the entry's workloads receive (and so whose
    /// SVIDs they may trust), sorted and without repeats. A domain the server holds no
    /// bundle for yet is kept and served once its bundle arrives.
    #[serde(default)]
    pub federates_with: Vec<TrustDomain>,
}

/// What an entry's JWT-SVIDs are bound to (RFC 8705 `cnf` claim).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JwtSvidBinding {
    /// Plain bearer tokens, as the JWT-SVID spec has them.
    #[default]
    None,
    /// Every token carries `cnf: {"x5t#S256": ...}`, the thumbprint of the X.509-SVID the
    /// same caller holds for the same SPIFFE ID: a resource server accepts it only over a
    /// TLS connection authenticated by that certificate.
    X509,
}

impl JwtSvidBinding {
    /// The name used on the command line, in batch files, the admin API and the stores.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::X509 => "x509",
        }
    }

    /// Parses [`JwtSvidBinding::as_str`]; the error names the accepted values.
    pub fn parse(s: &str) -> Result<Self, EntryError> {
        match s {
            "none" | "" => Ok(Self::None),
            "x509" => Ok(Self::X509),
            other => Err(EntryError::BadJwtSvidBinding(other.to_owned())),
        }
    }
}

impl std::fmt::Display for JwtSvidBinding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A stored entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Random, unique, never reused.
    pub id: String,
    /// What the operator asked for.
    pub spec: EntrySpec,
    /// The datastore's revision counter when this entry last changed: agents sync by it.
    pub revision: u64,
    /// When the entry was created.
    pub created_at: SystemTime,
    /// When the entry last changed.
    pub updated_at: SystemTime,
}

/// Why an entry specification was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    /// An entry without selectors would match every caller.
    #[error("an entry needs at least one selector, for example --selector unix:uid:1000")]
    NoSelectors,
    /// Too many selectors.
    #[error("an entry may have at most {MAX_SELECTORS} selectors")]
    TooManySelectors,
    /// The SPIFFE ID is in another trust domain.
    #[error("SPIFFE ID {id} is not in this server's trust domain {trust_domain}")]
    ForeignSpiffeId {
        /// The ID given.
        id: String,
        /// The server's trust domain.
        trust_domain: String,
    },
    /// The parent ID is in another trust domain.
    #[error("parent ID {id} is not in this server's trust domain {trust_domain}")]
    ForeignParentId {
        /// The ID given.
        id: String,
        /// The server's trust domain.
        trust_domain: String,
    },
    /// The SPIFFE ID has no path.
    #[error("SPIFFE ID {0} has no path; give it one, for example spiffe://example.org/web")]
    RootSpiffeId(String),
    /// The ID is reserved for keycard's own agents and server.
    #[error("SPIFFE ID {0} is reserved for keycard itself (paths under /keycard/)")]
    ReservedSpiffeId(String),
    /// An entry cannot be its own parent.
    #[error("an entry cannot be its own parent ({0})")]
    OwnParent(String),
    /// A DNS name the CA would refuse to put in a certificate.
    #[error(
        "DNS name {0:?} is not valid: labels of letters, digits and '-' separated by '.', at \
         most 253 bytes, '*.' first is allowed, and no IP address (the CA signs nothing else)"
    )]
    BadDnsName(String),
    /// A selector no attestor of keycard produces (see the message for the types).
    #[error(transparent)]
    Selector(#[from] SelectorError),
    /// A node selector under a workload parent, or a workload selector under the server.
    #[error("selector {selector} can never match under parent {parent}: {why}")]
    SelectorForOtherParent {
        /// The selector.
        selector: String,
        /// The parent ID given.
        parent: String,
        /// Which kind of selector the parent needs.
        why: &'static str,
    },
    /// Too many DNS names.
    #[error("an entry may have at most {MAX_DNS_NAMES} DNS names")]
    TooManyDnsNames,
    /// The hint is too long.
    #[error("hint is {0} bytes; the limit is {MAX_HINT_LEN}")]
    HintTooLong(usize),
    /// An unknown JWT-SVID binding mode.
    #[error(
        "JWT-SVID binding {0:?} is not known: use none (bearer tokens) or x509 (bound to the holder's X.509-SVID)"
    )]
    BadJwtSvidBinding(String),
    /// An entry federating with the server's own trust domain.
    #[error(
        "an entry cannot federate with its own trust domain {0}; --federates-with names foreign \
         trust domains"
    )]
    FederatesWithOwn(String),
    /// Too many federated trust domains.
    #[error("an entry may federate with at most {MAX_FEDERATES_WITH} trust domains")]
    TooManyFederatesWith,
    /// A federated trust domain that is not a valid trust domain name.
    #[error(
        "federated trust domain {0:?} is not valid: give a trust domain name such as \
         example.com (or spiffe://example.com)"
    )]
    BadFederatesWith(String),
    /// A TTL of zero.
    #[error("{0} TTL must be greater than zero")]
    ZeroTtl(&'static str),
    /// A TTL above what the CA hands out.
    #[error(
        "{kind} TTL {asked}s is above the cap of {cap}s ({cap_text}): the CA never issues an \
         SVID that lives longer than a sixth of its own lifetime (ca_ttl), so choose {cap_text} \
         or less"
    )]
    TtlAboveCap {
        /// X.509-SVID or JWT-SVID.
        kind: &'static str,
        /// The TTL asked for, in seconds.
        asked: u64,
        /// The cap, in seconds.
        cap: u64,
        /// The cap, humanly written.
        cap_text: String,
    },
}

/// Parses the trust domains of `--federates-with` (names, or `spiffe://` IDs without a
/// path) into the sorted list without repeats that [`EntrySpec::federates_with`] holds.
pub fn parse_federates_with<S: AsRef<str>>(items: &[S]) -> Result<Vec<TrustDomain>, EntryError> {
    let mut domains = items
        .iter()
        .map(|s| {
            TrustDomain::new(s.as_ref())
                .map_err(|_| EntryError::BadFederatesWith(s.as_ref().to_owned()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    domains.sort();
    domains.dedup();
    Ok(domains)
}

impl EntrySpec {
    /// A specification with the given identity, parent and selectors, and the server's
    /// defaults for everything else (TTLs, no DNS names, no hint, not admin).
    pub fn new(spiffe_id: SpiffeId, parent_id: SpiffeId, selectors: SelectorSet) -> Self {
        Self {
            spiffe_id,
            parent_id,
            selectors,
            x509_ttl: None,
            jwt_ttl: None,
            dns_names: Vec::new(),
            hint: String::new(),
            admin: false,
            jwt_svid_binding: JwtSvidBinding::None,
            federates_with: Vec::new(),
        }
    }

    /// Checks the rules that need the server's trust domain and the CA's longest SVID
    /// lifetime (`max_ttl`, see [`crate::ca::max_svid_ttl`]).
    pub fn check(&self, trust_domain: &TrustDomain, max_ttl: Duration) -> Result<(), EntryError> {
        if self.selectors.is_empty() {
            return Err(EntryError::NoSelectors);
        }
        if self.selectors.len() > MAX_SELECTORS {
            return Err(EntryError::TooManySelectors);
        }
        self.check_selectors(trust_domain)?;
        if !self.spiffe_id.is_member_of(trust_domain) {
            return Err(EntryError::ForeignSpiffeId {
                id: self.spiffe_id.to_string(),
                trust_domain: trust_domain.to_string(),
            });
        }
        if !self.parent_id.is_member_of(trust_domain) {
            return Err(EntryError::ForeignParentId {
                id: self.parent_id.to_string(),
                trust_domain: trust_domain.to_string(),
            });
        }
        if self.spiffe_id.is_root() {
            return Err(EntryError::RootSpiffeId(self.spiffe_id.to_string()));
        }
        let path = self.spiffe_id.path();
        if path == "/keycard" || path.starts_with("/keycard/") {
            return Err(EntryError::ReservedSpiffeId(self.spiffe_id.to_string()));
        }
        if self.spiffe_id == self.parent_id {
            return Err(EntryError::OwnParent(self.spiffe_id.to_string()));
        }
        if self.dns_names.len() > MAX_DNS_NAMES {
            return Err(EntryError::TooManyDnsNames);
        }
        if let Some(bad) = self.dns_names.iter().find(|n| crate::ca::template::dns_name(n).is_err())
        {
            return Err(EntryError::BadDnsName(bad.clone()));
        }
        if self.hint.len() > MAX_HINT_LEN {
            return Err(EntryError::HintTooLong(self.hint.len()));
        }
        if self.federates_with.len() > MAX_FEDERATES_WITH {
            return Err(EntryError::TooManyFederatesWith);
        }
        if self.federates_with.contains(trust_domain) {
            return Err(EntryError::FederatesWithOwn(trust_domain.to_string()));
        }
        if self.x509_ttl.is_some_and(|t| t.is_zero()) {
            return Err(EntryError::ZeroTtl("X.509-SVID"));
        }
        if self.jwt_ttl.is_some_and(|t| t.is_zero()) {
            return Err(EntryError::ZeroTtl("JWT-SVID"));
        }
        for (kind, ttl) in [("X.509-SVID", self.x509_ttl), ("JWT-SVID", self.jwt_ttl)] {
            if let Some(ttl) = ttl.filter(|t| *t > max_ttl) {
                return Err(EntryError::TtlAboveCap {
                    kind,
                    asked: ttl.as_secs(),
                    cap: max_ttl.as_secs(),
                    cap_text: humantime::format_duration(max_ttl).to_string(),
                });
            }
        }
        Ok(())
    }

    /// Every selector must be one an attestor produces, and of the kind the parent needs:
    /// node selectors under the server (node-alias entries), workload selectors elsewhere.
    fn check_selectors(&self, trust_domain: &TrustDomain) -> Result<(), EntryError> {
        let node_alias = self.parent_id == crate::wire::server_id(trust_domain);
        for selector in self.selectors.iter() {
            selector.check_known()?;
            let why = match (node_alias, selector.is_node_type()) {
                (true, false) => {
                    "entries whose parent is the server match agents, by node selectors \
                     (join_token, x509pop)"
                }
                (false, true) => {
                    "entries under an agent match workloads, by workload selectors (unix)"
                }
                _ => continue,
            };
            return Err(EntryError::SelectorForOtherParent {
                selector: selector.to_string(),
                parent: self.parent_id.to_string(),
                why,
            });
        }
        Ok(())
    }
}

/// A fresh entry ID: a random (version 4) UUID.
pub fn new_entry_id() -> String {
    let mut b: [u8; 16] = rand::rng().random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::selector::Selector;

    fn spec() -> EntrySpec {
        EntrySpec {
            spiffe_id: SpiffeId::parse("spiffe://example.org/web").unwrap(),
            parent_id: SpiffeId::parse("spiffe://example.org/keycard/agent/join_token/t").unwrap(),
            selectors: [Selector::parse("unix:uid:1000").unwrap()].into_iter().collect(),
            x509_ttl: None,
            jwt_ttl: None,
            dns_names: vec!["web.example.org".into(), "*.web.internal".into()],
            hint: String::new(),
            admin: false,
            jwt_svid_binding: JwtSvidBinding::None,
            federates_with: Vec::new(),
        }
    }

    /// The cap of the default 24 h CA.
    const CAP: Duration = Duration::from_secs(4 * 3600);

    #[test]
    fn a_good_spec_passes_and_each_rule_has_its_error() {
        let td = TrustDomain::new("example.org").unwrap();
        assert_eq!(spec().check(&td, CAP), Ok(()));
        let id = |s: &str| SpiffeId::parse(s).unwrap();
        type Check = fn(&EntryError) -> bool;
        let cases: Vec<(EntrySpec, Check)> = vec![
            (EntrySpec { selectors: SelectorSet::new(), ..spec() }, |e| {
                matches!(e, EntryError::NoSelectors)
            }),
            (EntrySpec { spiffe_id: id("spiffe://other.org/web"), ..spec() }, |e| {
                matches!(e, EntryError::ForeignSpiffeId { .. })
            }),
            (EntrySpec { parent_id: id("spiffe://other.org/a"), ..spec() }, |e| {
                matches!(e, EntryError::ForeignParentId { .. })
            }),
            (EntrySpec { spiffe_id: id("spiffe://example.org"), ..spec() }, |e| {
                matches!(e, EntryError::RootSpiffeId(_))
            }),
            (EntrySpec { spiffe_id: id("spiffe://example.org/keycard/server"), ..spec() }, |e| {
                matches!(e, EntryError::ReservedSpiffeId(_))
            }),
            (EntrySpec { parent_id: id("spiffe://example.org/web"), ..spec() }, |e| {
                matches!(e, EntryError::OwnParent(_))
            }),
            (EntrySpec { dns_names: vec!["bad name".into()], ..spec() }, |e| {
                matches!(e, EntryError::BadDnsName(_))
            }),
            (EntrySpec { hint: "h".repeat(1025), ..spec() }, |e| {
                matches!(e, EntryError::HintTooLong(1025))
            }),
            (EntrySpec { x509_ttl: Some(Duration::ZERO), ..spec() }, |e| {
                matches!(e, EntryError::ZeroTtl(_))
            }),
        ];
        for (spec, check) in cases {
            let err = spec.check(&td, CAP).unwrap_err();
            assert!(check(&err), "{err:?}");
        }
    }

    /// The admin API takes exactly the DNS names the CA signs: the CA's own check.
    #[test]
    fn dns_names_are_what_the_ca_signs() {
        let td = TrustDomain::new("example.org").unwrap();
        let with = |name: &str| EntrySpec { dns_names: vec![name.to_owned()], ..spec() };
        for good in ["a", "web.example.org", "*.example.org", "x-1.y2", "localhost"] {
            assert_eq!(with(good).check(&td, CAP), Ok(()), "{good}");
        }
        let long = format!("{}.org", "a.".repeat(130));
        let bad =
            ["", "*.", "a..b", "-a.b", "a b", "*", "a.*.b", "127.0.0.1", "999.999.999.999", "::1"];
        for bad in bad.iter().copied().chain([long.as_str(), &"a".repeat(64)]) {
            let err = with(bad).check(&td, CAP).unwrap_err();
            assert!(matches!(err, EntryError::BadDnsName(_)), "{bad:?}: {err:?}");
            assert!(crate::ca::template::dns_name(bad).is_err(), "the CA agrees on {bad:?}");
        }
    }

    #[test]
    fn selectors_that_can_never_match_are_refused() {
        let td = TrustDomain::new("example.org").unwrap();
        let with = |parent: &str, sel: &str| EntrySpec {
            parent_id: SpiffeId::parse(parent).unwrap(),
            selectors: [Selector::parse(sel).unwrap()].into_iter().collect(),
            ..spec()
        };
        let agent = "spiffe://example.org/node/dev";
        let server = "spiffe://example.org/keycard/server";
        for sel in ["unix:uid:abc", "unix:uid:-1", "unix:foo:1"] {
            let err = with(agent, sel).check(&td, CAP).unwrap_err();
            assert!(
                matches!(err, EntryError::Selector(SelectorError::NeverMatches { .. })),
                "{sel}: {err:?}"
            );
        }
        let err = with(agent, "bogus:uid:1").check(&td, CAP).unwrap_err();
        assert!(matches!(err, EntryError::Selector(SelectorError::UnknownType(_))), "{err:?}");
        let err = with(server, "unix:uid:1").check(&td, CAP).unwrap_err();
        assert!(matches!(err, EntryError::SelectorForOtherParent { .. }), "{err:?}");
        let err = with(agent, "x509pop:subject:cn:n1").check(&td, CAP).unwrap_err();
        assert!(matches!(err, EntryError::SelectorForOtherParent { .. }), "{err:?}");
        assert_eq!(with(server, "x509pop:subject:cn:n1").check(&td, CAP), Ok(()));
        assert_eq!(with(agent, "unix:uid:0").check(&td, CAP), Ok(()));
    }

    #[test]
    fn ttls_above_the_cas_cap_are_refused_naming_the_cap() {
        let td = TrustDomain::new("example.org").unwrap();
        let huge = Duration::from_secs(99_999_999 * 3600);
        for spec in [
            EntrySpec { x509_ttl: Some(huge), ..spec() },
            EntrySpec { jwt_ttl: Some(CAP + Duration::from_secs(1)), ..spec() },
        ] {
            let err = spec.check(&td, CAP).unwrap_err();
            assert!(matches!(err, EntryError::TtlAboveCap { cap: 14400, .. }), "{err:?}");
            assert!(err.to_string().contains("cap of 14400s (4h)"), "{err}");
        }
        assert_eq!(EntrySpec { x509_ttl: Some(CAP), ..spec() }.check(&td, CAP), Ok(()));
    }

    #[test]
    fn entry_ids_are_uuid_v4() {
        let id = new_entry_id();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert_ne!(id, new_entry_id());
    }
}
