//! How a client names a server and proves who it is: endpoint strings and bearer tokens, shared
//! by `GrpcClient`, kvctl and the bench.

use tonic::{
    Request,
    metadata::{Ascii, MetadataValue},
};

/// An `authorization: Bearer <token>` header value.
pub type Bearer = MetadataValue<Ascii>;

/// The URL of a kv-server given as `HOST:PORT` (what `kv-server` prints) or
/// `http://HOST:PORT`; `Err` says what is wrong. `https://` is refused: no client here speaks
/// TLS yet, and sending plaintext where the user asked for TLS would hide that.
pub fn endpoint_url(given: &str) -> Result<String, String> {
    let invalid = |reason: &str| format!("invalid endpoint {given:?}: {reason}");
    let scheme = given
        .split_once("://")
        .map(|(scheme, rest)| (scheme.to_ascii_lowercase(), rest));
    let authority = match scheme.as_ref().map(|(s, rest)| (s.as_str(), *rest)) {
        None => given,
        Some(("http", rest)) => rest,
        Some(("https", _)) => {
            return Err(invalid(
                "https:// needs TLS, which this kvctl does not support yet; \
                 kv-server serves plaintext: use http:// or HOST:PORT",
            ));
        }
        Some((scheme, _)) => return Err(invalid(&format!("unknown scheme {scheme}://"))),
    };
    let authority: http::uri::Authority = authority
        .trim_end_matches('/')
        .parse()
        .map_err(|e| invalid(&format!("expected HOST:PORT ({e})")))?;
    if authority.host().is_empty() || authority.as_str().contains('@') {
        return Err(invalid("expected HOST:PORT"));
    }
    match authority.port_u16() {
        None => Err(invalid("expected HOST:PORT")),
        Some(0) => Err(invalid("port 0 is not a server's port")),
        Some(_) => Ok(format!("http://{authority}")),
    }
}

/// The header value for `token`, or `None` if the token cannot be sent in a header.
pub fn bearer(token: &str) -> Option<Bearer> {
    format!("Bearer {token}").parse().ok()
}

/// A request carrying `message`, with `authorization` when a token is given.
pub fn authorized<T>(message: T, token: Option<&Bearer>) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("authorization", token.clone());
    }
    request
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What kv-server prints, and the URL form, are both accepted; the rest is refused with
    /// the reason.
    #[test]
    fn endpoint_forms() {
        for (given, url) in [
            ("127.0.0.1:50051", "http://127.0.0.1:50051"),
            ("http://127.0.0.1:50051", "http://127.0.0.1:50051"),
            ("http://localhost:7/", "http://localhost:7"),
            ("HTTP://h:1", "http://h:1"),
            ("[::1]:50051", "http://[::1]:50051"),
        ] {
            assert_eq!(endpoint_url(given).expect(given), url);
        }
        for (given, reason) in [
            ("https://127.0.0.1:50051", "needs TLS"),
            ("ftp://h:1", "unknown scheme"),
            ("127.0.0.1", "expected HOST:PORT"),
            ("http://", "expected HOST:PORT"),
            ("a b:1", "expected HOST:PORT"),
            ("user@h:1", "expected HOST:PORT"),
            ("h:0", "port 0"),
        ] {
            let err = endpoint_url(given).expect_err(given);
            assert!(err.contains(reason), "{given}: {err}");
        }
    }
}
