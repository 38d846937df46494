use std::fmt;

use rand::seq::SliceRandom;
use rand::Rng;
use serde::{Deserialize, Serialize};

/// A run's identifier: `run_` and 12 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RunId(String);

impl RunId {
    /// A fresh random id.
    pub fn generate() -> Self {
        let n: u64 = rand::thread_rng().gen::<u64>() & 0xffff_ffff_ffff;
        RunId(format!("run_{n:012x}"))
    }

    /// Accepts only the canonical form, so an id can never be a path.
    pub fn parse(text: &str) -> Option<Self> {
        let hex = text.strip_prefix("run_")?;
        (hex.len() == 12 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
            .then(|| RunId(text.to_string()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

const ADJECTIVES: &[&str] = &[
    "brave", "calm", "clever", "eager", "gentle", "happy", "keen", "lively", "lucky", "merry",
    "nimble", "proud", "quick", "quiet", "rapid", "sharp", "shy", "steady", "swift", "witty",
    "bold", "bright", "cosy", "daring", "fuzzy", "jolly", "mellow", "plucky", "sunny", "tidy",
];
const ANIMALS: &[&str] = &[
    "otter", "badger", "falcon", "heron", "lynx", "marten", "newt", "owl", "panda", "puffin",
    "quokka", "raven", "seal", "stoat", "tapir", "vole", "walrus", "wombat", "yak", "zebra",
    "beaver", "crane", "dingo", "ferret", "gecko", "ibis", "koala", "lemur", "moose", "okapi",
];

/// A readable run name such as `brave-otter`.
pub fn generate_name() -> String {
    let mut rng = rand::thread_rng();
    let adjective = ADJECTIVES.choose(&mut rng).copied().unwrap_or("quiet");
    let animal = ANIMALS.choose(&mut rng).copied().unwrap_or("otter");
    format!("{adjective}-{animal}")
}

/// Checks a user-chosen run name: a DNS label (lowercase letters, digits
/// and `-`, starting and ending with a letter or digit, at most 63
/// characters), as it becomes a hostname (`web.<run>.localhost`).
pub fn validate_name(name: &str) -> Result<(), InvalidName> {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.bytes().next().is_some_and(alnum)
        && name.bytes().last().is_some_and(alnum)
        && name.bytes().all(|b| alnum(b) || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(InvalidName(name.to_owned()))
    }
}

/// A run name that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid run name {0:?}")]
pub struct InvalidName(pub String);

impl moat_hint::Hint for InvalidName {
    fn hint(&self) -> Option<moat_hint::Fix> {
        Some(
            "Use lowercase letters, digits and '-' (at most 63, starting and ending with a \
             letter or digit): the name becomes a hostname."
                .into(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_canonical() {
        let id = RunId::generate();
        assert!(RunId::parse(id.as_str()).is_some());
        assert_eq!(id.as_str().len(), 16);
        for bad in [
            "run_",
            "run_ABCDEF012345",
            "run_../../etc",
            "x_0123456789ab",
            "run_0123456789abc",
        ] {
            assert!(RunId::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn names() {
        let n = generate_name();
        assert!(validate_name(&n).is_ok(), "{n}");
        assert!(validate_name("My-Agent").is_err());
        assert!(validate_name("-x").is_err());
        assert!(validate_name("agent-2").is_ok());
        // Names become hostnames (web.<run>.localhost): DNS labels only.
        assert!(validate_name("agent_2").is_err());
        assert!(validate_name("agent-").is_err());
    }
}
