//! Envoy's `CheckRequest` as the gRPC face reads it off the wire: only the fields an
//! authorization reads (the method, path and headers, and the dynamic metadata where
//! `jwt_authn` leaves the claims), each map read as its list of entries. envoy-types' generated
//! message decodes every field Envoy sends and inserts every header and every claim into a
//! SipHash map, to be dropped again a few microseconds later (BENCHMARKS.md §2.4).
//!
//! Field numbers are those of `envoy.service.auth.v3` and `google.protobuf.Struct`; fields not
//! listed here are skipped unread. Strings are prost's `String`s: one that is not UTF-8 fails
//! the decode, as it did in envoy-types' message.

use prost::Message;

#[derive(Clone, PartialEq, Message)]
pub struct CheckRequest {
    #[prost(message, optional, tag = "1")]
    pub attributes: Option<AttributeContext>,
}

#[derive(Clone, PartialEq, Message)]
pub struct AttributeContext {
    #[prost(message, optional, tag = "4")]
    pub request: Option<Request>,
    #[prost(message, optional, tag = "11")]
    pub metadata_context: Option<Metadata>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Request {
    #[prost(message, optional, tag = "2")]
    pub http: Option<HttpRequest>,
}

#[derive(Clone, PartialEq, Message)]
pub struct HttpRequest {
    #[prost(string, tag = "2")]
    pub method: String,
    /// `map<string, string>`: on the wire, a repeated message of key 1 and value 2.
    #[prost(message, repeated, tag = "3")]
    pub headers: Vec<Header>,
    #[prost(string, tag = "4")]
    pub path: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct Header {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

/// `envoy.config.core.v3.Metadata`: `filter_metadata` (`map<string, Struct>`).
#[derive(Clone, PartialEq, Message)]
pub struct Metadata {
    #[prost(message, repeated, tag = "1")]
    pub filter_metadata: Vec<Namespace>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Namespace {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(message, optional, tag = "2")]
    pub value: Option<Struct>,
}

/// `google.protobuf.Struct`: `fields` (`map<string, Value>`).
#[derive(Clone, PartialEq, Message)]
pub struct Struct {
    #[prost(message, repeated, tag = "1")]
    pub fields: Vec<Field>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Field {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(message, optional, tag = "2")]
    pub value: Option<Value>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Value {
    #[prost(oneof = "Kind", tags = "1, 2, 3, 4, 5, 6")]
    pub kind: Option<Kind>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Kind {
    #[prost(int32, tag = "1")]
    Null(i32),
    #[prost(double, tag = "2")]
    Number(f64),
    #[prost(string, tag = "3")]
    String(String),
    #[prost(bool, tag = "4")]
    Bool(bool),
    #[prost(message, tag = "5")]
    Struct(Struct),
    #[prost(message, tag = "6")]
    List(ListValue),
}

#[derive(Clone, PartialEq, Message)]
pub struct ListValue {
    #[prost(message, repeated, tag = "1")]
    pub values: Vec<Value>,
}

impl CheckRequest {
    /// The request's HTTP attributes, if Envoy sent them.
    pub fn http(&self) -> Option<&HttpRequest> {
        self.attributes.as_ref()?.request.as_ref()?.http.as_ref()
    }

    /// The `filter_metadata` namespace `name` (the last one, as a map keeps the last entry).
    pub fn namespace(&self, name: &str) -> Option<&Struct> {
        self.attributes
            .as_ref()?
            .metadata_context
            .as_ref()?
            .filter_metadata
            .iter()
            .rev()
            .find(|n| n.name == name)
            .map(|n| n.value.as_ref().unwrap_or(&EMPTY))
    }

    /// The wire form of envoy-types' message: how tests, `explain` and the load tester's
    /// requests reach the path Envoy's take.
    pub fn from_message(message: &envoy_types::pb::envoy::service::auth::v3::CheckRequest) -> Self {
        Self::decode(message.encode_to_vec().as_slice())
            .expect("a message prost encoded decodes again")
    }
}

static EMPTY: Struct = Struct { fields: Vec::new() };

impl HttpRequest {
    /// Each header as (name, value): Envoy sends names lower-cased, one entry per name.
    pub fn headers(&self) -> impl Iterator<Item = (&str, &str)> {
        self.headers
            .iter()
            .map(|h| (h.name.as_str(), h.value.as_str()))
    }
}

impl Struct {
    /// The value of field `name` (the last one, as a map keeps the last entry).
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.fields
            .iter()
            .rev()
            .find(|f| f.name == name)
            .map(|f| f.value.as_ref().unwrap_or(&NULL))
    }

    /// The `Struct` Envoy's `jwt_authn` filter would send for a JSON object (tests, benches).
    pub fn from_json(object: &serde_json::Map<String, serde_json::Value>) -> Self {
        Self::decode(
            crate::identity::struct_from_json(object)
                .encode_to_vec()
                .as_slice(),
        )
        .expect("a message prost encoded decodes again")
    }
}

/// A field present with no value: protobuf's default, no kind (read as null).
static NULL: Value = Value { kind: None };

#[cfg(test)]
mod tests {
    use super::*;
    use crate::requests::{check_request, jwt_authn_metadata};
    use envoy_types::pb::envoy::service::auth::v3 as envoy;
    use serde_json::json;
    use std::collections::HashMap;

    /// Replaced by bytes that are not UTF-8 in the encoded request (same length).
    const MARK: &str = "\u{1}MARK\u{1}";

    fn envoy_request(
        method: &str,
        path: &str,
        header: (&str, &str),
        claims: serde_json::Value,
    ) -> envoy::CheckRequest {
        let mut request = check_request(
            method,
            path,
            HashMap::from([
                ("authorization".to_string(), "Bearer abc".to_string()),
                ("x-nmp-principal-id".to_string(), "mallory".to_string()),
                (header.0.to_string(), header.1.to_string()),
            ]),
        );
        request.attributes.as_mut().unwrap().metadata_context = Some(jwt_authn_metadata(
            "jwt_payload",
            claims.as_object().unwrap(),
        ));
        request
    }

    fn claims() -> serde_json::Value {
        json!({"sub": "alice", "groups": ["a", "b"], "exp": 1.5, "ok": true,
               "nested": {"k": "v"}, "none": null})
    }

    #[test]
    fn reads_what_envoy_types_reads() {
        let request = envoy_request(
            "POST",
            "/apis/models/v2/workspaces/ws1/models?x=1",
            ("user-agent", "curl/8"),
            claims(),
        );
        let wire = CheckRequest::from_message(&request);
        let http = wire.http().unwrap();
        let expected = request.attributes.as_ref().unwrap();
        let expected_http = expected.request.as_ref().unwrap().http.as_ref().unwrap();
        assert_eq!(http.method, expected_http.method);
        assert_eq!(http.path, expected_http.path);
        let headers: HashMap<String, String> = http
            .headers()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(headers, expected_http.headers);

        let namespace = wire
            .namespace(crate::identity::JWT_AUTHN_NAMESPACE)
            .unwrap();
        let Some(Kind::Struct(claims)) = &namespace.get("jwt_payload").unwrap().kind else {
            panic!("the payload is a Struct");
        };
        let kind = |name| claims.get(name).unwrap().kind.clone();
        assert_eq!(kind("sub"), Some(Kind::String("alice".into())));
        assert_eq!(kind("exp"), Some(Kind::Number(1.5)));
        assert_eq!(kind("ok"), Some(Kind::Bool(true)));
        assert_eq!(kind("none"), Some(Kind::Null(0)));
        assert!(matches!(kind("groups"), Some(Kind::List(list)) if list.values.len() == 2));
        assert!(matches!(kind("nested"), Some(Kind::Struct(s)) if s.get("k").is_some()));
        assert!(claims.get("missing").is_none());
        assert!(wire.namespace("other").is_none());
    }

    #[test]
    fn a_repeated_map_key_reads_as_the_last_entry() {
        // Two entries for one key, as a map on the wire may carry: prost's map keeps the last.
        let field = |value: &str| Field {
            name: "sub".into(),
            value: Some(Value {
                kind: Some(Kind::String(value.into())),
            }),
        };
        let wire = Struct {
            fields: vec![field("first"), field("last")],
        };
        let generated =
            envoy_types::pb::google::protobuf::Struct::decode(wire.encode_to_vec().as_slice())
                .unwrap();
        let envoy_types::pb::google::protobuf::value::Kind::StringValue(kept) =
            generated.fields["sub"].kind.clone().unwrap()
        else {
            panic!("a string")
        };
        assert_eq!(kept, "last");
        assert_eq!(
            wire.get("sub").unwrap().kind,
            Some(Kind::String("last".into()))
        );
    }

    #[test]
    fn a_string_that_is_not_utf8_fails_the_decode_wherever_it_is() {
        let marked = [
            envoy_request(MARK, "/p", ("a", "b"), claims()),
            envoy_request("GET", MARK, ("a", "b"), claims()),
            envoy_request("GET", "/p", ("a", MARK), claims()),
            envoy_request("GET", "/p", (MARK, "b"), claims()),
            envoy_request(
                "GET",
                "/p",
                ("a", "b"),
                json!({"sub": "a", "nested": {"k": MARK}}),
            ),
            envoy_request(
                "GET",
                "/p",
                ("a", "b"),
                json!({"sub": "a", "groups": ["g", MARK]}),
            ),
            envoy_request("GET", "/p", ("a", "b"), json!({"sub": "a", MARK: 1})),
        ];
        for (i, request) in marked.iter().enumerate() {
            let mut bytes = request.encode_to_vec();
            assert!(CheckRequest::decode(bytes.as_slice()).is_ok(), "case {i}");
            let at = bytes
                .windows(MARK.len())
                .position(|w| w == MARK.as_bytes())
                .unwrap();
            bytes[at..at + 2].copy_from_slice(b"\xff\xfe");
            assert!(CheckRequest::decode(bytes.as_slice()).is_err(), "case {i}");
            // envoy-types' message refuses the same bytes.
            assert!(
                envoy::CheckRequest::decode(bytes.as_slice()).is_err(),
                "case {i}"
            );
        }
    }
}
