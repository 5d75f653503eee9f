//! `scaivault-audit token`: print the bootstrap token, or make a static token and its entry.

use clap::Subcommand;
use scaivault_audit::auth::{BootstrapToken, StaticTokens};

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Print the bootstrap token of a data directory (the server never prints it). Works in
    /// a running pod: `kubectl exec POD -- scaivault-audit token bootstrap`.
    Bootstrap {
        /// The server's data directory.
        #[arg(
            long,
            env = "SCAIVAULT_AUDIT_DATA_DIR",
            value_name = "DIR",
            default_value = "./data"
        )]
        data_dir: std::path::PathBuf,
    },
    /// Generate a token and print it with its entry for the tokens file.
    New {
        /// Name of the entry (for operators).
        #[arg(long)]
        name: String,
        /// Identity the token acts as (e.g. sa:scaivault-ingest).
        #[arg(long)]
        identity_id: String,
        /// Scopes, comma-separated: audit:read, audit:write, audit:export.
        #[arg(long, value_delimiter = ',')]
        scopes: Vec<String>,
        /// Tenant the token is bound to.
        #[arg(
            long,
            conflicts_with = "all_tenants",
            required_unless_present = "all_tenants"
        )]
        tenant_id: Option<String>,
        /// Partner admin: any tenant (chosen with X-Tenant-ID).
        #[arg(long)]
        all_tenants: bool,
    },
}

/// Runs a `token` subcommand.
pub fn run(command: TokenCommand) -> anyhow::Result<()> {
    let (name, identity_id, scopes, tenant_id, all_tenants) = match command {
        TokenCommand::Bootstrap { data_dir } => return print_bootstrap_token(&data_dir),
        TokenCommand::New {
            name,
            identity_id,
            scopes,
            tenant_id,
            all_tenants,
        } => (name, identity_id, scopes, tenant_id, all_tenants),
    };
    let token = scaivault_audit::auth::static_tokens::generate_token()
        .map_err(|error| anyhow::anyhow!("{error}"))?;
    let scopes: Vec<String> = scopes.iter().map(|scope| format!("{scope:?}")).collect();
    let tenant_line = match tenant_id {
        Some(tenant) => format!("tenant_id = {tenant:?}"),
        None if all_tenants => "all_tenants = true".to_string(),
        None => {
            return Err(super::UsageError("give --tenant-id or --all-tenants".into()).into());
        }
    };
    let entry = format!(
        "[[tokens]]\nname = {name:?}\nsha256 = \"{}\"\nidentity_id = {identity_id:?}\nscopes = [{}]\n{tenant_line}\n",
        scaivault_audit::auth::hash_token(&token),
        scopes.join(", ")
    );
    // Validate the entry exactly as the server will.
    StaticTokens::parse(&entry).map_err(anyhow::Error::msg)?;
    println!("token: {token}");
    println!("# add to the tokens file:\n{entry}");
    Ok(())
}

/// `token bootstrap`: the data directory's bootstrap token on stdout, alone on its line.
fn print_bootstrap_token(data_dir: &std::path::Path) -> anyhow::Result<()> {
    match BootstrapToken::read(data_dir)? {
        Some(token) => {
            println!("{token}");
            Ok(())
        }
        None => anyhow::bail!(
            "no bootstrap token in {}: the server generates one on its first start without \
             configured authentication (tokens file, JWKS or TokenReview)",
            data_dir.display()
        ),
    }
}
