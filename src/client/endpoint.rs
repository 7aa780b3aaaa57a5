//! How a client names a server and proves who it is: endpoint strings, TLS settings and bearer
//! tokens, shared by `GrpcClient`, kvctl, the bench and the runner.

use std::path::Path;

use tonic::{
    Request,
    metadata::{Ascii, MetadataValue},
    transport::{Certificate, ClientTlsConfig, Endpoint, Identity},
};

/// An `authorization: Bearer <token>` header value.
pub type Bearer = MetadataValue<Ascii>;

/// The URL of a kv-server given as `HOST:PORT` (what `kv-server` prints), `http://HOST:PORT`
/// or `https://HOST:PORT`; `Err` says what is wrong. `HOST:PORT` means https when `tls` is
/// set (TLS options were given), http otherwise; `http://` with `tls` set is refused, since
/// sending plaintext where the user asked for TLS would hide that.
pub fn endpoint_url(given: &str, tls: bool) -> Result<String, String> {
    let invalid = |reason: &str| format!("invalid endpoint {given:?}: {reason}");
    let scheme = given
        .split_once("://")
        .map(|(scheme, rest)| (scheme.to_ascii_lowercase(), rest));
    let (https, authority) = match scheme.as_ref().map(|(s, rest)| (s.as_str(), *rest)) {
        None => (tls, given),
        Some(("http", _)) if tls => {
            return Err(invalid(
                "TLS options were given for a plaintext http:// endpoint; use https://",
            ));
        }
        Some(("http", rest)) => (false, rest),
        Some(("https", rest)) => (true, rest),
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
        Some(_) if https => Ok(format!("https://{authority}")),
        Some(_) => Ok(format!("http://{authority}")),
    }
}

/// TLS settings from PEM files: trust the CAs in `ca` (the system's roots when `None`), and
/// present `identity` (certificate chain, key) to servers that ask for one (mutual TLS). The
/// files are read here, so a missing one is reported now, not at the first call.
pub fn tls_from_files(
    ca: Option<&Path>,
    identity: Option<(&Path, &Path)>,
) -> Result<ClientTlsConfig, String> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
    let read = |path: &Path| {
        std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
    };
    // tonic skips what it cannot parse; a file without a usable certificate or key would only
    // show later as an unknown issuer or a refused handshake, so it is refused here by name.
    let certificates = |path: &Path| {
        let pem = read(path)?;
        match CertificateDer::pem_slice_iter(&pem).collect::<Result<Vec<_>, _>>() {
            Ok(certs) if !certs.is_empty() => Ok(pem),
            Ok(_) => Err(format!("{}: holds no CERTIFICATE block", path.display())),
            Err(e) => Err(format!("{}: malformed PEM: {e}", path.display())),
        }
    };
    let mut tls = ClientTlsConfig::new();
    tls = match ca {
        Some(ca) => tls.ca_certificate(Certificate::from_pem(certificates(ca)?)),
        None => tls.with_native_roots(),
    };
    if let Some((cert, key)) = identity {
        let key_pem = read(key)?;
        PrivateKeyDer::from_pem_slice(&key_pem)
            .map_err(|e| format!("{}: holds no usable private key ({e})", key.display()))?;
        tls = tls.identity(Identity::from_pem(certificates(cert)?, key_pem));
    }
    Ok(tls)
}

/// The tonic endpoint for `url` (as [`endpoint_url`] gives it): over TLS with `tls` when the
/// URL is https (the system's roots when `tls` is `None`).
pub fn channel_endpoint(
    url: &str,
    tls: Option<&ClientTlsConfig>,
) -> Result<Endpoint, tonic::transport::Error> {
    let endpoint = Endpoint::from_shared(url.to_owned())?;
    if !url.starts_with("https://") {
        return Ok(endpoint);
    }
    let tls = tls
        .cloned()
        .unwrap_or_else(|| ClientTlsConfig::new().with_native_roots());
    endpoint.tls_config(tls)
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
        for (given, tls, url) in [
            ("127.0.0.1:50051", false, "http://127.0.0.1:50051"),
            ("127.0.0.1:50051", true, "https://127.0.0.1:50051"),
            ("http://127.0.0.1:50051", false, "http://127.0.0.1:50051"),
            ("https://127.0.0.1:50051", false, "https://127.0.0.1:50051"),
            ("https://127.0.0.1:50051", true, "https://127.0.0.1:50051"),
            ("http://localhost:7/", false, "http://localhost:7"),
            ("HTTP://h:1", false, "http://h:1"),
            ("[::1]:50051", false, "http://[::1]:50051"),
        ] {
            assert_eq!(endpoint_url(given, tls).expect(given), url);
        }
        assert!(
            endpoint_url("http://h:1", true)
                .unwrap_err()
                .contains("use https://")
        );
        for (given, reason) in [
            ("ftp://h:1", "unknown scheme"),
            ("127.0.0.1", "expected HOST:PORT"),
            ("http://", "expected HOST:PORT"),
            ("a b:1", "expected HOST:PORT"),
            ("user@h:1", "expected HOST:PORT"),
            ("h:0", "port 0"),
        ] {
            let err = endpoint_url(given, false).expect_err(given);
            assert!(err.contains(reason), "{given}: {err}");
        }
    }
}
