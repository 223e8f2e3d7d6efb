//! `server_address`: one server (`"host:port"`) or several (`["a:8081", "b:8081"]`) in
//! the file, `--server-address` once or repeated on the command line. The agent talks to
//! one at a time and moves to the next when the current one stops answering
//! ([`crate::agent::client`]); the order is the order given.

use super::{ConfigError, invalid};

/// The key, in every message.
const KEY: &str = "server_address";

/// Where a list came from when not from the flag.
const FILE: &str = "the config file";

/// What a fix looks like, in every message about a bad item.
const EXAMPLE: &str = "such as \"127.0.0.1:8081\" or \"keycard.example:8081\"";

/// The checked list: the flags when any were given, else the file's value; `None` when
/// neither names a server (the caller reports the key as missing).
pub(super) fn server_addresses(
    flags: &[String],
    file: Option<toml::Value>,
) -> Result<Option<Vec<String>>, ConfigError> {
    if !flags.is_empty() {
        return checked_list(flags.iter().map(String::as_str), "--server-address").map(Some);
    }
    let items = match file {
        None => return Ok(None),
        Some(toml::Value::String(one)) => vec![one],
        Some(toml::Value::Array(many)) => {
            let mut items = Vec::with_capacity(many.len());
            for (i, item) in many.into_iter().enumerate() {
                match item {
                    toml::Value::String(s) => items.push(s),
                    other => {
                        return Err(invalid(
                            KEY,
                            format!(
                                "item {} is a {}, not a \"host:port\" string ({EXAMPLE})",
                                i + 1,
                                other.type_str()
                            ),
                        ));
                    }
                }
            }
            if items.is_empty() {
                return Err(invalid(
                    KEY,
                    format!(
                        "the list is empty; name at least one server as \"host:port\", {EXAMPLE}"
                    ),
                ));
            }
            items
        }
        Some(other) => {
            return Err(invalid(
                KEY,
                format!(
                    "a {} is neither a \"host:port\" string nor a list of them, such as \
                     [\"10.0.0.1:8081\", \"10.0.0.2:8081\"]",
                    other.type_str()
                ),
            ));
        }
    };
    checked_list(items.iter().map(String::as_str), FILE).map(Some)
}

/// Checks every item ([`server_address`]) and refuses one named twice; `from` says where
/// the list came from (the flag, or the file).
fn checked_list<'a>(
    items: impl ExactSizeIterator<Item = &'a str>,
    from: &str,
) -> Result<Vec<String>, ConfigError> {
    let count = items.len();
    let mut out: Vec<String> = Vec::with_capacity(count);
    for (i, item) in items.enumerate() {
        let at = match (count, from) {
            (1, FILE) => String::new(),
            (1, _) => format!("{from}: "),
            _ => format!("item {} of {count} ({from}): ", i + 1),
        };
        let address =
            server_address(item).map_err(|reason| invalid(KEY, format!("{at}{reason}")))?;
        if out.contains(&address) {
            return Err(invalid(
                KEY,
                format!("{at}{address:?} is listed twice; name each server once"),
            ));
        }
        out.push(address);
    }
    Ok(out)
}

/// Checks `host:port`: a non-empty host and a port number (1 to 65535); returns it
/// trimmed, or what is wrong with it.
fn server_address(value: &str) -> Result<String, String> {
    let value = value.trim();
    let bad = || format!("{value:?} is not host:port, {EXAMPLE}");
    let (host, port) = value.rsplit_once(':').ok_or_else(bad)?;
    if host.is_empty() || host.contains('/') || port.parse::<u16>().map_or(true, |p| p == 0) {
        return Err(bad());
    }
    Ok(value.to_owned())
}
