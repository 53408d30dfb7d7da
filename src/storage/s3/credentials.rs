//! Where the S3 key comes from, in this order:
//!
//! 1. `NIX_STORED_S3_CREDENTIALS_FILE`, an AWS shared credentials file (what a
//!    NixOS secret such as an agenix or sops file holds);
//! 2. the environment: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and
//!    `AWS_SESSION_TOKEN` (read by object_store itself);
//! 3. the shared credentials file of the AWS tools: `AWS_SHARED_CREDENTIALS_FILE`,
//!    else `~/.aws/credentials`, when it exists;
//! 4. object_store's own chain: web identity (`AWS_WEB_IDENTITY_TOKEN_FILE`), ECS and
//!    EKS container credentials, then the EC2 instance metadata service.
//!
//! In a file, the profile is `AWS_PROFILE`, else `default`.

use std::path::{Path, PathBuf};

/// A static key.
#[derive(PartialEq, Eq)]
pub struct StaticKey {
    /// Access key id.
    pub key_id: String,
    /// Secret access key.
    pub secret: String,
    /// Session token of temporary credentials.
    pub token: Option<String>,
}

impl std::fmt::Debug for StaticKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (secret redacted)", self.key_id)
    }
}

/// The key to use, or `None` to let object_store find one (environment variables,
/// web identity, container or instance credentials).
pub fn resolve(explicit: Option<&Path>) -> Result<Option<StaticKey>, String> {
    let profile = std::env::var("AWS_PROFILE").unwrap_or_else(|_| "default".to_owned());
    if let Some(file) = explicit {
        return from_file(file, &profile, "NIX_STORED_S3_CREDENTIALS_FILE").map(Some);
    }
    if std::env::var_os("AWS_ACCESS_KEY_ID").is_some() {
        return Ok(None);
    }
    let shared = match std::env::var_os("AWS_SHARED_CREDENTIALS_FILE") {
        Some(f) => Some((PathBuf::from(f), "AWS_SHARED_CREDENTIALS_FILE")),
        None => std::env::var_os("HOME").map(|h| {
            (
                PathBuf::from(h).join(".aws/credentials"),
                "~/.aws/credentials",
            )
        }),
    };
    match shared {
        Some((file, what)) if file.exists() => from_file(&file, &profile, what).map(Some),
        // A profile named explicitly must exist somewhere.
        _ if std::env::var_os("AWS_PROFILE").is_some() => Err(format!(
            "AWS_PROFILE {profile:?} is set but there is no shared credentials file to find it in"
        )),
        _ => Ok(None),
    }
}

fn from_file(file: &Path, profile: &str, what: &str) -> Result<StaticKey, String> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("{what} {}: cannot read it: {e}", file.display()))?;
    parse(&text, profile).map_err(|e| format!("{what} {}: {e}", file.display()))
}

/// Reads profile `profile` of an AWS shared credentials file (INI: `[profile]`
/// sections of `key = value` lines, `#` and `;` comments).
pub fn parse(text: &str, profile: &str) -> Result<StaticKey, String> {
    let mut in_profile = false;
    let mut seen = false;
    let (mut key_id, mut secret, mut token) = (None, None, None);
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(section) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let section = section.trim();
            // ~/.aws/config writes `[profile name]`; accept it here too.
            let name = section.strip_prefix("profile ").unwrap_or(section).trim();
            in_profile = name == profile;
            seen |= in_profile;
            continue;
        }
        if !in_profile {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let v = v.trim().to_owned();
        match k.trim().to_ascii_lowercase().as_str() {
            "aws_access_key_id" => key_id = Some(v),
            "aws_secret_access_key" => secret = Some(v),
            "aws_session_token" => token = Some(v),
            _ => {}
        }
    }
    if !seen {
        return Err(format!("no [{profile}] profile in it"));
    }
    match (key_id, secret) {
        (Some(key_id), Some(secret)) if !key_id.is_empty() && !secret.is_empty() => Ok(StaticKey {
            key_id,
            secret,
            token: token.filter(|t| !t.is_empty()),
        }),
        _ => Err(format!(
            "profile [{profile}] needs both aws_access_key_id and aws_secret_access_key"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "# comment\n[default]\naws_access_key_id = AKIA1\naws_secret_access_key=s1\n\n[profile other]\n; note\naws_access_key_id=AKIA2\naws_secret_access_key = s2\naws_session_token = t2\n[empty]\n";

    #[test]
    fn reads_the_named_profile() {
        let d = parse(FILE, "default").unwrap();
        assert_eq!((d.key_id.as_str(), d.secret.as_str()), ("AKIA1", "s1"));
        assert_eq!(d.token, None);
        let o = parse(FILE, "other").unwrap();
        assert_eq!(o.token.as_deref(), Some("t2"));
        assert!(!format!("{o:?}").contains("s2"));
    }

    #[test]
    fn missing_profiles_and_keys_are_errors() {
        assert!(parse(FILE, "nope").unwrap_err().contains("no [nope]"));
        assert!(parse(FILE, "empty").unwrap_err().contains("needs both"));
    }
}
