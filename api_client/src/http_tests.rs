//! Response parser tests: the framings tiny_http uses, and every way a response can be broken.

use super::*;

fn parse(bytes: &[u8]) -> Result<RawResponse, ParseError> {
    read_response(&mut std::io::Cursor::new(bytes))
}

#[test]
fn content_length_body() {
    let r = parse(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 7\r\n\r\n{\"a\":1}extra").unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"{\"a\":1}");
    assert_eq!(r.header("content-type"), Some("application/json"));
}

#[test]
fn chunked_body_with_extension_and_trailer() {
    let r = parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4;x=y\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\nX-T: 1\r\n\r\n").unwrap();
    assert_eq!(r.body, b"{\"a\":1}");
}

#[test]
fn no_content_has_no_body() {
    let r = parse(b"HTTP/1.1 204 No Content\r\nServer: x\r\n\r\n").unwrap();
    assert_eq!(r.status, 204);
    assert!(r.body.is_empty());
}

#[test]
fn body_until_eof_without_length() {
    let r = parse(b"HTTP/1.0 200 OK\n\n{}").unwrap();
    assert_eq!(r.body, b"{}");
}

#[test]
fn interim_continue_is_skipped() {
    let r = parse(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 400 Bad Request\r\nContent-Length: 2\r\n\r\n{}",
    )
    .unwrap();
    assert_eq!(r.status, 400);
}

#[test]
fn broken_responses_are_errors() {
    let huge_chunk = format!(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n",
        MAX_BODY_BYTES + 1
    );
    let long_line = format!(
        "HTTP/1.1 200 OK\r\nX: {}\r\n\r\n",
        "a".repeat(MAX_LINE_BYTES + 1)
    );
    let many_headers = format!(
        "HTTP/1.1 200 OK\r\n{}\r\n",
        "X: 1\r\n".repeat(MAX_HEADERS + 1)
    );
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", b"".to_vec()),
        ("garbage", b"\x00\xff garbage\r\n\r\n".to_vec()),
        ("not http", b"SSH-2.0-OpenSSH\r\n\r\n".to_vec()),
        ("bad code", b"HTTP/1.1 2x0 OK\r\n\r\n".to_vec()),
        ("code out of range", b"HTTP/1.1 999 Huh\r\n\r\n".to_vec()),
        ("four-digit code", b"HTTP/1.1 2000 OK\r\n\r\n".to_vec()),
        ("head cut", b"HTTP/1.1 200 OK\r\nContent-Le".to_vec()),
        (
            "no blank line",
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n".to_vec(),
        ),
        (
            "header without colon",
            b"HTTP/1.1 200 OK\r\nbroken\r\n\r\n".to_vec(),
        ),
        (
            "space in header name",
            b"HTTP/1.1 200 OK\r\nA B: c\r\n\r\n".to_vec(),
        ),
        (
            "body cut",
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{}".to_vec(),
        ),
        (
            "negative length",
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n".to_vec(),
        ),
        (
            "plus length",
            b"HTTP/1.1 200 OK\r\nContent-Length: +1\r\n\r\nx".to_vec(),
        ),
        (
            "overflow length",
            b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\n".to_vec(),
        ),
        (
            "huge length",
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
                MAX_BODY_BYTES + 1
            )
            .into_bytes(),
        ),
        (
            "two lengths",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxx".to_vec(),
        ),
        (
            "gzip",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n".to_vec(),
        ),
        (
            "chunk size not hex",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".to_vec(),
        ),
        (
            "chunk size plus",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n+2\r\nab\r\n0\r\n\r\n".to_vec(),
        ),
        (
            "chunk size overflow",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffffff\r\n"
                .to_vec(),
        ),
        ("chunk too large", huge_chunk.into_bytes()),
        (
            "chunk cut",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab".to_vec(),
        ),
        (
            "chunk without CRLF",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabcd\r\n0\r\n\r\n".to_vec(),
        ),
        (
            "no last chunk",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n".to_vec(),
        ),
        ("long line", long_line.into_bytes()),
        ("many headers", many_headers.into_bytes()),
    ];
    for (name, bytes) in cases {
        match parse(&bytes) {
            Ok(r) => panic!("{name}: parsed as {r:?}"),
            Err(e) => assert!(!e.to_string().is_empty(), "{name}"),
        }
    }
}

#[test]
fn truncation_is_reported_as_such() {
    assert!(matches!(
        parse(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab"),
        Err(ParseError::Truncated)
    ));
    assert!(matches!(parse(b"HTTP/1.1 200"), Err(ParseError::Truncated)));
}

#[test]
fn every_prefix_of_a_response_is_handled() {
    // No prefix of a valid response may panic; all but the complete one are errors.
    let full = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n";
    for n in 0..full.len() {
        assert!(parse(&full[..n]).is_err(), "prefix {n}");
    }
    assert!(parse(full).is_ok());
}

#[test]
fn request_bytes() {
    let r = format_request("PUT", "/api/v1/vm.create", Some(b"{}"));
    let text = String::from_utf8(r).unwrap();
    assert!(text.starts_with("PUT /api/v1/vm.create HTTP/1.1\r\n"));
    assert!(text.contains("Content-Length: 2\r\n"));
    assert!(text.contains("Connection: close\r\n"));
    assert!(text.ends_with("\r\n\r\n{}"));
    let g = String::from_utf8(format_request("GET", "/x", None)).unwrap();
    assert!(!g.contains("Content-Length"));
}
