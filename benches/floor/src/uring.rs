//! `--io-uring[=MODE]`: the fan-out as one batch of io_uring sends (issue 13:
//! "io_uring is worth one measured experiment (batched submission of a
//! fan-out's sends), kept only if it wins on this kernel").
//!
//! Instead of one blocking `send(2)` per subscriber, the publishing thread
//! pushes one `IORING_OP_SEND` (or `SEND_ZC`) entry per subscriber, all
//! pointing at the one encoded frame, and submits them with one
//! `io_uring_enter(2)` that also waits for all of their completions (a
//! submit-and-wait bounded by [`IO_TIMEOUT`]). Each thread has its own ring
//! of [`RING_ENTRIES`] entries (created on its first publish); a larger
//! fan-out goes in chunks of that size, one after the other. Then, per
//! subscriber, as the default mode: the whole frame sent, it stays; a short
//! send, or `EAGAIN`/`EINTR`, is finished with a blocking `write_all` of the
//! rest (the socket's `SO_SNDTIMEO` applies, as in the default mode); any
//! other error drops it. A batch not complete within [`IO_TIMEOUT`] has its
//! pending sends cancelled and those subscribers dropped (the default mode
//! drops a subscriber whose write times out). Nothing returns before every
//! completion is reaped, so the frame and the sockets outlive the kernel's
//! use of them; all of it under the channel's lock, as the default mode.
//!
//! Modes: `plain` (`--io-uring`), `defer` (`IORING_SETUP_SINGLE_ISSUER |
//! IORING_SETUP_DEFER_TASKRUN`), `coop` (`IORING_SETUP_COOP_TASKRUN |
//! IORING_SETUP_TASKRUN_FLAG`), `zc` (`IORING_OP_SEND_ZC` on a plain ring:
//! one more completion per send, the buffer's notification).

use std::cell::RefCell;
use std::io::{self, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::time::Instant;

use io_uring::{IoUring, cqueue, opcode, types};

use crate::IO_TIMEOUT;

/// Submission queue entries per ring (the completion queue has twice as
/// many, room for `zc`'s two completions per send): one fan-out of up to
/// this many subscribers is one `io_uring_enter`.
pub const RING_ENTRIES: u32 = 4096;

/// Linux's `MSG_NOSIGNAL`, as std's `send` passes it.
const MSG_NOSIGNAL: i32 = 0x4000;
/// Linux's `ETIME`: an `io_uring_enter` wait timed out.
const ETIME: i32 = 62;
/// Linux's `EAGAIN`.
const EAGAIN: i32 = 11;
/// Linux's `EBUSY`: the completion queue overflowed; reap and enter again.
const EBUSY: i32 = 16;

/// Which ring setup and send opcode `--io-uring` uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Plain,
    Defer,
    Coop,
    ZeroCopy,
}

impl Mode {
    /// `--io-uring` is `plain`; `--io-uring=MODE` names one.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "plain" => Some(Self::Plain),
            "defer" => Some(Self::Defer),
            "coop" => Some(Self::Coop),
            "zc" => Some(Self::ZeroCopy),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Plain => "plain",
            Self::Defer => "defer",
            Self::Coop => "coop",
            Self::ZeroCopy => "zc",
        }
    }
}

fn build(mode: Mode) -> io::Result<IoUring> {
    let mut b = IoUring::builder();
    // Submit every entry even if one fails to prepare (its completion says so).
    b.setup_submit_all();
    match mode {
        Mode::Plain | Mode::ZeroCopy => {}
        Mode::Defer => {
            b.setup_single_issuer().setup_defer_taskrun();
        }
        Mode::Coop => {
            b.setup_coop_taskrun().setup_taskrun_flag();
        }
    }
    b.build(RING_ENTRIES)
}

/// At startup: a ring of this mode can be made, and the kernel knows the
/// send opcode.
pub fn check(mode: Mode) -> io::Result<()> {
    let ring = build(mode)?;
    let mut probe = io_uring::Probe::new();
    ring.submitter().register_probe(&mut probe)?;
    let code = match mode {
        Mode::ZeroCopy => opcode::SendZc::CODE,
        _ => opcode::Send::CODE,
    };
    if probe.is_supported(code) {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "the kernel lacks this send opcode",
        ))
    }
}

thread_local! {
    /// This thread's ring (one issuer per ring, as `defer` requires).
    static RING: RefCell<Option<IoUring>> = const { RefCell::new(None) };
}

/// The `--io-uring` counterpart of `fan_out` in `main.rs`: same contract
/// (every subscriber gets the whole frame or is dropped, `Vec` order kept),
/// returns how many were dropped.
pub fn fan_out(mode: Mode, subs: &mut Vec<TcpStream>, frame: &[u8]) -> usize {
    let before = subs.len();
    let mut keep = vec![true; subs.len()];
    RING.with_borrow_mut(|slot| {
        let ring = match slot {
            Some(ring) => ring,
            None => match build(mode) {
                Ok(ring) => slot.insert(ring),
                Err(e) => {
                    // Not expected (checked at startup); stay correct.
                    eprintln!("herald-floor: io_uring: {e}; this fan-out uses write_all");
                    for (s, k) in subs.iter().zip(keep.iter_mut()) {
                        let mut w: &TcpStream = s;
                        *k = w.write_all(frame).is_ok();
                    }
                    return;
                }
            },
        };
        for (socks, keep) in subs
            .chunks(RING_ENTRIES as usize)
            .zip(keep.chunks_mut(RING_ENTRIES as usize))
        {
            batch(ring, mode, socks, frame, keep);
        }
    });
    let mut i = 0;
    subs.retain(|_| {
        i += 1;
        keep[i - 1]
    });
    before - subs.len()
}

/// One submission: a send of `frame` to each of `socks` (at most the ring's
/// size), all completions reaped, short sends finished; `keep[i]` false for
/// a socket to drop.
fn batch(ring: &mut IoUring, mode: Mode, socks: &[TcpStream], frame: &[u8], keep: &mut [bool]) {
    // Until its completion says otherwise a send counts as "would block":
    // one that could not be queued is then written the blocking way.
    let mut results = vec![-EAGAIN; socks.len()];
    let mut outstanding = push_sends(ring, mode, socks, frame);
    let deadline = Instant::now() + IO_TIMEOUT;
    let mut cancelled = false;
    loop {
        for cqe in ring.completion() {
            let Ok(i) = usize::try_from(cqe.user_data()) else {
                continue;
            };
            if cqueue::notif(cqe.flags()) {
                // `zc`: the kernel is done with the buffer.
                outstanding -= 1;
                continue;
            }
            if let Some(r) = results.get_mut(i) {
                *r = cqe.result();
            }
            if !cqueue::more(cqe.flags()) {
                outstanding -= 1;
            }
        }
        if outstanding == 0 {
            break;
        }
        // The first pass submits the batch and waits for all of it: one
        // `io_uring_enter` per fan-out unless some sends had to wait.
        let entered = if cancelled {
            ring.submit_and_wait(outstanding)
        } else {
            let left = types::Timespec::from(deadline.saturating_duration_since(Instant::now()));
            let args = types::SubmitArgs::new().timespec(&left);
            ring.submitter().submit_with_args(outstanding, &args)
        };
        match entered {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(ETIME) => {
                // Stuck peers: cancel what is pending; it completes with
                // -ECANCELED (a drop) and is reaped above.
                if let Err(e) = ring
                    .submitter()
                    .register_sync_cancel(None, types::CancelBuilder::any())
                {
                    eprintln!("herald-floor: io_uring: cancel: {e}");
                }
                cancelled = true;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted || e.raw_os_error() == Some(EBUSY) => {
            }
            Err(e) => {
                // The kernel may still use `frame` and the fds: returning
                // would be unsound, waiting again would spin.
                eprintln!("herald-floor: io_uring_enter: {e}; aborting");
                std::process::abort();
            }
        }
    }
    for ((s, r), k) in socks.iter().zip(results).zip(keep.iter_mut()) {
        *k = finish(s, r, frame);
    }
}

/// After a send's completion `r`: whether the subscriber stays, the frame
/// whole on its socket (a short send, or `EAGAIN`/`EINTR`, finished with a
/// blocking `write_all`, as the default mode's `write_all` would).
fn finish(s: &TcpStream, r: i32, frame: &[u8]) -> bool {
    let mut w: &TcpStream = s;
    match usize::try_from(r) {
        Ok(sent) if sent >= frame.len() => true,
        Ok(sent) => w.write_all(&frame[sent..]).is_ok(),
        Err(_) => match io::Error::from_raw_os_error(-r).kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => w.write_all(frame).is_ok(),
            _ => false,
        },
    }
}

/// Queues one send per socket (user data: its index); returns how many
/// were queued (all, as the queue is empty between batches and `socks`
/// fits it).
#[allow(unsafe_code)]
fn push_sends(ring: &mut IoUring, mode: Mode, socks: &[TcpStream], frame: &[u8]) -> usize {
    let len = u32::try_from(frame.len()).unwrap_or(u32::MAX);
    let mut sq = ring.submission();
    let mut queued = 0;
    for (i, s) in socks.iter().enumerate() {
        let fd = types::Fd(s.as_raw_fd());
        let entry = match mode {
            Mode::ZeroCopy => opcode::SendZc::new(fd, frame.as_ptr(), len)
                .flags(MSG_NOSIGNAL)
                .build(),
            _ => opcode::Send::new(fd, frame.as_ptr(), len)
                .flags(MSG_NOSIGNAL)
                .build(),
        }
        .user_data(i as u64);
        // SAFETY: the entry points at `frame` and at the fd of a socket in
        // `socks`; `batch`, our only caller, holds both borrows until every
        // completion of this batch (and `zc`'s buffer notification) has
        // been reaped, and aborts the process rather than return early.
        if unsafe { sq.push(&entry) }.is_err() {
            break;
        }
        queued += 1;
    }
    queued
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::TcpListener;

    /// Connected pairs: (the server's end, the client's end).
    fn pairs(n: usize) -> Vec<(TcpStream, TcpStream)> {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        (0..n)
            .map(|_| {
                let c = TcpStream::connect(addr).expect("connect");
                let (s, _) = l.accept().expect("accept");
                s.set_write_timeout(Some(IO_TIMEOUT)).expect("timeout");
                (s, c)
            })
            .collect()
    }

    #[test]
    fn short_sends_and_eagain_are_finished_errors_drop() {
        let (s, mut c) = pairs(1).pop().expect("a pair");
        let frame = b"0123456789abcdef";
        assert!(finish(&s, 16, frame));
        assert!(finish(&s, 10, frame));
        assert!(finish(&s, -EAGAIN, frame));
        assert!(finish(&s, 0, frame));
        assert!(!finish(&s, -32, frame));
        drop(s);
        let mut got = Vec::new();
        c.read_to_end(&mut got).expect("read");
        assert_eq!(got, b"abcdef0123456789abcdef0123456789abcdef");
    }

    #[test]
    fn every_mode_delivers_whole_frames_in_order_and_drops_the_dead() {
        for mode in [Mode::Plain, Mode::Defer, Mode::Coop, Mode::ZeroCopy] {
            if let Err(e) = check(mode) {
                // A kernel without io_uring (or with it disabled) fails
                // here, unless the run says so on purpose.
                assert!(
                    std::env::var_os("HERALD_FLOOR_NO_IO_URING").is_some(),
                    "io_uring {} unavailable: {e} (set HERALD_FLOOR_NO_IO_URING=1 to run \
                     without the --io-uring experiment's test)",
                    mode.name()
                );
                eprintln!(
                    "io_uring {} unavailable, skipped by HERALD_FLOOR_NO_IO_URING: {e}",
                    mode.name()
                );
                continue;
            }
            let (mut subs, clients): (Vec<_>, Vec<_>) = pairs(3).into_iter().unzip();
            let mut clients = clients.into_iter();
            let dead = clients.next().expect("3 clients");
            drop(dead);
            // 256 frames of 48 KiB, read late: more than socket buffers
            // holds, so sends wait for room (io_uring polls the socket).
            let frames: Vec<Vec<u8>> = (0..=255u8).map(|i| vec![i; 48 * 1024]).collect();
            let want: Vec<u8> = frames.concat();
            let (done, readers): (Vec<_>, Vec<_>) = clients
                .map(|mut c| {
                    let (done, wait) = std::sync::mpsc::channel::<()>();
                    let reader = std::thread::spawn(move || {
                        // Late (until the fan-out ends, or 100 ms), so that
                        // socket buffers fill and sends wait.
                        let _ = wait.recv_timeout(std::time::Duration::from_millis(100));
                        let mut got = Vec::new();
                        c.read_to_end(&mut got).map(|_| got)
                    });
                    (done, reader)
                })
                .unzip();
            let mut dropped = 0;
            for f in &frames {
                dropped += fan_out(mode, &mut subs, f);
            }
            assert_eq!((dropped, subs.len()), (1, 2), "{mode:?}");
            drop((subs, done));
            for r in readers {
                let got = r.join().expect("reader").expect("read");
                assert!(
                    got == want,
                    "{mode:?}: {} of {} bytes",
                    got.len(),
                    want.len()
                );
            }
        }
    }
}
