//! Argument parsing of the admin commands (no server needed).

use clap::{CommandFactory as _, Parser};

use super::*;

#[derive(Debug, Parser)]
struct TestCli {
    #[command(subcommand)]
    command: AdminCommand,
}

fn parse(args: &[&str]) -> Result<AdminCommand, clap::Error> {
    TestCli::try_parse_from(std::iter::once("keycard").chain(args.iter().copied()))
        .map(|c| c.command)
}

#[test]
fn the_command_tree_is_consistent() {
    TestCli::command().debug_assert();
}

#[test]
fn entry_create_parses_selectors_ids_and_ttls() {
    let cmd = parse(&[
        "entry",
        "create",
        "--spiffe-id",
        "spiffe://example.org/web",
        "--parent-id",
        "spiffe://example.org/keycard/server",
        "--selector",
        "unix:uid:1000",
        "--selector",
        "unix:gid:1000",
        "--x509-ttl",
        "1h",
        "--jwt-ttl",
        "5m",
        "--dns",
        "web.example.org",
        "--admin-socket",
        "/run/k/admin.sock",
        "--output",
        "json",
    ])
    .unwrap();
    let AdminCommand::Entry { conn, command: EntryCommand::Create(args) } = cmd else {
        panic!("wrong command");
    };
    assert_eq!(conn.admin_socket, PathBuf::from("/run/k/admin.sock"));
    assert_eq!(conn.output, OutputFormat::Json);
    let spec = entry::create_spec(&args);
    assert_eq!(spec.selectors, vec!["unix:uid:1000", "unix:gid:1000"]);
    assert_eq!((spec.x509_ttl_seconds, spec.jwt_ttl_seconds), (3600, 300));
    assert_eq!(spec.dns_names, vec!["web.example.org"]);
}

#[test]
fn bad_input_is_refused_with_the_expected_form() {
    let base = ["entry", "create", "--spiffe-id", "spiffe://example.org/web", "--parent-id"];
    let mut args = base.to_vec();
    args.extend(["spiffe://example.org/keycard/server", "--selector", "unix"]);
    let err = parse(&args).unwrap_err().to_string();
    assert!(err.contains("type:value"), "{err}");

    let mut args = base.to_vec();
    args.extend(["spiffe://example.org/a", "--selector", "unix:uid:1", "--x509-ttl", "1.5s"]);
    let err = parse(&args).unwrap_err().to_string();
    assert!(err.contains("whole seconds"), "{err}");

    let mut args = base.to_vec();
    args.extend(["spiffe://example.org/a", "--selector", "unix:uid:1", "--jwt-ttl", "soon"]);
    let err = parse(&args).unwrap_err().to_string();
    assert!(err.contains("90s"), "{err}");

    let err = parse(&["entry", "show", "--spiffe-id", "example.org/web"]).unwrap_err();
    assert!(err.to_string().contains("--spiffe-id"), "{err}");
    // A selector is required on create.
    let err = parse(&base[..4]).unwrap_err();
    assert_eq!(err.kind(), clap::error::ErrorKind::MissingRequiredArgument);
}

#[test]
fn defaults_socket_output_and_token_ttl() {
    // The env var would override the default; make sure the test sees the default.
    if std::env::var_os("KEYCARD_ADMIN_SOCKET").is_some() {
        println!("note: KEYCARD_ADMIN_SOCKET is set; default not checked");
        return;
    }
    let AdminCommand::Token { conn, command: TokenCommand::Generate { spiffe_id, ttl } } =
        parse(&["token", "generate"]).unwrap()
    else {
        panic!("wrong command");
    };
    // The CLI looks where a server with default settings listens.
    let server_default = crate::server::config::default_admin_socket(std::path::Path::new(
        crate::server::config::DEFAULT_DATA_DIR,
    ));
    assert_eq!(conn.admin_socket, server_default);
    assert_eq!(conn.output, OutputFormat::Text);
    assert_eq!((spiffe_id, ttl), (None, Duration::from_secs(600)));
}

#[test]
fn authority_and_agent_commands_parse() {
    let cmd = parse(&["authority", "jwt", "activate", "--id", "k1"]).unwrap();
    assert!(matches!(
        cmd,
        AdminCommand::Authority {
            kind: AuthorityKindCommand::Jwt { action: AuthorityAction::Activate { .. } },
            ..
        }
    ));
    assert!(parse(&["authority", "x509", "show"]).is_ok());
    assert!(parse(&["authority", "x509", "revoke"]).is_err());
    assert!(parse(&["agent", "ban", "--id", "spiffe://example.org/keycard/agent/x"]).is_ok());
    assert!(parse(&["bundle", "show", "--format", "spiffe"]).is_ok());
    assert!(parse(&["bundle", "show", "--format", "der"]).is_err());
    assert!(parse(&["healthcheck", "--output", "json"]).is_ok());
}

#[test]
fn update_keeps_what_is_not_given_and_needs_one_flag() {
    let current = crate::server::admin::pb::EntrySpec {
        spiffe_id: "spiffe://example.org/web".into(),
        parent_id: "spiffe://example.org/keycard/server".into(),
        selectors: vec!["unix:uid:1".into()],
        x509_ttl_seconds: 60,
        dns_names: vec!["a.example.org".into()],
        admin: true,
        ..Default::default()
    };
    let update = |args: &[&str]| {
        let mut all = vec!["entry", "update", "--id", "e-1"];
        all.extend_from_slice(args);
        let AdminCommand::Entry { command: EntryCommand::Update(u), .. } = parse(&all).unwrap()
        else {
            panic!("wrong command");
        };
        entry::apply_update(&u, current.clone())
    };
    let spec = update(&["--selector", "unix:uid:2", "--no-admin", "--clear-dns"]).unwrap();
    assert_eq!(spec.selectors, vec!["unix:uid:2"]);
    assert!(!spec.admin && spec.dns_names.is_empty());
    assert_eq!(spec.x509_ttl_seconds, 60);
    assert_eq!(spec.spiffe_id, current.spiffe_id);
    let spec = update(&["--x509-ttl", "0s"]).unwrap();
    assert_eq!(spec.x509_ttl_seconds, 0);
    assert_eq!(spec.jwt_svid_binding, "", "kept");
    let spec = update(&["--jwt-svid-binding", "x509"]).unwrap();
    assert_eq!((spec.jwt_svid_binding.as_str(), spec.admin), ("x509", true));
    let err = parse(&["entry", "update", "--id", "e", "--jwt-svid-binding", "mtls"]).unwrap_err();
    assert!(err.to_string().contains("use none (bearer tokens) or x509"), "{err}");
    assert!(matches!(update(&[]), Err(CliError::NothingToUpdate)));
}

/// Runs one command line against a live admin API; returns the output or the error text.
async fn run_line(
    h: &crate::server::admin::tests::Harness,
    args: &[&str],
) -> Result<String, String> {
    let socket = h.socket.to_str().unwrap();
    let mut all = args.to_vec();
    all.extend(["--admin-socket", socket]);
    let command = parse(&all).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    execute(command, &mut out).await.map_err(|e| e.to_string())?;
    Ok(String::from_utf8(out).unwrap())
}

#[tokio::test]
async fn commands_against_a_live_server_print_results_and_name_fixes() {
    let h = crate::server::admin::tests::Harness::start(vec![]).await;
    let server = crate::server::admin::tests::AGENT_ID;
    let create = [
        "entry",
        "create",
        "--spiffe-id",
        "spiffe://example.org/web",
        "--parent-id",
        server,
        "--selector",
        "unix:uid:1000",
        "--x509-ttl",
        "1h",
    ];
    let text = run_line(&h, &create).await.unwrap();
    assert!(text.contains("SPIFFE ID        : spiffe://example.org/web"), "{text}");
    assert!(text.contains("X509-SVID TTL    : 1h"), "{text}");
    let err = run_line(&h, &create).await.unwrap_err();
    assert!(err.contains("already exists") && err.contains("keycard entry update --id"), "{err}");

    // A parent that does not exist yet is fine (the warning goes to stderr).
    let mut orphan = create;
    orphan[3] = "spiffe://example.org/later";
    orphan[5] = "spiffe://example.org/nobody";
    run_line(&h, &orphan).await.unwrap();
    let mut never = create;
    never[7] = "unix:uid:abc";
    let err = run_line(&h, &never).await.unwrap_err();
    assert!(err.contains("can never match") && err.contains("InvalidArgument"), "{err}");

    let json = run_line(&h, &["entry", "show", "--output", "json"]).await.unwrap();
    let doc: serde_json::Value = serde_json::from_str(&json).unwrap();
    let web = doc["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["spiffe_id"] == "spiffe://example.org/web")
        .unwrap();
    let id = web["id"].as_str().unwrap().to_owned();
    let text = run_line(&h, &["entry", "update", "--id", &id, "--hint", "blue"]).await.unwrap();
    assert!(text.contains("Hint             : blue"), "{text}");
    assert_eq!(run_line(&h, &["entry", "count"]).await.unwrap(), "2 registration entries\n");
    let shown = run_line(&h, &["entry", "show"]).await.unwrap();
    assert!(shown.starts_with("Found 2 entries\n"), "{shown}");

    let json = run_line(&h, &["token", "generate", "--ttl", "90s", "--output", "json"]);
    let doc: serde_json::Value = serde_json::from_str(&json.await.unwrap()).unwrap();
    assert_eq!(doc["token"].as_str().unwrap().len(), 64);
    let bundle = run_line(&h, &["bundle", "show"]).await.unwrap();
    assert!(bundle.starts_with("-----BEGIN CERTIFICATE-----"), "{bundle}");
    let table = run_line(&h, &["authority", "x509", "show"]).await.unwrap();
    assert!(table.contains("active"), "{table}");
    let health = run_line(&h, &["healthcheck"]).await.unwrap();
    assert!(health.contains("healthy"), "{health}");
    let text = run_line(&h, &["entry", "delete", "--id", &id]).await.unwrap();
    assert_eq!(text, format!("Deleted entry {id}\n"));
}

#[test]
fn a_missing_parent_gets_a_warning_naming_the_fixes() {
    let mut entry = crate::server::admin::pb::Entry {
        spec: Some(crate::server::admin::pb::EntrySpec {
            parent_id: "spiffe://example.org/node/x".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    assert_eq!(entry::missing_parent_warning(&entry), None);
    entry.parent_missing = true;
    let warning = entry::missing_parent_warning(&entry).unwrap();
    assert!(warning.starts_with("warning: no agent, join token or entry"), "{warning}");
    assert!(warning.contains("keycard agent list"), "{warning}");
    assert!(
        warning.contains("keycard token generate --spiffe-id spiffe://example.org/node/x"),
        "{warning}"
    );
}
