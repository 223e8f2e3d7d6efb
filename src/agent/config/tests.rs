use super::*;

fn args() -> AgentArgs {
    AgentArgs {
        trust_domain: Some(TrustDomain::new("example.org").unwrap()),
        server_address: vec!["127.0.0.1:8081".into()],
        ..Default::default()
    }
}

fn toml(args: &AgentArgs, text: &str) -> Result<AgentConfig, ConfigError> {
    AgentConfig::from_toml(args, Path::new("agent.toml"), text)
}

fn err(args: &AgentArgs, text: &str) -> String {
    toml(args, text).unwrap_err().to_string()
}

#[test]
fn defaults() {
    let c = toml(&args(), "").unwrap();
    assert_eq!(c.server_addresses, vec!["127.0.0.1:8081"]);
    assert_eq!(c.server_request_timeout, crate::wire::REQUEST_TIMEOUT);
    assert_eq!(c.bootstrap, Bootstrap::Stored);
    assert_eq!(c.attestation, NodeAttestation::None);
    assert_eq!(c.socket_path, PathBuf::from(DEFAULT_SOCKET_PATH));
    assert_eq!(c.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
    assert_eq!(c.admin_socket, PathBuf::from(".keycard/agent/private/admin.sock"));
    assert_eq!(c.sync_interval, DEFAULT_SYNC_INTERVAL);
    assert_eq!(c.workload_key_type, KeyType::EcP256);
    assert!(!c.disk_cache && !c.unix.sha256 && c.health_address.is_none());
}

#[test]
fn every_file_key_is_read() {
    let text = r#"
        trust_domain = "example.com"
        server_address = "keycard.example:9000"
        server_request_timeout = "4s"
        trust_bundle_path = "/etc/keycard/bundle.pem"
        socket_path = "unix:///run/keycard/api.sock"
        admin_socket = "/run/keycard-admin/admin.sock"
        data_dir = "/var/lib/keycard-agent"
        sync_interval = "30s"
        workload_key_type = "ec-p384"
        disk_cache = true
        unix_sha256 = true
        unix_sha256_max_size = 1024
        health_address = "127.0.0.1:9090"
        log_format = "json"
        log_level = "debug"
        [x509pop]
        cert_file = "/etc/keycard/node.pem"
        key_file = "/etc/keycard/node.key"
    "#;
    let c = toml(&AgentArgs::default(), text).unwrap();
    assert_eq!(c.trust_domain.to_string(), "example.com");
    assert_eq!(c.server_addresses, vec!["keycard.example:9000"]);
    assert_eq!(c.server_request_timeout, Duration::from_secs(4));
    assert_eq!(c.bootstrap, Bootstrap::Bundle("/etc/keycard/bundle.pem".into()));
    assert_eq!(c.socket_path, PathBuf::from("/run/keycard/api.sock"));
    assert_eq!(c.admin_socket, PathBuf::from("/run/keycard-admin/admin.sock"));
    assert_eq!(c.data_dir, PathBuf::from("/var/lib/keycard-agent"));
    assert_eq!(c.sync_interval, Duration::from_secs(30));
    assert_eq!(c.workload_key_type, KeyType::EcP384);
    assert!(c.disk_cache && c.unix.sha256);
    assert_eq!(c.unix.max_binary_size, 1024);
    assert_eq!(c.health_address, Some("127.0.0.1:9090".parse().unwrap()));
    assert_eq!(c.log_format, LogFormat::Json);
    assert_eq!(
        c.attestation,
        NodeAttestation::X509Pop {
            cert_file: "/etc/keycard/node.pem".into(),
            key_file: "/etc/keycard/node.key".into()
        }
    );
}

#[test]
fn flags_override_the_file() {
    let mut a = args();
    a.socket_path = Some("/tmp/x/api.sock".into());
    a.join_token = Some("tok".into());
    a.insecure_bootstrap = true;
    let c = toml(&a, "server_address = \"10.0.0.1:1\"\nsocket_path = \"/tmp/y.sock\"").unwrap();
    assert_eq!(c.server_addresses, vec!["127.0.0.1:8081"]);
    assert_eq!(c.socket_path, PathBuf::from("/tmp/x/api.sock"));
    assert_eq!(c.bootstrap, Bootstrap::Insecure);
    assert_eq!(c.attestation, NodeAttestation::JoinToken("tok".into()));
}

#[test]
fn socket_addresses() {
    for (given, want) in [
        ("unix:///run/a.sock", "/run/a.sock"),
        ("unix:/run/a.sock", "/run/a.sock"),
        ("/run/a.sock", "/run/a.sock"),
        ("rel/a.sock", "rel/a.sock"),
    ] {
        assert_eq!(socket_path_from("socket_path", given).unwrap(), PathBuf::from(want));
    }
    for bad in ["unix://relative.sock", "tcp://127.0.0.1:1", ""] {
        let e = socket_path_from("socket_path", bad).unwrap_err().to_string();
        assert!(e.contains("socket_path"), "{e}");
    }
    let long = format!("/{}", "a".repeat(200));
    assert!(
        socket_path_from("socket_path", &long).unwrap_err().to_string().contains("limited to 107")
    );
}

#[test]
fn errors_name_the_key_and_the_fix() {
    let e = err(&AgentArgs::default(), "");
    assert!(e.contains("\"trust_domain\"") && e.contains("--trust-domain"), "{e}");
    let only_td = AgentArgs { trust_domain: args().trust_domain, ..Default::default() };
    let e = err(&only_td, "");
    assert!(e.contains("\"server_address\"") && e.contains("--server-address"), "{e}");
    for bad in ["nohost", ":8081", "host:0", "host:99999", "http://x:1"] {
        let e = err(&only_td, &format!("server_address = {bad:?}"));
        assert!(e.contains("server_address") && e.contains("host:port"), "{bad}: {e}");
    }
    let e = err(&args(), "trust_bundle_path = \"b.pem\"\ninsecure_bootstrap = true");
    assert!(e.contains("insecure_bootstrap") && e.contains("trust_bundle_path"), "{e}");
    let e = err(&args(), "join_token = \"t\"\n[x509pop]\ncert_file = \"c\"\nkey_file = \"k\"");
    assert!(e.contains("join_token") && e.contains("x509pop"), "{e}");
    let e = err(&args(), "[x509pop]\ncert_file = \"c\"");
    assert!(e.contains("x509pop.key_file"), "{e}");
    let e = err(&args(), "sync_interval = \"soon\"");
    assert!(e.contains("sync_interval") && e.contains("30s"), "{e}");
    let e = err(&args(), "sync_interval = \"0s\"");
    assert!(e.contains("longer than zero"), "{e}");
    let e = err(&args(), "workload_key_type = \"rsa\"");
    assert!(e.contains("workload_key_type"), "{e}");
    let e = err(&args(), "socket_pth = \"/x\"");
    assert!(e.contains("socket_pth") && e.contains("socket_path"), "{e}");
    let e = err(&args(), "admin_socket = \"/a.sock\"\nsocket_path = \"/a.sock\"");
    assert!(e.contains("same socket"), "{e}");
    let e = err(&args(), "join_token = \" \"");
    assert!(e.contains("join_token") && e.contains("empty"), "{e}");
}

#[test]
fn debug_hides_the_join_token() {
    let mut a = args();
    a.join_token = Some("s3cr3t-token".into());
    assert!(!format!("{a:?}").contains("s3cr3t"), "the arguments");
    let c = toml(&a, "").unwrap();
    assert!(!format!("{c:?}").contains("s3cr3t"));
    let file: FileConfig = ::toml::from_str("join_token = \"s3cr3t-token\"").unwrap();
    assert!(!format!("{file:?}").contains("s3cr3t"), "the raw file");
}

#[test]
fn the_example_config_file_loads() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/agent.toml");
    let c = AgentConfig::load(&AgentArgs { config: Some(path), ..Default::default() }).unwrap();
    assert_eq!(c.trust_domain.to_string(), "example.org");
}

#[test]
fn workload_api_connection_caps() {
    use crate::agent::workload_api::limits::ConnectionLimits;
    assert_eq!(toml(&args(), "").unwrap().workload_limits, ConnectionLimits::default());
    let c = toml(
        &args(),
        "[workload_api]\nmax_connections = 100\nmax_connections_per_uid = 10\n\
         first_request_timeout = \"2s\"\n",
    )
    .unwrap();
    let want = ConnectionLimits {
        max_connections: 100,
        max_connections_per_uid: 10,
        first_request_timeout: Duration::from_secs(2),
    };
    assert_eq!(c.workload_limits, want);
    let e = err(&args(), "[workload_api]\nmax_connections = 10\nmax_connections_per_uid = 11\n");
    assert!(e.contains("max_connections_per_uid") && e.contains("far below"), "{e}");
    let e = err(&args(), "[workload_api]\nmax_connections_per_uid = 0\n");
    assert!(e.contains("at least 1"), "{e}");
    let e = err(&args(), "[workload_api]\nfirst_request_timeout = \"0s\"\n");
    assert!(e.contains("first_request_timeout"), "{e}");
    let e = err(&args(), "[workload_api]\nmax_conections = 5\n");
    assert!(e.contains("max_conections"), "{e}");
}

#[test]
fn sds_and_workload_api_switches_and_names() {
    use crate::agent::sds::SdsConfig;
    use crate::agent::workload_api::Apis;
    assert_eq!(toml(&args(), "").unwrap().apis, Apis::default());
    let c = toml(
        &args(),
        "[sds]\ndefault_svid_name = \"svid\"\ndefault_bundle_name = \"ca\"\n\
         default_all_bundles_name = \"every\"\nmax_streams_per_caller = 8\n",
    )
    .unwrap();
    let want = SdsConfig {
        default_svid_name: "svid".into(),
        default_bundle_name: "ca".into(),
        default_all_bundles_name: "every".into(),
        max_streams_per_caller: 8,
    };
    assert_eq!(c.apis, Apis { workload_api: true, sds: Some(want) });
    let c = toml(&args(), "[sds]\nenabled = false\n").unwrap();
    assert_eq!(c.apis, Apis { workload_api: true, sds: None });
    let c = toml(&args(), "[workload_api]\nenabled = false\n").unwrap();
    assert_eq!(c.apis, Apis { workload_api: false, sds: Some(SdsConfig::default()) });
    let e = err(&args(), "[workload_api]\nenabled = false\n[sds]\nenabled = false\n");
    assert!(e.contains("sds.enabled") && e.contains("serve nothing"), "{e}");
    let e = err(&args(), "[sds]\ndefault_bundle_name = \"spiffe://example.org\"\n");
    assert!(e.contains("sds.default_bundle_name") && e.contains("spiffe://"), "{e}");
    let e = err(&args(), "[sds]\ndefault_svid_name = \"ALL\"\n");
    assert!(e.contains("must differ"), "{e}");
    let e = err(&args(), "[sds]\ndefault_svid_name = \"\"\n");
    assert!(e.contains("default_svid_name") && e.contains("empty"), "{e}");
    let e = err(&args(), "[sds]\nmax_streams_per_caller = 0\n");
    assert!(e.contains("max_streams_per_caller"), "{e}");
    let e = err(&args(), "[sds]\ndisable_spiffe_cert_validation = true\n");
    assert!(e.contains("disable_spiffe_cert_validation"), "{e}");
}

#[test]
fn server_address_is_one_server_or_a_list() {
    let only_td = AgentArgs { trust_domain: args().trust_domain, ..Default::default() };
    let c = toml(&only_td, "server_address = \" 10.0.0.1:8081 \"").unwrap();
    assert_eq!(c.server_addresses, vec!["10.0.0.1:8081"]);
    let c = toml(&only_td, "server_address = [\"10.0.0.1:8081\", \"b.example:8081\"]").unwrap();
    assert_eq!(c.server_addresses, vec!["10.0.0.1:8081", "b.example:8081"]);
    let c = toml(&only_td, "server_address = [\"[::1]:8081\"]").unwrap();
    assert_eq!(c.server_addresses, vec!["[::1]:8081"]);

    // The flag, repeated, replaces the file's list as a whole.
    let mut flags = only_td.clone();
    flags.server_address = vec!["127.0.0.1:1".into(), "127.0.0.1:2".into()];
    let c = toml(&flags, "server_address = [\"10.0.0.1:8081\"]").unwrap();
    assert_eq!(c.server_addresses, vec!["127.0.0.1:1", "127.0.0.1:2"]);
}

#[test]
fn the_server_address_flag_repeats_on_the_command_line() {
    use clap::Parser as _;
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        agent: AgentArgs,
    }
    let cli = Cli::try_parse_from([
        "agent",
        "--trust-domain",
        "example.org",
        "--server-address",
        "127.0.0.1:1",
        "--server-address",
        "127.0.0.1:2",
    ])
    .unwrap();
    let c = toml(&cli.agent, "").unwrap();
    assert_eq!(c.server_addresses, vec!["127.0.0.1:1", "127.0.0.1:2"]);
}

#[test]
fn bad_server_addresses_are_named_with_the_fix() {
    let only_td = AgentArgs { trust_domain: args().trust_domain, ..Default::default() };
    let e = err(&only_td, "server_address = []");
    assert!(e.contains("\"server_address\"") && e.contains("empty") && e.contains("host"), "{e}");
    let e = err(&only_td, "server_address = [\"a:1\", \"b\"]");
    assert!(e.contains("item 2 of 2") && e.contains("\"b\"") && e.contains("host:port"), "{e}");
    let e = err(&only_td, "server_address = [\"a:1\", \"b:2\", \" a:1\"]");
    assert!(e.contains("item 3 of 3") && e.contains("\"a:1\" is listed twice"), "{e}");
    let e = err(&only_td, "server_address = [\"a:1\", 8081]");
    assert!(e.contains("item 2") && e.contains("integer") && e.contains("host:port"), "{e}");
    let e = err(&only_td, "server_address = 8081");
    assert!(e.contains("server_address") && e.contains("integer") && e.contains("list"), "{e}");
    let e = err(&only_td, "server_address = \"\"");
    assert!(e.contains("server_address") && e.contains("host:port"), "{e}");

    let mut flags = only_td.clone();
    flags.server_address = vec!["127.0.0.1:1".into(), "nope".into()];
    let e = err(&flags, "");
    assert!(
        e.contains("--server-address") && e.contains("item 2 of 2") && e.contains("\"nope\""),
        "{e}"
    );
    flags.server_address = vec!["127.0.0.1:1".into(), "127.0.0.1:1".into()];
    let e = err(&flags, "");
    assert!(e.contains("--server-address") && e.contains("twice"), "{e}");

    let e = err(&args(), "server_request_timeout = \"0s\"");
    assert!(e.contains("server_request_timeout") && e.contains("longer than zero"), "{e}");
}
