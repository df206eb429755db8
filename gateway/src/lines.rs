//! Line output off the request path, shared by the audit log and the access/application log.
//!
//! A request appends its finished line to a shared buffer (one short lock, one copy) and goes
//! on; one writer thread per output writes what has gathered in bursts: it writes the buffer,
//! flushes, then sleeps [`BATCH_INTERVAL`] before looking again, so under load a request almost
//! never has to wake it (a futex wake and a `write` per line cost about a tenth of the gateway's
//! CPU) and a line reaches the output at most a few milliseconds late. Only a line that finds
//! the buffer empty wakes the writer.
//!
//! The buffer is bounded: a line that does not fit is refused ([`LineBuffer::push`] returns
//! `false`) and the caller decides (the audit log counts it as dropped). [`flush_all`] writes
//! every buffer out; the server calls it after pingora's shutdown, before the process exits.

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

/// The writer's pause after each burst (lines pushed meanwhile are written together).
pub const BATCH_INTERVAL: Duration = Duration::from_millis(5);

/// Every buffer started in this process, for [`flush_all`].
static BUFFERS: Mutex<Vec<LineBuffer>> = Mutex::new(Vec::new());

/// A bounded buffer of whole lines and the thread that writes them.
#[derive(Clone)]
pub struct LineBuffer {
    shared: Arc<Shared>,
}

struct Shared {
    pending: Mutex<Vec<u8>>,
    /// Signalled when a line lands in an empty buffer.
    wake: Condvar,
    /// Locked for the whole of a write, so bursts and [`flush_all`] never reorder lines.
    out: Mutex<Box<dyn Write + Send>>,
    capacity: usize,
    on_write_error: fn(),
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these locks leaves plain bytes behind: still usable.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl LineBuffer {
    /// Start a writer thread (named `name`) for `out`, holding at most `capacity` bytes of
    /// unwritten lines. `on_write_error` is called for every burst the output refused.
    pub fn start(
        name: &str,
        out: Box<dyn Write + Send>,
        capacity: usize,
        on_write_error: fn(),
    ) -> std::io::Result<LineBuffer> {
        let buffer = LineBuffer {
            shared: Arc::new(Shared {
                pending: Mutex::new(Vec::with_capacity(64 * 1024)),
                wake: Condvar::new(),
                out: Mutex::new(out),
                capacity,
                on_write_error,
            }),
        };
        let shared = buffer.shared.clone();
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || writer_loop(&shared))?;
        lock(&BUFFERS).push(buffer.clone());
        Ok(buffer)
    }

    /// Append one whole line (with its `\n`). `false`: the buffer is full and the line was not
    /// taken.
    pub fn push(&self, line: &[u8]) -> bool {
        let mut pending = lock(&self.shared.pending);
        if pending.len() + line.len() > self.shared.capacity {
            return false;
        }
        let was_empty = pending.is_empty();
        pending.extend_from_slice(line);
        drop(pending);
        if was_empty {
            self.shared.wake.notify_one();
        }
        true
    }

    /// Write out what is buffered now.
    pub fn flush(&self) {
        let mut out = lock(&self.shared.out);
        let burst = std::mem::take(&mut *lock(&self.shared.pending));
        self.shared.write(&mut out, &burst);
    }
}

impl Shared {
    fn write(&self, out: &mut Box<dyn Write + Send>, burst: &[u8]) {
        if burst.is_empty() {
            return;
        }
        if out.write_all(burst).and_then(|()| out.flush()).is_err() {
            (self.on_write_error)();
        }
    }
}

fn writer_loop(shared: &Shared) {
    // Two buffers swapped in turn: requests fill one while this thread writes the other.
    let mut spare: Vec<u8> = Vec::with_capacity(64 * 1024);
    loop {
        {
            let mut pending = lock(&shared.pending);
            while pending.is_empty() {
                pending = shared
                    .wake
                    .wait(pending)
                    .unwrap_or_else(PoisonError::into_inner);
            }
        }
        {
            let mut out = lock(&shared.out);
            std::mem::swap(&mut *lock(&shared.pending), &mut spare);
            shared.write(&mut out, &spare);
        }
        spare.clear();
        if spare.capacity() > 4 * 1024 * 1024 {
            // A burst after a stall must not pin its size for good.
            spare.shrink_to(64 * 1024);
        }
        std::thread::sleep(BATCH_INTERVAL);
    }
}

/// Write out every buffer of the process (before it exits).
pub fn flush_all() {
    let buffers = lock(&BUFFERS).clone();
    for b in buffers {
        b.flush();
    }
}

/// The buffer of the process' log (set by the first [`LogWriter`]).
static LOG: OnceLock<LineBuffer> = OnceLock::new();

/// Whether the process has a log for [`log_line`].
pub fn log_enabled() -> bool {
    LOG.get().is_some()
}

/// Append one whole, already formatted line (with its `\n`) to the process' log, beside the
/// lines tracing formats (the access line is written this way: it is one per request). When
/// the buffer is full the line goes straight to standard error, as in [`LogWriter`].
pub fn log_line(line: &[u8]) {
    if let Some(buffer) = LOG.get() {
        let _ = LogLine { buffer }.write_all(line);
    }
}

/// A `tracing_subscriber` writer: each formatted event is one `write_all` of one whole line,
/// appended to a [`LineBuffer`]. When the buffer is full the line is written straight to the
/// fallback output instead (a log line is never dropped; only its batching is lost).
#[derive(Clone)]
pub struct LogWriter {
    buffer: LineBuffer,
}

impl LogWriter {
    /// Log lines to standard error, in bursts.
    pub fn stderr() -> std::io::Result<LogWriter> {
        let buffer = LineBuffer::start(
            "log-writer",
            Box::new(std::io::stderr()),
            16 * 1024 * 1024,
            || {},
        )?;
        let _ = LOG.set(buffer.clone());
        Ok(LogWriter { buffer })
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogLine<'a>;

    fn make_writer(&'a self) -> LogLine<'a> {
        LogLine {
            buffer: &self.buffer,
        }
    }
}

/// One event's output (see [`LogWriter`]).
pub struct LogLine<'a> {
    buffer: &'a LineBuffer,
}

impl Write for LogLine<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        if !self.buffer.push(bytes) {
            std::io::stderr().write_all(bytes)?;
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An output the test can read back.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            lock(&self.0).extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_arrive_whole_and_in_order_and_flush_writes_the_rest() {
        let out = Shared::default();
        let buffer = LineBuffer::start("test-lines", Box::new(out.clone()), 1 << 20, || {})
            .expect("writer thread");
        for i in 0..1000 {
            assert!(buffer.push(format!("line {i}\n").as_bytes()));
        }
        buffer.flush();
        let text = String::from_utf8(lock(&out.0).clone()).expect("utf-8");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1000);
        for (i, l) in lines.iter().enumerate() {
            assert_eq!(*l, format!("line {i}"));
        }
    }

    #[test]
    fn a_full_buffer_refuses_lines() {
        // A writer that never finishes its first write holds the lines back.
        struct Stuck;
        impl Write for Stuck {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                std::thread::sleep(Duration::from_secs(3600));
                Ok(0)
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buffer = LineBuffer::start("test-full", Box::new(Stuck), 64, || {}).expect("thread");
        assert!(buffer.push(b"first line reaches the stuck writer\n"));
        // Let the writer take the first line and block in its write.
        std::thread::sleep(Duration::from_millis(50));
        let mut taken = 0;
        for _ in 0..10 {
            if buffer.push(b"0123456789abcdef\n") {
                taken += 1;
            }
        }
        assert_eq!(taken, 3, "64 bytes hold three 17-byte lines");
    }
}
