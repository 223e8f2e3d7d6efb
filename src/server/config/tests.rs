use clap::Parser;

use super::*;

#[derive(Debug, Parser)]
struct Cli {
    #[command(flatten)]
    args: ServerArgs,
}

fn args(flags: &[&str]) -> ServerArgs {
    let mut argv = vec!["keycard"];
    argv.extend_from_slice(flags);
    Cli::try_parse_from(argv).unwrap().args
}

fn from(text: &str) -> Result<ServerConfig, ConfigError> {
    ServerConfig::from_toml(&ServerArgs::default(), Path::new("server.toml"), text)
}

fn err(text: &str) -> String {
    from(text).unwrap_err().to_string()
}

const FULL: &str = r#"
trust_domain = "example.org"
bind_address = "0.0.0.0:9000"
data_dir = "/var/lib/keycard"
admin_socket = "/run/keycard/admin.sock"
ca_key_type = "ec-p384"
ca_ttl = "48h"
default_x509_svid_ttl = "2h"
default_jwt_svid_ttl = "10m"
agent_svid_ttl = "3h"
jwt_key_type = "ec-p384"
backdate = "1m"
bundle_refresh_hint = "10m"
svids_per_second_per_agent = 2000
x509pop_ca_bundle = "/etc/keycard/node-ca.pem"
health_address = "127.0.0.1:9001"
log_format = "json"
log_level = "debug,h2=warn"

[upstream_authority]
cert_file = "/etc/keycard/up.pem"
key_file = "/etc/keycard/up-key.pem"

[datastore]
type = "sqlite"
path = "/var/lib/keycard/db.sqlite3"

[bundle_endpoint]
address = "0.0.0.0:8443"
profile = "https_web"
cert_file = "/etc/keycard/web.pem"
key_file = "/etc/keycard/web-key.pem"
"#;

#[test]
fn full_file_sets_every_key() {
    let c = from(FULL).unwrap();
    let h = |s: u64| Duration::from_secs(s * 3600);
    assert_eq!(
        c,
        ServerConfig {
            trust_domain: TrustDomain::new("example.org").unwrap(),
            bind_address: "0.0.0.0:9000".parse().unwrap(),
            data_dir: "/var/lib/keycard".into(),
            admin_socket: "/run/keycard/admin.sock".into(),
            ca_key_type: KeyType::EcP384,
            ca_ttl: h(48),
            default_x509_svid_ttl: h(2),
            default_jwt_svid_ttl: Duration::from_secs(600),
            agent_svid_ttl: h(3),
            jwt_key_type: KeyType::EcP384,
            backdate: Duration::from_secs(60),
            bundle_refresh_hint: Duration::from_secs(600),
            svids_per_second_per_agent: 2000,
            upstream_authority: Some(UpstreamAuthorityConfig {
                cert_file: "/etc/keycard/up.pem".into(),
                key_file: "/etc/keycard/up-key.pem".into(),
            }),
            datastore: DatastoreConfig::Sqlite { path: "/var/lib/keycard/db.sqlite3".into() },
            x509pop_ca_bundle: Some("/etc/keycard/node-ca.pem".into()),
            bundle_endpoint: Some(BundleEndpointConfig {
                address: "0.0.0.0:8443".parse().unwrap(),
                profile: crate::server::federation::ServingProfile::HttpsWeb {
                    cert_file: "/etc/keycard/web.pem".into(),
                    key_file: "/etc/keycard/web-key.pem".into(),
                },
            }),
            federates_with: Vec::new(),
            health_address: Some("127.0.0.1:9001".parse().unwrap()),
            log_format: LogFormat::Json,
            log_level: "debug,h2=warn".into(),
        }
    );
    assert_eq!(c.server_id().to_string(), "spiffe://example.org/keycard/server");
    let ca = c.ca_config(None);
    assert_eq!(
        (ca.x509_key_type, ca.ca_ttl, ca.refresh_hint),
        (KeyType::EcP384, h(48), c.bundle_refresh_hint)
    );
}

#[test]
fn defaults() {
    let c = from("trust_domain = \"example.org\"\n").unwrap();
    assert_eq!(c.bind_address, DEFAULT_BIND_ADDRESS.parse().unwrap());
    assert_eq!(c.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
    assert_eq!(c.admin_socket, PathBuf::from(".keycard/server/private/admin.sock"));
    assert_eq!(c.ca_key_type, KeyType::EcP256);
    assert_eq!(c.jwt_key_type, KeyType::EcP256);
    assert_eq!(c.ca_ttl, Duration::from_secs(86400));
    assert_eq!(c.default_x509_svid_ttl, Duration::from_secs(3600));
    assert_eq!(c.default_jwt_svid_ttl, Duration::from_secs(300));
    assert_eq!(c.agent_svid_ttl, c.default_x509_svid_ttl);
    assert_eq!(c.backdate, Duration::from_secs(30));
    assert_eq!(c.bundle_refresh_hint, Duration::from_secs(300));
    assert_eq!(c.svids_per_second_per_agent, 500);
    assert_eq!(c.upstream_authority, None);
    assert_eq!(
        c.datastore,
        DatastoreConfig::Sqlite { path: ".keycard/server/datastore.sqlite3".into() }
    );
    assert_eq!((c.x509pop_ca_bundle, c.health_address), (None, None));
    assert_eq!((c.log_format, c.log_level.as_str()), (LogFormat::Text, "info"));
}

#[test]
fn agent_ttl_follows_x509_default_and_port_zero_is_allowed() {
    let c = from("trust_domain = \"td\"\ndefault_x509_svid_ttl = \"30m\"\nbind_address = \"127.0.0.1:0\"\nhealth_address = \"127.0.0.1:0\"\n").unwrap();
    assert_eq!(c.agent_svid_ttl, Duration::from_secs(1800));
    assert_eq!(c.bind_address.port(), 0);
}

#[test]
fn data_dir_moves_derived_paths() {
    let c = from("trust_domain = \"td\"\ndata_dir = \"/srv/kc\"\n").unwrap();
    assert_eq!(c.admin_socket, PathBuf::from("/srv/kc/private/admin.sock"));
    assert_eq!(c.datastore, DatastoreConfig::Sqlite { path: "/srv/kc/datastore.sqlite3".into() });
}

#[test]
fn flags_override_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("server.toml");
    std::fs::write(&file, FULL).unwrap();
    let file_arg = file.to_str().unwrap();
    let a = args(&[
        "--config",
        file_arg,
        "--trust-domain",
        "other.test",
        "--bind-address",
        "127.0.0.1:0",
        "--data-dir",
        "/tmp/kcd",
        "--admin-socket",
        "/tmp/kcd/a.sock",
        "--health-address",
        "127.0.0.1:7000",
        "--log-format",
        "text",
        "--log-level",
        "warn",
    ]);
    let c = ServerConfig::load(&a).unwrap();
    assert_eq!(c.trust_domain.name(), "other.test");
    assert_eq!(c.bind_address, "127.0.0.1:0".parse().unwrap());
    assert_eq!(c.data_dir, PathBuf::from("/tmp/kcd"));
    assert_eq!(c.admin_socket, PathBuf::from("/tmp/kcd/a.sock"));
    assert_eq!(c.health_address, Some("127.0.0.1:7000".parse().unwrap()));
    assert_eq!((c.log_format, c.log_level.as_str()), (LogFormat::Text, "warn"));
    // Keys without a flag keep the file's value.
    assert_eq!(c.ca_ttl, Duration::from_secs(48 * 3600));
    assert_eq!(c.datastore, DatastoreConfig::Sqlite { path: "/var/lib/keycard/db.sqlite3".into() });
}

#[test]
fn flags_alone_are_enough() {
    let c = ServerConfig::load(&args(&["--trust-domain", "example.org"])).unwrap();
    assert_eq!(c.trust_domain.name(), "example.org");
    assert!(Cli::try_parse_from(["keycard", "--trust-domain", "Bad Domain"]).is_err());
    assert!(Cli::try_parse_from(["keycard", "--bind-address", "nope"]).is_err());
    assert!(Cli::try_parse_from(["keycard", "--log-format", "yaml"]).is_err());
}

#[test]
fn postgres_from_the_file_or_the_flag_and_its_url_is_never_printed() {
    let url = "postgres://keycard:hunter2@db.example:5432/keycard";
    let text = format!(
        "trust_domain = \"example.org\"\n[datastore]\ntype = \"postgres\"\nurl = \"{url}\"\n"
    );
    let c = from(&text).unwrap();
    assert!(matches!(&c.datastore, DatastoreConfig::Postgres { url: u } if u.expose() == url));
    assert!(!format!("{c:?}").contains("hunter2"), "the password is in Debug");
    let flag = args(&["--trust-domain", "example.org", "--datastore-url", url]);
    let c = ServerConfig::load(&flag).unwrap();
    assert!(matches!(&c.datastore, DatastoreConfig::Postgres { url: u } if u.expose() == url));
    let bad = args(&["--trust-domain", "example.org", "--datastore-url", "db.example"]);
    let e = ServerConfig::load(&bad).unwrap_err().to_string();
    assert!(e.contains("--datastore-url") && e.contains("postgres://"), "{e}");
}

#[test]
fn missing_file_and_missing_trust_domain() {
    let e = ServerConfig::load(&args(&["--config", "/nonexistent/server.toml"])).unwrap_err();
    assert!(matches!(e, ConfigError::Read { .. }), "{e}");
    let e = ServerConfig::load(&ServerArgs::default()).unwrap_err();
    assert_eq!(
        e.to_string(),
        r#"missing required key "trust_domain" in server config (or pass --trust-domain)"#
    );
}

#[test]
fn unknown_keys_are_named() {
    assert_eq!(
        err("trust_domain = \"td\"\nbind_adress = \"127.0.0.1:1\"\n"),
        r#"unknown key "bind_adress" in server config (did you mean "bind_address"?)"#
    );
    assert_eq!(
        err("trust_domain = \"td\"\n[datastore]\ntype = \"sqlite\"\npth = \"x\"\n"),
        r#"unknown key "datastore.pth" in server config (did you mean "datastore.path"?)"#
    );
    assert!(
        err("trust_domain = \"td\"\n[upstream_authority]\ncert = \"a\"\n")
            .contains("\"upstream_authority.cert\"")
    );
    let e = err("trust_domain = \"td\"\n[metrics]\nport = 1\n");
    assert!(e.contains("\"metrics\""), "{e}");
}

/// Each bad input and the key its error must name.
#[test]
fn bad_values_name_the_key() {
    let cases: &[(&str, &str)] = &[
        ("trust_domain = \"Example Org\"", "trust_domain"),
        ("trust_domain = \"spiffe://example.org/path\"", "trust_domain"),
        ("trust_domain = 7", "trust_domain"),
        ("bind_address = \"localhost:8081\"", "bind_address"),
        ("bind_address = \"127.0.0.1\"", "bind_address"),
        ("health_address = \"127.0.0.1:99999\"", "health_address"),
        ("ca_key_type = \"rsa-2048\"", "ca_key_type"),
        ("jwt_key_type = \"ed25519\"", "jwt_key_type"),
        ("ca_ttl = \"one day\"", "ca_ttl"),
        ("ca_ttl = \"0s\"", "ca_ttl"),
        ("ca_ttl = 86400", "ca_ttl"),
        ("default_x509_svid_ttl = \"1 fortnight\"", "default_x509_svid_ttl"),
        ("default_jwt_svid_ttl = \"-5m\"", "default_jwt_svid_ttl"),
        ("agent_svid_ttl = \"\"", "agent_svid_ttl"),
        ("backdate = \"soon\"", "backdate"),
        ("bundle_refresh_hint = \"x\"", "bundle_refresh_hint"),
        ("svids_per_second_per_agent = 0", "svids_per_second_per_agent"),
        ("svids_per_second_per_agent = \"fast\"", "svids_per_second_per_agent"),
        ("svids_per_second_per_agent = 2.5", "svids_per_second_per_agent"),
        ("log_format = \"yaml\"", "log_format"),
        ("log_level = \"info,h2=loud\"", "log_level"),
        ("data_dir = \"\"", "data_dir"),
        ("x509pop_ca_bundle = \"\"", "x509pop_ca_bundle"),
        ("[datastore]\ntype = \"postgres\"", "datastore.url"),
        ("[datastore]\ntype = \"mysql\"", "datastore.type"),
        ("[datastore]\ntype = \"postgres\"\nurl = \"mysql://x\"", "datastore.url"),
        ("[datastore]\ntype = \"postgres\"\nurl = \"postgres://\"", "datastore.url"),
        (
            "[datastore]\ntype = \"postgres\"\npath = \"x\"\nurl = \"postgres://h/d\"",
            "datastore.path",
        ),
        ("[datastore]\nurl = \"postgres://h/d\"", "datastore.url"),
        ("[datastore]\npath = 3", "datastore.path"),
        ("[upstream_authority]\ncert_file = \"a.pem\"", "upstream_authority.key_file"),
        ("[upstream_authority]\nkey_file = \"a.pem\"", "upstream_authority.cert_file"),
    ];
    for (body, key) in cases {
        let text = if body.starts_with("trust_domain") {
            format!("{body}\n")
        } else {
            format!("trust_domain = \"example.org\"\n{body}\n")
        };
        let message = err(&text);
        assert!(message.contains(&format!("\"{key}\"")), "{body:?}: {message}");
    }
}

#[test]
fn svid_ttls_are_capped_at_a_sixth_of_ca_ttl() {
    for key in ["default_x509_svid_ttl", "default_jwt_svid_ttl", "agent_svid_ttl"] {
        let e =
            from(&format!("trust_domain = \"td\"\nca_ttl = \"6h\"\n{key} = \"2h\"\n")).unwrap_err();
        match &e {
            ConfigError::Conflict { key: k, other, .. } => {
                assert_eq!((k.as_str(), other.as_str()), (key, "ca_ttl"))
            }
            other => panic!("{key}: {other:?}"),
        }
        assert!(e.to_string().contains("at least 12h"), "{e}");
        // Exactly a sixth is fine.
        from(&format!("trust_domain = \"td\"\nca_ttl = \"6h\"\n{key} = \"1h\"\n")).unwrap();
    }
    // The default x509 TTL (1h) is too long for a 5h CA even when not written.
    let e = from("trust_domain = \"td\"\nca_ttl = \"5h\"\n").unwrap_err();
    assert!(e.to_string().contains("\"default_x509_svid_ttl\""), "{e}");
}

#[test]
fn other_semantic_checks() {
    let e = err(
        "trust_domain = \"td\"\nbind_address = \"127.0.0.1:8081\"\nhealth_address = \"127.0.0.1:8081\"\n",
    );
    assert!(e.contains("\"health_address\"") && e.contains("\"bind_address\""), "{e}");
    let long = format!("trust_domain = \"td\"\ndata_dir = \"/{}\"\n", "d".repeat(120));
    assert!(err(&long).contains("\"admin_socket\""));
    let e = err("trust_domain = \"td\"\nbackdate = \"48h\"\n");
    assert!(e.contains("\"backdate\"") && e.contains("\"ca_ttl\""), "{e}");
}

#[test]
fn example_file_is_valid_and_documents_every_key() {
    let text = include_str!("../../../conf/server.toml");
    let c = from(text).unwrap();
    assert_eq!(
        c,
        from("trust_domain = \"example.org\"\n").unwrap(),
        "the example shows the defaults"
    );
    // Uncommenting every key must still give a valid file.
    let uncommented: String = text
        .lines()
        .map(|l| {
            l.strip_prefix("# ").filter(|r| r.starts_with('[') || r.contains(" = ")).unwrap_or(l)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    let all = from(&uncommented).unwrap();
    assert!(
        all.upstream_authority.is_some()
            && all.x509pop_ca_bundle.is_some()
            && all.health_address.is_some()
    );
    for key in [
        "trust_domain",
        "bind_address",
        "data_dir",
        "admin_socket",
        "ca_key_type",
        "ca_ttl",
        "default_x509_svid_ttl",
        "default_jwt_svid_ttl",
        "agent_svid_ttl",
        "jwt_key_type",
        "backdate",
        "bundle_refresh_hint",
        "svids_per_second_per_agent",
        "upstream_authority",
        "cert_file",
        "key_file",
        "datastore",
        "type",
        "path",
        "x509pop_ca_bundle",
        "health_address",
        "log_format",
        "log_level",
    ] {
        assert!(
            uncommented.contains(&format!("{key} =")) || uncommented.contains(&format!("[{key}]")),
            "{key}"
        );
    }
    // The PostgreSQL keys are described in prose (uncommented beside `path` they conflict).
    for words in ["\"postgres\"", "url", "--datastore-url"] {
        assert!(text.contains(words), "{words}");
    }
}

#[test]
fn bundle_endpoint_table_turns_the_endpoint_on_and_sets_the_refresh_hint() {
    let td = "trust_domain = \"example.org\"\n";
    assert_eq!(from(td).unwrap().bundle_endpoint, None);
    let c = from(&format!("{td}[bundle_endpoint]\nrefresh_hint = \"90s\"\n")).unwrap();
    let endpoint = c.bundle_endpoint.clone().unwrap();
    assert_eq!(endpoint.address, "127.0.0.1:8443".parse().unwrap());
    assert_eq!(endpoint.profile, crate::server::federation::ServingProfile::HttpsSpiffe);
    assert_eq!(c.bundle_refresh_hint, Duration::from_secs(90));
    assert_eq!(c.ca_config(None).refresh_hint, Duration::from_secs(90));
    let c = from(&format!("{td}bundle_refresh_hint = \"2m\"\n[bundle_endpoint]\n")).unwrap();
    assert_eq!(c.bundle_refresh_hint, Duration::from_secs(120));
}

#[test]
fn bundle_endpoint_errors_name_the_key() {
    let td = "trust_domain = \"example.org\"\n";
    for (text, needles) in [
        (
            "bundle_refresh_hint = \"2m\"\n[bundle_endpoint]\nrefresh_hint = \"1m\"\n",
            &["bundle_endpoint.refresh_hint", "bundle_refresh_hint", "keep one"][..],
        ),
        (
            "bind_address = \"127.0.0.1:9000\"\n[bundle_endpoint]\naddress = \"127.0.0.1:9000\"\n",
            &["bundle_endpoint.address", "bind_address"],
        ),
        (
            "health_address = \"127.0.0.1:9001\"\n[bundle_endpoint]\naddress = \"127.0.0.1:9001\"\n",
            &["bundle_endpoint.address", "health_address"],
        ),
        (
            "[bundle_endpoint]\nprofile = \"https_web\"\n",
            &["bundle_endpoint.cert_file", "https_web"],
        ),
        (
            "[bundle_endpoint]\nprofile = \"web\"\n",
            &["bundle_endpoint.profile", "\"https_spiffe\""],
        ),
        ("[bundle_endpoint]\nport = 8443\n", &["port"]),
    ] {
        let e = err(&format!("{td}{text}"));
        for n in needles {
            assert!(e.contains(n), "{text}: {e:?} lacks {n:?}");
        }
    }
}
