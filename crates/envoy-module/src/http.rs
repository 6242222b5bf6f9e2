//! The module's outbound HTTP(S), for bundles and issuers' keys: blocking `ureq`, only ever on
//! the module's own threads (never an Envoy worker's). TLS is rustls with aws-lc-rs, the
//! project's one crypto library (as the server's), and the roots are the system's as the server
//! gets them (rustls-native-certs: `SSL_CERT_FILE` / `SSL_CERT_DIR` when set, else the
//! platform's store). No redirects are followed and no proxy is used, as by the server's client.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use ureq::tls::{Certificate, RootCerts, TlsConfig, TlsProvider};

use crate::policy::{Log, Severity};

/// A client whose every request (connection, TLS, body) is bounded by `timeout`. A non-2xx
/// status is an answer, not an error (callers look at it).
pub(crate) fn agent(timeout: Duration, log: Log) -> ureq::Agent {
    let tls = TlsConfig::builder()
        .provider(TlsProvider::Rustls)
        .root_certs(RootCerts::Specific(roots(log)))
        .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .build();
    ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .max_redirects(0)
        .proxy(None)
        .tls_config(tls)
        .build()
        .into()
}

/// The system's root certificates, read once per process. None found: https requests fail
/// (and say why in the log), http ones work, as with the server.
fn roots(log: Log) -> Arc<Vec<Certificate<'static>>> {
    static ROOTS: OnceLock<Arc<Vec<Certificate<'static>>>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            for error in &found.errors {
                log(
                    Severity::Error,
                    &format!("nmp-authz: reading TLS root certificates: {error}"),
                );
            }
            if found.certs.is_empty() {
                log(
                    Severity::Error,
                    "nmp-authz: no TLS root certificates found; https fetches will fail",
                );
            }
            Arc::new(
                found
                    .certs
                    .iter()
                    .map(|der| Certificate::from_der(der.as_ref()).to_owned())
                    .collect(),
            )
        })
        .clone()
}

/// A 2xx answer's body and ETag.
pub(crate) struct Fetched {
    pub body: Vec<u8>,
    pub etag: Option<String>,
}

/// GETs `url` with `headers`, reading at most `max_body` bytes of a 2xx answer; `Ok(None)` for
/// a 304. Errors name the URL.
pub(crate) fn get(
    http: &ureq::Agent,
    url: &str,
    headers: &[(&str, &str)],
    max_body: u64,
) -> Result<Option<Fetched>, String> {
    let context = |e: String| format!("{url}: {e}");
    let mut request = http.get(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let mut response = request.call().map_err(|e| context(e.to_string()))?;
    let status = response.status();
    if status.as_u16() == 304 {
        return Ok(None);
    }
    if !status.is_success() {
        return Err(context(format!("HTTP {}", status.as_u16())));
    }
    let etag = response
        .headers()
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = response
        .body_mut()
        .with_config()
        .limit(max_body)
        .read_to_vec()
        .map_err(|e| context(e.to_string()))?;
    Ok(Some(Fetched { body, etag }))
}
