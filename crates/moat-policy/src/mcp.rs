use std::fmt;
use std::str::FromStr;

use crate::PolicyError;

/// The name of an MCP server: the `<name>` of the relay path
/// `/mcp/<name>`, of the grant `mcp:<name>` and of its credential file
/// `mcp-<name>.enc`.
///
/// ASCII letters, digits, `-` and `_`, starting with a letter or digit:
/// one path segment that is never `.` or `..`, a file name that is never
/// hidden, and a word agents accept in the tool names they build from it
/// (`mcp__<name>__<tool>`, which model APIs restrict to these characters;
/// hence no dots).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct McpServerName(String);

impl McpServerName {
    /// Parses `linear` or `brave-search`.
    pub fn parse(s: &str) -> Result<Self, PolicyError> {
        let valid = s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'));
        if valid {
            Ok(Self(s.to_owned()))
        } else {
            Err(PolicyError::InvalidMcpName { name: s.to_owned() })
        }
    }

    /// The name as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for McpServerName {
    type Err = PolicyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for McpServerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for McpServerName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["linear", "brave-search", "my_server", "a", "9x", "A-1"] {
            assert_eq!(
                McpServerName::parse(ok).map(|n| n.to_string()),
                Ok(ok.to_owned())
            );
        }
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            "docs.internal",
            "-x",
            "_x",
            "a/b",
            "a b",
            "a:b",
            "ü",
        ] {
            assert_eq!(
                McpServerName::parse(bad),
                Err(PolicyError::InvalidMcpName {
                    name: bad.to_owned()
                }),
                "{bad}"
            );
        }
        assert_eq!(
            McpServerName::parse("a/b").map_err(|e| e.to_string()),
            Err(
                "\"a/b\" is not a valid MCP server name: use letters, digits, '-' and '_', \
                 starting with a letter or digit"
                    .to_owned()
            )
        );
    }

    #[test]
    fn crosses_as_written_and_garbage_does_not() {
        let name = McpServerName::parse("linear").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            serde_json::to_string(&name).unwrap_or_default(),
            "\"linear\""
        );
        assert_eq!(
            serde_json::from_str::<McpServerName>("\"linear\"").ok(),
            Some(name)
        );
        for bad in ["\"../x\"", "\"\"", "1", "null"] {
            assert!(serde_json::from_str::<McpServerName>(bad).is_err(), "{bad}");
        }
    }
}
