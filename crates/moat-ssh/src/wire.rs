//! The SSH agent protocol on the wire (draft-miller-ssh-agent): frames of a
//! big-endian `u32` length and a payload whose first byte is the message
//! type, with SSH `string`s (length-prefixed bytes) inside.
//!
//! Everything here parses untrusted bytes from the sandbox, so every read
//! is bounds-checked and a payload must be consumed exactly: trailing
//! bytes are an error, never ignored.

use std::io::{self, Read, Write};

/// Largest frame accepted, either way. OpenSSH's agent uses the same bound.
pub const MAX_FRAME: usize = 256 * 1024;

/// Agent message numbers used here.
pub mod msg {
    /// Generic failure answer.
    pub const FAILURE: u8 = 5;
    /// Generic success answer.
    pub const SUCCESS: u8 = 6;
    /// List keys.
    pub const REQUEST_IDENTITIES: u8 = 11;
    /// Answer to [`REQUEST_IDENTITIES`].
    pub const IDENTITIES_ANSWER: u8 = 12;
    /// Sign data with a key.
    pub const SIGN_REQUEST: u8 = 13;
    /// Answer to [`SIGN_REQUEST`].
    pub const SIGN_RESPONSE: u8 = 14;
    /// Add a key.
    pub const ADD_IDENTITY: u8 = 17;
    /// Remove a key.
    pub const REMOVE_IDENTITY: u8 = 18;
    /// Remove every key.
    pub const REMOVE_ALL_IDENTITIES: u8 = 19;
    /// Add a smartcard key.
    pub const ADD_SMARTCARD_KEY: u8 = 20;
    /// Remove a smartcard key.
    pub const REMOVE_SMARTCARD_KEY: u8 = 21;
    /// Lock the agent.
    pub const LOCK: u8 = 22;
    /// Unlock the agent.
    pub const UNLOCK: u8 = 23;
    /// Add a key with constraints.
    pub const ADD_ID_CONSTRAINED: u8 = 25;
    /// Add a smartcard key with constraints.
    pub const ADD_SMARTCARD_KEY_CONSTRAINED: u8 = 26;
    /// Vendor extension.
    pub const EXTENSION: u8 = 27;
    /// SSH protocol 1 requests, still sent by `ssh-add -D` and old
    /// clients: list, challenge, add, remove, remove all, add constrained.
    pub const LEGACY_SSH1: [u8; 6] = [1, 3, 7, 8, 9, 24];
}

/// The OpenSSH extension that binds an agent connection to a server's
/// host key and session.
pub const SESSION_BIND: &str = "session-bind@openssh.com";

/// A frame or message that does not follow the protocol.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The length prefix exceeds [`MAX_FRAME`].
    #[error("frame of {0} bytes exceeds the {MAX_FRAME}-byte limit")]
    TooLong(usize),
    /// A zero-length frame (no message type).
    #[error("empty frame")]
    Empty,
    /// The stream ended inside a frame.
    #[error("truncated frame")]
    Truncated,
    /// A field runs past the end of the payload.
    #[error("field runs past the end of the message")]
    ShortField,
    /// Bytes left after the message was parsed.
    #[error("{0} unexpected bytes after the message")]
    Trailing(usize),
    /// A text field is not UTF-8.
    #[error("text field is not UTF-8")]
    NotUtf8,
    /// Reading or writing the socket failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Reads one frame's payload. `Ok(None)` is a clean end of stream between
/// frames.
pub fn read_frame(r: &mut impl Read) -> Result<Option<Vec<u8>>, WireError> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match r.read(&mut len[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(WireError::Truncated),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(WireError::TooLong(len));
    }
    if len == 0 {
        return Err(WireError::Empty);
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            WireError::Truncated
        } else {
            WireError::Io(e)
        }
    })?;
    Ok(Some(payload))
}

/// Writes one frame.
pub fn write_frame(w: &mut impl Write, payload: &[u8]) -> Result<(), WireError> {
    if payload.len() > MAX_FRAME {
        return Err(WireError::TooLong(payload.len()));
    }
    let len = u32::try_from(payload.len()).map_err(|_| WireError::TooLong(payload.len()))?;
    let mut frame = Vec::with_capacity(4 + payload.len());
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(payload);
    w.write_all(&frame)?;
    w.flush()?;
    Ok(())
}

/// A cursor over a message body.
#[derive(Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Reads from `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    /// One byte.
    pub fn u8(&mut self) -> Result<u8, WireError> {
        let (&b, rest) = self.buf.split_first().ok_or(WireError::ShortField)?;
        self.buf = rest;
        Ok(b)
    }

    /// A big-endian `u32`.
    pub fn u32(&mut self) -> Result<u32, WireError> {
        if self.buf.len() < 4 {
            return Err(WireError::ShortField);
        }
        let (head, rest) = self.buf.split_at(4);
        self.buf = rest;
        Ok(u32::from_be_bytes([head[0], head[1], head[2], head[3]]))
    }

    /// An SSH `string`: length-prefixed bytes.
    pub fn string(&mut self) -> Result<&'a [u8], WireError> {
        let len = self.u32()? as usize;
        if self.buf.len() < len {
            return Err(WireError::ShortField);
        }
        let (s, rest) = self.buf.split_at(len);
        self.buf = rest;
        Ok(s)
    }

    /// An SSH `string` holding UTF-8 text.
    pub fn text(&mut self) -> Result<&'a str, WireError> {
        std::str::from_utf8(self.string()?).map_err(|_| WireError::NotUtf8)
    }

    /// An SSH `boolean`.
    pub fn bool(&mut self) -> Result<bool, WireError> {
        Ok(self.u8()? != 0)
    }

    /// What is left, consuming it.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    /// Fails unless everything was read.
    pub fn finish(self) -> Result<(), WireError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(WireError::Trailing(self.buf.len()))
        }
    }
}

/// Builds a message body.
#[derive(Debug, Default)]
pub struct Writer(Vec<u8>);

impl Writer {
    /// A message of type `kind`.
    pub fn message(kind: u8) -> Self {
        Writer(vec![kind])
    }

    /// Appends a byte.
    pub fn u8(&mut self, b: u8) -> &mut Self {
        self.0.push(b);
        self
    }

    /// Appends a big-endian `u32`.
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }

    /// Appends an SSH `string`. Lengths past `u32` cannot occur: frames
    /// are bounded far below that.
    pub fn string(&mut self, s: &[u8]) -> &mut Self {
        self.u32(u32::try_from(s.len()).unwrap_or(u32::MAX));
        self.0.extend_from_slice(s);
        self
    }

    /// The encoded bytes.
    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }
}

/// A request from an agent client, as far as moat needs to understand it.
#[derive(Debug, PartialEq, Eq)]
pub enum Request<'a> {
    /// List keys.
    RequestIdentities,
    /// Sign `data` with the key whose wire blob is `key`.
    Sign {
        /// Public key blob.
        key: &'a [u8],
        /// Data to sign.
        data: &'a [u8],
        /// Signature flags (RSA hash choice).
        flags: u32,
    },
    /// A vendor extension.
    Extension {
        /// Extension name.
        name: &'a str,
        /// Extension-specific contents.
        body: &'a [u8],
    },
    /// A request that changes the agent's keys or state (add, remove,
    /// lock, unlock, smartcard): always refused.
    Mutation(u8),
    /// An SSH protocol 1 request: refused (moat speaks protocol 2 only).
    Legacy(u8),
}

impl Request<'_> {
    /// The message type's name, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Request::RequestIdentities => "request-identities",
            Request::Sign { .. } => "sign",
            Request::Extension { .. } => "extension",
            Request::Mutation(msg::ADD_IDENTITY | msg::ADD_ID_CONSTRAINED) => "add-identity",
            Request::Mutation(msg::REMOVE_IDENTITY) => "remove-identity",
            Request::Mutation(msg::REMOVE_ALL_IDENTITIES) => "remove-all-identities",
            Request::Mutation(msg::LOCK) => "lock",
            Request::Mutation(msg::UNLOCK) => "unlock",
            Request::Mutation(_) => "smartcard",
            Request::Legacy(_) => "ssh1-request",
        }
    }
}

/// A message type moat does not know.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// Not an agent request this proxy knows.
    #[error("unknown agent message type {0}")]
    UnknownType(u8),
    /// A known type whose body does not parse.
    #[error(transparent)]
    Malformed(#[from] WireError),
}

/// Parses a client request payload.
pub fn decode_request(payload: &[u8]) -> Result<Request<'_>, RequestError> {
    let mut r = Reader::new(payload);
    let kind = r.u8()?;
    let request = match kind {
        msg::REQUEST_IDENTITIES => Request::RequestIdentities,
        msg::SIGN_REQUEST => {
            let key = r.string()?;
            let data = r.string()?;
            let flags = r.u32()?;
            Request::Sign { key, data, flags }
        }
        msg::EXTENSION => {
            let name = r.text()?;
            let body = r.rest();
            Request::Extension { name, body }
        }
        msg::ADD_IDENTITY
        | msg::REMOVE_IDENTITY
        | msg::REMOVE_ALL_IDENTITIES
        | msg::ADD_SMARTCARD_KEY
        | msg::REMOVE_SMARTCARD_KEY
        | msg::LOCK
        | msg::UNLOCK
        | msg::ADD_ID_CONSTRAINED
        | msg::ADD_SMARTCARD_KEY_CONSTRAINED => {
            // Bodies hold key material or passphrases: not parsed, not kept.
            r.rest();
            Request::Mutation(kind)
        }
        legacy if msg::LEGACY_SSH1.contains(&legacy) => {
            r.rest();
            Request::Legacy(legacy)
        }
        other => return Err(RequestError::UnknownType(other)),
    };
    r.finish()?;
    Ok(request)
}

/// One key the agent holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Public key blob (SSH wire encoding).
    pub key: Vec<u8>,
    /// The agent's comment (usually the key file's path or an email).
    pub comment: String,
}

/// Parses an `IDENTITIES_ANSWER` payload.
pub fn decode_identities(payload: &[u8]) -> Result<Vec<Identity>, WireError> {
    let mut r = Reader::new(payload);
    if r.u8()? != msg::IDENTITIES_ANSWER {
        return Err(WireError::ShortField);
    }
    let count = r.u32()? as usize;
    // Each identity takes at least 8 bytes: bound the allocation by the
    // payload, not by the count it claims.
    let mut ids = Vec::with_capacity(count.min(payload.len() / 8));
    for _ in 0..count {
        let key = r.string()?.to_vec();
        let comment = String::from_utf8_lossy(r.string()?).into_owned();
        ids.push(Identity { key, comment });
    }
    r.finish()?;
    Ok(ids)
}

/// Encodes an `IDENTITIES_ANSWER` payload.
pub fn encode_identities(ids: &[Identity]) -> Vec<u8> {
    let mut w = Writer::message(msg::IDENTITIES_ANSWER);
    w.u32(u32::try_from(ids.len()).unwrap_or(u32::MAX));
    for id in ids {
        w.string(&id.key).string(id.comment.as_bytes());
    }
    w.into_bytes()
}

/// The body of a `session-bind@openssh.com` extension.
#[derive(Debug, PartialEq, Eq)]
pub struct SessionBind<'a> {
    /// The server's host key blob.
    pub host_key: &'a [u8],
    /// The SSH session identifier (first key exchange hash).
    pub session_id: &'a [u8],
    /// The host key's signature over `session_id`.
    pub signature: &'a [u8],
    /// The connection is an agent-forwarding hop rather than a direct
    /// authentication.
    pub forwarding: bool,
}

/// Parses a `session-bind@openssh.com` body.
pub fn decode_session_bind(body: &[u8]) -> Result<SessionBind<'_>, WireError> {
    let mut r = Reader::new(body);
    let bind = SessionBind {
        host_key: r.string()?,
        session_id: r.string()?,
        signature: r.string()?,
        forwarding: r.bool()?,
    };
    r.finish()?;
    Ok(bind)
}

/// The session identifier at the head of a user-authentication signing
/// payload (RFC 4252 §7), or `None` when `data` is not one.
pub fn userauth_session_id(data: &[u8]) -> Option<&[u8]> {
    const USERAUTH_REQUEST: u8 = 50;
    let mut r = Reader::new(data);
    let session_id = r.string().ok()?;
    (r.u8().ok()? == USERAUTH_REQUEST).then_some(session_id)
}

/// A one-byte answer (`SUCCESS` or `FAILURE`).
pub fn status(kind: u8) -> Vec<u8> {
    vec![kind]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        write_frame(&mut out, payload).unwrap();
        out
    }

    #[test]
    fn frames_round_trip_and_end_cleanly() {
        let bytes = [frame(&[11]), frame(&[5])].concat();
        let mut r = &bytes[..];
        assert_eq!(read_frame(&mut r).unwrap(), Some(vec![11]));
        assert_eq!(read_frame(&mut r).unwrap(), Some(vec![5]));
        assert_eq!(read_frame(&mut r).unwrap(), None);
    }

    #[test]
    fn oversized_truncated_and_empty_frames_are_errors() {
        let mut big = &u32::MAX.to_be_bytes()[..];
        assert!(matches!(read_frame(&mut big), Err(WireError::TooLong(_))));
        let mut short = &[0u8, 0, 0, 9, 13, 0][..];
        assert!(matches!(read_frame(&mut short), Err(WireError::Truncated)));
        let mut half = &[0u8, 0][..];
        assert!(matches!(read_frame(&mut half), Err(WireError::Truncated)));
        let mut empty = &[0u8, 0, 0, 0][..];
        assert!(matches!(read_frame(&mut empty), Err(WireError::Empty)));
    }

    #[test]
    fn sign_requests_parse_exactly() {
        let mut w = Writer::message(msg::SIGN_REQUEST);
        w.string(b"key").string(b"data").u32(4);
        let bytes = w.into_bytes();
        assert_eq!(
            decode_request(&bytes).unwrap(),
            Request::Sign {
                key: b"key",
                data: b"data",
                flags: 4
            }
        );
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(matches!(
            decode_request(&trailing),
            Err(RequestError::Malformed(WireError::Trailing(1)))
        ));
        assert!(decode_request(&bytes[..bytes.len() - 1]).is_err());
    }

    #[test]
    fn unknown_types_and_mutations_are_told_apart() {
        assert_eq!(decode_request(&[9]).unwrap(), Request::Legacy(9));
        assert!(matches!(
            decode_request(&[200]),
            Err(RequestError::UnknownType(200))
        ));
        assert_eq!(
            decode_request(&[msg::REMOVE_ALL_IDENTITIES]).unwrap(),
            Request::Mutation(msg::REMOVE_ALL_IDENTITIES)
        );
        assert_eq!(
            decode_request(&[msg::LOCK, 0, 0, 0, 1, b'x'])
                .unwrap()
                .kind(),
            "lock"
        );
    }

    #[test]
    fn identities_round_trip_and_a_lying_count_fails() {
        let ids = vec![
            Identity {
                key: b"k1".to_vec(),
                comment: "one".into(),
            },
            Identity {
                key: b"k2".to_vec(),
                comment: "two".into(),
            },
        ];
        let bytes = encode_identities(&ids);
        assert_eq!(decode_identities(&bytes).unwrap(), ids);
        let mut lying = bytes.clone();
        lying[1..5].copy_from_slice(&1_000_000u32.to_be_bytes());
        assert!(decode_identities(&lying).is_err());
    }

    #[test]
    fn session_bind_and_userauth_data() {
        let mut w = Writer::default();
        w.string(b"hostkey").string(b"sid").string(b"sig").u8(0);
        let body = w.into_bytes();
        let bind = decode_session_bind(&body).unwrap();
        assert_eq!(bind.session_id, b"sid");
        assert!(!bind.forwarding);

        let mut data = Writer::default();
        data.string(b"sid").u8(50).string(b"git");
        assert_eq!(userauth_session_id(&data.into_bytes()), Some(&b"sid"[..]));
        assert_eq!(userauth_session_id(b"\0\0\0\x01xZ"), None);
    }
}
