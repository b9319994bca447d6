//! Splitting a TCP byte stream into lines.  Bytes arrive in any pieces (a
//! request split over segments, several requests in one); a line's start is
//! kept here until its newline comes, so the socket's buffer can be drained
//! even where it wraps.

/// Longer lines are not requests: they are reported as `Line::TooLong`.
const MAX_LINE: usize = 32;

pub enum Line<'a> {
    /// A complete line without its "\n" (or "\r\n").
    Text(&'a [u8]),
    TooLong,
}

pub struct Lines {
    buf: [u8; MAX_LINE],
    len: usize,
    too_long: bool,
}

impl Lines {
    pub const fn new() -> Self {
        Lines {
            buf: [0; MAX_LINE],
            len: 0,
            too_long: false,
        }
    }

    /// Forget a partial line (a new connection).
    pub fn clear(&mut self) {
        self.len = 0;
        self.too_long = false;
    }

    /// Take bytes from `data` until `max_lines` lines are complete; call
    /// `on_line` for each.  Returns how many bytes were taken.
    pub fn feed(&mut self, data: &[u8], max_lines: usize, mut on_line: impl FnMut(Line)) -> usize {
        let mut lines = 0;
        let mut taken = 0;
        while lines < max_lines && taken < data.len() {
            let byte = data[taken];
            taken += 1;
            if byte == b'\n' {
                let mut text = &self.buf[..self.len];
                if let [head @ .., b'\r'] = text {
                    text = head;
                }
                on_line(if self.too_long {
                    Line::TooLong
                } else {
                    Line::Text(text)
                });
                self.clear();
                lines += 1;
            } else if self.len < MAX_LINE {
                self.buf[self.len] = byte;
                self.len += 1;
            } else {
                self.too_long = true;
            }
        }
        taken
    }
}
