//! Selectors: the properties an attestor discovers about a node or a workload.
//!
//! A selector is written `type:value`, for example `unix:uid:1000` (type `unix`, value
//! `uid:1000`) or `x509pop:subject:cn:node1`. Registration entries list the selectors a
//! caller must have; an entry matches a caller when the entry's selectors are a subset of the
//! caller's. Both the server (entries, node selectors) and the agent (workload attestation)
//! use this one type, so a selector that parses in one place parses everywhere.

use std::fmt;
use std::str::FromStr;

/// Longest selector type accepted.
pub const MAX_SELECTOR_TYPE_LEN: usize = 64;
/// Longest selector value accepted.
pub const MAX_SELECTOR_VALUE_LEN: usize = 1024;

/// Why a string is not a selector.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    /// No `:` between type and value.
    #[error("selector {0:?} is not of the form type:value, for example unix:uid:1000")]
    MissingType(String),
    /// Nothing before the first `:`.
    #[error("selector {0:?} has an empty type: write it as type:value, for example unix:uid:1000")]
    EmptyType(String),
    /// Nothing after the first `:`.
    #[error("selector {0:?} has an empty value: write it as type:value, for example unix:uid:1000")]
    EmptyValue(String),
    /// The type has characters outside `[a-z0-9_-]`.
    #[error("selector type {0:?} may only contain a-z, 0-9, '_' and '-'")]
    BadType(String),
    /// The type or value is too long.
    #[error("selector {0:?} is too long (type at most 64 bytes, value at most 1024)")]
    TooLong(String),
    /// The value has a control character or whitespace at either end.
    #[error("selector value {0:?} has a control character or leading/trailing whitespace")]
    BadValue(String),
    /// A registration names a selector type no attestor of keycard produces.
    #[error(
        "selector type {0:?} is not one keycard's attestors produce, so an entry with it could \
         never match; keycard has no attestor plugins, so the types are: unix (workloads), \
         join_token and x509pop (nodes)"
    )]
    UnknownType(String),
    /// A selector of a known type whose value its attestor never produces.
    #[error("selector {selector:?} can never match: {expected}")]
    NeverMatches {
        /// The selector as given.
        selector: String,
        /// What the attestor produces for this type, for example "uid:<decimal number>".
        expected: &'static str,
    },
}

/// One selector, `type:value`. Kept as its text in one allocation (an agent holds one per
/// entry and selector); ordered by type, then value.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Selector {
    /// `type:value`; the type never holds a `:`, so the first one splits them.
    text: Box<str>,
    /// Length of the type.
    kind_len: usize,
}

impl Ord for Selector {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.kind(), self.value()).cmp(&(other.kind(), other.value()))
    }
}

impl PartialOrd for Selector {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Selector {
    /// Builds a selector from its two parts, with the same rules as parsing.
    pub fn new(kind: &str, value: &str) -> Result<Self, SelectorError> {
        let shown = || format!("{kind}:{value}");
        if kind.is_empty() {
            return Err(SelectorError::EmptyType(shown()));
        }
        if value.is_empty() {
            return Err(SelectorError::EmptyValue(shown()));
        }
        if kind.len() > MAX_SELECTOR_TYPE_LEN || value.len() > MAX_SELECTOR_VALUE_LEN {
            return Err(SelectorError::TooLong(shown()));
        }
        if !kind.bytes().all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-')) {
            return Err(SelectorError::BadType(kind.to_owned()));
        }
        if value.chars().any(char::is_control) || value.trim() != value {
            return Err(SelectorError::BadValue(value.to_owned()));
        }
        Ok(Self { text: format!("{kind}:{value}").into(), kind_len: kind.len() })
    }

    /// Parses `type:value`; the value may itself contain `:`.
    pub fn parse(input: &str) -> Result<Self, SelectorError> {
        let (kind, value) =
            input.split_once(':').ok_or_else(|| SelectorError::MissingType(input.to_owned()))?;
        Self::new(kind, value)
    }

    /// The attestor type, such as `unix`.
    pub fn kind(&self) -> &str {
        &self.text[..self.kind_len]
    }

    /// The value, such as `uid:1000`.
    pub fn value(&self) -> &str {
        &self.text[self.kind_len + 1..]
    }

    /// Whether the selector is a node selector (made by a node attestor, matched by
    /// node-alias entries) rather than a workload one.
    pub fn is_node_type(&self) -> bool {
        NODE_TYPES.contains(&self.kind())
    }

    /// Checks that some attestor of keycard can produce this selector, so that an entry
    /// holding it can ever match. Registration uses this; parsing does not, so selectors
    /// stored by an older version still load.
    pub fn check_known(&self) -> Result<(), SelectorError> {
        let expected = match self.kind() {
            "unix" => unix_rule(self.value()),
            "join_token" => (is_lower_hex(self.value(), JOIN_TOKEN_ID_LEN)).then_some(()).ok_or(
                "a join_token selector is the token ID: 16 lowercase hex digits, as \
                     `keycard token generate` prints it",
            ),
            "x509pop" => x509pop_rule(self.value()),
            _ => return Err(SelectorError::UnknownType(self.kind().to_owned())),
        };
        expected.map_err(|expected| SelectorError::NeverMatches {
            selector: self.to_string(),
            expected,
        })
    }
}

/// Selector types made by node attestors.
pub const NODE_TYPES: &[&str] = &["join_token", "x509pop"];
/// Selector types made by workload attestors.
pub const WORKLOAD_TYPES: &[&str] = &["unix"];
/// Length of a join token ID (hex digits).
const JOIN_TOKEN_ID_LEN: usize = 16;

/// What the unix attestor (`agent::attest::unix`) emits, one rule per key.
fn unix_rule(value: &str) -> Result<(), &'static str> {
    let (key, rest) = value.split_once(':').unwrap_or((value, ""));
    match key {
        "uid" | "gid" | "supplementary_gid" => is_decimal_u32(rest).then_some(()).ok_or(
            "unix uid, gid and supplementary_gid values are decimal numbers from 0 to \
             4294967295 without sign or leading zeros, for example unix:uid:1000",
        ),
        "user" | "group" | "supplementary_group" => {
            (!rest.is_empty() && !rest.contains(':') && !rest.contains(char::is_whitespace))
                .then_some(())
                .ok_or("unix user and group names are non-empty, without ':' or spaces")
        }
        "path" => rest.starts_with('/').then_some(()).ok_or(
            "unix:path is the executable's absolute path, for example unix:path:/usr/bin/app",
        ),
        "sha256" => is_lower_hex(rest, 64)
            .then_some(())
            .ok_or("unix:sha256 is 64 lowercase hex digits (sha256sum of the executable)"),
        _ => Err("the unix attestor emits uid, gid, user, group, supplementary_gid, \
                  supplementary_group, path and sha256, for example unix:uid:1000"),
    }
}

/// What the x509pop node attestor emits.
fn x509pop_rule(value: &str) -> Result<(), &'static str> {
    if let Some(fp) = value.strip_prefix("ca:fingerprint:") {
        return is_lower_hex(fp, 40).then_some(()).ok_or(
            "x509pop:ca:fingerprint is the SHA-1 of a CA certificate: 40 lowercase hex digits",
        );
    }
    for prefix in ["subject:cn:", "san:dns:"] {
        if let Some(rest) = value.strip_prefix(prefix) {
            return (!rest.is_empty()).then_some(()).ok_or("the x509pop value is empty");
        }
    }
    Err("the x509pop attestor emits ca:fingerprint:<sha1>, subject:cn:<name> and san:dns:<name>")
}

/// A canonical decimal `u32`: digits only, no sign, no leading zero (the attestor prints
/// numbers that way, so `007` would never match).
fn is_decimal_u32(text: &str) -> bool {
    !text.is_empty()
        && text.bytes().all(|b| b.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'))
        && text.parse::<u32>().is_ok()
}

fn is_lower_hex(text: &str, len: usize) -> bool {
    text.len() == len && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Selector({self})")
    }
}

impl FromStr for Selector {
    type Err = SelectorError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl serde::Serialize for Selector {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Selector {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// A set of selectors, sorted and without duplicates. Kept as a sorted vector of exactly
/// its length: an entry usually names one to three selectors, and the agent holds one set
/// per entry (a `BTreeSet` allocates a node for eleven at the first insert, about 550 bytes
/// per entry for one selector).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct SelectorSet(Vec<Selector>);

impl SelectorSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a selector; returns false when it was already there.
    pub fn insert(&mut self, selector: Selector) -> bool {
        match self.0.binary_search(&selector) {
            Ok(_) => false,
            Err(at) => {
                self.0.insert(at, selector);
                true
            }
        }
    }

    /// Whether every selector of `self` is also in `other`: the entry-matching rule.
    pub fn is_subset_of(&self, other: &SelectorSet) -> bool {
        self.0.len() <= other.0.len() && self.0.iter().all(|s| other.contains(s))
    }

    /// The selectors of `self` missing from `other` (why an entry does not match).
    pub fn missing_from<'a>(
        &'a self,
        other: &'a SelectorSet,
    ) -> impl Iterator<Item = &'a Selector> {
        self.0.iter().filter(|s| !other.contains(s))
    }

    /// Whether the set holds `selector`.
    pub fn contains(&self, selector: &Selector) -> bool {
        self.0.binary_search(selector).is_ok()
    }

    /// The selectors in order.
    pub fn iter(&self) -> impl Iterator<Item = &Selector> {
        self.0.iter()
    }

    /// How many selectors.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromIterator<Selector> for SelectorSet {
    fn from_iter<I: IntoIterator<Item = Selector>>(iter: I) -> Self {
        let mut selectors: Vec<Selector> = iter.into_iter().collect();
        selectors.sort_unstable();
        selectors.dedup();
        selectors.shrink_to_fit();
        Self(selectors)
    }
}

impl<'de> serde::Deserialize<'de> for SelectorSet {
    /// Any sequence of selectors, put in order without duplicates.
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(Vec::<Selector>::deserialize(deserializer)?.into_iter().collect())
    }
}

impl fmt::Display for SelectorSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(Selector::to_string).collect();
        f.write_str(&parts.join(" "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(items: &[&str]) -> SelectorSet {
        items.iter().map(|s| Selector::parse(s).unwrap()).collect()
    }

    #[test]
    fn a_set_is_sorted_and_unique_however_it_is_built() {
        let want = set(&["unix:gid:5", "unix:uid:1"]);
        let parsed: SelectorSet =
            serde_json::from_str(r#"["unix:uid:1","unix:gid:5","unix:uid:1"]"#).unwrap();
        assert_eq!(parsed, want);
        let mut built = SelectorSet::new();
        assert!(built.insert(Selector::parse("unix:uid:1").unwrap()));
        assert!(built.insert(Selector::parse("unix:gid:5").unwrap()));
        assert!(!built.insert(Selector::parse("unix:uid:1").unwrap()));
        assert_eq!(built, want);
        assert_eq!(serde_json::to_string(&built).unwrap(), r#"["unix:gid:5","unix:uid:1"]"#);
        let caller = set(&["unix:uid:1", "unix:gid:5", "unix:user:a"]);
        assert!(want.is_subset_of(&caller) && !caller.is_subset_of(&want));
        let missing: Vec<String> = caller.missing_from(&want).map(|s| s.to_string()).collect();
        assert_eq!(missing, ["unix:user:a"]);
    }

    #[test]
    fn parses_type_and_value_with_colons_in_the_value() {
        let s = Selector::parse("unix:uid:1000").unwrap();
        assert_eq!((s.kind(), s.value()), ("unix", "uid:1000"));
        assert_eq!(s.to_string(), "unix:uid:1000");
        let s = Selector::parse("x509pop:subject:cn:node1").unwrap();
        assert_eq!(s.value(), "subject:cn:node1");
    }

    #[test]
    fn each_rule_has_its_error() {
        use SelectorError as E;
        type Check = fn(&SelectorError) -> bool;
        let cases: &[(&str, Check)] = &[
            ("unix", |e| matches!(e, E::MissingType(_))),
            (":uid:1", |e| matches!(e, E::EmptyType(_))),
            ("unix:", |e| matches!(e, E::EmptyValue(_))),
            ("Unix:uid:1", |e| matches!(e, E::BadType(_))),
            ("un ix:uid:1", |e| matches!(e, E::BadType(_))),
            ("unix:uid:1\n", |e| matches!(e, E::BadValue(_))),
            ("unix: uid:1", |e| matches!(e, E::BadValue(_))),
        ];
        for (input, check) in cases {
            let err = Selector::parse(input).unwrap_err();
            assert!(check(&err), "{input:?} gave {err:?}");
            assert!(!err.to_string().is_empty());
        }
        let long = format!("unix:{}", "a".repeat(1025));
        assert!(matches!(Selector::parse(&long), Err(E::TooLong(_))));
    }

    #[test]
    fn registrations_may_only_hold_selectors_an_attestor_produces() {
        let good = [
            "unix:uid:0",
            "unix:uid:1000",
            "unix:gid:4294967295",
            "unix:user:alice",
            "unix:group:www-data",
            "unix:supplementary_gid:27",
            "unix:supplementary_group:docker",
            "unix:path:/usr/bin/app",
            "join_token:0123456789abcdef",
            "x509pop:subject:cn:node1",
            "x509pop:san:dns:node1.example.org",
        ];
        for text in good {
            assert_eq!(Selector::parse(text).unwrap().check_known(), Ok(()), "{text}");
        }
        let sha = format!("unix:sha256:{}", "ab".repeat(32));
        assert_eq!(Selector::parse(&sha).unwrap().check_known(), Ok(()));
        let fp = format!("x509pop:ca:fingerprint:{}", "0f".repeat(20));
        assert_eq!(Selector::parse(&fp).unwrap().check_known(), Ok(()));
        let never = [
            "unix:uid:abc",
            "unix:uid:-1",
            "unix:uid:+1",
            "unix:uid:007",
            "unix:uid:4294967296",
            "unix:gid:",
            "unix:foo:1",
            "unix:user:a b",
            "unix:path:relative/app",
            "unix:sha256:ABCD",
            "join_token:xyz",
            "x509pop:ca:fingerprint:zz",
            "x509pop:serial:1",
        ];
        for text in never {
            let err = Selector::parse(text).unwrap().check_known().unwrap_err();
            assert!(matches!(err, SelectorError::NeverMatches { .. }), "{text}: {err:?}");
        }
        let err = Selector::parse("bogus:uid:1").unwrap().check_known().unwrap_err();
        assert_eq!(err, SelectorError::UnknownType("bogus".into()));
        assert!(err.to_string().contains("no attestor plugins"), "{err}");
        assert!(Selector::parse("x509pop:subject:cn:n").unwrap().is_node_type());
        assert!(!Selector::parse("unix:uid:1").unwrap().is_node_type());
    }

    #[test]
    fn entries_match_when_their_selectors_are_a_subset() {
        let workload = set(&["unix:uid:1000", "unix:gid:1000", "unix:user:alice"]);
        assert!(set(&["unix:uid:1000"]).is_subset_of(&workload));
        assert!(set(&["unix:uid:1000", "unix:gid:1000"]).is_subset_of(&workload));
        let entry = set(&["unix:uid:1000", "unix:gid:0"]);
        assert!(!entry.is_subset_of(&workload));
        let missing: Vec<String> = entry.missing_from(&workload).map(|s| s.to_string()).collect();
        assert_eq!(missing, vec!["unix:gid:0"]);
    }

    #[test]
    fn serde_uses_the_text_form() {
        let s = set(&["unix:uid:1", "unix:gid:2"]);
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(json, r#"["unix:gid:2","unix:uid:1"]"#);
        assert_eq!(serde_json::from_str::<SelectorSet>(&json).unwrap(), s);
        assert!(serde_json::from_str::<Selector>(r#""nope""#).is_err());
    }
}
