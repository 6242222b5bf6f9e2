//! The HTTP authorization endpoint (README "HTTP authorization mode"): Envoy's HTTP ext_authz
//! service, nginx `auth_request` and Traefik `forwardAuth` ask about a request over plain HTTP.
//! The request they describe is decided by [`check::decide_recorded`], the very path gRPC
//! Checks take, and its verdict rendered as the HTTP answer: 200 with the `x-nmp-*` headers to
//! inject, or the denial's status, headers and body.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::{Response, StatusCode};
use nmp_authz_core::verdict::{Early, Verdict};

use super::{State, check};
use crate::config::ForwardedForm;
use crate::identity::Credentials;

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
pub(crate) const DENIAL_BODY: &str = "x-nmp-authz-body";

/// Whether `path` (the request line's, without the query) is under the endpoint's prefix;
/// returns what follows the prefix (empty, or starting with `/`).
pub(crate) fn under_prefix<'a>(state: &State, path: &'a str) -> Option<&'a str> {
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
            let forwarded = forwarded_headers(headers);
            let request = check::Request {
                method: &described.method,
                path: &described.path,
                credentials: Credentials::from_headers(
                    forwarded.iter().map(|(k, v)| (k.as_str(), v.as_str())),
                ),
                metadata: None,
                trace: crate::traces::Carrier::Http(headers),
            };
            let inbound = forwarded.iter().map(|(k, _)| k.as_str());
            check::decide_recorded(state, &request, |verdict| {
                http_answer(verdict, inbound, described.form)
            })
            .await
        }
        Err(detail) => {
            let verdict = Verdict::early(Early::MalformedRequest, detail);
            let request = check::Request {
                method,
                path: rest,
                credentials: Ok(Credentials::default()),
                metadata: None,
                trace: crate::traces::Carrier::None,
            };
            check::record(state, &request, &verdict, started.elapsed());
            http_answer(&verdict, std::iter::empty(), ForwardedForm::Envoy)
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
        },
        ForwardedForm::Nginx => Described {
            form,
            method: required(ORIGINAL_METHOD)?,
            path: required(ORIGINAL_URI)?,
        },
        ForwardedForm::Traefik => {
            let described = Described {
                form,
                method: required(FORWARDED_METHOD)?,
                path: required(FORWARDED_URI)?,
            };
            // Not needed for the decision, but refused when repeated like the others.
            single(FORWARDED_HOST)?;
            described
        }
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

/// The authorization request's headers as Envoy's gRPC ext_authz would pass the described
/// request's on (names lower-case, repeated ones joined with `,` as Envoy joins them), without
/// the describing ones.
fn forwarded_headers(headers: &HeaderMap) -> Vec<(String, String)> {
    let mut forwarded: Vec<(String, String)> = Vec::with_capacity(headers.keys_len());
    for (name, value) in headers {
        let name = name.as_str();
        if DESCRIBING.contains(&name) {
            continue;
        }
        let value = String::from_utf8_lossy(value.as_bytes());
        match forwarded.iter_mut().find(|(known, _)| known == name) {
            Some((_, joined)) => {
                joined.push(',');
                joined.push_str(&value);
            }
            None => forwarded.push((name.to_string(), value.into_owned())),
        }
    }
    forwarded
}

/// A verdict as an HTTP answer; `inbound` the described request's header names.
fn http_answer<'h>(
    verdict: &Verdict<'_>,
    inbound: impl Iterator<Item = &'h str>,
    form: ForwardedForm,
) -> Response<Full<Bytes>> {
    let mut answer = Response::new(Full::new(Bytes::new()));
    let set = |answer: &mut Response<Full<Bytes>>, name: &str, value: &str| {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            answer.headers_mut().insert(name, value);
        }
    };
    if verdict.allowed() {
        let headers = check::allow_headers(verdict.principal.as_deref());
        let remove = check::headers_to_remove(inbound, &headers);
        for (name, value) in &headers {
            set(&mut answer, name, value);
        }
        if !remove.is_empty() {
            set(&mut answer, HEADERS_TO_REMOVE, &remove.join(","));
        }
        return answer;
    }
    *answer.status_mut() =
        StatusCode::from_u16(verdict.status.http()).unwrap_or(StatusCode::FORBIDDEN);
    for (name, value) in check::denial_headers(verdict) {
        set(&mut answer, name, &value);
    }
    let body = super::detail_body(&verdict.detail);
    if form == ForwardedForm::Nginx {
        set(&mut answer, DENIAL_BODY, &ascii_json(&body));
    }
    *answer.body_mut() = Full::new(Bytes::from(body));
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
        let forwarded = forwarded_headers(&headers);
        let names: Vec<&str> = forwarded.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["authorization", "x-nmp-principal-id", "accept"]);
        assert_eq!(
            forwarded[2].1, "a,b",
            "repeated headers joined as Envoy joins them"
        );
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
