//! Static tokens and the `--tokens-file` they go to.

use std::fs::{self};
use std::path::Path;

use sha2::{Digest, Sha256};

pub struct StaticToken {
    pub name: &'static str,
    pub secret: String,
    pub identity_id: &'static str,
    pub scopes: &'static [&'static str],
    /// `None`: `all_tenants = true`.
    pub tenant_id: Option<&'static str>,
}

impl StaticToken {
    pub fn new(
        name: &'static str,
        scopes: &'static [&'static str],
        tenant_id: Option<&'static str>,
    ) -> StaticToken {
        StaticToken {
            name,
            secret: random_token(),
            identity_id: name,
            scopes,
            tenant_id,
        }
    }
}

pub fn random_token() -> String {
    let bytes: [u8; 24] = std::array::from_fn(|_| fastrand::u8(..));
    format!("skt_{}", hex::encode(bytes))
}

pub fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// Writes the `--tokens-file` TOML for `tokens`.
pub fn write_tokens_file(path: &Path, tokens: &[&StaticToken]) {
    let mut toml = String::new();
    for token in tokens {
        let scopes: Vec<String> = token
            .scopes
            .iter()
            .map(|scope| format!("\"{scope}\""))
            .collect();
        toml.push_str("[[tokens]]\n");
        toml.push_str(&format!("name = \"{}\"\n", token.name));
        toml.push_str(&format!("sha256 = \"{}\"\n", sha256_hex(&token.secret)));
        toml.push_str(&format!("identity_id = \"sa:{}\"\n", token.identity_id));
        toml.push_str(&format!("scopes = [{}]\n", scopes.join(", ")));
        match token.tenant_id {
            Some(tenant) => toml.push_str(&format!("tenant_id = \"{tenant}\"\n\n")),
            None => toml.push_str("all_tenants = true\n\n"),
        }
    }
    fs::write(path, toml).expect("write tokens file");
}
