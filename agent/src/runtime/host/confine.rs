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

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xC000_003E;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xC000_00B7;

/// Capabilities a granted program never keeps (it may be started by an
/// agent running as root): reading other processes' memory
/// (`SYS_PTRACE`, `SYS_RAWIO`), loading kernel code (`SYS_MODULE`, `BPF`),
/// namespaces and mounts (`SYS_ADMIN`), the network's configuration and
/// raw packets (`NET_ADMIN`, `NET_RAW`), and `PERFMON`.
const DROPPED_CAPS: [libc::c_ulong; 8] = [16, 17, 19, 21, 12, 13, 39, 38];

/// Where seccomp_data keeps things (linux/seccomp.h).
const NR: u32 = 0;
const ARCH: u32 = 4;
fn arg_lo(i: u32) -> u32 {
    16 + 8 * i
}
fn arg_hi(i: u32) -> u32 {
    20 + 8 * i
}

/// A classic BPF program under construction, with forward jumps to labels.
struct Asm {
    code: Vec<libc::sock_filter>,
    /// (instruction, label if taken, label if not), patched at the end.
    jumps: Vec<(usize, Option<usize>, Option<usize>)>,
    labels: Vec<Option<usize>>,
}

impl Asm {
    fn new() -> Self {
        Asm {
            code: Vec::new(),
            jumps: Vec::new(),
            labels: Vec::new(),
        }
    }
    fn label(&mut self) -> usize {
        self.labels.push(None);
        self.labels.len() - 1
    }
    fn here(&mut self, l: usize) {
        self.labels[l] = Some(self.code.len());
    }
    fn stmt(&mut self, code: u32, k: u32) {
        self.code.push(libc::sock_filter {
            code: code as u16,
            jt: 0,
            jf: 0,
            k,
        });
    }
    fn load(&mut self, offset: u32) {
        self.stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, offset);
    }
    fn ret(&mut self, value: u32) {
        self.stmt(libc::BPF_RET | libc::BPF_K, value);
    }
    /// Compare the accumulator with `k`: go to `yes` (or the next
    /// instruction, `None`) if it matches, else to `no`.
    fn jump(&mut self, op: u32, k: u32, yes: Option<usize>, no: Option<usize>) {
        self.jumps.push((self.code.len(), yes, no));
        self.stmt(libc::BPF_JMP | op | libc::BPF_K, k);
    }
    fn finish(mut self) -> Vec<libc::sock_filter> {
        for (at, yes, no) in self.jumps {
            let offset = |l: Option<usize>| -> u8 {
                match l {
                    None => 0,
                    Some(l) => {
                        let target = self.labels[l].expect("every label placed");
                        u8::try_from(target - at - 1).expect("a short filter")
                    }
                }
            };
            self.code[at].jt = offset(yes);
            self.code[at].jf = offset(no);
        }
        self.code
    }
}

/// The socket options (and control messages) of an IPv6 routing header.
const IPV6_RTHDR: u32 = 57;
const IPV6_2292RTHDR: u32 = 5;

/// The lowest descriptor number the channel to the host may take in the
/// child: high, so that no program reaches it by opening files.
const CHANNEL_FD_MIN: RawFd = 512;

/// The filter every granted program runs under. `channel` is the
/// descriptor the child sends its listener through: a `sendmsg` on it is
/// let through (the listener has no reader yet), and [`seal`] then closes
/// that door for good.
fn filter(channel: RawFd) -> Vec<libc::sock_filter> {
    let notify = libc::SECCOMP_RET_USER_NOTIF;
    let allow = libc::SECCOMP_RET_ALLOW;
    let errno = |e: i32| libc::SECCOMP_RET_ERRNO | (e as u32 & libc::SECCOMP_RET_DATA);
    let mut a = Asm::new();
    let (kill, to_notify, to_allow, sendto, socket, inet) = (
        a.label(),
        a.label(),
        a.label(),
        a.label(),
        a.label(),
        a.label(),
    );
    a.load(ARCH);
    a.jump(libc::BPF_JEQ, AUDIT_ARCH, None, Some(kill));
    a.load(NR);
    #[cfg(target_arch = "x86_64")]
    // The x32 entry point numbers its calls from 0x40000000.
    a.jump(libc::BPF_JGE, 0x4000_0000, Some(kill), None);
    let sendmsg = a.label();
    a.jump(libc::BPF_JEQ, libc::SYS_sendmsg as u32, Some(sendmsg), None);
    for nr in [libc::SYS_connect, libc::SYS_sendmmsg] {
        a.jump(libc::BPF_JEQ, nr as u32, Some(to_notify), None);
    }
    a.jump(libc::BPF_JEQ, libc::SYS_sendto as u32, Some(sendto), None);
    a.jump(libc::BPF_JEQ, libc::SYS_socket as u32, Some(socket), None);
    let refuse_listen = a.label();
    a.jump(
        libc::BPF_JEQ,
        libc::SYS_listen as u32,
        Some(refuse_listen),
        None,
    );
    let setsockopt = a.label();
    a.jump(
        libc::BPF_JEQ,
        libc::SYS_setsockopt as u32,
        Some(setsockopt),
        None,
    );
    let refuse_uring = a.label();
    a.jump(
        libc::BPF_JEQ,
        libc::SYS_io_uring_setup as u32,
        Some(refuse_uring),
        Some(to_allow),
    );
    // An IPv6 routing header sends a packet on to another address than
    // the one the program connected or sent to: refused.
    a.here(setsockopt);
    let refuse_option = a.label();
    a.load(arg_lo(1));
    a.jump(
        libc::BPF_JEQ,
        libc::IPPROTO_IPV6 as u32,
        None,
        Some(to_allow),
    );
    a.load(arg_lo(2));
    a.jump(libc::BPF_JEQ, IPV6_RTHDR, Some(refuse_option), None);
    a.jump(
        libc::BPF_JEQ,
        IPV6_2292RTHDR,
        Some(refuse_option),
        Some(to_allow),
    );
    a.here(refuse_option);
    a.ret(errno(libc::EPERM));
    a.here(refuse_listen);
    a.ret(errno(libc::EACCES));
    a.here(refuse_uring);
    a.ret(errno(libc::ENOSYS));
    // sendmsg: checked, but for the child's own hand-over of its listener.
    a.here(sendmsg);
    a.load(arg_hi(0));
    a.jump(libc::BPF_JEQ, 0, None, Some(to_notify));
    a.load(arg_lo(0));
    a.jump(
        libc::BPF_JEQ,
        channel as u32,
        Some(to_allow),
        Some(to_notify),
    );
    // sendto with a destination (argument 4 not NULL) is checked.
    a.here(sendto);
    a.load(arg_lo(4));
    a.jump(libc::BPF_JEQ, 0, None, Some(to_notify));
    a.load(arg_hi(4));
    a.jump(libc::BPF_JEQ, 0, Some(to_allow), Some(to_notify));
    // socket: local, TCP and UDP only.
    a.here(socket);
    a.load(arg_lo(0));
    a.jump(libc::BPF_JEQ, libc::AF_UNIX as u32, Some(to_allow), None);
    a.jump(libc::BPF_JEQ, libc::AF_INET as u32, Some(inet), None);
    a.jump(libc::BPF_JEQ, libc::AF_INET6 as u32, Some(inet), None);
    a.ret(errno(libc::EAFNOSUPPORT));
    // TCP and UDP only: the protocol 0 (the type's default), TCP or UDP
    // (SCTP, say, could connect through a socket option).
    a.here(inet);
    let (protocol, refuse) = (a.label(), a.label());
    a.load(arg_lo(1));
    a.stmt(libc::BPF_ALU | libc::BPF_AND | libc::BPF_K, 0xf);
    a.jump(
        libc::BPF_JEQ,
        libc::SOCK_STREAM as u32,
        Some(protocol),
        None,
    );
    a.jump(
        libc::BPF_JEQ,
        libc::SOCK_DGRAM as u32,
        Some(protocol),
        Some(refuse),
    );
    a.here(protocol);
    a.load(arg_lo(2));
    a.jump(libc::BPF_JEQ, 0, Some(to_allow), None);
    a.jump(
        libc::BPF_JEQ,
        libc::IPPROTO_TCP as u32,
        Some(to_allow),
        None,
    );
    a.jump(
        libc::BPF_JEQ,
        libc::IPPROTO_UDP as u32,
        Some(to_allow),
        None,
    );
    a.here(refuse);
    a.ret(errno(libc::EACCES));
    a.here(to_notify);
    a.ret(notify);
    a.here(to_allow);
    a.ret(allow);
    a.here(kill);
    a.ret(libc::SECCOMP_RET_KILL_PROCESS);
    a.finish()
}

/// The second filter, installed once the listener is handed over: a
/// `sendmsg` on the channel's descriptor number fails from then on, so
/// the exception in [`filter`] lets nothing of the program's through (the
/// strictest answer of all filters wins).
///
/// It also refuses filters of the program's own (`seccomp`, `prctl
/// PR_SET_SECCOMP`): once the host's listener is gone (the agent ended
/// while a program it started lives on), a filter of its own with a
/// listener could answer its own requests and let itself out. Without
/// them, a request with no listener fails.
fn seal(channel: RawFd) -> Vec<libc::sock_filter> {
    let mut a = Asm::new();
    let (kill, deny, allow, refuse) = (a.label(), a.label(), a.label(), a.label());
    let (sendmsg, prctl) = (a.label(), a.label());
    a.load(ARCH);
    a.jump(libc::BPF_JEQ, AUDIT_ARCH, None, Some(kill));
    a.load(NR);
    a.jump(libc::BPF_JEQ, libc::SYS_seccomp as u32, Some(refuse), None);
    a.jump(libc::BPF_JEQ, libc::SYS_prctl as u32, Some(prctl), None);
    a.jump(
        libc::BPF_JEQ,
        libc::SYS_sendmsg as u32,
        Some(sendmsg),
        Some(allow),
    );
    a.here(prctl);
    a.load(arg_lo(0));
    a.jump(
        libc::BPF_JEQ,
        libc::PR_SET_SECCOMP as u32,
        Some(refuse),
        Some(allow),
    );
    a.here(sendmsg);
    a.load(arg_lo(0));
    a.jump(libc::BPF_JEQ, channel as u32, Some(deny), Some(allow));
    a.here(refuse);
    a.ret(libc::SECCOMP_RET_ERRNO | (libc::EPERM as u32 & libc::SECCOMP_RET_DATA));
    a.here(deny);
    a.ret(libc::SECCOMP_RET_ERRNO | (libc::EBADF as u32 & libc::SECCOMP_RET_DATA));
    a.here(allow);
    a.ret(libc::SECCOMP_RET_ALLOW);
    a.here(kill);
    a.ret(libc::SECCOMP_RET_KILL_PROCESS);
    a.finish()
}

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

/// What the supervisor decided about one call.
enum Verdict {
    Allow,
    /// Refused with this errno; the destination, and whether it is worth a
    /// warning (a network address) or only a debug line (a local socket
    /// such as nscd's, which C libraries try and do without).
    Deny(i32, String, bool),
}

/// Answer the program's requests until it and its children are gone (the
/// listener then reports a hang-up).
fn supervise(listener: OwnedFd, allowed: Allowed, label: String) {
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
fn read_memory(pid: u32, addr: u64, len: usize) -> io::Result<Vec<u8>> {
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
enum Destination {
    /// Nowhere: dissolving a UDP association, aborting a TCP connection.
    Unspecified,
    /// An IP endpoint.
    Ip(SocketAddr),
    /// A local socket by path (empty for an abstract one).
    Local(Vec<u8>),
}

/// Where a socket address points, or why it is refused.
fn destination(bytes: &[u8]) -> Result<Destination, Verdict> {
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
fn check(pid: u32, addr: u64, len: u64, allowed: &Allowed, send: bool) -> Verdict {
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
struct Message {
    name: u64,
    name_len: u64,
    control: u64,
    control_len: u64,
}

fn messages(pid: u32, addr: u64, count: usize, stride: usize) -> io::Result<Vec<Message>> {
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
fn routes_elsewhere(pid: u32, m: &Message) -> io::Result<bool> {
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

fn decide(listener: RawFd, req: &libc::seccomp_notif, allowed: &Allowed) -> Verdict {
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
