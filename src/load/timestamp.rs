//! Kernel receive timestamps on a TCP socket: `SO_TIMESTAMPNS` makes the kernel stamp every
//! segment as it arrives (CLOCK_REALTIME, nanoseconds) and hand the stamp to `recvmsg` as a
//! control message. A job's fan-out is measured from the pool's send instant to that stamp, so
//! the load tool's own scheduling delay (a busy swarm reads late) does not count against the
//! proxy.
//!
//! These `libc` calls, with `sysconf` in `procstat.rs` and `getrlimit` in `run.rs`, are the only
//! unsafe code of the crate; each block says what it relies on.

use std::io;
use std::os::fd::{AsRawFd, RawFd};

use tokio::io::Interest;
use tokio::net::TcpStream;

#[cfg(test)]
use crate::clock::unix_ns;

/// Asks the kernel to timestamp every segment received on `stream`.
pub fn enable(stream: &TcpStream) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: the fd is a live socket owned by `stream`; the option value is a c_int that
    // outlives the call, and its size is passed.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Reads what is there into `buf` without waiting: the bytes read (0 at end of stream) and the
/// kernel's receive stamp of the data (Unix nanoseconds), when it gave one. `WouldBlock` when
/// nothing is there (the caller awaits readiness first).
pub fn try_read(stream: &TcpStream, buf: &mut [u8]) -> io::Result<(usize, Option<u64>)> {
    stream.try_io(Interest::READABLE, || recv_stamped(stream.as_raw_fd(), buf))
}

/// Control-message space for one `timespec` (generously sized: `CMSG_SPACE` is not const).
const CONTROL: usize = 64;

fn recv_stamped(fd: RawFd, buf: &mut [u8]) -> io::Result<(usize, Option<u64>)> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // u64s keep the control buffer aligned for `cmsghdr`.
    let mut control = [0u64; CONTROL / 8];
    // SAFETY: an all-zero msghdr is valid (no name, no iov, no control) before the fields
    // below are set.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = CONTROL as _;
    // SAFETY: `msg` points at `iov` (over `buf`) and `control`, all alive and exclusively
    // borrowed for the call; the kernel writes at most their given lengths.
    let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut stamp = None;
    // SAFETY: CMSG_FIRSTHDR/CMSG_NXTHDR walk the control buffer the kernel just filled,
    // within `msg_controllen`; a SCM_TIMESTAMPNS message carries one `timespec`, read
    // unaligned because CMSG_DATA need not be aligned for it.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_TIMESTAMPNS
            {
                let ts: libc::timespec =
                    std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::timespec>());
                stamp = Some(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64);
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok((n as usize, stamp))
}

/// Pins the calling thread to `cpu` (the load tool on one core, the proxy on another).
pub fn pin_to_cpu(cpu: usize) -> io::Result<()> {
    // SAFETY: an all-zero cpu_set_t is the empty set; CPU_SET writes within it for any cpu
    // below CPU_SETSIZE (checked), and sched_setaffinity reads exactly its size.
    unsafe {
        if cpu >= libc::CPU_SETSIZE as usize {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "no such cpu"));
        }
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn a_segment_comes_with_the_kernels_receive_stamp() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = TcpStream::connect(addr).await.unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        enable(&client).unwrap();
        // The kernel turns stamping on shortly after the first socket asks (a deferred
        // switch): a line sent before may come unstamped. Send until one is stamped.
        let mut buf = [0u8; 64];
        let mut attempts = 0;
        let (before, n, stamp, after) = loop {
            attempts += 1;
            assert!(attempts <= 1000, "no line was ever stamped");
            let before = unix_ns();
            server.write_all(b"hello\n").await.unwrap();
            let (n, stamp) = loop {
                client.readable().await.unwrap();
                match try_read(&client, &mut buf) {
                    Ok(read) => break read,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => panic!("{e}"),
                }
            };
            if let Some(stamp) = stamp {
                break (before, n, stamp, unix_ns());
            }
        };
        assert_eq!(&buf[..n], b"hello\n");
        assert!(
            before <= stamp && stamp <= after,
            "{before} <= {stamp} <= {after}"
        );
    }
}
