//! A verdict as Envoy's `CheckResponse`, written straight into protobuf's wire format.
//!
//! Building envoy-types' `CheckResponse` first cost an owned `String` for every header name and
//! value and every decision fact, a hash map for the facts (`google.protobuf.Struct`), and
//! dropping it all again: most of what a Check cost over a do-nothing server (BENCHMARKS.md
//! §2.1). Here the same message is written from borrowed strings into one buffer. Field numbers
//! are those of `envoy/service/auth/v3/external_auth.proto` and the messages it uses; the tests
//! decode the bytes with envoy-types and compare them with the message built field by field.

use prost::bytes::{Buf, BufMut};
use prost::encoding::{
    DecodeContext, WireType, encode_key, encode_varint, encoded_len_varint, key_len,
};

use nmp_authz_core::verdict::Verdict;

use super::check::{allow_headers, denial_headers, headers_to_remove};

/// `envoy.config.core.v3.HeaderValueOption.HeaderAppendAction.OVERWRITE_IF_EXISTS_OR_ADD`.
const OVERWRITE_IF_EXISTS_OR_ADD: u64 = 2;

/// A `CheckResponse`, encoded. A `prost::Message` so that tonic's prost codec sends it as it is;
/// it is only ever sent, never decoded.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct EncodedCheckResponse(Vec<u8>);

impl EncodedCheckResponse {
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl prost::Message for EncodedCheckResponse {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        buf.put_slice(&self.0);
    }

    /// Never called: nothing decodes into an encoded response.
    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        prost::encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        self.0.len()
    }

    fn clear(&mut self) {
        self.0.clear();
    }
}

/// The verdict as Envoy acts on it: on an allow, the headers to set (overwriting) and every other
/// inbound `x-nmp-*` header (`inbound`: the request's header names) to remove; on a denial, the
/// status, headers and JSON body; with the decision facts as dynamic metadata when the policy
/// decided.
pub(crate) fn encode<'h>(
    verdict: &Verdict<'_>,
    inbound: impl Iterator<Item = &'h str>,
) -> EncodedCheckResponse {
    let mut out = Vec::with_capacity(512);
    // CheckResponse.status (google.rpc.Status): code and, on a denial, the detail.
    let message = if verdict.allowed() {
        ""
    } else {
        verdict.detail.as_ref()
    };
    let code = u64::from(verdict.status.grpc_code().unsigned_abs());
    let status_len = varint_field_len(1, code) + string_field_len(2, message);
    message_header(1, status_len, &mut out);
    varint_field(1, code, &mut out);
    string_field(2, message, &mut out);

    if verdict.allowed() {
        let set = allow_headers(verdict.principal.as_deref());
        let remove = headers_to_remove(inbound, &set);
        // CheckResponse.ok_response (OkHttpResponse): headers (2), headers_to_remove (5).
        let headers = set.iter().map(|(k, v)| (*k, v.as_ref()));
        let len = headers
            .clone()
            .map(|(k, v)| field_len(2, header_option_len(k, v)))
            .sum::<usize>()
            + remove.iter().map(|k| string_field_len(5, k)).sum::<usize>();
        message_header(3, len, &mut out);
        for (key, value) in headers {
            header_option(2, key, value, &mut out);
        }
        for key in &remove {
            string_field(5, key, &mut out);
        }
    } else {
        // CheckResponse.denied_response (DeniedHttpResponse): status (1, envoy.type.v3.HttpStatus
        // whose code (1) is the HTTP status), headers (2), body (3).
        let headers = denial_headers(verdict);
        let body = super::detail_body(&verdict.detail);
        let http = u64::from(verdict.status.http());
        let len = field_len(1, varint_field_len(1, http))
            + headers
                .iter()
                .map(|(k, v)| field_len(2, header_option_len(k, v)))
                .sum::<usize>()
            + string_field_len(3, &body);
        message_header(2, len, &mut out);
        message_header(1, varint_field_len(1, http), &mut out);
        varint_field(1, http, &mut out);
        for (key, value) in &headers {
            header_option(2, key, value, &mut out);
        }
        string_field(3, &body, &mut out);
    }

    if let Some(facts) = facts(verdict) {
        // CheckResponse.dynamic_metadata (google.protobuf.Struct): its map `fields` (1), one
        // entry message per fact, key (1) and google.protobuf.Value (2).
        let len: usize = facts
            .iter()
            .map(|(k, v)| field_len(1, fact_len(k, v)))
            .sum();
        message_header(4, len, &mut out);
        for (key, value) in &facts {
            message_header(1, fact_len(key, value), &mut out);
            string_field(1, key, &mut out);
            let value_len = value_len(value);
            message_header(2, value_len, &mut out);
            match value {
                // Value.bool_value (4); false is written too: a oneof member is always present.
                Fact::Bool(b) => {
                    encode_key(4, WireType::Varint, &mut out);
                    encode_varint(u64::from(*b), &mut out);
                }
                // Value.string_value (3), present even when empty (a oneof member).
                Fact::Text(s) => {
                    message_header(3, s.len(), &mut out);
                    out.extend_from_slice(s.as_bytes());
                }
            }
        }
    }
    EncodedCheckResponse(out)
}

/// A decision fact's value: `google.protobuf.Value`'s `bool_value` or `string_value`.
enum Fact<'a> {
    Bool(bool),
    Text(&'a str),
}

/// The decision facts for Envoy's dynamic metadata (access logs, later filters), when the
/// policy decided.
fn facts<'v>(verdict: &'v Verdict<'_>) -> Option<Vec<(&'static str, Fact<'v>)>> {
    let (decision, policy) = (verdict.decision.as_ref()?, verdict.policy?);
    let mut facts = Vec::with_capacity(6);
    facts.push(("allowed", Fact::Bool(decision.allowed)));
    facts.push(("reason", Fact::Text(decision.reason.as_str())));
    facts.push(("policy_revision", Fact::Text(policy.revision())));
    if let Some(id) = verdict.principal.as_ref().and_then(|p| p.id.as_deref()) {
        facts.push(("principal_id", Fact::Text(id)));
    }
    if let Some(workspace) = decision.workspace.as_deref() {
        facts.push(("workspace", Fact::Text(workspace)));
    }
    if let Some(endpoint) = decision.endpoint {
        facts.push(("endpoint", Fact::Text(endpoint)));
    }
    Some(facts)
}

fn value_len(value: &Fact<'_>) -> usize {
    match value {
        Fact::Bool(b) => key_len(4) + encoded_len_varint(u64::from(*b)),
        Fact::Text(s) => field_len(3, s.len()),
    }
}

/// A `Struct.fields` map entry: key (1) and value (2).
fn fact_len(key: &str, value: &Fact<'_>) -> usize {
    string_field_len(1, key) + field_len(2, value_len(value))
}

/// A `HeaderValueOption` that sets `key: value`, replacing any value: `append` (2) a present
/// `BoolValue` false for Envoy versions that read only that deprecated field, `append_action`
/// (3) `OVERWRITE_IF_EXISTS_OR_ADD` for those that read the action. Its `header` (1) is a
/// `HeaderValue` with key (1) and value (2).
fn header_option(tag: u32, key: &str, value: &str, out: &mut Vec<u8>) {
    message_header(tag, header_option_len(key, value), out);
    message_header(1, header_value_len(key, value), out);
    string_field(1, key, out);
    string_field(2, value, out);
    // BoolValue { value: false }: present, and empty (false is proto3's default).
    message_header(2, 0, out);
    varint_field(3, OVERWRITE_IF_EXISTS_OR_ADD, out);
}

fn header_option_len(key: &str, value: &str) -> usize {
    field_len(1, header_value_len(key, value))
        + field_len(2, 0)
        + varint_field_len(3, OVERWRITE_IF_EXISTS_OR_ADD)
}

fn header_value_len(key: &str, value: &str) -> usize {
    string_field_len(1, key) + string_field_len(2, value)
}

/// A length-delimited field's key and length; its `len` bytes follow.
fn message_header(tag: u32, len: usize, out: &mut Vec<u8>) {
    encode_key(tag, WireType::LengthDelimited, out);
    encode_varint(len as u64, out);
}

/// A length-delimited field of `len` bytes, whole.
fn field_len(tag: u32, len: usize) -> usize {
    key_len(tag) + encoded_len_varint(len as u64) + len
}

/// A proto3 string field: left out when empty, as the default.
fn string_field(tag: u32, value: &str, out: &mut Vec<u8>) {
    if !value.is_empty() {
        message_header(tag, value.len(), out);
        out.extend_from_slice(value.as_bytes());
    }
}

fn string_field_len(tag: u32, value: &str) -> usize {
    if value.is_empty() {
        0
    } else {
        field_len(tag, value.len())
    }
}

/// A proto3 integer (or enum) field: left out when zero, as the default.
fn varint_field(tag: u32, value: u64, out: &mut Vec<u8>) {
    if value != 0 {
        encode_key(tag, WireType::Varint, out);
        encode_varint(value, out);
    }
}

fn varint_field_len(tag: u32, value: u64) -> usize {
    if value == 0 {
        0
    } else {
        key_len(tag) + encoded_len_varint(value)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use envoy_types::pb::envoy::config::core::v3::{
        HeaderValue, HeaderValueOption, header_value_option::HeaderAppendAction,
    };
    use envoy_types::pb::envoy::service::auth::v3::{
        CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse,
        check_response::HttpResponse,
    };
    use envoy_types::pb::envoy::r#type::v3::HttpStatus;
    use envoy_types::pb::google::protobuf::{BoolValue, Struct, Value, value::Kind};
    use envoy_types::pb::google::rpc;
    use prost::Message;
    use serde_json::json;

    use super::*;
    use crate::requests::{check_request, jwt_authn_metadata, unsigned_token};
    use crate::server::{State, check};

    /// The message envoy-types would build for `verdict`, field by field.
    #[allow(deprecated)]
    fn reference(verdict: &Verdict<'_>, inbound: &[&str]) -> CheckResponse {
        let option = |key: &str, value: &str| HeaderValueOption {
            header: Some(HeaderValue {
                key: key.into(),
                value: value.into(),
                ..Default::default()
            }),
            append: Some(BoolValue { value: false }),
            append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
            keep_empty_value: false,
        };
        let http_response = if verdict.allowed() {
            let set = allow_headers(verdict.principal.as_deref());
            HttpResponse::OkResponse(OkHttpResponse {
                headers: set.iter().map(|(k, v)| option(k, v)).collect(),
                headers_to_remove: headers_to_remove(inbound.iter().copied(), &set),
                ..Default::default()
            })
        } else {
            HttpResponse::DeniedResponse(DeniedHttpResponse {
                status: Some(HttpStatus {
                    code: i32::from(verdict.status.http()),
                }),
                headers: denial_headers(verdict)
                    .iter()
                    .map(|(k, v)| option(k, v))
                    .collect(),
                body: crate::server::detail_body(&verdict.detail),
            })
        };
        let dynamic_metadata = facts(verdict).map(|facts| Struct {
            fields: facts
                .into_iter()
                .map(|(key, fact)| {
                    let kind = match fact {
                        Fact::Bool(b) => Kind::BoolValue(b),
                        Fact::Text(s) => Kind::StringValue(s.into()),
                    };
                    (key.to_string(), Value { kind: Some(kind) })
                })
                .collect(),
        });
        CheckResponse {
            status: Some(rpc::Status {
                code: verdict.status.grpc_code(),
                message: if verdict.allowed() {
                    String::new()
                } else {
                    verdict.detail.to_string()
                },
                ..Default::default()
            }),
            http_response: Some(http_response),
            dynamic_metadata,
        }
    }

    fn quickstart() -> State {
        let config = crate::config::load_from_process_env(None).expect("quickstart config");
        let policy = crate::sources::load(&config).expect("built-in catalog");
        State::new(&config, Some(policy))
    }

    /// Decodes what `encode` wrote for `request` and compares it with [`reference`]; returns it.
    fn answer(state: &State, request: &CheckRequest) -> CheckResponse {
        let inbound: Vec<&str> = request
            .attributes
            .as_ref()
            .and_then(|a| a.request.as_ref())
            .and_then(|r| r.http.as_ref())
            .map(|h| h.headers.keys().map(String::as_str).collect())
            .unwrap_or_default();
        let request = crate::server::check_request::CheckRequest::from_message(request);
        let request = check::request(&request);
        let decided = check::decide(state, &request, |verdict| {
            (
                encode(verdict, inbound.iter().copied()),
                reference(verdict, &inbound),
            )
        });
        // Not inside a runtime of the test's own: loading the quickstart policy starts one.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let (encoded, expected) = runtime.block_on(decided);
        let decoded = CheckResponse::decode(encoded.as_bytes()).expect("a CheckResponse");
        assert_eq!(decoded, expected);
        // And byte for byte what prost writes, but for the order of the metadata's map.
        assert_eq!(encoded.encoded_len(), expected.encoded_len());
        decoded
    }

    fn ok_headers(response: &CheckResponse) -> (HashMap<&str, &str>, &[String]) {
        let Some(HttpResponse::OkResponse(ok)) = &response.http_response else {
            panic!("not an allow: {response:?}");
        };
        let headers = ok.headers.iter().filter_map(|o| o.header.as_ref());
        let set = headers
            .map(|h| (h.key.as_str(), h.value.as_str()))
            .collect();
        (set, &ok.headers_to_remove)
    }

    #[test]
    fn an_allow_sets_the_principal_and_removes_the_clients_headers() {
        let state = quickstart();
        let mut headers = HashMap::from([
            (
                "authorization".to_string(),
                format!("Bearer {}", unsigned_token("alice", 600)),
            ),
            ("x-nmp-principal-id".to_string(), "mallory".to_string()),
            ("X-NMP-Authorized".to_string(), "forged".to_string()),
            ("x-nmp-other".to_string(), "1".to_string()),
        ]);
        headers.insert("accept".into(), "*/*".into());
        let path = "/apis/models/v2/workspaces/default/models?page=2";
        let response = answer(&state, &check_request("GET", path, headers));
        let (set, removed) = ok_headers(&response);
        assert_eq!(set["x-nmp-authorized"], "true");
        assert_eq!(set["x-nmp-principal-id"], "alice");
        assert_eq!(removed, ["x-nmp-other"]);
        let facts = &response.dynamic_metadata.as_ref().expect("facts").fields;
        assert_eq!(
            facts["workspace"].kind,
            Some(Kind::StringValue("default".into()))
        );
        assert_eq!(facts["allowed"].kind, Some(Kind::BoolValue(true)));
    }

    #[test]
    fn claims_with_email_groups_and_scopes_are_carried() {
        let state = quickstart();
        let claims = json!({
            "sub": "carol", "email": "carol@example.com", "groups": ["team-a", "team-b"],
            "scope": "openid models:read",
        });
        let mut request = check_request(
            "GET",
            "/apis/models/v2/workspaces/default/models",
            HashMap::new(),
        );
        let attributes = request.attributes.as_mut().expect("attributes");
        attributes.metadata_context = Some(jwt_authn_metadata(
            "jwt_payload",
            claims.as_object().expect("claims"),
        ));
        let response = answer(&state, &request);
        let (set, removed) = ok_headers(&response);
        assert_eq!(set["x-nmp-principal-email"], "carol@example.com");
        assert_eq!(set["x-nmp-principal-groups"], "team-a,team-b");
        assert_eq!(set["x-nmp-scopes"], "openid models:read");
        assert!(removed.is_empty());
    }

    #[test]
    fn denials_carry_status_body_and_challenge() {
        let state = quickstart();
        let alice = || {
            HashMap::from([(
                "authorization".to_string(),
                format!("Bearer {}", unsigned_token("alice", 600)),
            )])
        };
        let forged = HashMap::from([(
            "authorization".to_string(),
            "Bearer not.a\"token".to_string(),
        )]);
        let cases = [
            (
                check_request("POST", "/apis/models/v2/workspaces/system/models", alice()),
                403,
            ),
            (
                check_request(
                    "GET",
                    "/apis/models/v2/workspaces/default/models",
                    HashMap::new(),
                ),
                401,
            ),
            (
                check_request("GET", "/apis/models/v2/workspaces/default/models", forged),
                401,
            ),
            (
                check_request("GET", "/apis/models/v2/workspaces/default/../x", alice()),
                400,
            ),
            (check_request("", "", HashMap::new()), 400),
        ];
        for (request, status) in &cases {
            let response = answer(&state, request);
            let Some(HttpResponse::DeniedResponse(denied)) = &response.http_response else {
                panic!("not a denial: {response:?}");
            };
            assert_eq!(denied.status.as_ref().map(|s| s.code), Some(*status));
            assert!(denied.body.starts_with("{\"detail\":"), "{}", denied.body);
        }
        state
            .stale
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let request = check_request("GET", "/apis/models/v2/workspaces/default/models", alice());
        let response = answer(&state, &request);
        assert_eq!(response.status.as_ref().map(|s| s.code), Some(14));
    }
}
