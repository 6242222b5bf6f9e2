//! The HTTP authorization endpoint (README "HTTP authorization mode"): Envoy's HTTP ext_authz
//! service, nginx `auth_request` and Traefik `forwardAuth` ask about a request over plain HTTP.
//! The request they describe becomes a [`CheckRequest`] decided by [`check::check_recorded`],
//! the very path gRPC Checks take; its [`CheckResponse`] becomes the HTTP answer: 200 with the
//! `x-nmp-*` headers to inject, or the denial's status, headers and body.

use std::collections::HashMap;

use bytes::Bytes;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest, CheckResponse};
use http_body_util::Full;
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::{Response, StatusCode};

use super::{State, check};
use crate::config::ForwardedForm;

/// Headers that describe the original request instead of belonging to it. Never passed on as
/// the described request's headers (so never read as credentials), whichever form is trusted.
const DESCRIBING: &[&str] = &[
    ORIGINAL_METHOD,
    ORIGINAL_URI,
    FORWARDED_METHOD,
    FORWARDED_URI,
    FORWARDED_HOST,
];
const ORIGINAL_METHOD: &str = "x-original-method";
const ORIGINAL_URI: &str = "x-original-uri";
const FORWARDED_METHOD: &str = "x-forwarded-method";
const FORWARDED_URI: &str = "x-forwarded-uri";
const FORWARDED_HOST: &str = "x-forwarded-host";

/// On an allow, the inbound `x-nmp-*` headers the gateway must drop (Envoy's HTTP ext_authz
/// removes the headers this lists from the upstream request).
pub const HEADERS_TO_REMOVE: &str = "x-envoy-auth-headers-to-remove";
/// On a denial asked about in the nginx form: the JSON body again, as a header, because nginx
/// can read an `auth_request` answer's headers (`auth_request_set`) but never its body.
pub const DENIAL_BODY: &str = "x-nmp-authz-body";

/// Whether `path` (the request line's, without the query) is under the endpoint's prefix;
/// returns what follows the prefix (empty, or starting with `/`).
pub fn under_prefix<'a>(state: &State, path: &'a str) -> Option<&'a str> {
    if !state.http_authz.enabled {
        return None;
    }
    let rest = path.strip_prefix(state.http_authz.path_prefix.as_str())?;
    (rest.is_empty() || rest.starts_with('/')).then_some(rest)
}

/// The original request, as one trusted form describes it.
struct Described {
    form: ForwardedForm,
    method: String,
    /// Path and query, as the client sent them.
    path: String,
    host: String,
}

/// Answers one authorization request. `rest` is the request line's path after the prefix
/// ([`under_prefix`]), `query` its query.
pub async fn answer(
    state: &State,
    method: &str,
    rest: &str,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Response<Full<Bytes>> {
    let started = std::time::Instant::now();
    match describe(state, method, rest, query, headers) {
        Ok(described) => {
            let request = check_request(&described, headers);
            let (response, _) = check::check_recorded(state, &request).await;
            translate(&response, described.form)
        }
        Err(detail) => {
            let request = CheckRequest::default();
            let (response, outcome) = check::deny(400, "malformed_request", &detail, None);
            check::record(state, &request, &response, &outcome, started.elapsed());
            translate(&response, ForwardedForm::Envoy)
        }
    }
}

/// The one trusted description of the original request, or why there is none (a 400).
fn describe(
    state: &State,
    method: &str,
    rest: &str,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Result<Described, String> {
    let trusted = &state.http_authz.trusted_forwarded_headers;
    let single = |name: &str| -> Result<Option<String>, String> {
        let mut values = headers.get_all(name).iter();
        let Some(first) = values.next() else {
            return Ok(None);
        };
        if values.next().is_some() {
            return Err(format!("Malformed request: {} is repeated", spelled(name)));
        }
        first
            .to_str()
            .map(|v| Some(v.to_string()))
            .map_err(|_| format!("Malformed request: {} is not visible ASCII", spelled(name)))
    };
    let host = || single("host").ok().flatten().unwrap_or_default();
    let mut present = Vec::new();
    if !rest.is_empty() {
        present.push(ForwardedForm::Envoy);
    }
    if headers.contains_key(ORIGINAL_URI) || headers.contains_key(ORIGINAL_METHOD) {
        present.push(ForwardedForm::Nginx);
    }
    if headers.contains_key(FORWARDED_URI) || headers.contains_key(FORWARDED_METHOD) {
        present.push(ForwardedForm::Traefik);
    }
    let usable: Vec<ForwardedForm> = present
        .iter()
        .copied()
        .filter(|f| trusted.contains(f))
        .collect();
    let form = match usable.as_slice() {
        [form] => *form,
        [] if present.is_empty() => {
            return Err(format!(
                "Malformed request: nothing describes the request to authorize (trusted: {})",
                names(trusted)
            ));
        }
        [] => {
            return Err(format!(
                "Malformed request: the request is described only in untrusted forms ({}; \
                 trusted: {})",
                names(&present),
                names(trusted)
            ));
        }
        _ => {
            // Two descriptions: whichever we picked, the gateway may have meant the other
            // (one of them can be the client's own header, passed on by the gateway).
            return Err(format!(
                "Malformed request: the request is described twice ({})",
                names(&usable)
            ));
        }
    };
    let required = |name: &str| {
        single(name)?.ok_or_else(|| format!("Malformed request: {} is missing", spelled(name)))
    };
    Ok(match form {
        ForwardedForm::Envoy => Described {
            form,
            method: method.to_string(),
            path: match query {
                Some(query) => format!("{rest}?{query}"),
                None => rest.to_string(),
            },
            host: host(),
        },
        ForwardedForm::Nginx => Described {
            form,
            method: required(ORIGINAL_METHOD)?,
            path: required(ORIGINAL_URI)?,
            host: host(),
        },
        ForwardedForm::Traefik => Described {
            form,
            method: required(FORWARDED_METHOD)?,
            path: required(FORWARDED_URI)?,
            host: match single(FORWARDED_HOST)? {
                Some(host) => host,
                None => host(),
            },
        },
    })
}

/// A describing header as the gateways' documentation spells it.
fn spelled(name: &str) -> &str {
    match name {
        ORIGINAL_METHOD => "X-Original-Method",
        ORIGINAL_URI => "X-Original-URI",
        FORWARDED_METHOD => "X-Forwarded-Method",
        FORWARDED_URI => "X-Forwarded-Uri",
        FORWARDED_HOST => "X-Forwarded-Host",
        other => other,
    }
}

fn names(forms: &[ForwardedForm]) -> String {
    let name = |f: &ForwardedForm| match f {
        ForwardedForm::Envoy => "envoy (the path after the prefix)",
        ForwardedForm::Nginx => "nginx (X-Original-URI)",
        ForwardedForm::Traefik => "traefik (X-Forwarded-Uri)",
    };
    forms.iter().map(name).collect::<Vec<_>>().join(", ")
}

/// The Check request Envoy's gRPC ext_authz would send for the described request: its method,
/// path and host, and the authorization request's headers (names lower-case, repeated ones
/// joined with `,` as Envoy joins them) without the describing ones.
fn check_request(described: &Described, headers: &HeaderMap) -> CheckRequest {
    let mut forwarded: HashMap<String, String> = HashMap::with_capacity(headers.keys_len());
    for (name, value) in headers {
        let name = name.as_str();
        if DESCRIBING.contains(&name) {
            continue;
        }
        let value = String::from_utf8_lossy(value.as_bytes());
        forwarded
            .entry(name.to_string())
            .and_modify(|joined| {
                joined.push(',');
                joined.push_str(&value);
            })
            .or_insert_with(|| value.into_owned());
    }
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(HttpRequest {
                    method: described.method.clone(),
                    path: described.path.clone(),
                    host: described.host.clone(),
                    headers: forwarded,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

/// The CheckResponse as an HTTP answer.
fn translate(response: &CheckResponse, form: ForwardedForm) -> Response<Full<Bytes>> {
    let mut answer = Response::new(Full::new(Bytes::new()));
    let set = |answer: &mut Response<Full<Bytes>>, name: &str, value: &str| {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            answer.headers_mut().insert(name, value);
        }
    };
    match &response.http_response {
        Some(HttpResponse::OkResponse(ok)) => {
            for header in ok.headers.iter().filter_map(|h| h.header.as_ref()) {
                set(&mut answer, &header.key, &header.value);
            }
            if !ok.headers_to_remove.is_empty() {
                set(
                    &mut answer,
                    HEADERS_TO_REMOVE,
                    &ok.headers_to_remove.join(","),
                );
            }
        }
        Some(HttpResponse::DeniedResponse(denied)) => {
            *answer.status_mut() = denied
                .status
                .as_ref()
                .and_then(|s| u16::try_from(s.code).ok())
                .and_then(|code| StatusCode::from_u16(code).ok())
                .unwrap_or(StatusCode::FORBIDDEN);
            for header in denied.headers.iter().filter_map(|h| h.header.as_ref()) {
                set(&mut answer, &header.key, &header.value);
            }
            if form == ForwardedForm::Nginx {
                set(&mut answer, DENIAL_BODY, &ascii_json(&denied.body));
            }
            *answer.body_mut() = Full::new(Bytes::from(denied.body.clone()));
        }
        // check::check always answers one or the other; anything else is not an allow.
        Some(HttpResponse::ErrorResponse(_)) | None => {
            *answer.status_mut() = StatusCode::FORBIDDEN;
        }
    }
    answer
}

/// JSON text with every character outside printable ASCII written as a `\u` escape: the same
/// JSON value, and a valid header value.
fn ascii_json(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        if c.is_ascii() && !c.is_ascii_control() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describing_headers_are_not_headers_of_the_described_request() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("x-original-uri", "/a"),
            ("x-original-method", "GET"),
            ("x-forwarded-method", "GET"),
            ("x-forwarded-uri", "/a"),
            ("x-forwarded-host", "h"),
            ("authorization", "Bearer t"),
            ("x-nmp-principal-id", "p"),
            ("accept", "a"),
            ("accept", "b"),
        ] {
            headers.append(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        let described = Described {
            form: ForwardedForm::Nginx,
            method: "GET".into(),
            path: "/a".into(),
            host: "h".into(),
        };
        let request = check_request(&described, &headers);
        let http = request.attributes.unwrap().request.unwrap().http.unwrap();
        let mut names: Vec<_> = http.headers.keys().cloned().collect();
        names.sort();
        assert_eq!(names, ["accept", "authorization", "x-nmp-principal-id"]);
        assert_eq!(
            http.headers["accept"], "a,b",
            "repeated headers joined as Envoy joins them"
        );
        assert_eq!((http.method.as_str(), http.path.as_str()), ("GET", "/a"));
    }

    #[test]
    fn ascii_json_is_the_same_json_value() {
        for text in [
            r#"{"detail":"Not authenticated"}"#,
            r#"{"detail":"café ☕ 𝄞"}"#,
            "{\"detail\":\"tab\\there\"}",
        ] {
            let escaped = ascii_json(text);
            assert!(HeaderValue::from_str(&escaped).is_ok(), "{escaped}");
            let a: serde_json::Value = serde_json::from_str(text).unwrap();
            let b: serde_json::Value = serde_json::from_str(&escaped).unwrap();
            assert_eq!(a, b);
        }
    }
}
