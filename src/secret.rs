//! [`Secret`]: a string that never shows itself in `Debug` output. Join tokens given on
//! the command line or in a config file, and tokens given to `keycard api validate`, are
//! held as one, so that printing the arguments or a raw config with `{:?}` (a log line, a
//! failing assertion) gives nothing away. The value is reached only through
//! [`Secret::expose`], which makes every use of it easy to find.

use std::convert::Infallible;
use std::fmt;
use std::str::FromStr;

/// A secret string: `Debug` prints `Secret(<redacted>)`; deserializes from a plain string.
#[derive(Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// The secret itself: pass it on, never log or print it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Self(value.to_owned())
    }
}

/// For clap: any text is accepted (the caller checks it).
impl FromStr for Secret {
    type Err = Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    struct File {
        #[allow(dead_code)]
        token: Option<Secret>,
    }

    #[test]
    fn debug_never_shows_the_value_but_expose_does() {
        let secret: Secret = "s3cr3t".parse().unwrap();
        assert_eq!(secret.expose(), "s3cr3t");
        for debug in [format!("{secret:?}"), format!("{:#?}", Some(&secret))] {
            assert!(!debug.contains("s3cr3t") && debug.contains("<redacted>"), "{debug}");
        }
        let file: File = toml::from_str("token = \"s3cr3t\"").unwrap();
        assert_eq!(file.token.as_ref().map(Secret::expose), Some("s3cr3t"));
        assert!(!format!("{file:?}").contains("s3cr3t"));
    }
}
