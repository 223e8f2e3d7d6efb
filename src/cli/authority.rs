//! `keycard authority x509|jwt show|prepare|activate|taint|revoke`.

use std::io::Write;

use clap::Subcommand;
use serde_json::json;

use super::output::{authorities_text, authority_json, emit};
use super::{CliError, Connection, client};
use crate::server::admin::pb;

/// Which kind of authority.
#[derive(Debug, Subcommand)]
pub enum AuthorityKindCommand {
    /// The authorities that sign X.509-SVIDs.
    X509 {
        /// What to do.
        #[command(subcommand)]
        action: AuthorityAction,
    },
    /// The authorities that sign JWT-SVIDs.
    Jwt {
        /// What to do.
        #[command(subcommand)]
        action: AuthorityAction,
    },
}

/// What to do with authorities.
#[derive(Debug, Subcommand)]
pub enum AuthorityAction {
    /// List the authorities, oldest first.
    Show,
    /// Prepare the next authority (published in the bundle, not yet signing).
    Prepare,
    /// Activate the prepared authority.
    Activate {
        /// The authority ID.
        #[arg(long)]
        id: String,
    },
    /// Taint an old authority: agents renew what it signed.
    Taint {
        /// The authority ID.
        #[arg(long)]
        id: String,
    },
    /// Revoke a tainted authority: it leaves the bundle.
    Revoke {
        /// The authority ID.
        #[arg(long)]
        id: String,
    },
}

/// Runs one authority command.
pub(super) async fn run(
    conn: &Connection,
    command: AuthorityKindCommand,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let (kind, action) = match command {
        AuthorityKindCommand::X509 { action } => (pb::AuthorityKind::X509, action),
        AuthorityKindCommand::Jwt { action } => (pb::AuthorityKind::Jwt, action),
    };
    let kind = i32::from(kind);
    let mut c = client::connect(conn).await?;
    let format = conn.output;
    let changed = |verb: &str, a: &pb::Authority, out: &mut dyn Write| {
        let text = || format!("{verb} authority {} (now {})\n", a.id, a.state);
        emit(out, format, text, || authority_json(a)).map_err(CliError::from)
    };
    match action {
        AuthorityAction::Show => {
            let req = pb::ListAuthoritiesRequest { kind };
            let list = c.api.list_authorities(req).await.map_err(|s| c.fail(s))?.into_inner();
            let json = || {
                let items: Vec<_> = list.authorities.iter().map(authority_json).collect();
                json!({ "authorities": items })
            };
            emit(out, format, || authorities_text(&list.authorities), json)?;
            Ok(())
        }
        AuthorityAction::Prepare => {
            let req = pb::ListAuthoritiesRequest { kind };
            let a = c.api.prepare_authority(req).await.map_err(|s| c.fail(s))?.into_inner();
            changed("Prepared", &a, out)
        }
        AuthorityAction::Activate { id } => {
            let req = pb::AuthorityRequest { kind, id };
            let a = c.api.activate_authority(req).await.map_err(|s| c.fail(s))?.into_inner();
            changed("Activated", &a, out)
        }
        AuthorityAction::Taint { id } => {
            let req = pb::AuthorityRequest { kind, id };
            let a = c.api.taint_authority(req).await.map_err(|s| c.fail(s))?.into_inner();
            changed("Tainted", &a, out)
        }
        AuthorityAction::Revoke { id } => {
            let req = pb::AuthorityRequest { kind, id: id.clone() };
            c.api.revoke_authority(req).await.map_err(|s| c.fail(s))?;
            let text = || format!("Revoked authority {id}\n");
            emit(out, format, text, || json!({ "revoked": id }))?;
            Ok(())
        }
    }
}
