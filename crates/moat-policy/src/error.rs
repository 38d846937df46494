/// Why a policy, host pattern or rule could not be parsed.
///
/// Each message quotes the offending text and says what was expected, so a
/// caller can prefix it with a file and line and show it as is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("invalid network policy {value:?}: expected \"permissive\" or \"strict\"")]
    InvalidPolicy { value: String },

    #[error("invalid host pattern {pattern:?}: {reason}")]
    InvalidHost { pattern: String, reason: String },

    /// A request's host that names no destination unambiguously
    /// ([`CanonicalHost`](crate::CanonicalHost)).
    #[error("invalid host {host:?}: {reason}")]
    InvalidRequestHost { host: String, reason: String },

    #[error(
        "invalid network rule {rule:?}: expected \"allow\" or \"deny\", then a METHOD (or *), \
         then a path starting with / ({reason})"
    )]
    InvalidRule { rule: String, reason: String },

    /// An [`McpServerName`](crate::McpServerName) that does not parse.
    #[error(
        "{name:?} is not a valid MCP server name: use letters, digits, '-' and '_', starting \
         with a letter or digit"
    )]
    InvalidMcpName { name: String },
}
