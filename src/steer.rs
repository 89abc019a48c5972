//! Steering new connections to the slots whose worker serves: the classic BPF program attached
//! to a reuseport group (`SO_ATTACH_REUSEPORT_CBPF`, Linux 4.5+, no privilege needed), the mirror
//! of the kernel's socket order that program indexes, and a listener's accept queue (`TCP_INFO`).
//!
//! The kernel keeps a reuseport group's sockets in an array, in the order they started
//! listening; the last close of one (every process's copy) moves the last into its place. A
//! steering program returns an index into that array, so [`Group`] mirrors it: [`Group::joined`]
//! and [`Group::left`] are called for every `listen` and every last `close` of the group's
//! sockets (each known by a key of its own, since a slot may get a new socket while its old one
//! is still open elsewhere), and [`Group::program`] turns the keys of the serving sockets into
//! indices. An index at or past the array's end (what the program returns
//! when nothing serves) makes the kernel fall back to its own hash over every socket, so
//! connections queue as they would without a program and are served by the first worker back.
//!
//! The program hashes the flow (source address and port, IPv4 or IPv6, read through the network
//! header: `SKF_NET_OFF`), never a per-packet random number, so a retransmitted SYN lands on the
//! socket its first copy chose. It then picks one of the serving slots with a chain of compares:
//! two instructions per serving slot, well inside the 4096 the kernel allows for the pool's
//! 1024 slots at most.

use std::io;
use std::os::fd::RawFd;

/// `SO_ATTACH_REUSEPORT_CBPF` (asm-generic/socket.h).
const SO_ATTACH_REUSEPORT_CBPF: libc::c_int = 51;
/// Loads relative to the network header (linux/filter.h `SKF_NET_OFF`).
const NET: u32 = (-0x100000i32) as u32;

// Classic BPF opcodes (linux/bpf_common.h, linux/filter.h).
const LD: u16 = 0x00;
const LDX: u16 = 0x01;
const ST: u16 = 0x02;
const ALU: u16 = 0x04;
const JMP: u16 = 0x05;
const RET: u16 = 0x06;
const W: u16 = 0x00;
const H: u16 = 0x08;
const B: u16 = 0x10;
const ABS: u16 = 0x20;
const IND: u16 = 0x40;
const MEM: u16 = 0x60;
const MSH: u16 = 0xa0;
const MUL: u16 = 0x20;
const RSH: u16 = 0x70;
const MOD: u16 = 0x90;
const XOR: u16 = 0xa0;
const JA: u16 = 0x00;
const JEQ: u16 = 0x10;
const K: u16 = 0x00;
const X: u16 = 0x08;

/// Returned when no slot serves: past any array, so the kernel falls back to its own hash.
pub const NO_SOCKET: u32 = u32::MAX;

fn op(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// The kernel's array of one reuseport group, as socket keys.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Group {
    order: Vec<u32>,
}

impl Group {
    /// A group whose sockets, keyed 0..n, joined in key order.
    pub fn new(n: u32) -> Group {
        Group {
            order: (0..n).collect(),
        }
    }

    /// Socket `key` started listening: it joins at the end.
    pub fn joined(&mut self, key: u32) {
        self.order.push(key);
    }

    /// Socket `key`'s last copy was closed: the last socket takes its place.
    pub fn left(&mut self, key: u32) {
        if let Some(i) = self.order.iter().position(|&k| k == key) {
            self.order.swap_remove(i);
        }
    }

    /// The socket keys, in kernel order.
    pub fn order(&self) -> &[u32] {
        &self.order
    }

    /// The program that spreads new connections over the sockets `serving` (keys; those not in
    /// the group are left out).
    pub fn program(&self, serving: &[u32]) -> Vec<libc::sock_filter> {
        let targets: Vec<u32> = serving
            .iter()
            .filter_map(|s| self.order.iter().position(|o| o == s))
            .map(|i| i as u32)
            .collect();
        program(&targets)
    }
}

/// Instructions of the IPv6 block, which the IPv4 block jumps over.
const V6_BLOCK: u32 = 15;

/// A program that hashes the flow onto one of `targets` (kernel indices), or returns
/// [`NO_SOCKET`] when there are none.
pub fn program(targets: &[u32]) -> Vec<libc::sock_filter> {
    if targets.is_empty() {
        return vec![op(RET | K, NO_SOCKET)];
    }
    let mut p = vec![
        // The IP version: 4 or 6.
        op(LD | B | ABS, NET),
        op(ALU | RSH | K, 4),
        jump(JMP | JEQ | K, 6, 5, 0),
        // IPv4: the source address into M[0], the header length into X, the source port.
        op(LD | W | ABS, NET + 12),
        op(ST, 0),
        op(LDX | B | MSH, NET),
        op(LD | H | IND, NET),
        jump(JMP | JA, V6_BLOCK, 0, 0),
        // IPv6: the four words of the source address folded into M[0], then the port (a SYN
        // carries no extension headers).
        op(LD | W | ABS, NET + 8),
        op(ST, 0),
        op(LD | W | ABS, NET + 12),
        op(LDX | W | MEM, 0),
        op(ALU | XOR | X, 0),
        op(ST, 0),
        op(LD | W | ABS, NET + 16),
        op(LDX | W | MEM, 0),
        op(ALU | XOR | X, 0),
        op(ST, 0),
        op(LD | W | ABS, NET + 20),
        op(LDX | W | MEM, 0),
        op(ALU | XOR | X, 0),
        op(ST, 0),
        op(LD | H | ABS, NET + 40),
        // Both: mix port and address (Knuth's multiplicative hash), keep the high half.
        op(LDX | W | MEM, 0),
        op(ALU | XOR | X, 0),
        op(ALU | MUL | K, 0x9e37_79b1),
        op(ALU | RSH | K, 16),
        op(ALU | MOD | K, targets.len() as u32),
    ];
    for (n, &target) in targets.iter().enumerate() {
        if n + 1 == targets.len() {
            p.push(op(RET | K, target));
        } else {
            p.push(jump(JMP | JEQ | K, n as u32, 0, 1));
            p.push(op(RET | K, target));
        }
    }
    p
}

/// Attaches `program` to the reuseport group `fd` belongs to (replacing any before it).
pub fn attach(fd: RawFd, program: &[libc::sock_filter]) -> io::Result<()> {
    let fprog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: setsockopt reads `fprog` (and the filter it points at) during the call only.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            SO_ATTACH_REUSEPORT_CBPF,
            (&fprog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A listener's accept queue: connections waiting to be accepted, and the backlog. `TCP_INFO`
/// on a listening socket reports them in `tcpi_unacked` and `tcpi_sacked` (what `ss -lnt`
/// shows); None for anything else.
pub fn queue(fd: RawFd) -> Option<(u32, u32)> {
    // SAFETY: tcp_info is plain data, valid when zeroed; getsockopt fills at most `len` bytes.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: as above.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    // TCP_LISTEN is 10 in the kernel's state numbering.
    (r == 0 && info.tcpi_state == 10).then_some((info.tcpi_unacked, info.tcpi_sacked))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    #[test]
    fn the_mirror_follows_the_kernels_swap_remove() {
        let mut g = Group::new(4);
        g.left(1);
        assert_eq!(g.order(), [0, 3, 2]);
        g.joined(1);
        assert_eq!(g.order(), [0, 3, 2, 1]);
        g.left(1);
        assert_eq!(g.order(), [0, 3, 2]);
        // Socket 3 is at kernel index 1 now.
        let p = g.program(&[3]);
        assert_eq!(p.last().map(|i| i.k), Some(1));
    }

    #[test]
    fn a_program_fits_the_kernels_limit_for_the_largest_pool() {
        let all: Vec<u32> = (0..crate::pool::MAX_WORKERS).collect();
        assert!(program(&all).len() <= 4096);
        assert_eq!(program(&[]), vec![op(RET | K, NO_SOCKET)]);
    }

    fn wait_until<T>(mut f: impl FnMut() -> Option<T>) -> Option<T> {
        let end = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::time::Instant::now() < end {
            if let Some(v) = f() {
                return Some(v);
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        None
    }

    #[test]
    fn the_ipv4_block_jumps_to_the_mix_past_the_ipv6_block() {
        let p = program(&[0, 1]);
        let ja = p.iter().position(|i| i.code == JMP | JA).unwrap();
        let mix = ja + 1 + V6_BLOCK as usize;
        assert_eq!(
            (p[mix].code, p[mix].k),
            (LDX | W | MEM, 0),
            "the mix starts with ldx M[0]"
        );
        assert_eq!((p[mix - 1].code, p[mix - 1].k), (LD | H | ABS, NET + 40));
        // The version test jumps to the IPv6 block, right after the IPv4 one.
        assert_eq!(2 + 1 + p[2].jt as usize, ja + 1);
    }

    /// `n` reuseport sockets on one port of `addr` (`127.0.0.1:0`, or `:0` for dual-stack),
    /// joined in order.
    fn group_on(addr: &str, n: usize) -> (u16, Vec<OwnedFd>) {
        let specs = [addr.parse::<crate::listen::ListenSpec>().expect("address")];
        let l = crate::listen::Listeners::bind(&specs, crate::listen::Balance::ReusePort, n, 128)
            .expect("bind");
        let fds: Vec<OwnedFd> = (0..n)
            .map(|s| {
                let fd = l.fds_for_slot(s)[0];
                // SAFETY: dup of an fd `l` owns; the copy is ours.
                unsafe { OwnedFd::from_raw_fd(libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3)) }
            })
            .collect();
        let port = l.local_addrs()[0]
            .rsplit(':')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        (port, fds)
    }

    fn group(n: usize) -> (u16, Vec<OwnedFd>) {
        group_on("127.0.0.1:0", n)
    }

    fn accepted(fds: &[OwnedFd]) -> Vec<usize> {
        fds.iter()
            .map(|fd| queue(fd.as_raw_fd()).map_or(0, |(q, _)| q as usize))
            .collect()
    }

    #[test]
    fn connections_go_only_to_the_serving_sockets_and_spread_over_them() {
        let (port, fds) = group(4);
        let g = Group::new(4);
        attach(fds[0].as_raw_fd(), &g.program(&[1, 3])).expect("the kernel takes the program");
        let clients: Vec<TcpStream> = (0..200)
            .map(|_| TcpStream::connect(("127.0.0.1", port)).expect("connect"))
            .collect();
        let queued = wait_until(|| {
            let q = accepted(&fds);
            (q.iter().sum::<usize>() == clients.len()).then_some(q)
        })
        .expect("all queued");
        assert_eq!((queued[0], queued[2]), (0, 0), "{queued:?}");
        assert!(queued[1] > 60 && queued[3] > 60, "uneven: {queued:?}");
        // The backlog is reported alongside.
        assert_eq!(queue(fds[1].as_raw_fd()).map(|(_, b)| b), Some(128));
        drop(clients);
    }

    #[test]
    fn ipv6_and_ipv4_clients_of_a_dual_stack_group_are_steered_alike() {
        let (port, fds) = group_on(":0", 3);
        attach(fds[0].as_raw_fd(), &Group::new(3).program(&[0, 2])).expect("attach");
        let mut clients = Vec::new();
        for host in ["127.0.0.1", "::1"] {
            for _ in 0..60 {
                match TcpStream::connect((host, port)) {
                    Ok(c) => clients.push(c),
                    // A kernel without IPv6 binds 0.0.0.0: nothing to test for ::1.
                    Err(_) if host == "::1" => break,
                    Err(e) => panic!("connect {host}: {e}"),
                }
            }
        }
        let queued = wait_until(|| {
            let q = accepted(&fds);
            (q.iter().sum::<usize>() == clients.len()).then_some(q)
        })
        .expect("all queued");
        assert_eq!(queued[1], 0, "{queued:?}");
        assert!(queued[0] > 20 && queued[2] > 20, "uneven: {queued:?}");
    }

    #[test]
    fn with_nothing_serving_the_kernel_spreads_as_without_a_program() {
        let (port, fds) = group(2);
        attach(fds[0].as_raw_fd(), &Group::new(2).program(&[])).expect("attach");
        let clients: Vec<TcpStream> = (0..64)
            .map(|_| TcpStream::connect(("127.0.0.1", port)).expect("connect"))
            .collect();
        let queued = wait_until(|| {
            let q = accepted(&fds);
            (q.iter().sum::<usize>() == clients.len()).then_some(q)
        })
        .expect("all queued");
        assert!(queued.iter().all(|&q| q > 0), "{queued:?}");
    }

    #[test]
    fn the_queue_of_something_that_is_not_a_listener_is_none() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        assert_eq!(queue(c.as_raw_fd()), None);
        assert_eq!(queue(l.as_raw_fd()).map(|(_, b)| b > 0), Some(true));
    }
}
