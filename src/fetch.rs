//! Outbound HTTP(S) for the few things the server fetches itself (issuers' keys, policy
//! bundles): hyper with rustls and the system's root certificates, every request bounded in
//! time and body size.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::{Method, Request, StatusCode, header};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

#[derive(Debug, thiserror::Error)]
#[error("{url}: {reason}")]
pub(crate) struct FetchError {
    pub url: String,
    pub reason: String,
}

/// A response whose body was read within the bounds.
#[derive(Debug)]
pub(crate) struct Fetched {
    pub status: StatusCode,
    pub etag: Option<String>,
    pub body: Bytes,
}

#[derive(Clone)]
pub(crate) struct HttpClient {
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HttpClient")
    }
}

impl Default for HttpClient {
    fn default() -> Self {
        Self {
            client: Client::builder(TokioExecutor::new()).build(https_connector()),
        }
    }
}

/// HTTPS (rustls, the system's roots) or plain HTTP, HTTP/1.1.
pub(crate) fn https_connector() -> HttpsConnector<HttpConnector> {
    {
        let provider = crate::crypto::tls;
        hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_native_roots(provider())
            .map(|b| b.https_or_http().enable_http1().build())
            .unwrap_or_else(|e| {
                // No usable system roots: https fetches fail (and are counted); http works.
                tracing::error!(error = %e, "no TLS root certificates found");
                let tls = rustls::ClientConfig::builder_with_provider(Arc::new(provider()))
                    .with_safe_default_protocol_versions()
                    .expect("the provider supports the default protocol versions")
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth();
                hyper_rustls::HttpsConnectorBuilder::new()
                    .with_tls_config(tls)
                    .https_or_http()
                    .enable_http1()
                    .build()
            })
    }
}

impl HttpClient {
    /// GETs `url` with `headers` (such as `If-None-Match`), reading at most `max_body`
    /// bytes, all within `timeout`. A 304 comes back with an empty body; any other non-2xx
    /// status is an error.
    pub async fn get(
        &self,
        url: &str,
        headers: &[(header::HeaderName, header::HeaderValue)],
        max_body: usize,
        timeout: Duration,
    ) -> Result<Fetched, FetchError> {
        let fetched = self
            .send(Method::GET, url, headers, max_body, timeout)
            .await?;
        let status = fetched.status;
        if status != StatusCode::NOT_MODIFIED && !status.is_success() {
            return Err(FetchError {
                url: url.to_string(),
                reason: format!("HTTP {status}"),
            });
        }
        Ok(fetched)
    }

    /// One bodiless request whatever status it answers (for probes such as `doctor --url`),
    /// bounded like [`Self::get`]. A 304 comes back with an empty body.
    pub async fn send(
        &self,
        method: Method,
        url: &str,
        headers: &[(header::HeaderName, header::HeaderValue)],
        max_body: usize,
        timeout: Duration,
    ) -> Result<Fetched, FetchError> {
        let failed = |reason: String| FetchError {
            url: url.to_string(),
            reason,
        };
        let mut request = Request::builder().method(method).uri(url);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let request = request
            .body(Empty::new())
            .map_err(|e| failed(format!("bad URL: {e}")))?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| failed(e.to_string()))?;
            let status = response.status();
            let etag = response
                .headers()
                .get(header::ETAG)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            if status == StatusCode::NOT_MODIFIED {
                return Ok(Fetched {
                    status,
                    etag,
                    body: Bytes::new(),
                });
            }
            let body = Limited::new(response.into_body(), max_body).collect().await;
            let body = match body {
                Ok(body) => body.to_bytes(),
                // An error answer's status says what matters; its body is not needed.
                Err(_) if !status.is_success() => Bytes::new(),
                Err(e) => return Err(failed(format!("reading the body: {e}"))),
            };
            Ok(Fetched { status, etag, body })
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| failed(format!("no answer within {timeout:?}")))?
    }
}
