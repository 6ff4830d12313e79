//! Confining the programs a job grants. They run natively, outside the
//! sandbox, with arguments the adapter chooses; the WASI socket checks do
//! not reach them. So each one starts under a seccomp filter installed
//! between `fork` and `exec`, and the host decides its network use:
//!
//! - every `connect`, and every `sendto`/`sendmsg`/`sendmmsg` that names a
//!   destination, is sent to a supervisor thread in the host, which reads
//!   the address from the program's memory and lets the call go on only
//!   to an endpoint the job grants (or port 53 of a resolver in
//!   `/etc/resolv.conf`, so host names still resolve); anything else fails
//!   with `EACCES` and is logged, naming program and address;
//! - a local socket is reached only when granted by its path;
//! - sockets other than TCP, UDP and local ones, IPv6 routing headers
//!   (which carry a packet on elsewhere), `listen`, io_uring (which would
//!   bypass the filter) and filters of the program's own are refused
//!   outright; so is any system call made through another architecture's
//!   entry point;
//! - the program can gain no privilege (`PR_SET_NO_NEW_PRIVS`), starts
//!   without the capabilities that read another process's memory or
//!   reconfigure the machine, even when the agent runs as root (with the
//!   agent not dumpable, it cannot read the agent's memory or
//!   environment), and holds none of the agent's descriptors.
//!
//! The supervisor checks the address it read and then lets the kernel
//! proceed, which reads it again: a program that rewrites the address from
//! another thread in between could slip past. The programs are the
//! operator's (pg_dump, psql), not the adapter's; the filter stops an
//! adapter from pointing them elsewhere, not a granted program that is
//! itself hostile. docs/adapters.md says what a grant exposes.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;

mod seccomp;
mod supervisor;

use seccomp::*;
use supervisor::*;

/// Where a confined program may connect or send.
#[derive(Debug, Clone)]
pub struct Allowed {
    /// The job's granted endpoints.
    pub endpoints: Vec<SocketAddr>,
    /// The job's granted local sockets, by path.
    pub sockets: Vec<std::path::PathBuf>,
    /// Name servers (port 53 of each is allowed, so names resolve).
    pub resolvers: Vec<IpAddr>,
}

impl Allowed {
    /// The job's endpoints and sockets, and this machine's resolvers.
    pub fn for_job(endpoints: &[SocketAddr], sockets: &[std::path::PathBuf]) -> Self {
        Allowed {
            endpoints: endpoints.iter().map(|a| canonical(*a)).collect(),
            sockets: sockets.to_vec(),
            resolvers: resolvers(),
        }
    }

    fn permits(&self, addr: SocketAddr) -> bool {
        let addr = canonical(addr);
        self.endpoints.contains(&addr) || (addr.port() == 53 && self.resolvers.contains(&addr.ip()))
    }
}

/// An IPv4 address written as IPv6 (`::ffff:a.b.c.d`) is the IPv4 one.
fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => addr,
        },
        v4 => v4,
    }
}

/// The name servers of `/etc/resolv.conf`.
fn resolvers() -> Vec<IpAddr> {
    std::fs::read_to_string("/etc/resolv.conf")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|rest| rest.trim().split('%').next()?.parse().ok())
        .collect()
}

/// What the host prepares before starting a program it confines.
pub struct Confinement {
    filter: Arc<Vec<libc::sock_filter>>,
    seal: Arc<Vec<libc::sock_filter>>,
    /// The end the child sends its notification descriptor through.
    child_end: OwnedFd,
    /// The end the host receives it on.
    host_end: OwnedFd,
}

impl Confinement {
    /// Prepare the filter and the channel the child's listener comes back
    /// through.
    pub fn new() -> io::Result<Self> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: socketpair writes two descriptors into `fds`, which we
        // then own.
        let r = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both descriptors were just created and are owned here.
        let (first, host_end) =
            unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // The child's end, moved to a high number (see CHANNEL_FD_MIN).
        // SAFETY: F_DUPFD_CLOEXEC returns a new descriptor, owned here.
        let high = unsafe { libc::fcntl(first.as_raw_fd(), libc::F_DUPFD_CLOEXEC, CHANNEL_FD_MIN) };
        if high < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `high` was just created.
        let child_end = unsafe { OwnedFd::from_raw_fd(high) };
        drop(first);
        Ok(Confinement {
            filter: Arc::new(filter(high)),
            seal: Arc::new(seal(high)),
            child_end,
            host_end,
        })
    }

    /// The hook to run in the child between `fork` and `exec`. It only
    /// makes system calls (no allocation, no locks), as a child of a
    /// multithreaded process must.
    pub fn child_hook(&self) -> impl FnMut() -> io::Result<()> + Send + Sync + 'static {
        let filter = Arc::clone(&self.filter);
        let seal = Arc::clone(&self.seal);
        let channel = self.child_end.as_raw_fd();
        move || {
            // SAFETY: each call below passes valid pointers to memory that
            // lives for the call (the filters, owned by the closure; stack
            // buffers), in the single-threaded child.
            unsafe { confine_self(&filter, &seal, channel) }
        }
    }

    /// After the program started: take its listener and supervise it on a
    /// thread of its own, until the program (and whatever it started) is
    /// gone. `label` names it in logs.
    pub fn supervise(self, allowed: Allowed, label: String) -> io::Result<()> {
        drop(self.child_end);
        let listener = receive_fd(&self.host_end)?;
        std::thread::Builder::new()
            .name("cairn-confine".into())
            .spawn(move || supervise(listener, allowed, label))?;
        Ok(())
    }
}

/// Install a filter; with `listener`, return its notification descriptor.
unsafe fn install(filter: &[libc::sock_filter], listener: bool) -> io::Result<RawFd> {
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr() as *mut libc::sock_filter,
    };
    let flags = if listener {
        libc::SECCOMP_FILTER_FLAG_NEW_LISTENER
    } else {
        0
    };
    // SAFETY: `prog` points at `filter`, alive for the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            flags,
            &prog as *const libc::sock_fprog,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r as RawFd)
}

/// In the child: no new privileges, no dangerous capabilities, the filter,
/// its listener sent to the host (and closed here, so the program cannot
/// answer its own requests), then the seal.
unsafe fn confine_self(
    filter: &[libc::sock_filter],
    seal: &[libc::sock_filter],
    channel: RawFd,
) -> io::Result<()> {
    // SAFETY (for the block): see the caller.
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err(io::Error::last_os_error());
        }
        for cap in DROPPED_CAPS {
            // Without CAP_SETPCAP (not root) this fails, and the program
            // has none of these capabilities to lose anyway.
            libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0);
        }
        // A root program's capabilities after exec come from the bounding
        // set and also from the inheritable and ambient sets (which some
        // container runtimes and service managers fill): empty both.
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        );
        clear_inheritable()?;
        // Descriptors the agent itself inherited or opened without
        // close-on-exec are not the program's: all of them close at exec
        // (0, 1 and 2 are its own; std's exec-error pipe still reports).
        if libc::syscall(
            libc::SYS_close_range,
            3 as libc::c_uint,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        ) != 0
        {
            return Err(io::Error::last_os_error());
        }
        let listener = install(filter, true)?;
        let sent = send_fd(channel, listener);
        libc::close(listener);
        libc::close(channel);
        sent?;
        install(seal, false).map(|_| ())
    }
}

/// Empty this process's inheritable capability set (capget, then capset
/// with the same effective and permitted sets).
unsafe fn clear_inheritable() -> io::Result<()> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let mut data = [Data {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    // SAFETY (for the block): `header` and `data` are the structures the
    // calls take (version 3: two data records), on this stack frame.
    unsafe {
        if libc::syscall(
            libc::SYS_capget,
            &mut header as *mut Header,
            data.as_mut_ptr(),
        ) != 0
        {
            return Err(io::Error::last_os_error());
        }
        if data.iter().all(|d| d.inheritable == 0) {
            return Ok(());
        }
        for d in &mut data {
            d.inheritable = 0;
        }
        if libc::syscall(libc::SYS_capset, &mut header as *mut Header, data.as_ptr()) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Room for one descriptor's control message, aligned as `cmsghdr` needs.
#[repr(C)]
union Control {
    header: libc::cmsghdr,
    bytes: [u8; 64],
}

/// A message whose data is the byte `iov` covers and whose control data is
/// the first `len` bytes of `control`. Makes no allocation (the child calls
/// it between `fork` and `exec`).
fn one_byte_message(iov: &mut libc::iovec, control: &mut Control, len: usize) -> libc::msghdr {
    // SAFETY: an all-zero msghdr is a valid empty message; the pointers
    // set next outlive every use the callers make of it.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov;
    msg.msg_iovlen = 1;
    msg.msg_control = (control as *mut Control).cast();
    msg.msg_controllen = len as _;
    msg
}

/// Send `fd` over the socket `channel` (SCM_RIGHTS), with stack buffers only.
unsafe fn send_fd(channel: RawFd, fd: RawFd) -> io::Result<()> {
    // SAFETY (for the block): the buffers are on this stack frame and big
    // enough for one descriptor's control message.
    unsafe {
        let mut byte = [0u8; 1];
        let mut iov = libc::iovec {
            iov_base: byte.as_mut_ptr().cast(),
            iov_len: 1,
        };
        let mut control: Control = std::mem::zeroed();
        let len = libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) as usize;
        let msg = one_byte_message(&mut iov, &mut control, len);
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>(), fd);
        if libc::sendmsg(channel, &msg, 0) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Receive the descriptor the child sent.
fn receive_fd(channel: &OwnedFd) -> io::Result<OwnedFd> {
    // SAFETY: the buffers live on this frame; a descriptor received with
    // SCM_RIGHTS is new in this process and owned from here on.
    unsafe {
        let mut byte = [0u8; 1];
        let mut iov = libc::iovec {
            iov_base: byte.as_mut_ptr().cast(),
            iov_len: 1,
        };
        let mut control: Control = std::mem::zeroed();
        let mut msg = one_byte_message(&mut iov, &mut control, std::mem::size_of::<Control>());
        let n = libc::recvmsg(
            channel.as_raw_fd(),
            &mut msg,
            libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC,
        );
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        if cmsg.is_null()
            || (*cmsg).cmsg_level != libc::SOL_SOCKET
            || (*cmsg).cmsg_type != libc::SCM_RIGHTS
        {
            return Err(io::Error::other(
                "the program did not hand over its seccomp listener",
            ));
        }
        let fd = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>());
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_assembles_with_every_jump_resolved() {
        assert!(seal(600).len() < 24);
        let f = filter(600);
        assert!(f.len() > 20 && f.len() < 64, "{} instructions", f.len());
        // The last instructions are returns.
        assert_eq!(
            f.last().map(|i| i.code as u32),
            Some(libc::BPF_RET | libc::BPF_K)
        );
    }

    #[test]
    fn addresses_are_parsed_and_checked_against_the_grants() {
        let allowed = Allowed {
            endpoints: vec!["127.0.0.1:5432".parse().unwrap()],
            sockets: vec!["/run/postgresql/.s.PGSQL.5432".into()],
            resolvers: vec!["10.0.0.53".parse().unwrap()],
        };
        let v4 = |ip: [u8; 4], port: u16| {
            let mut b = vec![0u8; 16];
            b[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
            b[2..4].copy_from_slice(&port.to_be_bytes());
            b[4..8].copy_from_slice(&ip);
            b
        };
        let permitted = |b: &[u8]| match destination(b) {
            Ok(Destination::Unspecified) => true,
            Ok(Destination::Ip(a)) => allowed.permits(a),
            Ok(Destination::Local(p)) => allowed
                .sockets
                .iter()
                .any(|s| s.as_os_str().as_encoded_bytes() == p.as_slice()),
            Err(_) => false,
        };
        assert!(permitted(&v4([127, 0, 0, 1], 5432)));
        assert!(!permitted(&v4([127, 0, 0, 1], 6543)));
        assert!(!permitted(&v4([203, 0, 113, 66], 5432)));
        assert!(permitted(&v4([10, 0, 0, 53], 53)));
        assert!(!permitted(&v4([10, 0, 0, 53], 54)));
        // The same address written as IPv6.
        let mut v6 = vec![0u8; 28];
        v6[..2].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
        v6[2..4].copy_from_slice(&5432u16.to_be_bytes());
        v6[8..24].copy_from_slice(&Ipv4Addr::new(127, 0, 0, 1).to_ipv6_mapped().octets());
        assert!(permitted(&v6));
        // A local socket only when granted by path.
        let unix = |path: &[u8]| {
            let mut b = (libc::AF_UNIX as u16).to_ne_bytes().to_vec();
            b.extend_from_slice(path);
            b.extend_from_slice(b"\0garbage after the name");
            b
        };
        assert!(permitted(&unix(b"/run/postgresql/.s.PGSQL.5432")));
        assert!(!permitted(&unix(b"/run/postgresql/.s.PGSQL.5433")));
        assert!(!permitted(&unix(b"\0/run/postgresql/.s.PGSQL.5432")));
    }
}
