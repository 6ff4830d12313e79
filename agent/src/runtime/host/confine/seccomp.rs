//! The seccomp filter a granted program runs under: which system calls
//! are refused outright, which go to the supervisor, and the seal that
//! keeps the program from installing filters of its own.

use super::*;

#[cfg(target_arch = "x86_64")]
pub(super) const AUDIT_ARCH: u32 = 0xC000_003E;
#[cfg(target_arch = "aarch64")]
pub(super) const AUDIT_ARCH: u32 = 0xC000_00B7;

/// Capabilities a granted program never keeps (it may be started by an
/// agent running as root): reading other processes' memory
/// (`SYS_PTRACE`, `SYS_RAWIO`), loading kernel code (`SYS_MODULE`, `BPF`),
/// namespaces and mounts (`SYS_ADMIN`), the network's configuration and
/// raw packets (`NET_ADMIN`, `NET_RAW`), `PERFMON`, and making device
/// nodes (`MKNOD`: a `tar` extracting a hostile archive as root would
/// otherwise plant a block device in the target).
pub(super) const DROPPED_CAPS: [libc::c_ulong; 9] = [16, 17, 19, 21, 12, 13, 39, 38, 27];

/// Where seccomp_data keeps things (linux/seccomp.h).
pub(super) const NR: u32 = 0;
pub(super) const ARCH: u32 = 4;
pub(super) fn arg_lo(i: u32) -> u32 {
    16 + 8 * i
}
pub(super) fn arg_hi(i: u32) -> u32 {
    20 + 8 * i
}

/// A classic BPF program under construction, with forward jumps to labels.
pub(super) struct Asm {
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
pub(super) const IPV6_RTHDR: u32 = 57;
pub(super) const IPV6_2292RTHDR: u32 = 5;

/// The lowest descriptor number the channel to the host may take in the
/// child: high, so that no program reaches it by opening files.
pub(super) const CHANNEL_FD_MIN: RawFd = 512;

/// The filter every granted program runs under. `channel` is the
/// descriptor the child sends its listener through: a `sendmsg` on it is
/// let through (the listener has no reader yet), and [`seal`] then closes
/// that door for good.
pub(super) fn filter(channel: RawFd) -> Vec<libc::sock_filter> {
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
pub(super) fn seal(channel: RawFd) -> Vec<libc::sock_filter> {
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
