//! The module's request entry, in safe Rust: a [`Gate`] (one per filter configuration) takes a
//! request's headers as Envoy hands them over (bytes, pseudo-headers `:method` and `:path`
//! included) and answers with an [`Answer`]: let the request on with headers set and removed,
//! or respond. The decision is the core's, in the order every face runs it
//! ([`verdict::admit`], identity, [`verdict::conclude`]); the headers and bodies are the core's
//! [`answer`](nmp_authz_core::answer) too, so the module answers as the gRPC Check does. The FFI
//! layer (`abi.rs`) only moves bytes in and out.

use std::borrow::Cow;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};

use nmp_authz_core::answer::{allow_headers, denial_headers, detail_body, headers_to_remove};
use nmp_authz_core::config::Config;
use nmp_authz_core::identity::{
    self, Credentials, Identity, IdentityError, IdentitySettings, Verified,
};
use nmp_authz_core::verdict::{self, Admission, Early, Outcome, Status, Verdict};
use nmp_authz_tokens::TokenVerifier;
use serde_json::{Map, Value as Json};

use crate::keys::Keys;
use crate::policy::{Log, PolicyCell, Refresher};

/// The dynamic metadata namespace the decision facts go under (access logs:
/// `%DYNAMIC_METADATA(nmp_authz:reason)%`).
pub const METADATA_NAMESPACE: &str = "nmp_authz";

/// One filter configuration: its settings, the policy its thread keeps current, and the signed
/// tokens' verifier.
#[derive(Debug)]
pub struct Gate {
    auth_enabled: bool,
    identity: IdentitySettings,
    cell: Arc<PolicyCell>,
    verifier: Arc<TokenVerifier>,
    /// The policy's refresh thread and the keys' thread, shared with every gate of the same
    /// configuration, stopped when the last of them goes (`None` for a gate over a fixed
    /// policy).
    loaded: Option<Arc<Loaded>>,
}

/// A policy and the thread that keeps it current; the issuers' keys and theirs (`auth.oidc`).
#[derive(Debug)]
struct Loaded {
    cell: Arc<PolicyCell>,
    _refresher: Refresher,
    keys: Option<Keys>,
}

/// Filter configurations with the same text (and environment) share one compiled policy, one
/// key set and their threads: one copy per Envoy process, however many listeners or
/// configuration updates use it.
static LOADED: Mutex<Vec<(String, Weak<Loaded>)>> = Mutex::new(Vec::new());

/// What to do with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Let it on, with these request headers set (replacing any value) and these removed.
    Continue {
        set: Vec<(&'static str, String)>,
        remove: Vec<String>,
    },
    /// Answer it here.
    Respond {
        status: u16,
        headers: Vec<(&'static str, String)>,
        body: String,
    },
}

/// An [`Action`] and the facts behind it (for the stream's dynamic metadata and counters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub action: Action,
    pub outcome: Outcome,
    pub status: Status,
    /// `(key, value)` pairs, as the gRPC Check's `dynamic_metadata` has them, when the policy
    /// decided.
    pub facts: Vec<(&'static str, String)>,
}

impl Gate {
    /// The gate for a filter configuration: the server's configuration file format (`auth:`,
    /// `identity:`, `policy:`; the server's listener sections are accepted and not used),
    /// `NMP_AUTH_*` overrides from `env`. The policy is loaded before this returns (a source
    /// that fails now is an error) and refreshed on a thread from then on.
    pub fn from_config(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
        log: Log,
    ) -> Result<Self, String> {
        let env: Vec<(String, String)> = env.into_iter().collect();
        let config = nmp_authz_core::config::parse(text, "the filter configuration", env.clone())
            .map_err(|e| e.to_string())?;
        let key = format!("{env:?}\n{text}");
        let mut shared = LOADED
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        shared.retain(|(_, loaded)| loaded.strong_count() > 0);
        let existing = shared
            .iter()
            .find(|(k, _)| *k == key)
            .and_then(|(_, loaded)| loaded.upgrade());
        let loaded = match existing {
            Some(loaded) => loaded,
            None => {
                let cell = Arc::new(PolicyCell::default());
                let refresher = Refresher::start(&config, cell.clone(), log)?;
                let keys = if config.auth.oidc.enabled {
                    Some(Keys::start(&config, log)?)
                } else {
                    None
                };
                let loaded = Arc::new(Loaded {
                    cell,
                    _refresher: refresher,
                    keys,
                });
                shared.push((key, Arc::downgrade(&loaded)));
                loaded
            }
        };
        drop(shared);
        let mut gate = Self::new(&config, loaded.cell.clone());
        if let Some(keys) = &loaded.keys {
            gate.verifier = keys.verifier().clone();
        }
        gate.loaded = Some(loaded);
        Ok(gate)
    }

    /// A gate over `cell`, a policy its owner keeps current, trusting no issuer of signed
    /// tokens.
    pub fn new(config: &Config, cell: Arc<PolicyCell>) -> Self {
        Self::with_verifier(config, cell, Arc::new(TokenVerifier::none()))
    }

    /// A gate over `cell` verifying signed tokens with `verifier`, whose keys its owner keeps
    /// current.
    pub fn with_verifier(
        config: &Config,
        cell: Arc<PolicyCell>,
        verifier: Arc<TokenVerifier>,
    ) -> Self {
        Self {
            auth_enabled: config.auth.enabled,
            identity: config.identity_settings(),
            cell,
            verifier,
            loaded: None,
        }
    }

    /// The policy this gate decides with.
    pub fn policy(&self) -> &PolicyCell {
        &self.cell
    }

    /// Decides a request from its headers (`:method` and `:path` among them) at `now_unix`.
    pub fn decide(&self, headers: &[(&[u8], &[u8])], now_unix: u64) -> Answer {
        // Header names are ASCII tokens; a value that is not UTF-8 is read with replacement
        // characters, which no credential, method or path rule accepts.
        let headers: Vec<(Cow<'_, str>, Cow<'_, str>)> =
            headers.iter().map(|(k, v)| (text(k), text(v))).collect();
        let pseudo = |name: &str| {
            let mut values = headers.iter().filter(|(k, _)| k == name);
            match (values.next(), values.next()) {
                (Some((_, v)), None) => v.as_ref(),
                _ => "",
            }
        };
        let (method, path) = (pseudo(":method"), pseudo(":path"));
        let credentials =
            Credentials::from_headers(headers.iter().map(|(k, v)| (k.as_ref(), v.as_ref())));
        let inbound = || headers.iter().map(|(k, _)| k.as_ref());

        let admitted = verdict::admit(
            method,
            path,
            self.auth_enabled,
            self.cell.stale.load(Ordering::Relaxed),
        );
        let path = match admitted {
            Admission::Decide(path) => path,
            Admission::Answered(verdict) => return render(&verdict, inbound()),
            Admission::AuthDisabled => {
                // Allowed; a caller who can be named is still named.
                let mut verdict = Verdict::early(Early::AuthDisabled, "");
                verdict.principal = credentials.ok().and_then(|credentials| {
                    let found = self.identify(&credentials, now_unix);
                    found.ok().flatten().map(|i| i.principal)
                });
                return render(&verdict, inbound());
            }
        };
        let identity = credentials.and_then(|credentials| self.identify(&credentials, now_unix));
        // A guard, not a clone of the Arc: workers bumping one reference count on every
        // request would pass its cache line back and forth.
        let policy = self.cell.policy.load();
        let verdict = verdict::conclude(policy.as_deref(), identity, method, path);
        render(&verdict, inbound())
    }

    fn identify(
        &self,
        credentials: &Credentials<'_>,
        now_unix: u64,
    ) -> Result<Option<Identity>, IdentityError> {
        // Envoy's jwt_authn payload cannot be read by a 1.40 module (nested metadata): claims
        // come as the headers jwt_authn's claim_to_headers sets, or a bearer token verified
        // here (signed, with auth.oidc) or unsigned (auth.allow_unsigned_jwt).
        let verified = Verified::<Map<String, Json>>::Nothing;
        let found = identity::identify(
            &self.identity,
            &*self.verifier,
            credentials,
            verified,
            now_unix,
        );
        if let Err(IdentityError::UnknownSigningKey { issuer }) = &found
            && let Some(keys) = self.loaded.as_ref().and_then(|l| l.keys.as_ref())
        {
            // Refused now (hooks never wait on I/O); the keys' thread refetches.
            keys.unknown_key(issuer);
        }
        found
    }
}

/// `bytes` as text, replacement characters for what is not UTF-8. `str::from_utf8` first: it
/// checks ASCII a word at a time, where the lossy conversion goes byte by byte (the bearer
/// token alone is ~1 KB: the module's costliest line in a profile under load).
pub(crate) fn text(bytes: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(text) => Cow::Borrowed(text),
        Err(_) => String::from_utf8_lossy(bytes),
    }
}

/// The verdict as the module acts on it.
fn render<'h>(verdict: &Verdict<'_>, inbound: impl Iterator<Item = &'h str>) -> Answer {
    let action = if verdict.allowed() {
        let set = allow_headers(verdict.principal.as_deref());
        let remove = headers_to_remove(inbound, &set);
        Action::Continue {
            set: set.into_iter().map(|(k, v)| (k, v.into_owned())).collect(),
            remove,
        }
    } else {
        Action::Respond {
            status: verdict.status.http(),
            headers: denial_headers(verdict),
            body: detail_body(&verdict.detail),
        }
    };
    Answer {
        action,
        outcome: verdict.outcome,
        status: verdict.status,
        facts: facts(verdict),
    }
}

/// The decision facts, under the keys the gRPC Check's dynamic metadata uses.
fn facts(verdict: &Verdict<'_>) -> Vec<(&'static str, String)> {
    let (Some(decision), Some(policy)) = (verdict.decision.as_ref(), verdict.policy) else {
        return Vec::new();
    };
    let mut facts = vec![
        ("reason", decision.reason.as_str().to_owned()),
        ("policy_revision", policy.revision().to_owned()),
    ];
    if let Some(id) = verdict.principal.as_ref().and_then(|p| p.id.as_deref()) {
        facts.push(("principal_id", id.to_owned()));
    }
    if let Some(workspace) = decision.workspace.as_deref() {
        facts.push(("workspace", workspace.to_owned()));
    }
    if let Some(endpoint) = decision.endpoint {
        facts.push(("endpoint", endpoint.to_owned()));
    }
    facts
}

#[cfg(test)]
mod tests {
    use nmp_authz_core::identity::unsigned_token;
    use nmp_authz_core::policy::{BindingDefaults, CompiledPolicy, Format, SourceDocument};
    use serde_json::json;

    use super::*;

    const POLICY: &str = "authz:
  roles:
    Viewer: {permissions: [models.read]}
  endpoints:
    /apis/models/v2/workspaces/{workspace}/models:
      get: {permissions: [models.read]}
  principals:
    alice: {workspaces: {ws1: [Viewer]}}
";
    const NOW: u64 = 1_800_000_000;

    fn gate(config: &str, policy: Option<&str>) -> Gate {
        let config = nmp_authz_core::config::parse(config, "test", []).unwrap();
        let cell = Arc::new(PolicyCell::default());
        if let Some(policy) = policy {
            let document = SourceDocument::parse(policy, Format::Yaml).unwrap();
            let defaults = BindingDefaults {
                bootstrap_bindings: false,
                ..BindingDefaults::default()
            };
            let compiled = CompiledPolicy::build_layers(&[&document], &defaults, "rev").unwrap();
            cell.policy.store(Some(Arc::new(compiled)));
        }
        Gate::new(&config, cell)
    }

    fn quickstart() -> Gate {
        gate("auth: {allow_unsigned_jwt: true}\n", Some(POLICY))
    }

    fn token(sub: &str) -> String {
        let claims = json!({"sub": sub, "iat": NOW, "exp": NOW + 600, "scope": "openid"});
        format!("Bearer {}", unsigned_token(claims.as_object().unwrap()))
    }

    fn decide(gate: &Gate, method: &str, path: &str, extra: &[(&str, &str)]) -> Answer {
        let mut headers: Vec<(&[u8], &[u8])> = vec![
            (":method".as_bytes(), method.as_bytes()),
            (":path".as_bytes(), path.as_bytes()),
            (":authority".as_bytes(), "gateway".as_bytes()),
        ];
        headers.extend(extra.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes())));
        gate.decide(&headers, NOW)
    }

    fn respond(answer: &Answer) -> (u16, Vec<(&'static str, String)>, serde_json::Value) {
        match &answer.action {
            Action::Respond {
                status,
                headers,
                body,
            } => (
                *status,
                headers.clone(),
                serde_json::from_str(body).unwrap(),
            ),
            other => panic!("not a response: {other:?}"),
        }
    }

    #[test]
    fn an_allow_sets_the_principal_and_removes_the_clients_other_headers() {
        let alice = token("alice");
        let answer = decide(
            &quickstart(),
            "GET",
            "/apis/models/v2/workspaces/ws1/models?page=2",
            &[
                ("authorization", &alice),
                ("x-nmp-authorized", "forged"),
                ("x-nmp-other", "1"),
            ],
        );
        assert_eq!(
            answer.action,
            Action::Continue {
                set: vec![
                    ("x-nmp-authorized", "true".into()),
                    ("x-nmp-principal-id", "alice".into()),
                    ("x-nmp-scopes", "openid".into()),
                ],
                remove: vec!["x-nmp-other".into()],
            }
        );
        assert!(
            answer.facts.contains(&("workspace", "ws1".into())),
            "{answer:?}"
        );
        assert!(
            answer
                .facts
                .contains(&("reason", "workspace_permission".into()))
        );
    }

    #[test]
    fn denials_carry_status_json_and_challenge() {
        let gate = quickstart();
        let (status, headers, body) = respond(&decide(
            &gate,
            "GET",
            "/apis/models/v2/workspaces/ws1/models",
            &[],
        ));
        assert_eq!(status, 401);
        assert_eq!(body, json!({"detail": "Not authenticated"}));
        assert!(headers.contains(&("www-authenticate", "Bearer realm=\"nmp\"".into())));
        assert!(headers.contains(&("content-type", "application/json".into())));

        let bob = token("bob");
        let path = "/apis/models/v2/workspaces/ws1/models";
        let (status, headers, _) = respond(&decide(&gate, "GET", path, &[("authorization", &bob)]));
        assert_eq!(status, 403);
        assert!(headers.iter().all(|(k, _)| *k != "www-authenticate"));

        let (status, ..) = respond(&decide(&gate, "GET", "/apis/x/../y", &[]));
        assert_eq!(status, 400, "the request-path rule");
        let (status, ..) = respond(&decide(&gate, "get", path, &[]));
        assert_eq!(status, 400, "methods are case-sensitive");
        let twice = [
            ("authorization", bob.as_str()),
            ("Authorization", bob.as_str()),
        ];
        let (status, ..) = respond(&decide(&gate, "GET", path, &twice));
        assert_eq!(status, 401, "a credential header given twice");
    }

    #[test]
    fn no_policy_stale_policy_and_a_missing_path_fail_closed() {
        let alice = token("alice");
        let path = "/apis/models/v2/workspaces/ws1/models";
        let none = gate("auth: {allow_unsigned_jwt: true}\n", None);
        let (status, _, body) = respond(&decide(&none, "GET", path, &[("authorization", &alice)]));
        assert_eq!(
            (status, body),
            (
                503,
                json!({"detail": "Authorization policy data is not available"})
            )
        );
        let stale = quickstart();
        stale.policy().stale.store(true, Ordering::Relaxed);
        let (status, ..) = respond(&decide(&stale, "GET", path, &[("authorization", &alice)]));
        assert_eq!(status, 503);
        let no_path: [(&[u8], &[u8]); 1] = [(b":method", b"GET")];
        let (status, ..) = respond(&quickstart().decide(&no_path, NOW));
        assert_eq!(status, 400, "no :path");
        let twice: [(&[u8], &[u8]); 3] =
            [(b":method", b"GET"), (b":path", b"/a"), (b":path", b"/b")];
        let (status, ..) = respond(&quickstart().decide(&twice, NOW));
        assert_eq!(status, 400, ":path twice");
    }

    #[test]
    fn bytes_that_are_not_utf8_identify_nobody() {
        let strict = quickstart();
        let path = "/apis/models/v2/workspaces/ws1/models";
        let headers: [(&[u8], &[u8]); 3] = [
            (b":method", b"GET"),
            (b":path", path.as_bytes()),
            (b"x-nmp-principal-id", b"ali\xffce"),
        ];
        let (status, ..) = respond(&strict.decide(&headers, NOW));
        assert_eq!(status, 401, "untrusted headers are no identity");
        let trusting = gate("identity: {trust_principal_headers: true}\n", Some(POLICY));
        let (status, ..) = respond(&trusting.decide(&headers, NOW));
        assert_eq!(
            status, 400,
            "a principal header that is not printable ASCII"
        );
        let headers: [(&[u8], &[u8]); 2] = [(b":method", b"GET"), (b":path", b"/apis/\xff")];
        let (status, ..) = respond(&strict.decide(&headers, NOW));
        assert_eq!(
            status, 401,
            "a path read with replacement characters: decided, for nobody"
        );
    }

    #[test]
    fn trusted_principal_headers_identify_when_configured() {
        let trusting = gate(
            "identity: {trust_principal_headers: true, verify_bearer: false}\n",
            Some(POLICY),
        );
        let path = "/apis/models/v2/workspaces/ws1/models";
        let answer = decide(&trusting, "GET", path, &[("x-nmp-principal-id", "alice")]);
        assert!(
            matches!(answer.action, Action::Continue { .. }),
            "{answer:?}"
        );
        let signed = "Bearer eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2ln";
        let strict = quickstart();
        let (status, headers, _) =
            respond(&decide(&strict, "GET", path, &[("authorization", signed)]));
        assert_eq!(status, 401, "no issuer is trusted without auth.oidc");
        assert!(
            headers
                .iter()
                .any(|(k, v)| *k == "www-authenticate" && v.contains("invalid_token"))
        );
    }

    #[test]
    fn signed_tokens_are_verified_with_the_issuers_keys() {
        use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
        use nmp_authz_tokens::IssuerKeys;
        use nmp_authz_tokens::fetching::keys_from_jwks;

        const ISSUER: &str = "https://idp.example.com/realms/nmp";
        let fixture = |name: &str| {
            std::fs::read(format!(
                "{}/../../tests/fixtures/keys/{name}",
                env!("CARGO_MANIFEST_DIR")
            ))
            .unwrap()
        };
        let issuer = Arc::new(IssuerKeys::new(ISSUER, None));
        issuer.replace(keys_from_jwks(&fixture("jwks.json")).unwrap());
        let verifier = Arc::new(TokenVerifier::new(vec![issuer], None));
        let config = format!("auth: {{oidc: {{enabled: true, issuer: \"{ISSUER}\"}}}}\n");
        let mut signed = gate(&config, Some(POLICY));
        signed.verifier = verifier;
        let key = EncodingKey::from_rsa_pem(&fixture("rsa.pem")).unwrap();
        nmp_authz_tokens::crypto::install_jwt_provider();
        let token = |kid: &str| {
            let mut header = Header::new(Algorithm::RS256);
            header.kid = Some(kid.into());
            let claims = json!({"iss": ISSUER, "sub": "alice", "iat": NOW, "exp": NOW + 600,
                                "groups": ["team-a"]});
            format!("Bearer {}", encode(&header, &claims, &key).unwrap())
        };
        let path = "/apis/models/v2/workspaces/ws1/models";
        let answer = decide(&signed, "GET", path, &[("authorization", &token("rsa-1"))]);
        let Action::Continue { set, .. } = &answer.action else {
            panic!("{answer:?}");
        };
        assert!(
            set.contains(&("x-nmp-principal-id", "alice".into())),
            "{set:?}"
        );
        assert!(
            set.contains(&("x-nmp-principal-groups", "team-a".into())),
            "{set:?}"
        );
        // A kid the issuer does not publish: refused now (no keys thread here to wake).
        let (status, _, body) = respond(&decide(
            &signed,
            "GET",
            path,
            &[("authorization", &token("rsa-9"))],
        ));
        assert_eq!(
            (status, body),
            (
                401,
                json!({"detail": "Token signing key is not known for its issuer"})
            )
        );
    }

    #[test]
    fn configurations_with_the_same_text_share_one_policy() {
        fn quiet(_: crate::policy::Severity, _: &str) {}
        let text = "auth: {allow_unsigned_jwt: true}\n";
        let a = Gate::from_config(text, [], quiet).unwrap();
        let b = Gate::from_config(text, [], quiet).unwrap();
        assert!(
            Arc::ptr_eq(&a.cell, &b.cell),
            "one copy for one configuration"
        );
        let other = Gate::from_config("auth: {allow_unsigned_jwt: false}\n", [], quiet).unwrap();
        assert!(!Arc::ptr_eq(&a.cell, &other.cell));
        let cell = Arc::downgrade(&a.cell);
        drop((a, b));
        assert!(
            cell.upgrade().is_none(),
            "released with the last configuration"
        );
    }
}
