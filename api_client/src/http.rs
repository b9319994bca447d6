//! Just enough HTTP/1.1 for the API: write one request, read one response. Every read is bounded.

use std::io::{BufRead, Read};

/// Longest status or header line accepted.
pub const MAX_LINE_BYTES: usize = 8 << 10;
/// Most header lines accepted in one response.
pub const MAX_HEADERS: usize = 100;
/// Largest response body accepted.
pub const MAX_BODY_BYTES: usize = 16 << 20;

/// A response that could not be parsed.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    /// The stream ended (EOF) before the head, a line or the announced body was complete.
    #[error("connection closed before the response was complete")]
    Truncated,
    /// The first line is not `HTTP/1.x NNN ...` with a status from 100 to 599.
    #[error("malformed status line: {0:?}")]
    StatusLine(String),
    /// A header line has no `:` or its name is empty or holds whitespace.
    #[error("malformed header line: {0:?}")]
    HeaderLine(String),
    /// More than [`MAX_HEADERS`] header (or chunked trailer) lines arrived.
    #[error("more than {MAX_HEADERS} header lines")]
    TooManyHeaders,
    /// A status, header or chunk-size line ran past [`MAX_LINE_BYTES`].
    #[error("line longer than {MAX_LINE_BYTES} bytes")]
    LineTooLong,
    /// `Content-Length` is not a decimal number, or repeated with different values.
    #[error("invalid Content-Length: {0:?}")]
    ContentLength(String),
    /// `Transfer-Encoding` names anything but `chunked`.
    #[error("unsupported Transfer-Encoding: {0:?}")]
    TransferEncoding(String),
    /// A chunk-size line is not a hexadecimal number (extensions after `;` allowed).
    #[error("invalid chunk size line: {0:?}")]
    ChunkSize(String),
    /// A chunk's data is not followed by an empty line.
    #[error("chunk not followed by CRLF")]
    ChunkEnd,
    /// The body (announced, read to EOF, or chunks summed) exceeds [`MAX_BODY_BYTES`].
    #[error("body larger than {MAX_BODY_BYTES} bytes")]
    BodyTooLarge,
    /// Reading the stream failed (a timeout included).
    #[error("read failed")]
    Io(#[source] std::io::Error),
}

/// A parsed response: status, headers in order (names as sent), body bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawResponse {
    /// The status code of the final (non-1xx) answer.
    pub status: u16,
    /// The header lines as `(name, value)`, names as sent and values trimmed.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked; empty for 1xx, 204 and 304 answers.
    pub body: Vec<u8>,
}

impl RawResponse {
    /// First header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Builds the bytes of one request. `path` must already be free of spaces and control bytes.
pub fn format_request(method: &str, path: &str, body: Option<&[u8]>) -> Vec<u8> {
    let mut out = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\nConnection: close\r\n"
    );
    if let Some(b) = body {
        if !b.is_empty() {
            out.push_str("Content-Type: application/json\r\n");
        }
        out.push_str(&format!("Content-Length: {}\r\n", b.len()));
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body.unwrap_or_default());
    bytes
}

/// Reads one response, skipping interim 1xx answers.
pub fn read_response<R: BufRead>(r: &mut R) -> Result<RawResponse, ParseError> {
    loop {
        let (status, headers) = read_head(r)?;
        if (100..200).contains(&status) && status != 101 {
            continue;
        }
        let mut resp = RawResponse {
            status,
            headers,
            body: Vec::new(),
        };
        resp.body = read_body(r, &resp)?;
        return Ok(resp);
    }
}

fn read_head<R: BufRead>(r: &mut R) -> Result<(u16, Vec<(String, String)>), ParseError> {
    let line = read_line(r)?;
    let status = parse_status_line(&line)?;
    let mut headers = Vec::new();
    loop {
        let line = read_line(r)?;
        if line.is_empty() {
            return Ok((status, headers));
        }
        if headers.len() == MAX_HEADERS {
            return Err(ParseError::TooManyHeaders);
        }
        let (k, v) = line
            .split_once(':')
            .filter(|(k, _)| !k.is_empty() && !k.contains(char::is_whitespace))
            .ok_or_else(|| ParseError::HeaderLine(line.clone()))?;
        headers.push((k.to_string(), v.trim().to_string()));
    }
}

fn parse_status_line(line: &str) -> Result<u16, ParseError> {
    let bad = || ParseError::StatusLine(line.to_string());
    let (version, rest) = line.split_once(' ').ok_or_else(bad)?;
    if !version.starts_with("HTTP/1.") {
        return Err(bad());
    }
    let code = rest.split(' ').next().unwrap_or_default();
    if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let status: u16 = code.parse().map_err(|_| bad())?;
    if !(100..=599).contains(&status) {
        return Err(bad());
    }
    Ok(status)
}

fn read_body<R: BufRead>(r: &mut R, resp: &RawResponse) -> Result<Vec<u8>, ParseError> {
    if matches!(resp.status, 100..=199 | 204 | 304) {
        return Ok(Vec::new());
    }
    if let Some(te) = resp.header("Transfer-Encoding") {
        if te.eq_ignore_ascii_case("chunked") {
            return read_chunked(r);
        }
        return Err(ParseError::TransferEncoding(te.to_string()));
    }
    let lengths: Vec<&str> = resp
        .headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("Content-Length"))
        .map(|(_, v)| v.as_str())
        .collect();
    match lengths.as_slice() {
        [] => read_to_end(r),
        [first, rest @ ..] => {
            if rest.iter().any(|v| v != first) {
                return Err(ParseError::ContentLength(lengths.join(", ")));
            }
            let n = parse_length(first)?;
            read_exact(r, n)
        }
    }
}

fn parse_length(v: &str) -> Result<usize, ParseError> {
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ParseError::ContentLength(v.to_string()));
    }
    let n: usize = v
        .parse()
        .map_err(|_| ParseError::ContentLength(v.to_string()))?;
    if n > MAX_BODY_BYTES {
        return Err(ParseError::BodyTooLarge);
    }
    Ok(n)
}

fn read_exact<R: BufRead>(r: &mut R, n: usize) -> Result<Vec<u8>, ParseError> {
    let mut buf = vec![0; n];
    r.read_exact(&mut buf).map_err(eof_is_truncation)?;
    Ok(buf)
}

fn read_to_end<R: BufRead>(r: &mut R) -> Result<Vec<u8>, ParseError> {
    let mut buf = Vec::new();
    r.take(MAX_BODY_BYTES as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(ParseError::Io)?;
    if buf.len() > MAX_BODY_BYTES {
        return Err(ParseError::BodyTooLarge);
    }
    Ok(buf)
}

fn read_chunked<R: BufRead>(r: &mut R) -> Result<Vec<u8>, ParseError> {
    let mut body = Vec::new();
    loop {
        let line = read_line(r)?;
        // Chunk extensions (";name=value") are allowed and ignored.
        let size_text = line.split(';').next().unwrap_or_default().trim();
        if size_text.is_empty() || !size_text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ParseError::ChunkSize(line));
        }
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| ParseError::ChunkSize(line.clone()))?;
        if size == 0 {
            // Trailer fields, up to the blank line; their count is bounded like headers.
            for _ in 0..=MAX_HEADERS {
                if read_line(r)?.is_empty() {
                    return Ok(body);
                }
            }
            return Err(ParseError::TooManyHeaders);
        }
        if body
            .len()
            .checked_add(size)
            .is_none_or(|n| n > MAX_BODY_BYTES)
        {
            return Err(ParseError::BodyTooLarge);
        }
        body.extend_from_slice(&read_exact(r, size)?);
        if !read_line(r)?.is_empty() {
            return Err(ParseError::ChunkEnd);
        }
    }
}

/// Reads one line ending in LF (CR before it dropped), at most [`MAX_LINE_BYTES`].
fn read_line<R: BufRead>(r: &mut R) -> Result<String, ParseError> {
    let mut line = Vec::new();
    loop {
        let buf = r.fill_buf().map_err(ParseError::Io)?;
        if buf.is_empty() {
            return Err(ParseError::Truncated);
        }
        let (take, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        if line.len() + take > MAX_LINE_BYTES + 2 {
            return Err(ParseError::LineTooLong);
        }
        line.extend_from_slice(&buf[..take]);
        r.consume(take);
        if done {
            break;
        }
    }
    line.pop(); // the LF
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    // Header bytes outside UTF-8 are replaced, not trusted; the API only sends ASCII.
    Ok(String::from_utf8_lossy(&line).into_owned())
}

fn eof_is_truncation(e: std::io::Error) -> ParseError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        ParseError::Truncated
    } else {
        ParseError::Io(e)
    }
}

#[cfg(test)]
#[path = "http_tests.rs"]
mod tests;
