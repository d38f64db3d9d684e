//! How a worker forked from a multithreaded caller (`StartMethod::Fork`) reports a
//! panic. std's default hook takes its backtrace lock and, under a test harness,
//! writes through the harness's capture: locks that another thread of the caller may
//! have held at the fork, and that stay held for ever in the child. Such a worker
//! formats the report into a buffer on its stack and writes it to descriptor 2 itself
//! (no backtrace, whatever `RUST_BACKTRACE` says).
//!
//! The hook cannot be set in the child: setting one takes std's hook lock for writing,
//! which a thread of the caller panicking at the fork holds for reading. So the caller
//! sets it before its first fork ([`install`]); in the caller it hands every panic to
//! the hook that was there before, and only a forked worker's panics are its own. A
//! hook the program sets later replaces it (and then runs in forked workers too).

use std::fmt::Write;
use std::panic::PanicHookInfo;
use std::sync::Once;

use crate::sys;

static INSTALLED: Once = Once::new();

/// Sets the hook, once per process; a no-op on a panicking thread (where std forbids
/// changing hooks).
pub fn install() {
    if std::thread::panicking() {
        return;
    }
    INSTALLED.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if crate::serve::forked() {
                report(info);
            } else {
                previous(info);
            }
        }));
    });
}

/// Writes "procpool worker <pid> panicked at <location>:\n<message>\n" to descriptor 2,
/// cut to the buffer's size.
fn report(info: &PanicHookInfo<'_>) {
    let payload = info.payload();
    let message = payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("Box<dyn Any>");
    let mut text = StackText::default();
    let _ = write!(text, "procpool worker {} panicked", std::process::id());
    if let Some(location) = info.location() {
        let _ = write!(text, " at {location}");
    }
    let _ = writeln!(text, ":\n{message}");
    sys::write_stderr(text.bytes());
}

/// Text formatted into a fixed buffer on the stack; what does not fit is dropped.
struct StackText {
    buf: [u8; 2048],
    len: usize,
}

impl Default for StackText {
    fn default() -> Self {
        StackText {
            buf: [0; 2048],
            len: 0,
        }
    }
}

impl StackText {
    fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Write for StackText {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let room = self.buf.len() - self.len;
        let n = s.len().min(room);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_past_the_buffer_is_cut_not_a_failure() {
        let mut text = StackText::default();
        let long = "x".repeat(5000);
        assert!(write!(text, "{long}").is_ok());
        assert_eq!(text.bytes().len(), 2048);
    }
}
