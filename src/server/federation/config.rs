//! The `[bundle_endpoint]` table of the server's config file: where the bundle endpoint
//! listens and how it authenticates itself.
//!
//! ```toml
//! [bundle_endpoint]
//! address = "127.0.0.1:8443"   # default
//! profile = "https_spiffe"     # default: the server's own X509-SVID
//! # profile = "https_web"      # a Web PKI certificate, then:
//! # cert_file = "/etc/keycard/bundle-endpoint.pem"
//! # key_file = "/etc/keycard/bundle-endpoint-key.pem"
//! refresh_hint = "5m"          # the bundle's spiffe_refresh_hint (same as bundle_refresh_hint)
//! ```
//!
//! The table's presence turns the endpoint on. Checks here are of form only; the
//! certificate and key files are read when the server starts.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::config::{ConfigError, parse_positive_duration, parse_socket_addr};

/// The address the endpoint listens on when the table names none.
pub const DEFAULT_ENDPOINT_ADDRESS: &str = "127.0.0.1:8443";

/// The table as written in the file: every key optional, so that each is checked with
/// an error naming it. `deny_unknown_fields` turns typos into errors.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileBundleEndpoint {
    address: Option<String>,
    profile: Option<String>,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    refresh_hint: Option<String>,
}

/// How the endpoint authenticates itself to the clients that fetch the bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServingProfile {
    /// `https_spiffe`: the server's own X509-SVID (`spiffe://<td>/keycard/server`), which
    /// clients verify against the bundle they hold for this trust domain.
    HttpsSpiffe,
    /// `https_web`: a certificate for the endpoint's host name, from a Web PKI CA.
    HttpsWeb {
        /// PEM certificate chain, leaf first.
        cert_file: PathBuf,
        /// PEM private key of the leaf (PKCS#8, SEC1 or PKCS#1).
        key_file: PathBuf,
    },
}

impl ServingProfile {
    /// The profile's name as the SPIFFE Federation standard spells it.
    pub fn name(&self) -> &'static str {
        match self {
            Self::HttpsSpiffe => "https_spiffe",
            Self::HttpsWeb { .. } => "https_web",
        }
    }
}

/// The checked `[bundle_endpoint]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleEndpointConfig {
    /// `ip:port` to listen on (port 0: the OS picks one, which is logged).
    pub address: SocketAddr,
    /// How the endpoint authenticates itself.
    pub profile: ServingProfile,
}

impl BundleEndpointConfig {
    /// Checks the table of config `config` (the name used in error messages). Returns the
    /// endpoint's settings and the `refresh_hint` it asks for, if any (the caller
    /// publishes it with the bundle, since the CA writes the bundle).
    ///
    /// `top_level_hint`: whether the file also sets `bundle_refresh_hint` (only one of
    /// the two may be set). `taken`: other listeners' keys and addresses, which the
    /// endpoint's address must differ from.
    pub fn from_file(
        config: &'static str,
        file: FileBundleEndpoint,
        top_level_hint: bool,
        taken: &[(&str, Option<SocketAddr>)],
    ) -> Result<(Self, Option<Duration>), ConfigError> {
        let conflict = |key: &str, other: &str, reason: &str| ConfigError::Conflict {
            config,
            key: format!("bundle_endpoint.{key}"),
            other: other.into(),
            reason: reason.into(),
        };
        let invalid = |key: &str, reason: String| ConfigError::InvalidValue {
            config,
            key: format!("bundle_endpoint.{key}"),
            reason,
        };
        let address = parse_socket_addr(
            config,
            "bundle_endpoint.address",
            file.address.as_deref().unwrap_or(DEFAULT_ENDPOINT_ADDRESS),
        )?;
        for (other, taken) in taken {
            if *taken == Some(address) && address.port() != 0 {
                return Err(conflict("address", other, "both name the same address"));
            }
        }
        let refresh_hint = file
            .refresh_hint
            .as_ref()
            .map(|v| parse_positive_duration(config, "bundle_endpoint.refresh_hint", v))
            .transpose()?;
        if refresh_hint.is_some() && top_level_hint {
            return Err(conflict(
                "refresh_hint",
                "bundle_refresh_hint",
                "both set the bundle's spiffe_refresh_hint; keep one",
            ));
        }
        let profile = match file.profile.as_deref().unwrap_or("https_spiffe") {
            "https_spiffe" => {
                for (key, set) in
                    [("cert_file", file.cert_file.is_some()), ("key_file", file.key_file.is_some())]
                {
                    if set {
                        return Err(conflict(
                            key,
                            "bundle_endpoint.profile",
                            "certificate files are for profile = \"https_web\"; https_spiffe \
                             presents the server's own SVID (remove the file or set the profile)",
                        ));
                    }
                }
                ServingProfile::HttpsSpiffe
            }
            "https_web" => {
                let need = |key: &str, value: Option<PathBuf>| match value {
                    Some(p) if !p.as_os_str().is_empty() => Ok(p),
                    Some(_) => Err(invalid(key, "must not be empty".into())),
                    None => Err(invalid(
                        key,
                        "is required with profile = \"https_web\": the PEM file of the \
                         endpoint's Web PKI certificate (cert_file) and of its key (key_file)"
                            .into(),
                    )),
                };
                ServingProfile::HttpsWeb {
                    cert_file: need("cert_file", file.cert_file)?,
                    key_file: need("key_file", file.key_file)?,
                }
            }
            other => {
                return Err(invalid(
                    "profile",
                    format!("{other:?} is not a profile; use \"https_spiffe\" or \"https_web\""),
                ));
            }
        };
        Ok((Self { address, profile }, refresh_hint))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> Result<(BundleEndpointConfig, Option<Duration>), String> {
        let file: FileBundleEndpoint = toml::from_str(text).map_err(|e| e.to_string())?;
        BundleEndpointConfig::from_file("server", file, false, &[]).map_err(|e| e.to_string())
    }

    #[test]
    fn an_empty_table_is_https_spiffe_on_the_default_address() {
        let (c, hint) = check("").unwrap();
        assert_eq!(c.address, DEFAULT_ENDPOINT_ADDRESS.parse().unwrap());
        assert_eq!(c.profile, ServingProfile::HttpsSpiffe);
        assert_eq!(hint, None);
    }

    #[test]
    fn https_web_needs_both_files() {
        let (c, hint) = check(
            "profile = \"https_web\"\ncert_file = \"c.pem\"\nkey_file = \"k.pem\"\n\
             refresh_hint = \"90s\"\naddress = \"0.0.0.0:0\"",
        )
        .unwrap();
        assert_eq!(
            c.profile,
            ServingProfile::HttpsWeb { cert_file: "c.pem".into(), key_file: "k.pem".into() }
        );
        assert_eq!(c.profile.name(), "https_web");
        assert_eq!(hint, Some(Duration::from_secs(90)));
        let e = check("profile = \"https_web\"\ncert_file = \"c.pem\"").unwrap_err();
        assert!(e.contains("bundle_endpoint.key_file") && e.contains("required"), "{e}");
    }

    #[test]
    fn the_address_and_the_hint_must_not_clash_with_other_keys() {
        let file = || {
            toml::from_str::<FileBundleEndpoint>("address = \"127.0.0.1:9\"\nrefresh_hint = \"1m\"")
                .unwrap()
        };
        let taken = [("health_address", Some("127.0.0.1:9".parse().unwrap()))];
        let e = BundleEndpointConfig::from_file("server", file(), false, &taken).unwrap_err();
        assert!(e.to_string().contains("\"health_address\""), "{e}");
        let e = BundleEndpointConfig::from_file("server", file(), true, &[]).unwrap_err();
        assert!(e.to_string().contains("\"bundle_refresh_hint\""), "{e}");
    }

    #[test]
    fn bad_values_name_the_key_and_the_fix() {
        for (text, needles) in [
            ("profile = \"https\"", &["bundle_endpoint.profile", "https_spiffe", "https_web"][..]),
            ("address = \"localhost\"", &["bundle_endpoint.address", "ip:port"]),
            ("refresh_hint = \"soon\"", &["bundle_endpoint.refresh_hint", "5m"]),
            ("refresh_hint = \"0s\"", &["bundle_endpoint.refresh_hint", "longer than zero"]),
            ("cert_file = \"c.pem\"", &["bundle_endpoint.cert_file", "https_web"]),
            ("adress = \"127.0.0.1:1\"", &["adress"]),
        ] {
            let e = check(text).unwrap_err();
            for n in needles {
                assert!(e.contains(n), "{text}: {e:?} lacks {n:?}");
            }
        }
    }
}
