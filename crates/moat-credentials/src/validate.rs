//! Checking a token against its API when it is granted, so a typo is
//! caught now rather than as a 401 in the middle of an agent's run.
//!
//! Base URLs can be overridden (`MOAT_GITHUB_API_URL` for GitHub
//! Enterprise, `MOAT_ANTHROPIC_API_URL`); plain `http://` is accepted only
//! for loopback addresses, so a token is never sent in clear over a network.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use url::Url;

use crate::{CredentialError, Rejection, Secret};

/// The outcome of a validation that did not reject the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Validation {
    /// The API accepted the token; `identity` names the account if known.
    Valid {
        /// Account name (GitHub login), if the API says.
        identity: Option<String>,
        /// Scopes, if the API says.
        scopes: Vec<String>,
    },
    /// The API could not be reached; the token is neither good nor bad.
    Unreachable(String),
}

/// The API base URL from `env_var`, else `default`.
pub fn api_base(env_var: &str, default: &str) -> Result<Url, CredentialError> {
    let raw = std::env::var(env_var)
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| default.to_string());
    let url = Url::parse(raw.trim()).map_err(|error| Rejection::BadUrl {
        var: env_var.to_owned(),
        value: raw.clone(),
        error,
    })?;
    match url.scheme() {
        "https" => Ok(url),
        "http" if is_loopback(&url) => Ok(url),
        "http" => Err(Rejection::PlainHttp {
            var: env_var.to_owned(),
            value: raw,
        }
        .into()),
        other => Err(Rejection::Scheme {
            var: env_var.to_owned(),
            value: raw.clone(),
            scheme: other.to_owned(),
        }
        .into()),
    }
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

fn endpoint(base: &Url, path: &str) -> Result<Url, CredentialError> {
    let mut base = base.clone();
    if !base.path().ends_with('/') {
        let p = format!("{}/", base.path());
        base.set_path(&p);
    }
    base.join(path).map_err(|error| {
        Rejection::Endpoint {
            path: path.to_owned(),
            error,
        }
        .into()
    })
}

fn client() -> Result<reqwest::Client, CredentialError> {
    let mut builder = reqwest::Client::builder()
        .user_agent(concat!("moat/", env!("CARGO_PKG_VERSION")))
        .timeout(Duration::from_secs(15))
        .connect_timeout(Duration::from_secs(5));
    if let Some(path) = std::env::var_os("MOAT_UPSTREAM_CA_FILE").filter(|v| !v.is_empty()) {
        let path = std::path::PathBuf::from(path);
        let pem = std::fs::read(&path).map_err(|error| Rejection::CaFile {
            path: path.clone(),
            error,
        })?;
        for cert in reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|error| Rejection::CaBundle { path, error })?
        {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder
        .build()
        .map_err(|error| Rejection::Client(error).into())
}

/// A pending check of a secret with its provider's API.
pub type PendingValidation<'a> =
    Pin<Box<dyn Future<Output = Result<Validation, CredentialError>> + Send + 'a>>;

/// The check of `secret` for `provider`, for the providers moat knows how
/// to check (GitHub, Anthropic); `None` for the others, whose secrets are
/// stored unchecked.
pub fn by_provider<'a>(provider: &str, secret: &'a Secret) -> Option<PendingValidation<'a>> {
    match provider {
        "github" => Some(Box::pin(github(secret))),
        "anthropic" => Some(Box::pin(anthropic(secret))),
        _ => None,
    }
}

/// Validates a GitHub token with `GET /user`.
pub async fn github(token: &Secret) -> Result<Validation, CredentialError> {
    let url = endpoint(
        &api_base("MOAT_GITHUB_API_URL", "https://api.github.com")?,
        "user",
    )?;
    let response = match client()?
        .get(url.clone())
        .bearer_auth(token.expose())
        .header("Accept", "application/vnd.github+json")
        .send()
        .await
    {
        Ok(r) => r,
        Err(e) => {
            return Ok(Validation::Unreachable(format!(
                "{url}: {}",
                error_chain(&e)
            )))
        }
    };
    let status = response.status();
    if status == reqwest::StatusCode::UNAUTHORIZED {
        return Err(Rejection::GithubUnauthorized.into());
    }
    if !status.is_success() {
        return Err(Rejection::GithubStatus { status, url }.into());
    }
    let scopes = response
        .headers()
        .get("x-oauth-scopes")
        .and_then(|v| v.to_str().ok())
        .map(|s| {
            s.split(',')
                .map(|x| x.trim().to_string())
                .filter(|x| !x.is_empty())
                .collect()
        })
        .unwrap_or_default();
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    let identity = body
        .get("login")
        .and_then(|l| l.as_str())
        .map(str::to_string);
    Ok(Validation::Valid { identity, scopes })
}

/// Validates an Anthropic API key with `GET /v1/models`.
pub async fn anthropic(key: &Secret) -> Result<Validation, CredentialError> {
    let url = endpoint(
        &api_base("MOAT_ANTHROPIC_API_URL", "https://api.anthropic.com")?,
        "v1/models",
    )?;
    let response = match client()?
        .get(url.clone())
        .header("x-api-key", key.expose())
        .header("anthropic-version", "2023-06-01")
        .send()
        .await
    {
        Ok(r) => r,
        Err(e) => {
            return Ok(Validation::Unreachable(format!(
                "{url}: {}",
                error_chain(&e)
            )))
        }
    };
    let status = response.status();
    if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
        return Err(Rejection::AnthropicUnauthorized.into());
    }
    if !status.is_success() {
        return Err(Rejection::AnthropicStatus { status, url }.into());
    }
    Ok(Validation::Valid {
        identity: None,
        scopes: Vec::new(),
    })
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_github_and_anthropic_are_checked() {
        let secret = Secret::new("tok".to_string());
        assert!(by_provider("github", &secret).is_some());
        assert!(by_provider("anthropic", &secret).is_some());
        assert!(by_provider("npm", &secret).is_none());
        assert!(by_provider("openai", &secret).is_none());
    }

    #[test]
    fn endpoints_join_under_a_path_prefix() {
        let base = Url::parse("https://ghe.corp.test/api/v3").unwrap();
        assert_eq!(
            endpoint(&base, "user").unwrap().as_str(),
            "https://ghe.corp.test/api/v3/user"
        );
    }

    #[test]
    fn plain_http_only_for_loopback() {
        for (url, ok) in [
            ("http://127.0.0.1:9/", true),
            ("http://localhost:9/", true),
            ("http://[::1]:9/", true),
            ("http://example.test/", false),
            ("ftp://127.0.0.1/", false),
        ] {
            let parsed = Url::parse(url).unwrap();
            let allowed = match parsed.scheme() {
                "https" => true,
                "http" => is_loopback(&parsed),
                _ => false,
            };
            assert_eq!(allowed, ok, "{url}");
        }
    }
}
