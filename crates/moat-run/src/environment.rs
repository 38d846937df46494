//! What the sandbox sees: environment variables and injected files.

use std::path::PathBuf;

use moat_credentials::ResolvedGrant;
use moat_sandbox::InjectedFile;

/// The moat CA inside the sandbox.
pub const CA_PATH: &str = "/etc/ssl/certs/moat-ca/ca.crt";
/// System roots plus the moat CA, for tools that take one bundle.
pub const BUNDLE_PATH: &str = "/etc/ssl/certs/moat-ca/bundle.pem";

/// Host bundles of system roots, first found wins.
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

/// Inputs to the sandbox environment.
pub struct SandboxEnv<'a> {
    pub run_id: &'a str,
    pub run_name: &'a str,
    /// `http://moat:<token>@127.0.0.1:<port>`.
    pub proxy_url: String,
    /// The proxy's address as the sandbox reaches it (for MCP relay URLs).
    pub proxy_authority: String,
    /// `Basic …` of the run's token: what MCP clients present to the
    /// relay (the token is already in `HTTP_PROXY`).
    pub proxy_authorization: String,
    pub ca_pem: &'a str,
    pub grants: &'a [ResolvedGrant],
    pub user_env: &'a [(String, String)],
    pub interactive: bool,
}

impl SandboxEnv<'_> {
    /// Variables, in precedence order: moat's own first, the user's last
    /// (a later entry replaces an earlier one of the same name).
    pub fn variables(&self) -> Vec<(String, String)> {
        let mut vars: Vec<(String, String)> = Vec::new();
        let mut set = |k: &str, v: &str| {
            vars.retain(|(name, _)| name != k);
            vars.push((k.to_string(), v.to_string()));
        };
        for key in ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"] {
            set(key, &self.proxy_url);
        }
        for key in ["NO_PROXY", "no_proxy"] {
            set(key, "localhost,127.0.0.1,::1");
        }
        for key in [
            "SSL_CERT_FILE",
            "REQUESTS_CA_BUNDLE",
            "CURL_CA_BUNDLE",
            "GIT_SSL_CAINFO",
        ] {
            set(key, BUNDLE_PATH);
        }
        set("NODE_EXTRA_CA_CERTS", CA_PATH);
        // Node 24+ honours the proxy variables only when asked to.
        set("NODE_USE_ENV_PROXY", "1");
        // An npmrc `cafile=` replaces Node's trust store; ours keeps the
        // system roots and the moat CA together.
        set("NPM_CONFIG_CAFILE", BUNDLE_PATH);
        set("MOAT_RUN_ID", self.run_id);
        set("MOAT_RUN_NAME", self.run_name);
        set("MOAT_PROXY", &self.proxy_authority);
        set("MOAT_PROXY_AUTHORIZATION", &self.proxy_authorization);
        for key in ["TERM", "LANG", "LC_ALL", "COLORTERM", "TZ"] {
            if let Ok(v) = std::env::var(key) {
                if key != "TERM" || self.interactive || !v.is_empty() {
                    set(key, &v);
                }
            }
        }
        for grant in self.grants {
            if let Some(ph) = &grant.placeholder {
                set(&ph.env, &ph.value);
            }
        }
        for (k, v) in self.user_env {
            set(k, v);
        }
        vars
    }

    /// The CA, the trust bundle and a git configuration that authenticates
    /// to the proxy.
    pub fn files(&self) -> Vec<InjectedFile> {
        let mut bundle = SYSTEM_BUNDLES
            .iter()
            .find_map(|p| std::fs::read(p).ok())
            .unwrap_or_default();
        if !bundle.is_empty() && !bundle.ends_with(b"\n") {
            bundle.push(b'\n');
        }
        bundle.extend_from_slice(self.ca_pem.as_bytes());
        let gitconfig = "[http]\n\tproxyAuthMethod = basic\n";
        vec![
            InjectedFile {
                path_in_sandbox: PathBuf::from(CA_PATH),
                contents: self.ca_pem.as_bytes().to_vec(),
                mode: 0o644,
            },
            InjectedFile {
                path_in_sandbox: PathBuf::from(BUNDLE_PATH),
                contents: bundle,
                mode: 0o644,
            },
            InjectedFile {
                path_in_sandbox: PathBuf::from("/etc/gitconfig"),
                contents: gitconfig.as_bytes().to_vec(),
                mode: 0o644,
            },
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_env_wins_and_proxy_vars_are_set() {
        let env = SandboxEnv {
            run_id: "run_0123456789ab",
            run_name: "brave-otter",
            proxy_url: "http://moat:t@127.0.0.1:8080".into(),
            proxy_authorization: "Basic bW9hdDp0".into(),
            proxy_authority: "127.0.0.1:8080".into(),
            ca_pem: "-----BEGIN CERTIFICATE-----\n",
            grants: &[],
            user_env: &[("NO_PROXY".into(), "internal".into())],
            interactive: false,
        };
        let vars = env.variables();
        let get = |k: &str| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("https_proxy"), Some("http://moat:t@127.0.0.1:8080"));
        assert_eq!(get("NO_PROXY"), Some("internal"));
        assert_eq!(get("SSL_CERT_FILE"), Some(BUNDLE_PATH));
        assert_eq!(vars.iter().filter(|(n, _)| n == "NO_PROXY").count(), 1);
        let files = env.files();
        assert!(files[1]
            .contents
            .ends_with(b"-----BEGIN CERTIFICATE-----\n"));
    }
}
