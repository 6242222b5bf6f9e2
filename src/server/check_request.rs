//! Envoy's `CheckRequest` read straight from its wire format: only the fields an authorization
//! reads (the method, path and headers, and the dynamic metadata where `jwt_authn` leaves the
//! claims), each string left in the buffer the request arrived in (`Bytes`: no copy) and each
//! map read as its list of entries (no hashing). envoy-types' generated message decodes every
//! field Envoy sends into an owned `String` and inserts every header and every claim into a
//! SipHash map, to be dropped again a few microseconds later (BENCHMARKS.md §2.4).
//!
//! Field numbers are those of `envoy.service.auth.v3` and `google.protobuf.Struct`; fields not
//! listed here are skipped unread. Every string that is read is checked to be UTF-8 before the
//! request is used ([`CheckRequest::check_text`]), as the generated message would have refused it.

use bytes::Bytes;
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
    #[prost(bytes = "bytes", tag = "2")]
    pub method: Bytes,
    /// `map<string, string>`: on the wire, a repeated message of key 1 and value 2.
    #[prost(message, repeated, tag = "3")]
    pub headers: Vec<Header>,
    #[prost(bytes = "bytes", tag = "4")]
    pub path: Bytes,
}

#[derive(Clone, PartialEq, Message)]
pub struct Header {
    #[prost(bytes = "bytes", tag = "1")]
    pub name: Bytes,
    #[prost(bytes = "bytes", tag = "2")]
    pub value: Bytes,
}

/// `envoy.config.core.v3.Metadata`: `filter_metadata` (`map<string, Struct>`).
#[derive(Clone, PartialEq, Message)]
pub struct Metadata {
    #[prost(message, repeated, tag = "1")]
    pub filter_metadata: Vec<Namespace>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Namespace {
    #[prost(bytes = "bytes", tag = "1")]
    pub name: Bytes,
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
    #[prost(bytes = "bytes", tag = "1")]
    pub name: Bytes,
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
    #[prost(bytes = "bytes", tag = "3")]
    String(Bytes),
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

/// A string field that is not UTF-8 (protobuf's `string` must be).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotUtf8;

/// A string checked by [`CheckRequest::check_text`]: never fails after that check, and a
/// request that skipped it reads an empty string, which no rule allows.
pub(crate) fn text(bytes: &Bytes) -> &str {
    std::str::from_utf8(bytes).unwrap_or_default()
}

fn utf8(bytes: &Bytes) -> Result<(), NotUtf8> {
    std::str::from_utf8(bytes).map(drop).map_err(|_| NotUtf8)
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
            .find(|n| n.name == name.as_bytes())
            .map(|n| n.value.as_ref().unwrap_or(&EMPTY))
    }

    /// Checks that every string read from the request is UTF-8.
    pub fn check_text(&self) -> Result<(), NotUtf8> {
        if let Some(http) = self.http() {
            utf8(&http.method)?;
            utf8(&http.path)?;
            for header in &http.headers {
                utf8(&header.name)?;
                utf8(&header.value)?;
            }
        }
        let namespaces = self
            .attributes
            .as_ref()
            .and_then(|a| a.metadata_context.as_ref())
            .map_or(&[][..], |m| &m.filter_metadata);
        for namespace in namespaces {
            utf8(&namespace.name)?;
            if let Some(value) = &namespace.value {
                value.check_text()?;
            }
        }
        Ok(())
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
    pub fn method(&self) -> &str {
        text(&self.method)
    }

    pub fn path(&self) -> &str {
        text(&self.path)
    }

    /// Each header as (name, value): Envoy sends names lower-cased, one entry per name.
    pub fn headers(&self) -> impl Iterator<Item = (&str, &str)> + Clone {
        self.headers.iter().map(|h| (text(&h.name), text(&h.value)))
    }
}

impl Struct {
    /// The value of field `name` (the last one, as a map keeps the last entry).
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.fields
            .iter()
            .rev()
            .find(|f| f.name == name.as_bytes())
            .map(|f| f.value.as_ref().unwrap_or(&NULL))
    }

    fn check_text(&self) -> Result<(), NotUtf8> {
        self.fields.iter().try_for_each(|field| {
            utf8(&field.name)?;
            field.value.as_ref().map_or(Ok(()), Value::check_text)
        })
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

impl Value {
    fn check_text(&self) -> Result<(), NotUtf8> {
        match &self.kind {
            Some(Kind::String(s)) => utf8(s),
            Some(Kind::Struct(s)) => s.check_text(),
            Some(Kind::List(list)) => list.values.iter().try_for_each(Value::check_text),
            Some(Kind::Null(_) | Kind::Number(_) | Kind::Bool(_)) | None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::requests::{check_request, jwt_authn_metadata};
    use envoy_types::pb::envoy::service::auth::v3 as envoy;
    use serde_json::json;
    use std::collections::HashMap;

    fn envoy_request() -> envoy::CheckRequest {
        let mut request = check_request(
            "POST",
            "/apis/models/v2/workspaces/ws1/models?x=1",
            HashMap::from([
                ("authorization".to_string(), "Bearer abc".to_string()),
                ("x-nmp-principal-id".to_string(), "mallory".to_string()),
                ("user-agent".to_string(), "curl/8".to_string()),
            ]),
        );
        let claims = json!({"sub": "alice", "groups": ["a", "b"], "exp": 1.5, "ok": true,
                            "nested": {"k": "v"}, "none": null});
        request.attributes.as_mut().unwrap().metadata_context = Some(jwt_authn_metadata(
            "jwt_payload",
            claims.as_object().unwrap(),
        ));
        request
    }

    #[test]
    fn reads_what_envoy_types_reads() {
        let request = envoy_request();
        let wire = CheckRequest::from_message(&request);
        assert_eq!(wire.check_text(), Ok(()));
        let http = wire.http().unwrap();
        let expected = request.attributes.as_ref().unwrap();
        let expected_http = expected.request.as_ref().unwrap().http.as_ref().unwrap();
        assert_eq!(http.method(), expected_http.method);
        assert_eq!(http.path(), expected_http.path);
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
        let string = |name| match &claims.get(name).unwrap().kind {
            Some(Kind::String(s)) => text(s).to_string(),
            other => panic!("{name}: {other:?}"),
        };
        assert_eq!(string("sub"), "alice");
        assert_eq!(claims.get("exp").unwrap().kind, Some(Kind::Number(1.5)));
        assert_eq!(claims.get("ok").unwrap().kind, Some(Kind::Bool(true)));
        assert_eq!(claims.get("none").unwrap().kind, Some(Kind::Null(0)));
        assert!(matches!(
            &claims.get("groups").unwrap().kind,
            Some(Kind::List(list)) if list.values.len() == 2
        ));
        assert!(matches!(
            &claims.get("nested").unwrap().kind,
            Some(Kind::Struct(s)) if s.get("k").is_some()
        ));
        assert!(claims.get("missing").is_none());
        assert!(wire.namespace("other").is_none());
    }

    #[test]
    fn a_repeated_map_key_reads_as_the_last_entry() {
        // Two entries for one key, as a map on the wire may carry: prost's map keeps the last.
        let first = Field {
            name: Bytes::from_static(b"sub"),
            value: Some(Value {
                kind: Some(Kind::String(Bytes::from_static(b"first"))),
            }),
        };
        let last = Field {
            name: Bytes::from_static(b"sub"),
            value: Some(Value {
                kind: Some(Kind::String(Bytes::from_static(b"last"))),
            }),
        };
        let wire = Struct {
            fields: vec![first, last],
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
            Some(Kind::String(Bytes::from_static(b"last")))
        );
    }

    fn http(r: &mut CheckRequest) -> &mut HttpRequest {
        let request = r.attributes.as_mut().unwrap().request.as_mut().unwrap();
        request.http.as_mut().unwrap()
    }

    /// The claims under `jwt_payload`, and the claim `name` in them.
    fn claim<'a>(r: &'a mut CheckRequest, name: &str) -> &'a mut Option<Kind> {
        let metadata = r.attributes.as_mut().unwrap().metadata_context.as_mut();
        let namespace = &mut metadata.unwrap().filter_metadata[0];
        let payload = &mut namespace.value.as_mut().unwrap().fields[0];
        let Some(Kind::Struct(claims)) = &mut payload.value.as_mut().unwrap().kind else {
            panic!("the payload is a Struct");
        };
        let field = claims.fields.iter_mut().find(|f| f.name == name.as_bytes());
        &mut field.unwrap().value.as_mut().unwrap().kind
    }

    fn string(bytes: &Bytes) -> Value {
        Value {
            kind: Some(Kind::String(bytes.clone())),
        }
    }

    #[test]
    fn a_string_that_is_not_utf8_is_refused_wherever_it_is() {
        let cases: [fn(&mut CheckRequest, &Bytes); 6] = [
            |r, bad| http(r).path = bad.clone(),
            |r, bad| http(r).method = bad.clone(),
            |r, bad| http(r).headers[0].value = bad.clone(),
            |r, bad| http(r).headers[0].name = bad.clone(),
            |r, bad| {
                let Some(Kind::Struct(nested)) = claim(r, "nested") else {
                    panic!("a Struct")
                };
                nested.fields[0].value = Some(string(bad));
            },
            |r, bad| {
                let Some(Kind::List(groups)) = claim(r, "groups") else {
                    panic!("a list")
                };
                groups.values[1] = string(bad);
            },
        ];
        let bad = Bytes::from_static(b"\xff\xfe");
        for (i, spoil) in cases.iter().enumerate() {
            let mut wire = CheckRequest::from_message(&envoy_request());
            spoil(&mut wire, &bad);
            assert_eq!(wire.check_text(), Err(NotUtf8), "case {i}");
            // envoy-types' message refuses the same bytes outright.
            let bytes = wire.encode_to_vec();
            assert!(
                envoy::CheckRequest::decode(bytes.as_slice()).is_err(),
                "case {i}"
            );
        }
    }
}
