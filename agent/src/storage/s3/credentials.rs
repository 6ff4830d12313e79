//! A region's credentials: from its config (a credentials file and
//! profile) or the standard AWS chain.

use super::*;

/// The keys a region's credentials come from, resolved once.
pub(super) fn credentials(cfg: &RegionConfig) -> Result<Option<Credentials>, String> {
    if let (Some(id_var), Some(secret_var)) = (&cfg.access_key_id_env, &cfg.secret_access_key_env) {
        let get = |var: &str| {
            std::env::var(var)
                .map_err(|_| format!("environment variable {var} is not set (or not UTF-8)"))
        };
        let id = get(id_var)?;
        let secret = get(secret_var)?;
        return Ok(Some(Credentials::new(id, secret, None, None, "cairn-env")));
    }
    if let Some(file) = &cfg.credentials_file {
        let profile = cfg.profile.as_deref().unwrap_or("default");
        return read_credentials_file(file, profile)
            .map(Some)
            .map_err(|e| format!("credentials file {}: {e}", file.display()));
    }
    Ok(None)
}

/// Read one profile of an AWS shared credentials file (INI).
pub(super) fn read_credentials_file(path: &Path, profile: &str) -> Result<Credentials, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let (mut id, mut secret, mut token) = (None, None, None);
    let mut in_profile = false;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let name = name.trim();
            in_profile = name == profile || name.strip_prefix("profile ") == Some(profile);
            continue;
        }
        if !in_profile {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            let v = v.trim().to_string();
            match k.trim() {
                "aws_access_key_id" => id = Some(v),
                "aws_secret_access_key" => secret = Some(v),
                "aws_session_token" => token = Some(v),
                _ => {}
            }
        }
    }
    match (id, secret) {
        (Some(id), Some(secret)) => Ok(Credentials::new(id, secret, token, None, "cairn-file")),
        _ => Err(format!(
            "profile {profile} lacks aws_access_key_id or aws_secret_access_key"
        )),
    }
}
