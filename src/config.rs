//! Helpers shared by the server and agent configurations.
//!
//! A daemon's configuration is a TOML file whose structure is a serde struct with
//! `#[serde(deny_unknown_fields)]`, holding raw values (mostly strings); command-line flags
//! override it, and the daemon's own module turns the merged raw values into a typed,
//! checked configuration with the helpers here. Every error names the key at fault, so an
//! operator can fix a typo without reading the source: [`ConfigError`].
//!
//! Durations are written the humantime way (`30s`, `5m`, `1h`, `1h 30m`, `7days`).

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::de::DeserializeOwned;

/// Why a configuration was refused. `config` is `"server"` or `"agent"`; `key` is the
/// dotted path of the key at fault (`datastore.path`).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The configuration file could not be read.
    #[error("cannot read {config} config file {}: {source}", path.display())]
    Read {
        /// Which daemon's configuration.
        config: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not TOML at all (a syntax error), or has a value TOML cannot place.
    #[error("{config} config file {}: {message}", path.display())]
    Syntax {
        /// Which daemon's configuration.
        config: &'static str,
        /// The file.
        path: PathBuf,
        /// The TOML parser's message, with line and column.
        message: String,
    },
    /// The file has a key this version of keycard does not know (often a typo).
    #[error("unknown key {key:?} in {config} config{}", did_you_mean(suggestion))]
    UnknownKey {
        /// Which daemon's configuration.
        config: &'static str,
        /// The unknown key.
        key: String,
        /// The closest known key, if one is close.
        suggestion: Option<String>,
    },
    /// A key is present but its value is wrong (bad type, bad duration, bad address, ...).
    #[error("invalid value for key {key:?} in {config} config: {reason}")]
    InvalidValue {
        /// Which daemon's configuration.
        config: &'static str,
        /// The key.
        key: String,
        /// What is wrong and, where possible, what is expected.
        reason: String,
    },
    /// A required key is missing from both the file and the flags.
    #[error("missing required key {key:?} in {config} config{}", or_flag(flag))]
    MissingKey {
        /// Which daemon's configuration.
        config: &'static str,
        /// The key.
        key: String,
        /// The command-line flag that can provide it instead, if there is one.
        flag: Option<String>,
    },
    /// Two keys have values that are fine alone but not together.
    #[error("keys {key:?} and {other:?} in {config} config conflict: {reason}")]
    Conflict {
        /// Which daemon's configuration.
        config: &'static str,
        /// The key to change, usually.
        key: String,
        /// The key it conflicts with.
        other: String,
        /// The rule that is broken.
        reason: String,
    },
}

fn or_flag(flag: &Option<String>) -> String {
    match flag {
        Some(f) => format!(" (or pass {f})"),
        None => String::new(),
    }
}

fn did_you_mean(suggestion: &Option<String>) -> String {
    match suggestion {
        Some(s) => format!(" (did you mean {s:?}?)"),
        None => String::new(),
    }
}

/// Reads and deserializes a TOML configuration file. `T` should deny unknown fields; an
/// unknown key becomes [`ConfigError::UnknownKey`] (with the nearest known key as a
/// suggestion), a value of the wrong type becomes [`ConfigError::InvalidValue`].
pub fn load_toml<T: DeserializeOwned>(config: &'static str, path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        config,
        path: path.to_path_buf(),
        source,
    })?;
    parse_toml(config, path, &text)
}

/// Like [`load_toml`] on text already read; `path` is used in messages only.
pub fn parse_toml<T: DeserializeOwned>(
    config: &'static str,
    path: &Path,
    text: &str,
) -> Result<T, ConfigError> {
    // Parse once without a schema so that syntax errors are told apart from bad keys.
    if let Err(e) = text.parse::<toml::Table>() {
        return Err(ConfigError::Syntax {
            config,
            path: path.to_path_buf(),
            message: e.to_string(),
        });
    }
    toml::from_str(text).map_err(|e| classify(config, path, text, &e))
}

/// Turns a TOML error into the variant that names the key, when the key can be found.
fn classify(config: &'static str, path: &Path, text: &str, e: &toml::de::Error) -> ConfigError {
    let message = e.message().trim().to_string();
    let syntax =
        || ConfigError::Syntax { config, path: path.to_path_buf(), message: e.to_string() };
    let Some(span) = e.span() else { return syntax() };
    if let Some(rest) = message.strip_prefix("unknown field ") {
        // serde's wording: unknown field `k`, expected one of `a`, `b` (or `a` or `b`).
        let mut quoted = rest.split('`').skip(1).step_by(2);
        let Some(unknown) = quoted.next() else { return syntax() };
        let candidates: Vec<&str> = quoted.collect();
        let key = dotted(section_at(text, span.start), unknown);
        let suggestion =
            suggest(unknown, &candidates).map(|s| dotted(section_at(text, span.start), s));
        return ConfigError::UnknownKey { config, key, suggestion };
    }
    match key_at(text, span.start) {
        Some(key) => ConfigError::InvalidValue { config, key, reason: message },
        None => syntax(),
    }
}

/// The nearest of `candidates` to `unknown`, if it is near enough to be a typo.
pub fn suggest<'a>(unknown: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (strsim::jaro_winkler(unknown, c), *c))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

fn dotted(section: Option<String>, key: &str) -> String {
    match section {
        Some(s) => format!("{s}.{key}"),
        None => key.to_string(),
    }
}

/// The `[table]` header in force on the line that holds byte `offset`, if any (a key in a
/// header line itself is a top-level key).
fn section_at(text: &str, offset: usize) -> Option<String> {
    let before = text.get(..offset)?;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    before[..line_start].lines().rev().find_map(|line| {
        let line = line.trim();
        let inner = line.strip_prefix('[')?.split(']').next()?;
        Some(inner.trim().trim_matches('[').trim().to_string()).filter(|s| !s.is_empty())
    })
}

/// The dotted key whose line holds byte `offset` (`key = value`), or the table whose
/// header it is.
fn key_at(text: &str, offset: usize) -> Option<String> {
    let start = text.get(..offset)?.rfind('\n').map_or(0, |i| i + 1);
    let line = text[start..].lines().next()?.trim();
    if let Some(header) = line.strip_prefix('[') {
        let name = header.trim_start_matches('[').split(']').next()?.trim();
        return Some(name.to_string()).filter(|n| !n.is_empty());
    }
    let (key, _) = line.split_once('=')?;
    let key = key.trim().trim_matches('"');
    Some(dotted(section_at(text, start), key))
}

/// Parses a humantime duration (`30s`, `1h 30m`) for `key`.
pub fn parse_duration(
    config: &'static str,
    key: &str,
    value: &str,
) -> Result<Duration, ConfigError> {
    humantime::parse_duration(value.trim()).map_err(|e| ConfigError::InvalidValue {
        config,
        key: key.to_string(),
        reason: format!(
            "{value:?} is not a duration ({e}); write it like \"30s\", \"5m\" or \"1h\""
        ),
    })
}

/// Like [`parse_duration`], and refuses zero.
pub fn parse_positive_duration(
    config: &'static str,
    key: &str,
    value: &str,
) -> Result<Duration, ConfigError> {
    let d = parse_duration(config, key, value)?;
    if d.is_zero() {
        return Err(ConfigError::InvalidValue {
            config,
            key: key.to_string(),
            reason: "must be longer than zero".into(),
        });
    }
    Ok(d)
}

/// Parses an `ip:port` socket address for `key` (port 0 is allowed: the OS picks one).
pub fn parse_socket_addr(
    config: &'static str,
    key: &str,
    value: &str,
) -> Result<SocketAddr, ConfigError> {
    value.trim().parse().map_err(|_| ConfigError::InvalidValue {
        config,
        key: key.to_string(),
        reason: format!("{value:?} is not an ip:port address such as \"127.0.0.1:8081\""),
    })
}

/// Parses `value` with `T`'s [`FromStr`], the error's message becoming the reason.
pub fn parse_value<T>(config: &'static str, key: &str, value: &str) -> Result<T, ConfigError>
where
    T: FromStr,
    T::Err: fmt::Display,
{
    value.parse().map_err(|e: T::Err| ConfigError::InvalidValue {
        config,
        key: key.to_string(),
        reason: format!("{value:?}: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Sample {
        name: Option<String>,
        count: Option<u32>,
        inner: Option<Inner>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        path: Option<String>,
    }

    fn parse(text: &str) -> Result<Sample, ConfigError> {
        parse_toml("test", Path::new("t.toml"), text)
    }

    #[test]
    fn unknown_keys_are_named_with_a_suggestion() {
        let e = parse("nmae = \"x\"\n").unwrap_err();
        assert_eq!(e.to_string(), r#"unknown key "nmae" in test config (did you mean "name"?)"#);
        let e = parse("name = \"x\"\n[inner]\npth = \"p\"\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            r#"unknown key "inner.pth" in test config (did you mean "inner.path"?)"#
        );
        let e = parse("zzzzzz = 1\n").unwrap_err();
        assert!(
            matches!(e, ConfigError::UnknownKey { ref key, suggestion: None, .. } if key == "zzzzzz")
        );
    }

    #[test]
    fn wrong_types_name_the_key() {
        let e = parse("name = \"x\"\ncount = \"three\"\n").unwrap_err();
        assert!(matches!(e, ConfigError::InvalidValue { ref key, .. } if key == "count"), "{e}");
        let e = parse("[inner]\npath = 5\n").unwrap_err();
        assert!(
            matches!(e, ConfigError::InvalidValue { ref key, .. } if key == "inner.path"),
            "{e}"
        );
    }

    #[test]
    fn syntax_errors_keep_the_parser_message() {
        let e = parse("name = \n").unwrap_err();
        assert!(matches!(e, ConfigError::Syntax { .. }), "{e:?}");
        assert!(e.to_string().contains("t.toml"));
    }

    #[test]
    fn missing_file_is_a_read_error() {
        let e = load_toml::<Sample>("test", Path::new("/nonexistent/keycard.toml")).unwrap_err();
        assert!(matches!(e, ConfigError::Read { .. }));
    }

    #[test]
    fn durations_and_addresses() {
        assert_eq!(parse_duration("t", "k", "1h 30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("t", "k", "0s").unwrap(), Duration::ZERO);
        let e = parse_positive_duration("t", "ca_ttl", "0s").unwrap_err();
        assert!(e.to_string().contains("\"ca_ttl\""));
        let e = parse_duration("t", "ca_ttl", "one day").unwrap_err();
        assert!(e.to_string().contains("\"ca_ttl\""), "{e}");
        assert_eq!(parse_socket_addr("t", "k", "127.0.0.1:0").unwrap().port(), 0);
        let e = parse_socket_addr("t", "bind_address", "localhost:80").unwrap_err();
        assert!(e.to_string().contains("\"bind_address\""));
        let n: u8 = parse_value("t", "k", "7").unwrap();
        assert_eq!(n, 7);
        assert!(parse_value::<u8>("t", "k", "300").is_err());
    }
}
