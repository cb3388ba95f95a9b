//! Byte buffers borrowed only while bytes move, from a small pool per worker thread.
//!
//! The proxy's splice and the node's session reader hold no buffer while their connection is
//! idle: they take one when the socket is readable and give it back once it is drained, so an
//! idle connection costs its socket and its small state, and a burst of wake-ups on one worker
//! reuses the same few allocations instead of asking the allocator each time.

use std::cell::RefCell;

thread_local! {
    /// This thread's spare buffers (a process uses one size in practice; see [`BufferPool`]).
    static SPARE: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
}

/// Buffers of one size, at most `keep` spare per thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufferPool {
    /// Length of every buffer this pool hands out.
    pub size: usize,
    /// Spare buffers kept per thread; more given back are freed.
    pub keep: usize,
}

impl BufferPool {
    /// A spare buffer of [`size`](Self::size) from this thread, or a new one. Its bytes are
    /// whatever its last user left: read into it before reading from it.
    pub fn take(&self) -> Box<[u8]> {
        SPARE
            .try_with(|spare| {
                let mut spare = spare.borrow_mut();
                match spare.last() {
                    Some(buf) if buf.len() == self.size => spare.pop(),
                    _ => None,
                }
            })
            .ok()
            .flatten()
            .unwrap_or_else(|| vec![0u8; self.size].into_boxed_slice())
    }

    /// Gives `buf` back to this thread's spares (freed when they are full, or when it is not
    /// of this pool's size).
    pub fn give(&self, buf: Box<[u8]>) {
        if buf.len() != self.size {
            return;
        }
        let _ = SPARE.try_with(|spare| {
            let mut spare = spare.borrow_mut();
            if spare.len() < self.keep {
                spare.push(buf);
            }
        });
    }
}

/// Implements `tokio::io::AsyncWrite` for a read-side wrapper `$wrapper<S>` by passing every
/// call, vectored writes included, to its field `$field: S`. The node's lean session stream
/// and the proxy's prefixed client stream change only how bytes are read.
#[macro_export]
macro_rules! delegate_async_write {
    ($wrapper:ident, $field:ident) => {
        impl<S: ::tokio::io::AsyncWrite + Unpin> ::tokio::io::AsyncWrite for $wrapper<S> {
            fn poll_write(
                mut self: ::std::pin::Pin<&mut Self>,
                cx: &mut ::std::task::Context<'_>,
                buf: &[u8],
            ) -> ::std::task::Poll<::std::io::Result<usize>> {
                ::std::pin::Pin::new(&mut self.$field).poll_write(cx, buf)
            }

            fn poll_write_vectored(
                mut self: ::std::pin::Pin<&mut Self>,
                cx: &mut ::std::task::Context<'_>,
                bufs: &[::std::io::IoSlice<'_>],
            ) -> ::std::task::Poll<::std::io::Result<usize>> {
                ::std::pin::Pin::new(&mut self.$field).poll_write_vectored(cx, bufs)
            }

            fn is_write_vectored(&self) -> bool {
                self.$field.is_write_vectored()
            }

            fn poll_flush(
                mut self: ::std::pin::Pin<&mut Self>,
                cx: &mut ::std::task::Context<'_>,
            ) -> ::std::task::Poll<::std::io::Result<()>> {
                ::std::pin::Pin::new(&mut self.$field).poll_flush(cx)
            }

            fn poll_shutdown(
                mut self: ::std::pin::Pin<&mut Self>,
                cx: &mut ::std::task::Context<'_>,
            ) -> ::std::task::Poll<::std::io::Result<()>> {
                ::std::pin::Pin::new(&mut self.$field).poll_shutdown(cx)
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_given_buffer_is_taken_again_and_spares_stop_at_keep() {
        let pool = BufferPool { size: 64, keep: 2 };
        let a = pool.take();
        let a_ptr = a.as_ptr();
        assert_eq!(a.len(), 64);
        pool.give(a);
        let again = pool.take();
        assert_eq!(again.as_ptr(), a_ptr, "the spare is reused");
        let (b, c) = (pool.take(), pool.take());
        pool.give(again);
        pool.give(b);
        pool.give(c);
        assert_eq!(SPARE.with(|s| s.borrow().len()), 2, "at most keep spares");
    }

    #[test]
    fn a_buffer_of_another_size_is_neither_kept_nor_handed_out() {
        let small = BufferPool { size: 16, keep: 4 };
        let large = BufferPool { size: 32, keep: 4 };
        small.give(large.take());
        assert_eq!(SPARE.with(|s| s.borrow().len()), 0);
        large.give(large.take());
        assert_eq!(
            small.take().len(),
            16,
            "a spare of another size is not handed out"
        );
    }
}
