//! Selectors: the properties an attestor discovers about a node or a workload.
//!
//! A selector is written `type:value`, for example `unix:uid:1000` (type `unix`, value
//! `uid:1000`) or `x509pop:subject:cn:node1`. Registration entries list the selectors a
//! caller must have; an entry matches a caller when the entry's selectors are a subset of the
//! caller's. Both the server (entries, node selectors) and the agent (workload attestation)
//! use this one type, so a selector that parses in one place parses everywhere.

use std::collections::BTreeSet;
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
}

/// One selector, `type:value`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Selector {
    kind: String,
    value: String,
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
        Ok(Self { kind: kind.to_owned(), value: value.to_owned() })
    }

    /// Parses `type:value`; the value may itself contain `:`.
    pub fn parse(input: &str) -> Result<Self, SelectorError> {
        let (kind, value) =
            input.split_once(':').ok_or_else(|| SelectorError::MissingType(input.to_owned()))?;
        Self::new(kind, value)
    }

    /// The attestor type, such as `unix`.
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// The value, such as `uid:1000`.
    pub fn value(&self) -> &str {
        &self.value
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind, self.value)
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

/// A set of selectors, sorted and without duplicates.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct SelectorSet(BTreeSet<Selector>);

impl SelectorSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a selector; returns false when it was already there.
    pub fn insert(&mut self, selector: Selector) -> bool {
        self.0.insert(selector)
    }

    /// Whether every selector of `self` is also in `other`: the entry-matching rule.
    pub fn is_subset_of(&self, other: &SelectorSet) -> bool {
        self.0.is_subset(&other.0)
    }

    /// The selectors of `self` missing from `other` (why an entry does not match).
    pub fn missing_from<'a>(
        &'a self,
        other: &'a SelectorSet,
    ) -> impl Iterator<Item = &'a Selector> {
        self.0.difference(&other.0)
    }

    /// Whether the set holds `selector`.
    pub fn contains(&self, selector: &Selector) -> bool {
        self.0.contains(selector)
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
        Self(iter.into_iter().collect())
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
