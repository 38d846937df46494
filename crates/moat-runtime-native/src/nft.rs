//! One nftables table in the sandbox's network namespace, written over
//! netlink (no `nft` binary needed, and no process to start):
//!
//! ```text
//! table ip moat {
//!   chain out {
//!     type nat hook output priority -100;
//!     meta l4proto tcp ip daddr != 127.0.0.0/8 redirect to :RELAY
//!     meta l4proto udp ip daddr != 127.0.0.0/8 udp dport 53 redirect to :53
//!   }
//! }
//! ```
//!
//! so that a TCP connection to any address and port outside loopback
//! lands on the capture relay, which reads where it was going with
//! `SO_ORIGINAL_DST`, and DNS sent to any server reaches the responder.
//! The namespace is the sandbox's own: its user namespace's
//! `CAP_NET_ADMIN` is enough.

use std::io;

use rustix::net::{recv, send, socket, AddressFamily, RecvFlags, SendFlags, SocketType};

const NETLINK_NETFILTER: i32 = 12;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_NEWRULE: u16 = 6;
const NFPROTO_IPV4: u8 = 2;
const NLA_F_NESTED: u16 = 0x8000;

const NFTA_TABLE_NAME: u16 = 1;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;

const NF_INET_LOCAL_OUT: u32 = 3;
const NF_IP_PRI_NAT_DST: i32 = -100;
const NF_ACCEPT: u32 = 1;
/// The first 16-byte register (`NFT_REG_1`).
const REG: u32 = 1;
const NFT_META_L4PROTO: u32 = 16;
const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;
const NFT_CMP_EQ: u32 = 0;
const NFT_CMP_NEQ: u32 = 1;

const TABLE: &str = "moat";
const CHAIN: &str = "out";

/// Installs the table above, redirecting TCP to `127.0.0.1:relay_port`.
pub(crate) fn redirect_to_relay(relay_port: u16) -> io::Result<()> {
    let mut batch = Batch::default();
    batch.message(NFNL_MSG_BATCH_BEGIN, 0, 0, |_| {});
    batch.message(nft(NFT_MSG_NEWTABLE), NFLAGS, NFPROTO_IPV4, |m| {
        m.string(NFTA_TABLE_NAME, TABLE);
    });
    batch.message(nft(NFT_MSG_NEWCHAIN), NFLAGS, NFPROTO_IPV4, |m| {
        m.string(NFTA_CHAIN_TABLE, TABLE);
        m.string(NFTA_CHAIN_NAME, CHAIN);
        m.nested(NFTA_CHAIN_HOOK, |h| {
            h.u32(NFTA_HOOK_HOOKNUM, NF_INET_LOCAL_OUT);
            h.u32(NFTA_HOOK_PRIORITY, NF_IP_PRI_NAT_DST as u32);
        });
        m.u32(NFTA_CHAIN_POLICY, NF_ACCEPT);
        m.string(NFTA_CHAIN_TYPE, "nat");
    });
    let rule = |m: &mut Attrs, expressions: &dyn Fn(&mut Attrs)| {
        m.string(NFTA_RULE_TABLE, TABLE);
        m.string(NFTA_RULE_CHAIN, CHAIN);
        m.nested(NFTA_RULE_EXPRESSIONS, expressions);
    };
    batch.message(
        nft(NFT_MSG_NEWRULE),
        NFLAGS | NLM_F_APPEND,
        NFPROTO_IPV4,
        |m| {
            rule(m, &|e| {
                l4proto_is(e, libc::IPPROTO_TCP as u8);
                destination_not_loopback(e);
                redirect_to(e, relay_port);
            })
        },
    );
    batch.message(
        nft(NFT_MSG_NEWRULE),
        NFLAGS | NLM_F_APPEND,
        NFPROTO_IPV4,
        |m| {
            rule(m, &|e| {
                l4proto_is(e, libc::IPPROTO_UDP as u8);
                destination_not_loopback(e);
                // udp dport 53
                payload(e, NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2);
                cmp(e, NFT_CMP_EQ, &53u16.to_be_bytes());
                redirect_to(e, 53);
            })
        },
    );
    batch.message(NFNL_MSG_BATCH_END, 0, 0, |_| {});
    batch.send_and_check(4)
}

/// Every change is created, asked to be acknowledged.
const NFLAGS: u16 = NLM_F_REQUEST | NLM_F_CREATE | NLM_F_ACK;

fn nft(message: u16) -> u16 {
    (NFNL_SUBSYS_NFTABLES << 8) | message
}

fn expression(e: &mut Attrs, name: &str, data: impl Fn(&mut Attrs)) {
    e.nested(NFTA_LIST_ELEM, |elem| {
        elem.string(NFTA_EXPR_NAME, name);
        elem.nested(NFTA_EXPR_DATA, &data);
    });
}

fn l4proto_is(e: &mut Attrs, protocol: u8) {
    // meta: NFTA_META_DREG 1, NFTA_META_KEY 2.
    expression(e, "meta", |d| {
        d.u32(1, REG);
        d.u32(2, NFT_META_L4PROTO);
    });
    cmp(e, NFT_CMP_EQ, &[protocol]);
}

fn payload(e: &mut Attrs, base: u32, offset: u32, len: u32) {
    // payload: DREG 1, BASE 2, OFFSET 3, LEN 4.
    expression(e, "payload", |d| {
        d.u32(1, REG);
        d.u32(2, base);
        d.u32(3, offset);
        d.u32(4, len);
    });
}

fn cmp(e: &mut Attrs, op: u32, value: &[u8]) {
    // cmp: SREG 1, OP 2, DATA 3.
    expression(e, "cmp", |d| {
        d.u32(1, REG);
        d.u32(2, op);
        d.nested(3, |v| v.bytes(NFTA_DATA_VALUE, value));
    });
}

/// `ip daddr != 127.0.0.0/8`: the destination's first byte is not 127.
fn destination_not_loopback(e: &mut Attrs) {
    payload(e, NFT_PAYLOAD_NETWORK_HEADER, 16, 1);
    cmp(e, NFT_CMP_NEQ, &[127]);
}

fn redirect_to(e: &mut Attrs, port: u16) {
    // immediate: DREG 1, DATA 2; redir: REG_PROTO_MIN 1.
    expression(e, "immediate", |d| {
        d.u32(1, REG);
        d.nested(2, |v| v.bytes(NFTA_DATA_VALUE, &port.to_be_bytes()));
    });
    expression(e, "redir", |d| d.u32(1, REG));
}

/// Netlink attributes being written (type-length-value, 4-byte aligned).
#[derive(Default)]
struct Attrs {
    buf: Vec<u8>,
}

impl Attrs {
    fn raw(&mut self, kind: u16, value: &[u8]) {
        let len = 4 + value.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(value);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    fn bytes(&mut self, kind: u16, value: &[u8]) {
        self.raw(kind, value);
    }

    fn string(&mut self, kind: u16, value: &str) {
        let mut v = value.as_bytes().to_vec();
        v.push(0);
        self.raw(kind, &v);
    }

    /// Numbers in nftables attributes are big-endian.
    fn u32(&mut self, kind: u16, value: u32) {
        self.raw(kind, &value.to_be_bytes());
    }

    fn nested(&mut self, kind: u16, fill: impl FnOnce(&mut Attrs)) {
        let mut inner = Attrs::default();
        fill(&mut inner);
        self.raw(kind | NLA_F_NESTED, &inner.buf);
    }
}

/// Netlink messages sent as one nftables transaction.
#[derive(Default)]
struct Batch {
    buf: Vec<u8>,
    seq: u32,
}

impl Batch {
    fn message(&mut self, kind: u16, flags: u16, family: u8, fill: impl FnOnce(&mut Attrs)) {
        let mut attrs = Attrs::default();
        fill(&mut attrs);
        let len = 16 + 4 + attrs.buf.len();
        self.seq += 1;
        self.buf.extend_from_slice(&(len as u32).to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf
            .extend_from_slice(&(flags | NLM_F_REQUEST).to_ne_bytes());
        self.buf.extend_from_slice(&self.seq.to_ne_bytes());
        self.buf.extend_from_slice(&0u32.to_ne_bytes());
        // nfgenmsg: family, version 0, resource id (the subsystem, for
        // the batch markers), big-endian.
        let res_id = if kind == NFNL_MSG_BATCH_BEGIN || kind == NFNL_MSG_BATCH_END {
            NFNL_SUBSYS_NFTABLES
        } else {
            0
        };
        self.buf.push(family);
        self.buf.push(0);
        self.buf.extend_from_slice(&res_id.to_be_bytes());
        self.buf.extend_from_slice(&attrs.buf);
    }

    /// Sends the batch and waits for `acks` acknowledgements, or the
    /// first error the kernel reports.
    fn send_and_check(self, acks: usize) -> io::Result<()> {
        let fd = socket(
            AddressFamily::NETLINK,
            SocketType::RAW,
            Some(rustix::net::Protocol::from_raw(
                rustix::net::RawProtocol::new(NETLINK_NETFILTER as u32)
                    .ok_or_else(|| io::Error::other("netlink protocol"))?,
            )),
        )?;
        send(&fd, &self.buf, SendFlags::empty())?;
        let mut seen = 0;
        let mut reply = vec![0u8; 8192];
        while seen < acks {
            let (n, _) = recv(&fd, &mut reply, RecvFlags::empty())?;
            let mut at = 0;
            while at + 20 <= n {
                let len =
                    u32::from_ne_bytes([reply[at], reply[at + 1], reply[at + 2], reply[at + 3]])
                        as usize;
                let kind = u16::from_ne_bytes([reply[at + 4], reply[at + 5]]);
                if len < 16 || at + len > n {
                    return Err(io::Error::other("malformed answer from nftables"));
                }
                if kind == NLMSG_ERROR {
                    let code = i32::from_ne_bytes([
                        reply[at + 16],
                        reply[at + 17],
                        reply[at + 18],
                        reply[at + 19],
                    ]);
                    if code != 0 {
                        return Err(io::Error::from_raw_os_error(-code));
                    }
                    seen += 1;
                }
                at += (len + 3) & !3;
            }
            if n == 0 {
                return Err(io::Error::other("nftables closed the connection"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_padded_and_nested() {
        let mut a = Attrs::default();
        a.string(1, "ab");
        assert_eq!(a.buf, [7, 0, 1, 0, b'a', b'b', 0, 0]);
        let mut n = Attrs::default();
        n.nested(4, |i| i.u32(1, 3));
        assert_eq!(n.buf, [12, 0, 4, 0x80, 8, 0, 1, 0, 0, 0, 0, 3]);
    }
}
