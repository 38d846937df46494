//! Moat's credential store.
//!
//! This crate owns everything between "the user has a token" and "the proxy
//! holds the header to inject":
//!
//! - [`Secret`]: a string that zeroes itself on drop and never prints.
//! - [`EncryptionKey`] and [`KeyBackend`]: the 256-bit key, from the OS
//!   keychain when one is reachable, else from a `0600` key file.
//! - [`CredentialStore`]: one AES-256-GCM file per provider
//!   (`credentials/<provider>.enc`), a fresh nonce per write, the provider
//!   name bound in as associated data so files cannot be swapped.
//! - [`ProviderSpec`] and [`ProviderRegistry`]: providers as data (hosts,
//!   header and scheme per host, placeholder variable), built in or declared
//!   in `MOAT_HOME/providers.json`.
//! - [`source`]: where a new secret comes from (environment, `gh auth
//!   token`, Claude Code's credentials file, a prompt).
//! - [`validate`]: checking a token against its API at grant time.
//! - [`resolve_grants`]: turning a run's grant list into credentials, or
//!   into one error listing every grant that is missing.
//!
//! It must not know about runs, sandboxes or the proxy's wire format: it
//! hands out [`HeaderInjection`]s and nothing more.

mod credential;
mod error;
mod grant;
mod key;
mod provider;
mod refusal;
mod resolve;
mod secret;
pub mod source;
mod store;
pub mod validate;

pub use crate::source::SourceOptions;
pub use crate::validate::Validation;

pub use crate::credential::{Credential, CredentialSource, ProviderKind};
pub use crate::error::{CredentialError, DecryptError};
pub use crate::grant::{
    check_obtained, describe, format_time, grant_display_name, masked, Checked, GrantRow, Stored,
};
pub use crate::key::{EncryptionKey, KeyBackend, KEY_LEN};
pub use crate::provider::{
    GrantName, HeaderInjection, HeaderSpec, HeaderValue, HostInjection, Placeholder,
    ProviderRegistry, ProviderSpec, ANTHROPIC_OAUTH_BETA,
};
pub use crate::refusal::{NoSecret, Rejection};
pub use crate::resolve::{
    resolve_grants, MissingGrant, MissingGrants, MissingReason, ResolveError, ResolvedGrant,
};
pub use crate::secret::{HeaderSafe, Secret};
pub use crate::store::{CredentialStore, StoredEntry};
