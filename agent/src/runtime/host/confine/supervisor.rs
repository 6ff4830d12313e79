//! The supervisor: it receives each network call a confined program makes
//! (a seccomp user notification), reads the destination from the
//! program's memory, and lets the call go on only to a granted endpoint.

use super::*;

/// What the supervisor decided about one call.
pub(super) enum Verdict {
    Allow,
    /// Refused with this errno; the destination, and whether it is worth a
    /// warning (a network address) or only a debug line (a local socket
    /// such as nscd's, which C libraries try and do without).
    Deny(i32, String, bool),
}

/// Answer the program's requests until it and its children are gone (the
/// listener then reports a hang-up).
pub(super) fn supervise(listener: OwnedFd, allowed: Allowed, label: String) {
    let fd = listener.as_raw_fd();
    loop {
        let mut poll = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut poll, 1, -1) };
        if r < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            break;
        }
        if poll.revents & libc::POLLIN == 0 {
            // POLLHUP: no process uses the filter any more.
            break;
        }
        // SAFETY: the kernel fills the zeroed record.
        let mut req: libc::seccomp_notif = unsafe { std::mem::zeroed() };
        // SAFETY: `req` is a seccomp_notif, as the request expects.
        if unsafe { libc::ioctl(fd, libc::SECCOMP_IOCTL_NOTIF_RECV as _, &mut req) } != 0 {
            match io::Error::last_os_error().raw_os_error() {
                // Interrupted, or the caller died meanwhile.
                Some(libc::EINTR) | Some(libc::ENOENT) => continue,
                _ => break,
            }
        }
        let verdict = decide(fd, &req, &allowed);
        let mut resp = libc::seccomp_notif_resp {
            id: req.id,
            val: 0,
            error: 0,
            flags: 0,
        };
        match verdict {
            Verdict::Allow => resp.flags = libc::SECCOMP_USER_NOTIF_FLAG_CONTINUE as u32,
            Verdict::Deny(errno, what, loud) => {
                if loud {
                    tracing::warn!(program = %label, destination = %what, "Denied a granted program a network destination its job does not grant (grants.connect).");
                } else {
                    tracing::debug!(program = %label, destination = %what, "Denied a granted program a local socket its job does not grant.");
                }
                resp.error = -errno;
            }
        }
        // SAFETY: `resp` is a seccomp_notif_resp. ENOENT (the caller is
        // gone) needs nothing more.
        unsafe { libc::ioctl(fd, libc::SECCOMP_IOCTL_NOTIF_SEND as _, &resp) };
    }
}

/// Read `len` bytes at `addr` in process `pid`.
pub(super) fn read_memory(pid: u32, addr: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let local = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: len,
    };
    let remote = libc::iovec {
        iov_base: addr as *mut libc::c_void,
        iov_len: len,
    };
    // SAFETY: `local` covers `buf`; the kernel checks `remote` against the
    // other process's mappings.
    let n = unsafe { libc::process_vm_readv(pid as libc::pid_t, &local, 1, &remote, 1, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(buf)
}

/// Where a socket address points.
pub(super) enum Destination {
    /// Nowhere: dissolving a UDP association, aborting a TCP connection.
    Unspecified,
    /// An IP endpoint.
    Ip(SocketAddr),
    /// A local socket by path (empty for an abstract one).
    Local(Vec<u8>),
}

/// Where a socket address points, or why it is refused.
pub(super) fn destination(bytes: &[u8]) -> Result<Destination, Verdict> {
    let family = match bytes.get(..2) {
        Some(f) => u16::from_ne_bytes([f[0], f[1]]) as i32,
        None => return Err(Verdict::Deny(libc::EINVAL, "a short address".into(), true)),
    };
    let port = |b: &[u8]| u16::from_be_bytes([b[2], b[3]]);
    match family {
        libc::AF_UNSPEC => Ok(Destination::Unspecified),
        libc::AF_INET if bytes.len() >= 8 => {
            let ip = Ipv4Addr::new(bytes[4], bytes[5], bytes[6], bytes[7]);
            Ok(Destination::Ip(SocketAddr::new(
                IpAddr::V4(ip),
                port(bytes),
            )))
        }
        libc::AF_INET6 if bytes.len() >= 24 => {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&bytes[8..24]);
            Ok(Destination::Ip(SocketAddr::new(
                IpAddr::V6(Ipv6Addr::from(octets)),
                port(bytes),
            )))
        }
        libc::AF_UNIX => {
            // A path up to its NUL; an abstract name (first byte NUL) is
            // never a granted path.
            let name = &bytes[2..];
            let path = name.split(|b| *b == 0).next().unwrap_or_default();
            Ok(Destination::Local(path.to_vec()))
        }
        other => Err(Verdict::Deny(
            libc::EAFNOSUPPORT,
            format!("an address of family {other}"),
            true,
        )),
    }
}

/// Check one destination read from the program's memory; `send` for a
/// send that names it (where Linux reads an `AF_UNSPEC` address as
/// `AF_INET`), else a `connect` (where `AF_UNSPEC` dissolves an
/// association and goes nowhere).
pub(super) fn check(pid: u32, addr: u64, len: u64, allowed: &Allowed, send: bool) -> Verdict {
    let len = (len as usize).min(128);
    let bytes = match read_memory(pid, addr, len) {
        Ok(b) => b,
        Err(e) => {
            return Verdict::Deny(libc::EACCES, format!("an unreadable address ({e})"), true);
        }
    };
    let mut bytes = bytes;
    if send
        && bytes.len() >= 2
        && u16::from_ne_bytes([bytes[0], bytes[1]]) as i32 == libc::AF_UNSPEC
    {
        bytes[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
    }
    match destination(&bytes) {
        Ok(Destination::Unspecified) => Verdict::Allow,
        Ok(Destination::Ip(a)) if allowed.permits(a) => Verdict::Allow,
        Ok(Destination::Ip(a)) => Verdict::Deny(libc::EACCES, a.to_string(), true),
        Ok(Destination::Local(path)) => {
            use std::os::unix::ffi::OsStrExt;
            let p = std::path::Path::new(std::ffi::OsStr::from_bytes(&path));
            if !path.is_empty() && allowed.sockets.iter().any(|s| s == p) {
                Verdict::Allow
            } else {
                Verdict::Deny(
                    libc::EACCES,
                    format!(
                        "local socket {}",
                        crate::util::escaped(&p.to_string_lossy())
                    ),
                    false,
                )
            }
        }
        Err(v) => v,
    }
}

/// Where `msghdr`s at `addr` send to: each one's `msg_name` and length.
/// One `msghdr` as a send sees it: where to (`msg_name`, its length) and
/// its control data (`msg_control`, its length).
pub(super) struct Message {
    name: u64,
    name_len: u64,
    control: u64,
    control_len: u64,
}

pub(super) fn messages(
    pid: u32,
    addr: u64,
    count: usize,
    stride: usize,
) -> io::Result<Vec<Message>> {
    let bytes = read_memory(pid, addr, count * stride)?;
    if bytes.len() < count * stride {
        return Err(io::Error::other("a short message header"));
    }
    let word = |m: &[u8], at: usize| u64::from_ne_bytes(m[at..at + 8].try_into().expect("8 bytes"));
    Ok(bytes
        .chunks(stride)
        .map(|m| Message {
            name: word(m, 0),
            name_len: u32::from_ne_bytes(m[8..12].try_into().expect("4 bytes")) as u64,
            control: word(m, 32),
            control_len: word(m, 40),
        })
        .collect())
}

/// Whether control data carries an IPv6 routing header (which would send
/// the message on to another address than its destination).
pub(super) fn routes_elsewhere(pid: u32, m: &Message) -> io::Result<bool> {
    if m.control == 0 || m.control_len == 0 {
        return Ok(false);
    }
    let bytes = read_memory(pid, m.control, (m.control_len as usize).min(64 * 1024))?;
    let mut at = 0;
    // struct cmsghdr: cmsg_len (size_t), cmsg_level, cmsg_type (int).
    while at + 16 <= bytes.len() {
        let len = u64::from_ne_bytes(bytes[at..at + 8].try_into().expect("8 bytes")) as usize;
        let level = i32::from_ne_bytes(bytes[at + 8..at + 12].try_into().expect("4 bytes"));
        let kind = i32::from_ne_bytes(bytes[at + 12..at + 16].try_into().expect("4 bytes"));
        if level == libc::IPPROTO_IPV6
            && (kind as u32 == IPV6_RTHDR || kind as u32 == IPV6_2292RTHDR)
        {
            return Ok(true);
        }
        if len < 16 {
            break;
        }
        at += (len + 7) & !7;
    }
    Ok(false)
}

pub(super) fn decide(listener: RawFd, req: &libc::seccomp_notif, allowed: &Allowed) -> Verdict {
    let args = req.data.args;
    let nr = req.data.nr as libc::c_long;
    let verdict = if nr == libc::SYS_connect {
        check(req.pid, args[1], args[2], allowed, false)
    } else if nr == libc::SYS_sendto {
        check(req.pid, args[4], args[5], allowed, true)
    } else if nr == libc::SYS_sendmsg || nr == libc::SYS_sendmmsg {
        let (count, stride) = if nr == libc::SYS_sendmsg {
            (1, std::mem::size_of::<libc::msghdr>())
        } else {
            (
                (args[2] as usize).clamp(1, 1024),
                std::mem::size_of::<libc::mmsghdr>(),
            )
        };
        match messages(req.pid, args[1], count, stride) {
            Err(e) => Verdict::Deny(libc::EACCES, format!("an unreadable message ({e})"), true),
            Ok(messages) => messages
                .iter()
                .map(|m| match routes_elsewhere(req.pid, m) {
                    Ok(false) if m.name != 0 && m.name_len != 0 => {
                        check(req.pid, m.name, m.name_len, allowed, true)
                    }
                    Ok(false) => Verdict::Allow,
                    Ok(true) => Verdict::Deny(libc::EPERM, "an IPv6 routing header".into(), true),
                    Err(e) => {
                        Verdict::Deny(libc::EACCES, format!("an unreadable message ({e})"), true)
                    }
                })
                .find(|v| matches!(v, Verdict::Deny(..)))
                .unwrap_or(Verdict::Allow),
        }
    } else {
        Verdict::Deny(libc::ENOSYS, format!("system call {nr}"), true)
    };
    // What was read must have been the caller's memory at the time of the
    // call: the request must still be pending (the pid not reused).
    let mut id = req.id;
    // SAFETY: the request takes a pointer to the notification id.
    if unsafe { libc::ioctl(listener, libc::SECCOMP_IOCTL_NOTIF_ID_VALID as _, &mut id) } != 0 {
        return Verdict::Deny(libc::EACCES, "a request whose caller is gone".into(), false);
    }
    verdict
}
