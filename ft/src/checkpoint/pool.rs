//! Staging buffers kept for reuse. A fresh buffer per checkpoint costs a page fault per 4 KiB the
//! first time the copy touches it (the allocator hands large buffers back to the kernel on
//! free), which under nested virtualisation made the copy step several times slower than the
//! memcpy itself; a buffer used before is already backed.

use std::sync::{Arc, Mutex, PoisonError};

/// A few staging buffers, shared by the epoch thread (takes) and the sender (gives back).
#[derive(Debug)]
pub(crate) struct BufferPool {
    free: Mutex<Vec<Vec<u8>>>,
    /// Most buffers kept.
    keep: usize,
    /// Largest buffer kept (bytes); larger ones are freed, so that one burst does not pin
    /// memory for good.
    keep_bytes: usize,
}

impl BufferPool {
    pub(crate) fn new(keep: usize, keep_bytes: usize) -> Arc<BufferPool> {
        Arc::new(BufferPool {
            free: Mutex::new(Vec::new()),
            keep,
            keep_bytes,
        })
    }

    /// A buffer of at least `len` bytes (its contents are whatever it held last): the largest
    /// kept one, grown if it is too short.
    pub(crate) fn take(&self, len: usize) -> Vec<u8> {
        let mut free = self.free.lock().unwrap_or_else(PoisonError::into_inner);
        let best = (0..free.len()).max_by_key(|&i| free[i].len());
        let mut buf = best.map(|i| free.swap_remove(i)).unwrap_or_default();
        drop(free);
        if buf.len() < len {
            buf.resize(len, 0);
        }
        buf
    }

    /// Hands `buf` back for reuse.
    pub(crate) fn give(&self, buf: Vec<u8>) {
        if buf.len() > self.keep_bytes || buf.is_empty() {
            return;
        }
        let mut free = self.free.lock().unwrap_or_else(PoisonError::into_inner);
        if free.len() < self.keep {
            free.push(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_grown_and_bounded() {
        let pool = BufferPool::new(2, 1 << 20);
        let a = pool.take(4096);
        assert_eq!(a.len(), 4096);
        pool.give(a);
        let b = pool.take(8192);
        assert_eq!(b.len(), 8192, "grown");
        pool.give(b);
        assert_eq!(pool.take(100).len(), 8192, "reused, not shrunk");
        pool.give(vec![0; 2 << 20]);
        assert!(pool.free.lock().unwrap().is_empty(), "too large to keep");
        for _ in 0..3 {
            pool.give(vec![0; 10]);
        }
        assert_eq!(pool.free.lock().unwrap().len(), 2, "at most `keep`");
    }
}
