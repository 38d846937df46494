//! Syntax of the small string languages inside moat.yaml: dependencies,
//! grants, names. Only the shape is checked here; whether a provider or a
//! package exists is for the crates that use them to say.

use std::str::FromStr;

use crate::{ConfigError, Dependency, DependencyKind, SpecError};

impl Dependency {
    /// Parses `name`, `name@version` or `prefix:pkg[@version]`.
    pub fn parse(spec: &str) -> Result<Dependency, ConfigError> {
        parse_dependency(spec).map_err(|error| ConfigError::InvalidSpec {
            what: "dependency",
            spec: spec.to_owned(),
            error: Box::new(error),
        })
    }
}

impl FromStr for Dependency {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

pub(crate) fn parse_dependency(spec: &str) -> Result<Dependency, SpecError> {
    if spec.is_empty() {
        return Err(SpecError::EmptyDependency);
    }
    if let Some(c) = spec.chars().find(|c| c.is_whitespace()) {
        return Err(SpecError::Whitespace(c));
    }
    let Some((prefix, rest)) = spec.split_once(':') else {
        if spec == "docker" {
            return Err(SpecError::DockerWithoutMode);
        }
        let (name, version) = split_version(spec)?;
        if !is_registry_name(name) {
            return Err(SpecError::DependencyName {
                name: name.to_owned(),
            });
        }
        return Ok(Dependency {
            kind: DependencyKind::Registry,
            name: name.to_owned(),
            version,
        });
    };
    let Some(kind) = DependencyKind::PREFIXES
        .iter()
        .find(|(p, _)| *p == prefix)
        .map(|(_, k)| *k)
    else {
        return Err(SpecError::UnknownPrefix {
            prefix: prefix.to_owned(),
        });
    };
    if kind == DependencyKind::Docker {
        return match rest {
            "host" | "dind" => Ok(Dependency {
                kind,
                name: rest.to_owned(),
                version: None,
            }),
            _ => Err(SpecError::DockerMode {
                found: rest.to_owned(),
            }),
        };
    }
    let (name, version) = split_version(rest)?;
    let valid = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric() || c == '@')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "@/._~+-".contains(c));
    if !valid {
        return Err(SpecError::PackageName {
            name: name.to_owned(),
            prefix: prefix.to_owned(),
        });
    }
    Ok(Dependency {
        kind,
        name: name.to_owned(),
        version,
    })
}

/// Splits at the last `@` that is not the first character, so scoped npm
/// packages (`@scope/pkg@1`) keep their leading `@`.
fn split_version(s: &str) -> Result<(&str, Option<String>), SpecError> {
    match s.rfind('@').filter(|i| *i > 0) {
        None => Ok((s, None)),
        Some(i) => {
            let (name, version) = (s.get(..i).unwrap_or(s), s.get(i + 1..).unwrap_or(""));
            let valid = !version.is_empty()
                && version
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._+-".contains(c));
            if !valid {
                return Err(SpecError::Version {
                    version: version.to_owned(),
                });
            }
            Ok((name, Some(version.to_owned())))
        }
    }
}

fn is_registry_name(name: &str) -> bool {
    name.chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
}

/// `lowercase letters, digits, '-', '_'`, starting alphanumeric, ≤ 63: it
/// becomes part of host names and container names.
pub(crate) fn check_run_name(name: &str) -> Result<(), SpecError> {
    if is_dns_label(name) {
        Ok(())
    } else {
        Err(SpecError::RunName {
            name: name.to_owned(),
        })
    }
}

/// A DNS label: 1 to 63 lowercase letters, digits and '-', starting and
/// ending with a letter or digit. Run and endpoint names become hostnames
/// (`web.my-run.localhost`).
pub fn is_dns_label(name: &str) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    !name.is_empty()
        && name.len() <= 63
        && name.bytes().next().is_some_and(alnum)
        && name.bytes().last().is_some_and(alnum)
        && name.bytes().all(|b| alnum(b) || b == b'-')
}

/// `ports:` keys and `--port NAME=PORT` names.
pub(crate) fn check_endpoint_name(name: &str) -> Result<(), SpecError> {
    if is_dns_label(name) {
        Ok(())
    } else {
        Err(SpecError::EndpointName {
            name: name.to_owned(),
        })
    }
}

/// `--port NAME=PORT`: an endpoint and the port inside the sandbox.
pub fn parse_port_flag(spec: &str) -> Result<(String, u16), SpecError> {
    let bad = || SpecError::PortFlag {
        spec: spec.to_owned(),
    };
    let (name, port) = spec.split_once('=').ok_or_else(bad)?;
    check_endpoint_name(name)?;
    let port = port
        .parse::<u16>()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(bad)?;
    Ok((name.to_owned(), port))
}

/// Names of MCP servers, providers and grant suffixes.
fn is_simple_name(s: &str) -> bool {
    s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
}

/// The grammar of `moat_credentials::GrantName::parse`, checked here so a
/// grant the run could not resolve is refused with its line.
pub(crate) fn check_grant(grant: &str) -> Result<(), SpecError> {
    let ok = match grant.split_once(':') {
        None => is_simple_name(grant) && !grant.contains('.'),
        Some(("ssh", host)) => moat_policy::HostPattern::parse(host)
            .map(|p| !p.is_wildcard())
            .unwrap_or(false),
        Some(("mcp", name)) => moat_policy::McpServerName::parse(name).is_ok(),
        Some(("oauth", _)) => {
            return Err(SpecError::OauthGrant {
                grant: grant.to_owned(),
            })
        }
        Some(_) => false,
    };
    if ok {
        Ok(())
    } else {
        Err(SpecError::Grant {
            grant: grant.to_owned(),
        })
    }
}

pub(crate) fn check_env_name(name: &str) -> Result<(), SpecError> {
    let ok = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(SpecError::EnvName {
            name: name.to_owned(),
        })
    }
}

pub(crate) fn check_header_name(name: &str) -> Result<(), SpecError> {
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c));
    if ok {
        Ok(())
    } else {
        Err(SpecError::HeaderName {
            name: name.to_owned(),
        })
    }
}

/// The header an MCP server's credential is sent in: any valid name but
/// those that frame the message, route it, or belong to the hop between
/// client and proxy. A token sent as `Host` or `Content-Length` would
/// change where or how the request goes (and show in places a credential
/// never should), and a hop header is dropped before it leaves.
pub(crate) fn check_mcp_auth_header(name: &str) -> Result<(), SpecError> {
    check_header_name(name)?;
    let lower = name.to_ascii_lowercase();
    let why = match lower.as_str() {
        "host" | "forwarded" | "x-forwarded-host" | "x-forwarded-for" | "x-forwarded-proto"
        | "x-original-url" | "x-rewrite-url" => Some("routes the request"),
        "x-http-method-override" | "x-http-method" | "x-method-override" => {
            Some("changes the request's method")
        }
        "content-length" | "transfer-encoding" | "content-encoding" | "expect" | "trailer" => {
            Some("frames the request's body")
        }
        "connection" | "upgrade" | "te" | "keep-alive" => {
            Some("is a hop-by-hop header, dropped or acted on by the proxy")
        }
        _ if lower.starts_with("proxy-") => Some("is for the proxy, which drops it"),
        _ => None,
    };
    match why {
        None => Ok(()),
        Some(why) => Err(SpecError::CredentialHeader {
            name: name.to_owned(),
            why,
        }),
    }
}

/// https anywhere; plain http only to this machine, where nothing travels
/// over a network.
pub(crate) fn check_mcp_url(raw: &str) -> Result<url::Url, SpecError> {
    let url = url::Url::parse(raw).map_err(|error| SpecError::Url {
        url: raw.to_owned(),
        error,
    })?;
    let host = url.host_str().unwrap_or("");
    match url.scheme() {
        "https" if !host.is_empty() => Ok(url),
        "http" if matches!(host, "localhost" | "127.0.0.1" | "[::1]") => Ok(url),
        "http" => Err(SpecError::PlainHttp {
            url: raw.to_owned(),
        }),
        _ => Err(SpecError::NotHttps {
            url: raw.to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dep(s: &str) -> Dependency {
        match Dependency::parse(s) {
            Ok(d) => d,
            Err(e) => panic!("{e}"),
        }
    }

    fn dep_err(s: &str) -> String {
        match Dependency::parse(s) {
            Ok(d) => panic!("{s} parsed as {d:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn dependencies() {
        assert_eq!(
            dep("node@22"),
            Dependency {
                kind: DependencyKind::Registry,
                name: "node".into(),
                version: Some("22".into())
            }
        );
        assert_eq!(dep("postgres").version, None);
        let d = dep("npm:@anthropic-ai/claude-code@1.0.3");
        assert_eq!(
            (d.kind, d.name.as_str()),
            (DependencyKind::Npm, "@anthropic-ai/claude-code")
        );
        assert_eq!(d.version.as_deref(), Some("1.0.3"));
        assert_eq!(
            dep("go:golang.org/x/tools/gopls@v0.16.0").kind,
            DependencyKind::Go
        );
        assert_eq!(dep("docker:dind").to_string(), "docker:dind");
        for s in [
            "pip:requests@2.31.0",
            "uv:ruff",
            "cargo:ripgrep",
            "go-extras",
            "python@3.12",
        ] {
            assert_eq!(dep(s).to_string(), s);
        }
        assert_eq!(
            dep_err("docker"),
            "invalid dependency \"docker\": docker needs a mode"
        );
        let docker = Dependency::parse("docker").unwrap_err();
        assert!(moat_hint::Hint::hint(&docker)
            .unwrap()
            .as_str()
            .contains("use docker:host (the host's Docker socket) or docker:dind"));
        assert!(dep_err("docker:x").contains("docker:host or docker:dind"));
        assert!(dep_err("brew:jq").contains("unknown prefix \"brew\""));
        assert!(dep_err("Node").contains("not a dependency name"));
        assert!(dep_err("node@").contains("version \"\""));
        assert!(dep_err("node@>=2").contains("is not valid"));
        assert!(dep_err("npm:").contains("not a valid npm package name"));
        assert!(dep_err("npm:a;rm").contains("not a valid npm package name"));
        assert!(dep_err("").contains("empty"));
        assert_eq!(
            dep_err("a b"),
            "invalid dependency \"a b\": ' ' is not allowed"
        );
        let spaced = Dependency::parse("a b").unwrap_err();
        assert!(moat_hint::Hint::hint(&spaced)
            .unwrap()
            .as_str()
            .contains("one dependency per list item"));
    }

    #[test]
    fn grants() {
        for g in ["github", "ssh:github.com", "mcp:linear", "brave-search"] {
            assert_eq!(check_grant(g), Ok(()), "{g}");
        }
        for g in [
            "",
            "ssh:",
            "ssh:*.x.com",
            "mcp:",
            "foo:bar",
            "git hub",
            "a.b",
            "ssh:a:22",
            "oauth:notion",
        ] {
            assert!(check_grant(g).is_err(), "{g}");
        }
    }

    #[test]
    fn names() {
        assert!(check_run_name("my-app-2").is_ok());
        assert!(check_run_name("my-app_2").is_err());
        assert!(check_run_name("a-").is_err());
        assert!(check_run_name("My").is_err());
        assert!(check_run_name("-a").is_err());
        assert!(check_run_name("").is_err());
        assert!(check_run_name(&"a".repeat(64)).is_err());
        assert!(check_run_name(&"a".repeat(63)).is_ok());
        assert!(check_env_name("_A1").is_ok());
        assert!(check_env_name("1A").is_err());
        assert!(check_env_name("A-B").is_err());
        assert!(check_header_name("X-Api-Key").is_ok());
        assert!(check_header_name("X Api").is_err());
        for ok in ["Authorization", "X-Api-Key", "x-custom-token", "Cookie"] {
            assert!(check_mcp_auth_header(ok).is_ok(), "{ok}");
        }
        for bad in [
            "Host",
            "content-length",
            "Transfer-Encoding",
            "Connection",
            "Upgrade",
            "TE",
            "Trailer",
            "Keep-Alive",
            "Proxy-Authorization",
            "proxy-connection",
            "X-HTTP-Method-Override",
            "X-Original-URL",
            ":authority",
        ] {
            let e = check_mcp_auth_header(bad).map_err(|e| e.to_string());
            assert!(e.is_err(), "{bad}");
        }
        let host = check_mcp_auth_header("Host").unwrap_err();
        assert_eq!(
            host.to_string(),
            "\"Host\" cannot carry an MCP server's credential: it routes the request."
        );
        assert!(moat_hint::Hint::hint(&host)
            .unwrap()
            .as_str()
            .contains("such as Authorization or X-Api-Key"));
        assert!(check_grant("mcp:docs.internal").is_err());
    }

    #[test]
    fn mcp_urls() {
        assert!(check_mcp_url("https://mcp.linear.app/sse").is_ok());
        assert!(check_mcp_url("http://localhost:3000/mcp").is_ok());
        assert!(check_mcp_url("http://127.0.0.1/mcp").is_ok());
        assert!(check_mcp_url("http://[::1]:9/mcp").is_ok());
        assert!(check_mcp_url("http://example.com/mcp")
            .is_err_and(|e| e.to_string().contains("uses http")));
        assert!(check_mcp_url("ftp://example.com").is_err());
        assert!(check_mcp_url("not a url").is_err());
    }
}
