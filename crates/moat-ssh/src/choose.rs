//! What `moat grant ssh` is told on its command line: which of the
//! agent's keys signs for the host (`--key`), and which host keys to pin
//! (`--host-key`, else the user's known_hosts files).

use std::path::{Path, PathBuf};

use crate::{Identity, SshError};

/// The agent's keys, one `  FINGERPRINT  comment` line each, for errors
/// and prompts.
pub fn identity_listing(ids: &[Identity]) -> String {
    ids.iter()
        .map(|id| {
            let fp = crate::fingerprint(&id.key).unwrap_or_else(|_| "(unparsable)".into());
            format!("  {fp}  {}", id.comment)
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The key `--key` names: a public key file (or a private key whose
/// `.pub` sits beside it), or a fingerprint with or without `SHA256:`.
pub fn find_key<'a>(ids: &'a [Identity], wanted: &str) -> Result<&'a Identity, SshError> {
    let path = Path::new(wanted);
    let blob = if path.exists() {
        Some(read_public_key_file(path)?)
    } else {
        None
    };
    let wanted_fp = if wanted.starts_with("SHA256:") {
        wanted.to_string()
    } else {
        format!("SHA256:{wanted}")
    };
    ids.iter()
        .find(|id| match &blob {
            Some(b) => &id.key == b,
            None => crate::fingerprint(&id.key).is_ok_and(|fp| fp == wanted_fp),
        })
        .ok_or_else(|| SshError::KeyNotInAgent(wanted.to_string(), identity_listing(ids)))
}

/// A key file given to `--key`: a `.pub`, or a private key whose `.pub`
/// sits beside it (the private key itself is never read).
fn read_public_key_file(path: &Path) -> Result<Vec<u8>, SshError> {
    let pub_path = if path.extension().is_some_and(|e| e == "pub") {
        path.to_path_buf()
    } else {
        let mut p = path.as_os_str().to_owned();
        p.push(".pub");
        PathBuf::from(p)
    };
    let text = std::fs::read_to_string(&pub_path).map_err(|error| SshError::PublicKeyFile {
        path: pub_path.clone(),
        error,
    })?;
    crate::key_blob(&text)
}

/// `--host-key`: a key line, or a file of key lines (`.pub` or
/// `known_hosts` format), each key once.
pub fn parse_host_keys(given: &str) -> Result<Vec<String>, SshError> {
    let path = Path::new(given);
    let text = if path.is_file() {
        std::fs::read_to_string(path).map_err(|error| SshError::HostKeyFile {
            path: path.to_path_buf(),
            error,
        })?
    } else {
        given.to_string()
    };
    let mut keys = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        // `type base64 [comment]`, or `hosts type base64 [comment]`.
        let candidates = [fields.get(..2), fields.get(1..3)];
        let key = candidates
            .into_iter()
            .flatten()
            .map(|f| f.join(" "))
            .find(|k| crate::key_blob(k).is_ok());
        match key {
            Some(k) if !keys.contains(&k) => keys.push(k),
            Some(_) => {}
            None => return Err(SshError::NotAHostKey(line.to_owned())),
        }
    }
    if keys.is_empty() {
        return Err(SshError::NoHostKeyGiven(given.to_owned()));
    }
    Ok(keys)
}

/// The known_hosts files `moat grant ssh` pins host keys from when
/// `--host-key` is not given: the user's, then the system's.
pub fn known_hosts_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    if let Some(home) = std::env::var_os("HOME") {
        files.push(PathBuf::from(home).join(".ssh/known_hosts"));
    }
    files.push(PathBuf::from("/etc/ssh/ssh_known_hosts"));
    files
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILnuRaNbMTatW5PUvmarNfnIFYEP2MKgTwRVdxtXCEWY";

    #[test]
    fn host_keys_parse_from_lines_and_known_hosts_format() {
        assert_eq!(parse_host_keys(KEY).unwrap(), vec![KEY.to_string()]);
        assert_eq!(
            parse_host_keys(&format!("github.com {KEY} comment\n{KEY}")).unwrap(),
            vec![KEY.to_string()]
        );
        assert!(matches!(
            parse_host_keys("ssh-ed25519 garbage"),
            Err(SshError::NotAHostKey(_))
        ));
        assert!(matches!(
            parse_host_keys("# only a comment"),
            Err(SshError::NoHostKeyGiven(_))
        ));
    }

    #[test]
    fn a_key_not_in_the_agent_lists_those_it_holds() {
        let ids = vec![Identity {
            key: crate::key_blob(KEY).unwrap(),
            comment: "me@host".into(),
        }];
        let fp = crate::fingerprint(&ids[0].key).unwrap();
        assert!(std::ptr::eq(find_key(&ids, &fp).unwrap(), &ids[0]));
        let bare = fp.trim_start_matches("SHA256:");
        assert!(std::ptr::eq(find_key(&ids, bare).unwrap(), &ids[0]));
        match find_key(&ids, "SHA256:nope") {
            Err(SshError::KeyNotInAgent(wanted, listing)) => {
                assert_eq!(wanted, "SHA256:nope");
                assert_eq!(listing, format!("  {fp}  me@host"));
            }
            other => panic!("{other:?}"),
        }
    }
}
