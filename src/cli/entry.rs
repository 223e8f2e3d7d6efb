//! `keycard entry create|show|update|delete|count`.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use keycard_workload_api::{SpiffeId, TrustDomain};
use serde_json::json;

use super::output::{count_text, emit, entry_json, entry_text};
use super::{CliError, Connection, client, entry_file, parse_ttl};
use crate::selector::Selector;
use crate::server::admin::pb;
use crate::server::entry::JwtSvidBinding;

/// What to do with entries.
#[derive(Debug, Subcommand)]
pub enum EntryCommand {
    /// Register a workload (or a node alias) under a parent; or, with --file, every entry
    /// of a JSON file in one call (all or none).
    Create(CreateArgs),
    /// Show one entry by ID, or list entries (every page unless a page is asked for).
    Show(ShowArgs),
    /// Change an entry; flags not given keep their current value.
    Update(UpdateArgs),
    /// Delete an entry; or, with --file, every entry of a JSON file in one call (all or none).
    Delete {
        /// The entry ID.
        #[arg(long, required_unless_present = "file")]
        id: Option<String>,
        /// A JSON file (`-`: standard input) of entry IDs, or `entry show --output json`
        /// output: delete every entry it names by `id`.
        #[arg(long, value_name = "PATH", conflicts_with = "id")]
        file: Option<PathBuf>,
    },
    /// Count entries.
    Count,
}

/// `entry create` flags.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Create every entry of this JSON file (`-`: standard input) in one call: an array of
    /// objects with the keys spiffe_id, parent_id, selectors and optionally dns_names,
    /// x509_ttl_seconds, jwt_ttl_seconds, hint, admin, jwt_svid_binding, federates_with (`entry show --output json` output
    /// reads back). Nothing is created when any entry breaks a rule.
    #[arg(
        long,
        value_name = "PATH",
        conflicts_with_all = ["spiffe_id", "parent_id", "selectors", "x509_ttl", "jwt_ttl", "dns_names", "hint", "admin", "jwt_svid_binding", "federates_with"]
    )]
    pub file: Option<PathBuf>,
    /// The SPIFFE ID the workload gets, for example spiffe://example.org/web.
    #[arg(long, value_name = "ID", required_unless_present = "file")]
    pub spiffe_id: Option<SpiffeId>,
    /// Who may get it: an agent's ID, a node-alias entry's SPIFFE ID, or the server's ID.
    #[arg(long, value_name = "ID", required_unless_present = "file")]
    pub parent_id: Option<SpiffeId>,
    /// A selector the workload must have, `type:value` (repeat for more).
    #[arg(long = "selector", required_unless_present = "file", value_name = "TYPE:VALUE")]
    pub selectors: Vec<Selector>,
    /// X.509-SVID lifetime, such as 1h (default: the server's).
    #[arg(long, value_parser = parse_ttl, value_name = "TTL")]
    pub x509_ttl: Option<Duration>,
    /// JWT-SVID lifetime, such as 5m (default: the server's).
    #[arg(long, value_parser = parse_ttl, value_name = "TTL")]
    pub jwt_ttl: Option<Duration>,
    /// A DNS name for the X.509-SVID (repeat for more).
    #[arg(long = "dns", value_name = "NAME")]
    pub dns_names: Vec<String>,
    /// A hint passed to the workload to choose between its SVIDs.
    #[arg(long)]
    pub hint: Option<String>,
    /// Whether the holder may call the admin API.
    #[arg(long)]
    pub admin: bool,
    /// Bind the entry's JWT-SVIDs to the holder's X.509-SVID: `x509` puts a `cnf` claim
    /// (RFC 8705 `x5t#S256`) in every token, so that a copied token is refused on any TLS
    /// connection not authenticated by that certificate; `none` (default): bearer tokens.
    #[arg(long, value_parser = parse_binding, value_name = "none|x509")]
    pub jwt_svid_binding: Option<JwtSvidBinding>,
    /// A foreign trust domain whose bundle the workload receives, so that it can
    /// authenticate that domain's SVIDs (repeat for more), for example example.com. The
    /// server needs a federation relationship (`keycard federation create`) or a bundle
    /// (`keycard bundle set`) for it.
    #[arg(long = "federates-with", value_name = "TRUST_DOMAIN")]
    pub federates_with: Vec<TrustDomain>,
}

/// Parses `--jwt-svid-binding`.
fn parse_binding(s: &str) -> Result<JwtSvidBinding, String> {
    JwtSvidBinding::parse(s).map_err(|e| e.to_string())
}

/// `entry show` flags.
#[derive(Debug, Args)]
pub struct ShowArgs {
    /// Show this entry only.
    #[arg(long, conflicts_with_all = ["spiffe_id", "parent_id", "selectors"])]
    pub id: Option<String>,
    /// Only entries with this SPIFFE ID.
    #[arg(long, value_name = "ID")]
    pub spiffe_id: Option<SpiffeId>,
    /// Only entries with this parent ID.
    #[arg(long, value_name = "ID")]
    pub parent_id: Option<SpiffeId>,
    /// Only entries with exactly these selectors (repeat).
    #[arg(long = "selector", value_name = "TYPE:VALUE")]
    pub selectors: Vec<Selector>,
    /// Fetch one page of this many entries instead of all pages.
    #[arg(long)]
    pub page_size: Option<u32>,
    /// Fetch the page after this token (from a previous page).
    #[arg(long)]
    pub page_token: Option<String>,
}

/// `entry update` flags.
#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// The entry ID.
    #[arg(long)]
    pub id: String,
    /// New SPIFFE ID.
    #[arg(long, value_name = "ID")]
    pub spiffe_id: Option<SpiffeId>,
    /// New parent ID.
    #[arg(long, value_name = "ID")]
    pub parent_id: Option<SpiffeId>,
    /// New selectors: replace all current ones (repeat).
    #[arg(long = "selector", value_name = "TYPE:VALUE")]
    pub selectors: Vec<Selector>,
    /// New X.509-SVID lifetime (0s: the server's default).
    #[arg(long, value_parser = parse_ttl, value_name = "TTL")]
    pub x509_ttl: Option<Duration>,
    /// New JWT-SVID lifetime (0s: the server's default).
    #[arg(long, value_parser = parse_ttl, value_name = "TTL")]
    pub jwt_ttl: Option<Duration>,
    /// New DNS names: replace all current ones (repeat).
    #[arg(long = "dns", value_name = "NAME")]
    pub dns_names: Vec<String>,
    /// Remove every DNS name.
    #[arg(long, conflicts_with = "dns_names")]
    pub clear_dns: bool,
    /// New hint.
    #[arg(long)]
    pub hint: Option<String>,
    /// Allow the holder to call the admin API.
    #[arg(long, conflicts_with = "no_admin")]
    pub admin: bool,
    /// Forbid the holder to call the admin API.
    #[arg(long)]
    pub no_admin: bool,
    /// New JWT-SVID binding: `x509` (tokens bound to the holder's X.509-SVID) or `none`.
    #[arg(long, value_parser = parse_binding, value_name = "none|x509")]
    pub jwt_svid_binding: Option<JwtSvidBinding>,
    /// New foreign trust domains: replace all current ones (repeat).
    #[arg(long = "federates-with", value_name = "TRUST_DOMAIN")]
    pub federates_with: Vec<TrustDomain>,
    /// Federate with no foreign trust domain any more.
    #[arg(long, conflicts_with = "federates_with")]
    pub clear_federates_with: bool,
}

/// Trust domain names as the wire carries them (without `spiffe://`).
fn domain_names(domains: &[TrustDomain]) -> Vec<String> {
    domains.iter().map(|td| td.name().to_owned()).collect()
}

fn strings<T: ToString>(items: &[T]) -> Vec<String> {
    items.iter().map(T::to_string).collect()
}

/// The wire specification of `entry create`.
pub fn create_spec(args: &CreateArgs) -> pb::EntrySpec {
    pb::EntrySpec {
        spiffe_id: args.spiffe_id.as_ref().map(ToString::to_string).unwrap_or_default(),
        parent_id: args.parent_id.as_ref().map(ToString::to_string).unwrap_or_default(),
        selectors: strings(&args.selectors),
        x509_ttl_seconds: args.x509_ttl.map_or(0, |d| d.as_secs()),
        jwt_ttl_seconds: args.jwt_ttl.map_or(0, |d| d.as_secs()),
        dns_names: args.dns_names.clone(),
        hint: args.hint.clone().unwrap_or_default(),
        admin: args.admin,
        jwt_svid_binding: args.jwt_svid_binding.unwrap_or_default().as_str().to_owned(),
        federates_with: domain_names(&args.federates_with),
    }
}

/// The current specification with the flags of `entry update` applied.
pub fn apply_update(args: &UpdateArgs, current: pb::EntrySpec) -> Result<pb::EntrySpec, CliError> {
    let mut spec = current.clone();
    if let Some(id) = &args.spiffe_id {
        spec.spiffe_id = id.to_string();
    }
    if let Some(id) = &args.parent_id {
        spec.parent_id = id.to_string();
    }
    if !args.selectors.is_empty() {
        spec.selectors = strings(&args.selectors);
    }
    if let Some(ttl) = args.x509_ttl {
        spec.x509_ttl_seconds = ttl.as_secs();
    }
    if let Some(ttl) = args.jwt_ttl {
        spec.jwt_ttl_seconds = ttl.as_secs();
    }
    if args.clear_dns {
        spec.dns_names.clear();
    } else if !args.dns_names.is_empty() {
        spec.dns_names = args.dns_names.clone();
    }
    if let Some(hint) = &args.hint {
        spec.hint = hint.clone();
    }
    if args.admin || args.no_admin {
        spec.admin = args.admin;
    }
    if let Some(binding) = args.jwt_svid_binding {
        spec.jwt_svid_binding = binding.as_str().to_owned();
    }
    if args.clear_federates_with {
        spec.federates_with.clear();
    } else if !args.federates_with.is_empty() {
        spec.federates_with = domain_names(&args.federates_with);
    }
    let any_flag = args.spiffe_id.is_some()
        || args.parent_id.is_some()
        || !args.selectors.is_empty()
        || args.x509_ttl.is_some()
        || args.jwt_ttl.is_some()
        || args.clear_dns
        || !args.dns_names.is_empty()
        || args.hint.is_some()
        || args.admin
        || args.no_admin
        || args.jwt_svid_binding.is_some()
        || args.clear_federates_with
        || !args.federates_with.is_empty();
    if !any_flag {
        return Err(CliError::NothingToUpdate);
    }
    Ok(spec)
}

/// The warning for an entry whose parent does not exist yet, if the server flagged it.
pub fn missing_parent_warning(entry: &pb::Entry) -> Option<String> {
    if !entry.parent_missing {
        return None;
    }
    let parent = entry.spec.as_ref().map_or("", |s| s.parent_id.as_str());
    Some(format!(
        "warning: no agent, join token or entry has the parent ID {parent} yet. The entry is \
         stored and takes effect once that parent exists. Check the ID against `keycard agent \
         list`, or let an agent join with it: `keycard token generate --spiffe-id {parent}`."
    ))
}

/// Prints [`missing_parent_warning`] on standard error (standard output stays parseable).
fn warn_missing_parent(entry: &pb::Entry) {
    if let Some(warning) = missing_parent_warning(entry) {
        eprintln!("{warning}");
    }
}

/// Runs one entry command.
pub(super) async fn run(
    conn: &Connection,
    command: EntryCommand,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let mut c = client::connect(conn).await?;
    let format = conn.output;
    let one = |out: &mut dyn Write, e: &pb::Entry| {
        emit(out, format, || entry_text(e), || entry_json(e)).map_err(CliError::from)
    };
    match command {
        EntryCommand::Create(CreateArgs { file: Some(path), .. }) => {
            entry_file::create(&mut c, format, &path, &mut std::io::stdin().lock(), out).await
        }
        EntryCommand::Create(args) => {
            let req = pb::CreateEntryRequest { spec: Some(create_spec(&args)) };
            let entry = c.api.create_entry(req).await.map_err(|s| c.fail(s))?.into_inner();
            warn_missing_parent(&entry);
            one(out, &entry)
        }
        EntryCommand::Show(args) => show(&mut c, format, args, out).await,
        EntryCommand::Update(args) => {
            let get = pb::GetEntryRequest { id: args.id.clone() };
            let current = c.api.get_entry(get).await.map_err(|s| c.fail(s))?.into_inner();
            let spec = apply_update(&args, current.spec.unwrap_or_default())?;
            let req = pb::UpdateEntryRequest { id: args.id.clone(), spec: Some(spec) };
            let entry = c.api.update_entry(req).await.map_err(|s| c.fail(s))?.into_inner();
            warn_missing_parent(&entry);
            one(out, &entry)
        }
        EntryCommand::Delete { file: Some(path), .. } => {
            entry_file::delete(&mut c, format, &path, &mut std::io::stdin().lock(), out).await
        }
        EntryCommand::Delete { id, file: None } => {
            let req = pb::DeleteEntryRequest { id: id.unwrap_or_default() };
            let entry = c.api.delete_entry(req).await.map_err(|s| c.fail(s))?.into_inner();
            let text = || format!("Deleted entry {}\n", entry.id);
            emit(out, format, text, || entry_json(&entry)).map_err(CliError::from)
        }
        EntryCommand::Count => {
            let req = pb::CountEntriesRequest {};
            let count = c.api.count_entries(req).await.map_err(|s| c.fail(s))?.into_inner().count;
            let text =
                || format!("{}\n", count_text(count, "registration entry", "registration entries"));
            emit(out, format, text, || json!({ "count": count })).map_err(CliError::from)
        }
    }
}

async fn show(
    c: &mut client::Client,
    format: super::OutputFormat,
    args: ShowArgs,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    if let Some(id) = args.id {
        let entry = c.api.get_entry(pb::GetEntryRequest { id }).await.map_err(|s| c.fail(s))?;
        let entry = entry.into_inner();
        return emit(out, format, || entry_text(&entry), || entry_json(&entry)).map_err(Into::into);
    }
    let one_page = args.page_size.is_some() || args.page_token.is_some();
    let mut req = pb::ListEntriesRequest {
        by_spiffe_id: args.spiffe_id.map(|i| i.to_string()).unwrap_or_default(),
        by_parent_id: args.parent_id.map(|i| i.to_string()).unwrap_or_default(),
        by_selectors: strings(&args.selectors),
        page_size: args.page_size.unwrap_or(0),
        page_token: args.page_token.unwrap_or_default(),
    };
    let mut entries = Vec::new();
    let next = loop {
        let page = c.api.list_entries(req.clone()).await.map_err(|s| c.fail(s))?.into_inner();
        entries.extend(page.entries);
        if one_page || page.next_page_token.is_empty() {
            break page.next_page_token;
        }
        req.page_token = page.next_page_token;
    };
    let text = || {
        let mut text =
            format!("Found {}\n\n", count_text(entries.len() as u64, "entry", "entries"));
        text.extend(entries.iter().map(entry_text));
        if !next.is_empty() {
            text += &format!("Next page token: {next}\n");
        }
        text
    };
    let json = || json!({ "entries": entries.iter().map(entry_json).collect::<Vec<_>>(), "next_page_token": next });
    emit(out, format, text, json).map_err(Into::into)
}
