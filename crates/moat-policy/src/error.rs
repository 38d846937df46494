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
    InvalidRule { rule: String, reason: RuleProblem },

    /// An [`McpServerName`](crate::McpServerName) that does not parse.
    #[error(
        "{name:?} is not a valid MCP server name: use letters, digits, '-' and '_', starting \
         with a letter or digit"
    )]
    InvalidMcpName { name: String },
}

/// What is wrong with a network rule (`allow GET /repos/**`); each names
/// the word it is about.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleProblem {
    #[error("the rule is empty")]
    Empty,
    #[error("found {0:?} where \"allow\" or \"deny\" belongs")]
    NotAnAction(String),
    #[error("missing the METHOD and the path")]
    NoMethodNorPath,
    #[error("missing the METHOD before {0:?}; use * for any method")]
    NoMethodBefore(String),
    #[error("missing the path")]
    NoPath,
    #[error("unexpected {0:?} after the path; a path cannot contain spaces")]
    AfterPath(String),
    #[error("{0:?} is not an HTTP method")]
    NotAMethod(String),
    #[error("method {0:?} must be upper case: {upper:?}", upper = .0.to_ascii_uppercase())]
    LowerCaseMethod(String),
    #[error("path {0:?} must start with /")]
    RelativePath(String),
    #[error("query strings are not matched; remove {0:?} from the path")]
    Query(String),
    #[error("path segment {0:?} is not allowed; write the path without . or ..")]
    DotSegment(String),
    #[error("segment {0:?}: * must be a whole segment (/*/ for one segment, /**/ for any number)")]
    PartialStar(String),
    #[error(
        "segment {0:?} names no canonical path: request paths are matched decoded, with ';' \
         parameters, control characters and double encoding refused and '\\' or %2F \
         splitting segments"
    )]
    NonCanonicalSegment(String),
}
