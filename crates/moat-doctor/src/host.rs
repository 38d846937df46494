//! moat's own state on this host: secret files, credentials, the SSH
//! agent, free disk.

use std::path::{Path, PathBuf};

use moat_credentials::CredentialStore;
use moat_home::{MoatHome, Profile};
use moat_sandbox::{CheckStatus, DoctorCheck};

/// A secret file: absent is fine, any group or other bit is a failure.
pub(crate) fn private_file(name: &str, path: &Path, absent: &str) -> DoctorCheck {
    if !path.exists() {
        return DoctorCheck::ok(name, absent);
    }
    match moat_home::mode_of(path) {
        Ok(mode) if mode & 0o077 == 0 => {
            DoctorCheck::ok(name, format!("{} (0600)", path.display()))
        }
        Ok(mode) => DoctorCheck::problem(
            CheckStatus::Fail,
            name,
            format!(
                "{name} has insecure permissions: {} has permissions {mode:04o} (expected 0600).",
                path.display()
            ),
            format!("chmod 600 {}", path.display()),
        ),
        Err(e) => DoctorCheck::problem(
            CheckStatus::Fail,
            name,
            e.to_string(),
            format!("check {}", path.display()),
        ),
    }
}

/// The `moat grant` command that stores a credential file's provider
/// again (`mcp-NAME` files belong to `moat grant mcp NAME`).
fn grant_command(provider: &str) -> String {
    match provider.strip_prefix("mcp-") {
        Some(name) => format!("moat grant mcp {name}"),
        None => format!("moat grant {provider}"),
    }
}

/// Every stored credential of the profile: it decrypts and has not
/// expired.
pub(crate) fn credentials(home: &MoatHome, profile: Option<&Profile>) -> Vec<DoctorCheck> {
    let store = CredentialStore::new(home.clone(), profile.cloned());
    let entries = match store.list() {
        Ok(entries) => entries,
        Err(e) => return vec![crate::from_error(CheckStatus::Fail, "credentials", &e)],
    };
    if entries.is_empty() {
        let profile = profile.map(Profile::as_str).unwrap_or("default");
        return vec![DoctorCheck::ok(
            "credentials",
            format!("none stored (profile {profile})"),
        )];
    }
    let now = chrono::Utc::now();
    entries
        .into_iter()
        .map(|entry| {
            let name = format!("credential {}", entry.provider);
            match entry.credential {
                Ok(c) if c.is_expired(now) => DoctorCheck::problem(
                    CheckStatus::Fail,
                    &name,
                    format!(
                        "expired at {}",
                        c.expires_at.map(|t| t.to_rfc3339()).unwrap_or_default()
                    ),
                    grant_command(&entry.provider),
                ),
                Ok(c) => DoctorCheck::ok(
                    &name,
                    match c.expires_at {
                        Some(t) => format!("decrypts; expires {}", t.format("%Y-%m-%d %H:%M UTC")),
                        None => "decrypts".to_owned(),
                    },
                ),
                Err(e) => DoctorCheck::problem(
                    CheckStatus::Fail,
                    &name,
                    format!("cannot be decrypted: {e} (the encryption key changed?)"),
                    grant_command(&entry.provider),
                ),
            }
        })
        .collect()
}

/// `SSH_AUTH_SOCK` set, and the agent answering a key list request.
pub(crate) fn ssh_agent() -> DoctorCheck {
    let fix = "eval \"$(ssh-agent -s)\" && ssh-add (needed only for ssh: grants)";
    let Some(sock) = std::env::var_os("SSH_AUTH_SOCK").filter(|s| !s.is_empty()) else {
        return DoctorCheck::problem(
            CheckStatus::Warn,
            "ssh agent",
            "SSH_AUTH_SOCK is not set",
            fix,
        );
    };
    let sock = PathBuf::from(sock);
    match moat_ssh::agent_key_count(&sock) {
        Ok(n) => DoctorCheck::ok(
            "ssh agent",
            format!("answering at {} ({n} key(s))", sock.display()),
        ),
        Err(e) => DoctorCheck::problem(
            CheckStatus::Warn,
            "ssh agent",
            format!("{} does not answer: {e}", sock.display()),
            fix,
        ),
    }
}

/// Below this much free space a run fails; below ten times it, a warning.
const DISK_FAIL_BYTES: u64 = 100_000_000;

/// Free space where MOAT_HOME is (or would be).
pub(crate) fn disk(home: &Path) -> DoctorCheck {
    let mut dir = home;
    while !dir.exists() {
        match dir.parent() {
            Some(p) => dir = p,
            None => break,
        }
    }
    match rustix::fs::statvfs(dir) {
        Ok(st) => {
            let free = st.f_bavail.saturating_mul(st.f_frsize);
            let text = format!("{:.1} GB free under {}", free as f64 / 1e9, dir.display());
            let fix = "free space on that filesystem: moat clean removes stopped runs, or set \
                       MOAT_HOME to a larger disk";
            if free < DISK_FAIL_BYTES {
                DoctorCheck::problem(CheckStatus::Fail, "disk", text, fix)
            } else if free < DISK_FAIL_BYTES * 10 {
                DoctorCheck::problem(CheckStatus::Warn, "disk", text, fix)
            } else {
                DoctorCheck::ok("disk", text)
            }
        }
        Err(e) => DoctorCheck::problem(
            CheckStatus::Warn,
            "disk",
            format!("cannot read free space of {}: {e}", dir.display()),
            "check that the directory is readable",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_readable_secret_file_fails_with_the_chmod_fix() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key");
        std::fs::write(&key, b"k").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let check = private_file("key file", &key, "absent");
        assert_eq!(check.status, CheckStatus::Fail);
        assert_eq!(check.fix, Some(format!("chmod 600 {}", key.display())));
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            private_file("key file", &key, "absent").status,
            CheckStatus::Ok
        );
    }

    #[test]
    fn mcp_credentials_are_granted_with_the_mcp_command() {
        assert_eq!(grant_command("mcp-linear"), "moat grant mcp linear");
        assert_eq!(grant_command("github"), "moat grant github");
    }
}
