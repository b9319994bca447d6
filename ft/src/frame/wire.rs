//! Bounds-checked little-endian reads over a received payload: every read that would run past the
//! end is an error, never a panic.

/// A read ran past the end of the payload, or bytes were left over after the last field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WireError {
    /// Fewer bytes left than the field needs.
    Short,
    /// Bytes left over after the last field.
    Trailing,
}

/// A cursor over a payload that refuses to read past its end.
pub(crate) struct WireReader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> WireReader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        WireReader { buf, pos: 0 }
    }

    /// Bytes not read yet.
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub(crate) fn bytes(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        let end = self.pos.checked_add(n).ok_or(WireError::Short)?;
        let out = self.buf.get(self.pos..end).ok_or(WireError::Short)?;
        self.pos = end;
        Ok(out)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.bytes(N)?);
        Ok(out)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.array::<1>()?[0])
    }

    pub(crate) fn u16(&mut self) -> Result<u16, WireError> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, WireError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// A u32 length followed by that many bytes; the length is checked against what is left
    /// before anything is allocated.
    pub(crate) fn len_prefixed(&mut self) -> Result<&'a [u8], WireError> {
        let len = self.u32()? as usize;
        self.bytes(len)
    }

    /// Succeeds only when every byte has been read, so that trailing garbage is caught.
    pub(crate) fn finish(&self) -> Result<(), WireError> {
        if self.remaining() == 0 {
            Ok(())
        } else {
            Err(WireError::Trailing)
        }
    }
}

/// Appends a u32 length and the bytes; callers bound `data` by the frame's payload limit.
pub(crate) fn put_len_prefixed(out: &mut Vec<u8>, data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out.extend_from_slice(data);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_past_the_end_are_errors() {
        let mut r = WireReader::new(&[1, 2, 3]);
        assert_eq!(r.u16(), Ok(0x0201));
        assert_eq!(r.u16(), Err(WireError::Short));
        assert_eq!(r.u8(), Ok(3));
        assert_eq!(r.finish(), Ok(()));
    }

    #[test]
    fn huge_length_prefix_is_short_not_an_allocation() {
        let mut r = WireReader::new(&[0xff, 0xff, 0xff, 0xff, 0]);
        assert_eq!(r.len_prefixed(), Err(WireError::Short));
    }

    #[test]
    fn trailing_bytes_are_reported() {
        let mut r = WireReader::new(&[1, 2]);
        assert_eq!(r.u8(), Ok(1));
        assert_eq!(r.finish(), Err(WireError::Trailing));
    }
}
