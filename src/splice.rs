//! One direction of a tunnel moved by the kernel: `splice(2)` from the
//! source socket into a pipe and from the pipe into the destination socket,
//! so tunnelled bytes never enter user space. A pipe is held only while a
//! burst is in flight: it comes from a per-thread pool when the source turns
//! readable and goes back empty once the burst is delivered, so an idle
//! tunnel holds neither a buffer nor pipe descriptors.
//!
//! A hand-written pump rather than `tokio-splice2`: the tunnel needs running
//! byte counts and an activity clock that survive cancellation (idle timeout,
//! drain), and both directions borrowing the same two sockets.

use std::cell::RefCell;
use std::io;
use std::net::Shutdown;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use tokio::io::Interest;
use tokio::net::TcpStream;

/// Pipe capacity asked for, and bytes moved per splice call: fewer, larger
/// splices per megabyte than the default 64 KiB pipe.
const CHUNK: usize = 256 * 1024;
/// Empty pipes kept per worker thread: creating one costs a pipe2(2), an
/// fcntl(2) and two close(2), a large share of a short tunnel's setup cost.
const POOL_MAX: usize = 64;

thread_local! {
    /// Empty pipes for reuse on this thread (no lock: each thread has its own).
    static POOL: RefCell<Vec<Pipe>> = const { RefCell::new(Vec::new()) };
}

/// A pipe used as the in-kernel buffer.
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl Pipe {
    /// A pipe from this thread's pool, or a new one.
    fn take() -> io::Result<Pipe> {
        match POOL.with(|pool| pool.borrow_mut().pop()) {
            Some(p) => Ok(p),
            None => Pipe::new(),
        }
    }

    /// Returns an empty pipe to this thread's pool (closes it when full).
    fn give_back(self) {
        POOL.with(|pool| {
            let mut pool = pool.borrow_mut();
            if pool.len() < POOL_MAX {
                pool.push(self);
            }
        });
    }

    fn new() -> io::Result<Pipe> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
        let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // A larger pipe is an optimisation only: on failure the default size stays.
        // SAFETY: fcntl on a descriptor pipe2 just returned.
        let _ = unsafe { libc::fcntl(fds[1], libc::F_SETPIPE_SZ, CHUNK as libc::c_int) };
        // SAFETY: pipe2 succeeded, so both descriptors are open and owned by us alone.
        Ok(unsafe {
            Pipe {
                read: OwnedFd::from_raw_fd(fds[0]),
                write: OwnedFd::from_raw_fd(fds[1]),
            }
        })
    }
}

fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: plain syscall on descriptors that stay open for the call's duration;
    // null offsets are valid for sockets and pipes.
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Why a splice pump stopped before EOF.
pub enum PumpError {
    /// splice(2) is not usable for these descriptors; nothing was moved yet,
    /// the caller should copy through user space instead.
    Unsupported,
    /// A socket error.
    Io(io::Error),
}

/// Moves bytes from `src` to `dst` until EOF, then half-closes `dst`.
/// `on_bytes` is called after every chunk delivered to `dst`.
pub async fn pump(
    src: &TcpStream,
    dst: &TcpStream,
    mut on_bytes: impl FnMut(usize),
) -> Result<(), PumpError> {
    let mut moved_any = false;
    loop {
        src.readable().await.map_err(PumpError::Io)?;
        let pipe = Pipe::take().map_err(PumpError::Io)?;
        let filled = src.try_io(Interest::READABLE, || {
            splice(src.as_raw_fd(), pipe.write.as_raw_fd(), CHUNK)
        });
        let mut in_pipe = match filled {
            Ok(0) => {
                pipe.give_back();
                return socket2::SockRef::from(dst)
                    .shutdown(Shutdown::Write)
                    .or_else(not_connected_ok)
                    .map_err(PumpError::Io);
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                pipe.give_back();
                continue;
            }
            Err(e)
                if !moved_any
                    && matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOSYS)) =>
            {
                pipe.give_back();
                return Err(PumpError::Unsupported);
            }
            // A pipe that may still hold bytes is dropped (closed), never pooled.
            Err(e) => return Err(PumpError::Io(e)),
        };
        moved_any = true;
        while in_pipe > 0 {
            dst.writable().await.map_err(PumpError::Io)?;
            match dst.try_io(Interest::WRITABLE, || {
                splice(pipe.read.as_raw_fd(), dst.as_raw_fd(), in_pipe)
            }) {
                Ok(n) => {
                    in_pipe -= n;
                    on_bytes(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(PumpError::Io(e)),
            }
        }
        pipe.give_back();
    }
}

/// A peer that already went away makes the half-close moot, not an error.
fn not_connected_ok(e: io::Error) -> io::Result<()> {
    if e.kind() == io::ErrorKind::NotConnected {
        Ok(())
    } else {
        Err(e)
    }
}
