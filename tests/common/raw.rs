//! gRPC calls made by hand with the h2 crate, for tests that need bytes and headers no
//! well-behaved client would send (and no client-side deadline racing the server's).

use std::time::Duration;

use bytes::Bytes;
use tokio::net::TcpStream;

/// What a case got back.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// A gRPC status code (from headers or trailers).
    Grpc(i32),
    /// An HTTP status without grpc-status.
    Http(u16),
    /// The stream or the connection was reset or closed.
    Closed,
}

/// One gRPC call: `path`, extra headers, and the raw body; panics without an answer in `limit`.
pub async fn h2_call(
    addr: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
    limit: Duration,
) -> Answer {
    let attempt = async {
        let tcp = TcpStream::connect(addr).await.ok()?;
        let (mut client, connection) = h2::client::handshake(tcp).await.ok()?;
        tokio::spawn(connection);
        let mut request = http::Request::builder()
            .method("POST")
            .uri(format!("http://{addr}{path}"))
            .header("te", "trailers");
        if !headers.iter().any(|(k, _)| *k == "content-type") {
            request = request.header("content-type", "application/grpc");
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(()).ok()?;
        let (response, mut send) = client.send_request(request, false).ok()?;
        let _ = send.send_data(Bytes::from(body), true);
        let response = response.await.ok()?;
        let code = |h: &http::HeaderMap| {
            h.get("grpc-status")
                .and_then(|v| v.to_str().ok()?.parse().ok())
        };
        if let Some(code) = code(response.headers()) {
            return Some(Answer::Grpc(code));
        }
        let status = response.status().as_u16();
        let mut body = response.into_body();
        while let Some(chunk) = body.data().await {
            if chunk.is_err() {
                return Some(Answer::Closed);
            }
        }
        match body.trailers().await {
            Ok(Some(trailers)) => Some(code(&trailers).map_or(Answer::Http(status), Answer::Grpc)),
            Ok(None) => Some(Answer::Http(status)),
            Err(_) => Some(Answer::Closed),
        }
    };
    match tokio::time::timeout(limit, attempt).await {
        Ok(Some(answer)) => answer,
        Ok(None) => Answer::Closed,
        Err(_) => panic!("{path}: no answer within {limit:?}"),
    }
}

/// A length-prefixed gRPC message.
pub fn grpc_frame(flag: u8, declared: u32, message: &[u8]) -> Vec<u8> {
    let mut out = vec![flag];
    out.extend_from_slice(&declared.to_be_bytes());
    out.extend_from_slice(message);
    out
}

/// Protobuf field `n` as length-delimited bytes.
pub fn field(n: u8, bytes: &[u8]) -> Vec<u8> {
    let mut out = vec![(n << 3) | 2];
    let mut len = bytes.len();
    while len >= 0x80 {
        out.push((len as u8) | 0x80);
        len >>= 7;
    }
    out.push(len as u8);
    out.extend_from_slice(bytes);
    out
}

pub fn whole(message: &[u8]) -> Vec<u8> {
    grpc_frame(0, message.len() as u32, message)
}

/// An HTTP/2 frame: 9-byte header (24-bit length, type, flags, 31-bit stream id) + payload.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// The client's connection preface.
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A literal HPACK header field (never indexed, no Huffman), for names and values < 127 bytes.
pub fn hpack(name: &str, value: &str) -> Vec<u8> {
    let mut out = vec![0x10, name.len() as u8];
    out.extend_from_slice(name.as_bytes());
    out.push(value.len() as u8);
    out.extend_from_slice(value.as_bytes());
    out
}
