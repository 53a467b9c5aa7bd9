//! Raw netlink for the owners that ask the kernel about the namespace's links: building a
//! request, one request-and-answer exchange on a socket of its own, reading messages and
//! attributes out of an answer, and finding a generic netlink family's id. Every read is
//! bounds-checked: a malformed answer is an error, never a panic.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

// linux/netlink.h, linux/genetlink.h.
pub const NLMSG_HDR: usize = 16;
pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;
pub const NLM_F_REQUEST: u16 = 0x01;
pub const NLM_F_DUMP: u16 = 0x300;
const NLA_TYPE_MASK: u16 = 0x3fff;
/// `struct genlmsghdr`: command, version, reserved.
pub const GENL_HDR: usize = 4;
const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;

pub fn align4(n: usize) -> usize {
    (n + 3) & !3
}

pub fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

pub fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

pub fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_ne_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

pub fn malformed(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("malformed netlink answer: {what}"),
    )
}

/// A NUL-terminated (or not) string attribute.
pub fn c_string(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// One attribute: length, type, payload, padded to 4 bytes.
pub fn attr(kind: u16, payload: &[u8]) -> Vec<u8> {
    let mut a = Vec::with_capacity(align4(4 + payload.len()));
    a.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
    a.extend_from_slice(&kind.to_ne_bytes());
    a.extend_from_slice(payload);
    a.resize(align4(a.len()), 0);
    a
}

/// One message: header (length, type, flags, sequence, port 0) and `body`, padded.
pub fn message(kind: u16, flags: u16, seq: u32, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(align4(NLMSG_HDR + body.len()));
    m.extend_from_slice(&((NLMSG_HDR + body.len()) as u32).to_ne_bytes());
    m.extend_from_slice(&kind.to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(body);
    m.resize(align4(m.len()), 0);
    m
}

/// The messages of one datagram: (type, sequence, body).
pub fn messages(mut b: &[u8]) -> impl Iterator<Item = io::Result<(u16, u32, &[u8])>> {
    std::iter::from_fn(move || {
        if b.len() < NLMSG_HDR {
            return None;
        }
        let len = u32_at(b, 0).unwrap_or(0) as usize;
        if len < NLMSG_HDR || len > b.len() {
            b = &[];
            return Some(Err(malformed("message length")));
        }
        let kind = u16_at(b, 4).unwrap_or(0);
        let seq = u32_at(b, 8).unwrap_or(0);
        let body = &b[NLMSG_HDR..len];
        b = &b[align4(len).min(b.len())..];
        Some(Ok((kind, seq, body)))
    })
}

/// The error an `NLMSG_ERROR` body carries (`None`: an acknowledgement).
pub fn error_of(body: &[u8]) -> io::Result<Option<io::Error>> {
    let errno = u32_at(body, 0).ok_or_else(|| malformed("error message"))? as i32;
    Ok((errno != 0).then(|| io::Error::from_raw_os_error(-errno)))
}

/// Reads one datagram of the answer to request `seq`: each answer message's type and body go
/// to `on_message`; true at `NLMSG_DONE` (the answer is complete); an `NLMSG_ERROR` carrying an
/// error is returned as it.
pub fn answer_datagram(
    datagram: &[u8],
    seq: u32,
    mut on_message: impl FnMut(u16, &[u8]) -> io::Result<()>,
) -> io::Result<bool> {
    for m in messages(datagram) {
        let (kind, msg_seq, body) = m?;
        if msg_seq != seq {
            continue;
        }
        match kind {
            NLMSG_DONE => return Ok(true),
            NLMSG_ERROR => {
                if let Some(e) = error_of(body)? {
                    return Err(e);
                }
            }
            _ => on_message(kind, body)?,
        }
    }
    Ok(false)
}

/// The attributes of an attribute stream: (type, payload).
pub fn attributes(mut b: &[u8]) -> impl Iterator<Item = io::Result<(u16, &[u8])>> {
    std::iter::from_fn(move || {
        if b.len() < 4 {
            return None;
        }
        let len = u16_at(b, 0).unwrap_or(0) as usize;
        let kind = u16_at(b, 2).unwrap_or(0) & NLA_TYPE_MASK;
        if len < 4 || len > b.len() {
            b = &[];
            return Some(Err(malformed("attribute length")));
        }
        let payload = &b[4..len];
        b = &b[align4(len).min(b.len())..];
        Some(Ok((kind, payload)))
    })
}

/// Sends `request` (whole messages) to the kernel on a fresh socket of `protocol`
/// (`NETLINK_ROUTE`, `NETLINK_GENERIC`) opened in the calling thread's network namespace, and
/// hands each datagram of the answer to `on_datagram` until it says the answer is complete.
pub fn exchange(
    protocol: libc::c_int,
    request: &[u8],
    mut on_datagram: impl FnMut(&[u8]) -> io::Result<bool>,
) -> io::Result<()> {
    // SAFETY: plain socket(2); the descriptor is owned below.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            protocol,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: `request` is a live buffer of the length given; the kernel is the destination (a
    // zeroed sockaddr_nl).
    let sent = unsafe {
        let mut kernel: libc::sockaddr_nl = std::mem::zeroed();
        kernel.nl_family = libc::AF_NETLINK as u16;
        libc::sendto(
            sock.as_raw_fd(),
            request.as_ptr().cast(),
            request.len(),
            0,
            (&kernel as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: `buf` is a live buffer of the length given.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if on_datagram(&buf[..n as usize])? {
            return Ok(());
        }
    }
}

/// A generic netlink request body: the `genlmsghdr` of `command` (version 1) and `attrs`.
pub fn genl_body(command: u8, attrs: &[u8]) -> Vec<u8> {
    let mut body = vec![command, 1, 0, 0];
    body.extend_from_slice(attrs);
    body
}

/// The id of generic netlink family `name`; `None` when the kernel has no such family.
pub fn genl_family_id(name: &str) -> io::Result<Option<u16>> {
    let seq = 1;
    let mut family_name = name.as_bytes().to_vec();
    family_name.push(0);
    let body = genl_body(
        CTRL_CMD_GETFAMILY,
        &attr(CTRL_ATTR_FAMILY_NAME, &family_name),
    );
    let request = message(GENL_ID_CTRL, NLM_F_REQUEST, seq, &body);
    let mut id = None;
    // Not a dump: the answer is the one family message (or an error), no NLMSG_DONE.
    let asked = exchange(libc::NETLINK_GENERIC, &request, |datagram| {
        answer_datagram(datagram, seq, |kind, body| {
            if kind == GENL_ID_CTRL {
                id = Some(parse_family_id(body)?);
            }
            Ok(())
        })
        .map(|done| done || id.is_some())
    });
    match asked {
        Ok(()) => Ok(id),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

fn parse_family_id(body: &[u8]) -> io::Result<u16> {
    let attrs = body
        .get(GENL_HDR..)
        .ok_or_else(|| malformed("genlmsghdr"))?;
    for a in attributes(attrs) {
        let (kind, payload) = a?;
        if kind == CTRL_ATTR_FAMILY_ID {
            return u16_at(payload, 0).ok_or_else(|| malformed("CTRL_ATTR_FAMILY_ID"));
        }
    }
    Err(malformed("no CTRL_ATTR_FAMILY_ID"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_messages_read_back() {
        let body = [attr(1, b"abc"), attr(2, &7u32.to_ne_bytes())].concat();
        let mut datagram = message(16, NLM_F_REQUEST, 9, &body);
        datagram.extend(message(NLMSG_DONE, 0, 9, &0u32.to_ne_bytes()));
        let read: Vec<_> = messages(&datagram)
            .collect::<io::Result<_>>()
            .expect("messages");
        assert_eq!(read.len(), 2);
        assert_eq!((read[0].0, read[0].1), (16, 9));
        let attrs: Vec<_> = attributes(read[0].2)
            .collect::<io::Result<_>>()
            .expect("attributes");
        assert_eq!(attrs[0], (1, &b"abc"[..]));
        assert_eq!(u32_at(attrs[1].1, 0), Some(7));
        assert_eq!(read[1].0, NLMSG_DONE);
    }

    #[test]
    fn cut_answers_are_errors() {
        let m = message(16, 0, 1, &attr(1, b"abcdef"));
        let mut cut = m[..m.len() - 4].to_vec();
        assert!(messages(&cut).next().expect("one").is_err());
        cut[0..4].copy_from_slice(&((m.len() - 4) as u32).to_ne_bytes());
        let (_, _, body) = messages(&cut).next().expect("one").expect("header fits");
        assert!(attributes(body).next().expect("one").is_err());
        let error = message(NLMSG_ERROR, 0, 1, &(-libc::EPERM).to_ne_bytes());
        let (_, _, body) = messages(&error).next().expect("one").expect("ok");
        let e = error_of(body).expect("readable").expect("an error");
        assert_eq!(e.raw_os_error(), Some(libc::EPERM));
        assert!(error_of(&[1]).is_err());
    }

    #[test]
    fn the_kernel_names_its_generic_netlink_families() {
        assert!(genl_family_id("nlctrl").expect("ask").is_some());
        assert_eq!(genl_family_id("no-such-family").expect("ask"), None);
    }
}
