//! Configuration: the YAML file of DESIGN.md section 1, `NMP_AUTH_*` environment overrides, and
//! validation. Every error names the key path (or the environment variable) it is about, on one
//! line, so an operator can fix it without reading code.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

pub use crate::identity::MAX_LEEWAY_SECONDS;

/// Prefix of the environment overrides; the rest of the name is a key path under `auth`.
pub const ENV_PREFIX: &str = "NMP_AUTH_";

/// The server's other variables (logging). With [`ENV_PREFIX`] they are the names it reads.
pub const SERVER_ENV_VARS: &[&str] = &["NMP_AUTHZ_LOG_FORMAT", "NMP_AUTHZ_DECISION_LOG_SAMPLE"];

/// Read by the project's scripts and tests (`scripts/demo.sh`, the soak), whose environment
/// reaches the server they start: known, so not warned about, but never suggested.
const SCRIPT_ENV_VARS: &[&str] = &[
    "NMP_AUTHZ_BIN",
    "NMP_AUTHZ_SOAK_SECONDS",
    "NMP_AUTHZ_SOAK_RATE",
];

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub auth: AuthConfig,
    pub server: ServerConfig,
    pub identity: IdentityConfig,
    pub policy: PolicyConfig,
    pub http_authz: HttpAuthzConfig,
    pub pdp: PdpConfig,
    pub traces: TracesConfig,
}

/// `traces`: a span per authorization request, exported over OTLP (README "Traces").
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TracesConfig {
    pub enabled: bool,
    /// The OTLP receiver: `http://host:4317` for gRPC; the full URL for HTTP
    /// (`http://host:4318/v1/traces`).
    pub endpoint: String,
    pub protocol: OtlpProtocol,
    /// The fraction of requests without a trace context that start a sampled trace; a
    /// request's own sampled flag is always followed.
    pub sample_ratio: f64,
    pub service_name: String,
    /// Put the principal id in the span (`nmp_authz.principal.id`); off: only its kind.
    pub record_principal: bool,
}

impl Default for TracesConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            endpoint: "http://127.0.0.1:4317".into(),
            protocol: OtlpProtocol::Grpc,
            sample_ratio: 1.0,
            service_name: "nmp-authz".into(),
            record_principal: false,
        }
    }
}

/// How spans are sent: OTLP over gRPC, or OTLP/HTTP with protobuf bodies.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
pub enum OtlpProtocol {
    #[serde(rename = "grpc")]
    Grpc,
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
}

impl OtlpProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            OtlpProtocol::Grpc => "grpc",
            OtlpProtocol::HttpProtobuf => "http/protobuf",
        }
    }
}

/// NMP's own `auth:` keys, with NMP's names and meanings.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Defaults to `true` although NMP's default is `false`: an authorization server that
    /// allows everything because a key was forgotten fails open. Turning auth off must be
    /// written down (`enabled: false` or `NMP_AUTH_ENABLED=false`).
    pub enabled: bool,
    /// Gets PlatformAdmin in workspace `system` (case-sensitive match).
    pub admin_email: Option<String>,
    /// Accept `alg: none` tokens. Quickstart only.
    pub allow_unsigned_jwt: bool,
    pub default_workspace: String,
    /// `default:*`->Editor, `system:*`->Viewer, `system:*`->WorkspaceCreator.
    pub bootstrap_bindings: bool,
    /// Seconds between policy source polls; at least 1.
    pub policy_data_refresh_interval: u64,
    pub oidc: OidcConfig,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            admin_email: None,
            allow_unsigned_jwt: false,
            default_workspace: "default".into(),
            bootstrap_bindings: true,
            policy_data_refresh_interval: 30,
            oidc: OidcConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OidcConfig {
    pub enabled: bool,
    pub issuer: Option<String>,
    pub additional_issuers: Vec<String>,
    /// Unset: audience not checked (NMP behaviour).
    pub audience: Option<String>,
    /// Unset: taken from `{issuer}/.well-known/openid-configuration`.
    pub jwks_uri: Option<String>,
    pub client_id: String,
    pub subject_claim: String,
    pub email_claim: String,
    pub groups_claim: String,
    /// Stripped from each scope, e.g. `api://client-id/`.
    pub scope_prefix: Option<String>,
    /// Seconds.
    pub discovery_cache_ttl: u64,
    /// Clock skew allowed on `exp`/`nbf`/`iat`, seconds; at most [`MAX_LEEWAY_SECONDS`].
    pub leeway_seconds: u64,
}

impl Default for OidcConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            issuer: None,
            additional_issuers: Vec::new(),
            audience: None,
            jwks_uri: None,
            client_id: String::new(),
            subject_claim: "sub".into(),
            email_claim: "email".into(),
            groups_claim: "groups".into(),
            scope_prefix: None,
            discovery_cache_ttl: 300,
            leeway_seconds: 60,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    /// After SIGTERM, how long in-flight requests and open connections are given to finish
    /// before the server closes them and exits: a client that never answers the HTTP/2
    /// shutdown handshake must not hold the process until it is killed.
    pub shutdown_grace_seconds: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 9191)),
            http_addr: SocketAddr::from(([127, 0, 0, 1], 8000)),
            shutdown_grace_seconds: 10,
        }
    }
}

/// The PDP listener: NMP's PDP API for NMP's own services (README "PDP API"), which identify
/// only with an `X-NMP-Principal-Id: service:<name>` header. That header is believed here and
/// nowhere else, so this listener must be reachable by platform services only: a Unix socket
/// (file permissions) and/or a TCP address that a network policy guards. Off unless given.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PdpConfig {
    pub addr: Option<SocketAddr>,
    pub unix_socket: Option<PathBuf>,
    /// Permissions of the socket file, octal in quotes (`"0660"`: owner and group).
    pub unix_socket_mode: String,
}

impl Default for PdpConfig {
    fn default() -> Self {
        Self {
            addr: None,
            unix_socket: None,
            unix_socket_mode: "0660".into(),
        }
    }
}

impl PdpConfig {
    /// The socket file's mode bits (validated by [`Config::validate`]).
    pub fn socket_mode(&self) -> Option<u32> {
        u32::from_str_radix(&self.unix_socket_mode, 8)
            .ok()
            .filter(|mode| *mode <= 0o777)
    }
}

/// Where the principal comes from, tried in this order.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct IdentityConfig {
    /// Key under `filter_metadata["envoy.filters.http.jwt_authn"]`.
    pub jwt_authn_metadata_key: String,
    /// Verify an `Authorization: Bearer` token when there is no jwt_authn metadata.
    pub verify_bearer: bool,
    /// Accept `x-nmp-principal-*` request headers as set by the gateway.
    pub trust_principal_headers: bool,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        Self {
            jwt_authn_metadata_key: "jwt_payload".into(),
            verify_bearer: true,
            trust_principal_headers: false,
        }
    }
}

/// The HTTP authorization endpoint (README "HTTP authorization mode"): Envoy's HTTP ext_authz
/// service, nginx `auth_request`, Traefik `forwardAuth`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpAuthzConfig {
    /// On by default: it answers decisions only, as the gRPC Check always does, and trusts
    /// no forwarded header unless told to.
    pub enabled: bool,
    /// Requests under this path on the HTTP port are authorization requests.
    pub path_prefix: String,
    /// The ways a request may describe the original request: `envoy` (method and path of the
    /// request line after the prefix), `nginx` (`X-Original-Method`, `X-Original-URI`),
    /// `traefik` (`X-Forwarded-Method`, `X-Forwarded-Uri`, `X-Forwarded-Host`).
    pub trusted_forwarded_headers: Vec<ForwardedForm>,
}

impl Default for HttpAuthzConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            path_prefix: "/apis/auth/ext-authz".into(),
            trusted_forwarded_headers: vec![ForwardedForm::Envoy],
        }
    }
}

/// How a gateway describes the request it asks about (see [`HttpAuthzConfig`]).
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum ForwardedForm {
    Envoy,
    Nginx,
    Traefik,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// Merged in order. Given sources are all there is: the built-in catalog joins only as
    /// `builtin: true`, which is also the default when no sources are given.
    pub sources: Vec<SourceConfig>,
    /// Local sources (`builtin`, `file`) that stand in while a source above has never loaded:
    /// the PDP answers questions about `service:` principals from them (README "PDP API"), so
    /// that NMP's services, using nmp-authz as their PDP, can build the very bundle it waits
    /// for. Never part of the policy once every source has loaded; Checks stay 503 until then.
    pub bootstrap: Vec<SourceConfig>,
    /// After this long without a good load, deny with 503 (fail closed).
    pub max_staleness_seconds: u64,
    /// A candidate policy evaluated beside the enforced one on every Check, without affecting
    /// any answer (a dry run): where they disagree is counted and logged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shadow: Option<ShadowConfig>,
}

/// `policy.shadow`: the dry-run policy's sources, of the same kinds as `policy.sources`,
/// merged in order, loaded and reloaded as they are.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ShadowConfig {
    pub sources: Vec<SourceConfig>,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            sources: vec![SourceConfig::Builtin { builtin: true }],
            bootstrap: Vec::new(),
            max_staleness_seconds: 300,
            shadow: None,
        }
    }
}

/// One policy data source: `{file: PATH}`, `{bundle_url: URL}` (with an optional credential)
/// or `{builtin: true}`.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(untagged)]
pub enum SourceConfig {
    File {
        file: PathBuf,
    },
    /// NMP's auth service answers its bundle only to a caller with `iam.bundle.read` in
    /// `system` or a `service:` caller, so a bundle request may identify itself, with one of:
    BundleUrl {
        bundle_url: String,
        /// Sent as `X-NMP-Principal-Id`, the way NMP's own services call each other inside
        /// the platform's network (NMP trusts that header from anyone who reaches its port).
        #[serde(skip_serializing_if = "Option::is_none")]
        principal_id: Option<String>,
        /// A file holding a bearer token, read on every request (a rotated token is used as
        /// soon as it is written) and sent as `Authorization: Bearer`.
        #[serde(skip_serializing_if = "Option::is_none")]
        bearer_token_file: Option<PathBuf>,
    },
    Builtin {
        builtin: bool,
    },
}

// Hand-written because serde's untagged error ("data did not match any variant") does not say
// what the accepted forms are.
impl<'de> Deserialize<'de> for SourceConfig {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        let expected = || {
            D::Error::custom(format!(
                "expected one of `file: PATH`, `bundle_url: URL` (with `principal_id: ID` or \
                `bearer_token_file: PATH`) or `builtin: true`, got {value}"
            ))
        };
        let map = value.as_object().ok_or_else(expected)?;
        if let Some(url) = map.get("bundle_url") {
            let url = url.as_str().ok_or_else(expected)?;
            let text = |key: &str| match map.get(key) {
                None => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(D::Error::custom(format!("{key} must be a string"))),
            };
            if let Some(unknown) = map.keys().find(|k| {
                !["bundle_url", "principal_id", "bearer_token_file"].contains(&k.as_str())
            }) {
                return Err(D::Error::custom(format!(
                    "unknown key {unknown:?} in a bundle_url source (known: principal_id, \
                    bearer_token_file)"
                )));
            }
            let principal_id = text("principal_id")?;
            let bearer_token_file = text("bearer_token_file")?.map(PathBuf::from);
            if principal_id.is_some() && bearer_token_file.is_some() {
                return Err(D::Error::custom(
                    "give principal_id or bearer_token_file, not both",
                ));
            }
            return Ok(Self::BundleUrl {
                bundle_url: url.to_string(),
                principal_id,
                bearer_token_file,
            });
        }
        let single = (map.len() == 1).then(|| map.iter().next()).flatten();
        match single {
            Some((k, Value::String(s))) if k == "file" => Ok(Self::File { file: s.into() }),
            Some((k, Value::Bool(b))) if k == "builtin" => Ok(Self::Builtin { builtin: *b }),
            _ => Err(expected()),
        }
    }
}

/// A configuration error. `Display` is one line naming the file, key path or variable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config error: cannot read {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("config error in {source_name}: invalid YAML: {reason}")]
    Syntax { source_name: String, reason: String },
    #[error("config error in {var}: {reason}")]
    Env { var: String, reason: String },
    /// `key` is a dotted path such as `auth.oidc.issuer` or `policy.sources[1]`.
    #[error("config error at {key}: {reason}")]
    Key { key: String, reason: String },
}

impl ConfigError {
    fn key(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Key {
            key: key.into(),
            reason: reason.into(),
        }
    }

    fn env(var: &str, reason: impl Into<String>) -> Self {
        Self::Env {
            var: var.into(),
            reason: reason.into(),
        }
    }
}

/// The `NMP_AUTH_*` overrides among `vars` (a process environment, as `std::env::vars_os`
/// gives it), for [`parse`]. A non-UTF-8 `NMP_AUTH_*` value is an error.
pub fn env_overrides(
    vars: impl IntoIterator<Item = (OsString, OsString)>,
) -> Result<Vec<(String, String)>, ConfigError> {
    let mut env = Vec::new();
    for (key, value) in vars {
        let Some(key) = key.to_str().filter(|k| k.starts_with(ENV_PREFIX)) else {
            continue;
        };
        let value = value
            .into_string()
            .map_err(|_| ConfigError::env(key, "value is not valid UTF-8"))?;
        env.push((key.to_owned(), value));
    }
    Ok(env)
}

/// Parse YAML text (`source_name` is used in syntax errors), apply overrides, validate.
pub fn parse(
    yaml: &str,
    source_name: &str,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Config, ConfigError> {
    let mut tree: Value = crate::yaml::to_value(yaml).map_err(|reason| ConfigError::Syntax {
        source_name: source_name.into(),
        reason,
    })?;
    let defaults = serde_json::to_value(Config::default()).expect("defaults serialize");
    check_sections(&mut tree, &defaults, "")?;
    apply_env(&mut tree, &defaults, env)?;
    let config: Config = serde_path_to_error::deserialize(tree).map_err(|e| {
        let key = match e.path().to_string() {
            p if p == "." => "(top level)".to_owned(),
            p => p,
        };
        ConfigError::key(key, one_line(&e.into_inner().to_string()))
    })?;
    config.validate()?;
    Ok(config)
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Make every section (a key whose default is a mapping) a mapping: an empty or null section
/// (`auth:` with everything under it commented out) means defaults, and anything else is an
/// error here, because serde would otherwise fill a struct from a list by position.
fn check_sections(node: &mut Value, shape: &Value, key: &str) -> Result<(), ConfigError> {
    let Value::Object(shape) = shape else {
        return Ok(());
    };
    if node.is_null() {
        *node = Value::Object(Default::default());
    }
    let Value::Object(map) = node else {
        let key = if key.is_empty() { "(top level)" } else { key };
        return Err(ConfigError::key(
            key,
            format!("expected a mapping, got {}", kind(node)),
        ));
    };
    for (name, child) in map.iter_mut() {
        if let Some(child_shape) = shape.get(name) {
            let child_key = if key.is_empty() {
                name.clone()
            } else {
                format!("{key}.{name}")
            };
            check_sections(child, child_shape, &child_key)?;
        }
    }
    Ok(())
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

/// Apply `NMP_AUTH_*` overrides to the raw tree, under `auth`. The value's type is taken from
/// the default configuration at the same path, so `NMP_AUTH_ADMIN_EMAIL=123` stays a string.
fn apply_env(
    tree: &mut Value,
    defaults: &Value,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    let mut vars: Vec<_> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with(ENV_PREFIX))
        .collect();
    vars.sort(); // deterministic: the first bad variable by name is the one reported
    for (var, raw) in vars {
        let mut path = vec!["auth".to_owned()];
        path.extend(var[ENV_PREFIX.len()..].split("__").map(str::to_lowercase));
        let dotted = path.join(".");
        let unknown = || {
            let hint = suggestion(&var)
                .map_or_else(String::new, |known| format!(" (did you mean {known}?)"));
            ConfigError::env(&var, format!("unknown configuration key {dotted}{hint}"))
        };
        let shape = path
            .iter()
            .try_fold(defaults, |v, seg| v.as_object()?.get(seg))
            .ok_or_else(unknown)?;
        if shape.is_object() {
            let reason = format!("{dotted} is a section; set its keys as {var}__<KEY>");
            return Err(ConfigError::env(&var, reason));
        }
        let value =
            typed_env_value(shape, &raw).map_err(|reason| ConfigError::env(&var, reason))?;
        set_path(tree, &path, value);
    }
    Ok(())
}

/// A warning for each variable whose name starts with `NMP_AUTH` but that nmp-authz does not
/// read: neither an `NMP_AUTH_*` override (those [`load`] validates: one naming no key is an
/// error) nor a known variable. `NMP_AUTHZ_*` sits beside `NMP_AUTH_*`, so a typo such as
/// `NMP_AUTHZ_ENABLED` would otherwise be silently ignored.
pub fn unknown_env_warnings<'a>(names: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut unknown: Vec<&str> = names
        .into_iter()
        .filter(|name| {
            name.starts_with("NMP_AUTH")
                && !name.starts_with(ENV_PREFIX)
                && !SERVER_ENV_VARS.contains(name)
                && !SCRIPT_ENV_VARS.contains(name)
        })
        .collect();
    unknown.sort_unstable();
    unknown.dedup();
    unknown
        .into_iter()
        .map(|name| match suggestion(name) {
            Some(known) => format!("unknown variable {name} (did you mean {known}?)"),
            None => format!(
                "unknown variable {name}: nmp-authz reads {ENV_PREFIX}<KEY> overrides, {}",
                SERVER_ENV_VARS.join(", ")
            ),
        })
        .collect()
}

/// The variable nmp-authz reads whose name is nearest `name`, when it is near enough (at most
/// three edits) to be what was meant.
fn suggestion(name: &str) -> Option<String> {
    let defaults = serde_json::to_value(Config::default()).expect("defaults serialize");
    let mut known: Vec<String> = SERVER_ENV_VARS.iter().map(|v| v.to_string()).collect();
    override_names(&defaults["auth"], ENV_PREFIX, &mut known);
    known
        .into_iter()
        .map(|candidate| (strsim::levenshtein(name, &candidate), candidate))
        .filter(|(distance, _)| (1..=3).contains(distance))
        .min()
        .map(|(_, candidate)| candidate)
}

/// The `NMP_AUTH_*` name of every key under `shape` (a section of the defaults).
fn override_names(shape: &Value, prefix: &str, out: &mut Vec<String>) {
    let Value::Object(map) = shape else {
        return;
    };
    for (key, child) in map {
        let name = format!("{prefix}{}", key.to_uppercase());
        if child.is_object() {
            override_names(child, &format!("{name}__"), out);
        } else {
            out.push(name);
        }
    }
}

/// Convert an environment value to the JSON type of `shape` (the default at that key).
fn typed_env_value(shape: &Value, raw: &str) -> Result<Value, String> {
    let trimmed = raw.trim();
    match shape {
        Value::Bool(_) => match trimmed.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Ok(Value::Bool(true)),
            "false" | "0" | "no" | "off" => Ok(Value::Bool(false)),
            _ => Err(format!("expected true or false, got {raw:?}")),
        },
        Value::Number(_) => trimmed
            .parse::<u64>()
            .map(Value::from)
            .map_err(|_| format!("expected a non-negative integer, got {raw:?}")),
        Value::Array(_) if trimmed.starts_with('[') => {
            crate::yaml::to_value::<Vec<String>>(trimmed)
                .map(Value::from)
                .map_err(|e| format!("invalid list {raw:?}: {e}"))
        }
        Value::Array(_) => Ok(Value::from(
            trimmed
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>(),
        )),
        // Null in the defaults is an optional string.
        Value::Null if trimmed.is_empty() || trimmed == "null" => Ok(Value::Null),
        Value::Null | Value::String(_) => Ok(Value::String(raw.to_owned())),
        Value::Object(_) => unreachable!("sections are rejected by the caller"),
    }
}

/// Set `tree[path...] = value`, creating missing sections ([`check_sections`] has made every
/// present one a mapping).
fn set_path(tree: &mut Value, path: &[String], value: Value) {
    let (last, parents) = path.split_last().expect("path is never empty");
    let mut node = tree;
    for seg in parents {
        let Some(map) = node.as_object_mut() else {
            return;
        };
        node = map
            .entry(seg.clone())
            .or_insert_with(|| Value::Object(Default::default()));
    }
    if let Some(map) = node.as_object_mut() {
        map.insert(last.clone(), value);
    }
}

fn check_url(key: &str, url: &str) -> Result<(), ConfigError> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"));
    match rest {
        Some(host) if !host.is_empty() => Ok(()),
        _ => Err(ConfigError::key(
            key,
            format!("must be an http:// or https:// URL, got {url:?}"),
        )),
    }
}

/// Paths the HTTP port answers itself; the authorization prefix must not shadow any of them.
const HTTP_ROUTES: &[&str] = &[
    "/health/live",
    "/health/ready",
    "/healthz",
    "/readyz",
    "/metrics",
    "/apis/auth/discovery",
    "/apis/auth/v2/authz/",
];

/// An absolute path of plain segments (no `.`/`..`, `//`, query, percent-encoding, trailing
/// `/`) that neither shadows nor sits under the HTTP port's own routes.
fn check_path_prefix(prefix: &str) -> Result<(), ConfigError> {
    const KEY: &str = "http_authz.path_prefix";
    let plain = prefix.len() > 1
        && prefix.starts_with('/')
        && !prefix.ends_with('/')
        && prefix[1..]
            .split('/')
            .all(|seg| !seg.is_empty() && seg != "." && seg != "..")
        && prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/-._~".contains(&b));
    if !plain {
        return Err(ConfigError::key(
            KEY,
            format!(
                "must be an absolute path of plain segments without a trailing `/`, such as \
                 /apis/auth/ext-authz (got {prefix:?})"
            ),
        ));
    }
    let clash = HTTP_ROUTES.iter().find(|route| {
        let route = route.trim_end_matches('/');
        route == prefix
            || route.starts_with(&format!("{prefix}/"))
            || prefix.starts_with(&format!("{route}/"))
    });
    if let Some(route) = clash {
        return Err(ConfigError::key(
            KEY,
            format!("{prefix} overlaps the HTTP port's own {route}"),
        ));
    }
    Ok(())
}

impl Config {
    /// Where the principal comes from, as the identity rules take it (`identity:` and the
    /// `auth.oidc` claim keys).
    pub fn identity_settings(&self) -> crate::identity::IdentitySettings {
        let oidc = &self.auth.oidc;
        crate::identity::IdentitySettings {
            jwt_authn_metadata_key: self.identity.jwt_authn_metadata_key.clone(),
            verify_bearer: self.identity.verify_bearer,
            trust_principal_headers: self.identity.trust_principal_headers,
            allow_unsigned_jwt: self.auth.allow_unsigned_jwt,
            subject_claim: oidc.subject_claim.clone(),
            email_claim: oidc.email_claim.clone(),
            groups_claim: oidc.groups_claim.clone(),
            scope_prefix: oidc.scope_prefix.clone(),
            leeway_seconds: oidc.leeway_seconds,
        }
    }

    /// The bindings every policy gets from `auth:` (bootstrap bindings, the admin email).
    pub fn binding_defaults(&self) -> crate::policy::BindingDefaults {
        crate::policy::BindingDefaults {
            bootstrap_bindings: self.auth.bootstrap_bindings,
            default_workspace: self.auth.default_workspace.clone(),
            admin_email: self.auth.admin_email.clone(),
        }
    }

    /// Checks that serde cannot express. Run by [`load`]; public for configs built in code.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let auth = &self.auth;
        let oidc = &auth.oidc;
        if oidc.leeway_seconds > MAX_LEEWAY_SECONDS {
            return Err(ConfigError::key(
                "auth.oidc.leeway_seconds",
                format!(
                    "must be at most {MAX_LEEWAY_SECONDS} (got {})",
                    oidc.leeway_seconds
                ),
            ));
        }
        if auth.policy_data_refresh_interval < 1 {
            return Err(ConfigError::key(
                "auth.policy_data_refresh_interval",
                "must be at least 1 (got 0)",
            ));
        }
        if self.policy.max_staleness_seconds < auth.policy_data_refresh_interval {
            return Err(ConfigError::key(
                "policy.max_staleness_seconds",
                format!(
                    "must be at least auth.policy_data_refresh_interval ({}) (got {})",
                    auth.policy_data_refresh_interval, self.policy.max_staleness_seconds
                ),
            ));
        }
        if oidc.enabled && oidc.issuer.is_none() {
            return Err(ConfigError::key(
                "auth.oidc.issuer",
                "required when auth.oidc.enabled is true",
            ));
        }
        if let Some(issuer) = &oidc.issuer {
            check_url("auth.oidc.issuer", issuer)?;
        }
        for (i, issuer) in oidc.additional_issuers.iter().enumerate() {
            check_url(&format!("auth.oidc.additional_issuers[{i}]"), issuer)?;
        }
        if let Some(jwks_uri) = &oidc.jwks_uri {
            check_url("auth.oidc.jwks_uri", jwks_uri)?;
        }
        check_path_prefix(&self.http_authz.path_prefix)?;
        let trusted = &self.http_authz.trusted_forwarded_headers;
        if trusted.is_empty() {
            return Err(ConfigError::key(
                "http_authz.trusted_forwarded_headers",
                "must list at least one of envoy, nginx, traefik (http_authz.enabled: false \
                 turns the endpoint off)",
            ));
        }
        for (i, form) in trusted.iter().enumerate() {
            if trusted[..i].contains(form) {
                return Err(ConfigError::key(
                    format!("http_authz.trusted_forwarded_headers[{i}]"),
                    "listed twice",
                ));
            }
        }
        for (i, source) in self.policy.bootstrap.iter().enumerate() {
            if let SourceConfig::BundleUrl { .. } = source {
                return Err(ConfigError::key(
                    format!("policy.bootstrap[{i}]"),
                    "must be local (`builtin: true` or `file: PATH`): it stands in while a bundle cannot be fetched",
                ));
            }
        }
        if self.pdp.socket_mode().is_none() {
            return Err(ConfigError::key(
                "pdp.unix_socket_mode",
                format!(
                    "must be octal permission bits in quotes, such as \"0660\" (got {:?})",
                    self.pdp.unix_socket_mode
                ),
            ));
        }
        if self
            .pdp
            .unix_socket
            .as_ref()
            .is_some_and(|p| !p.is_absolute())
        {
            return Err(ConfigError::key(
                "pdp.unix_socket",
                "must be an absolute path",
            ));
        }
        if self.policy.sources.is_empty() {
            return Err(ConfigError::key(
                "policy.sources",
                "must list at least one source (`- builtin: true` for the built-in catalog)",
            ));
        }
        let traces = &self.traces;
        check_url("traces.endpoint", &traces.endpoint)?;
        if traces.protocol == OtlpProtocol::Grpc && traces.endpoint.starts_with("https://") {
            // The gRPC exporter is built without TLS; HTTP/protobuf has it (rustls).
            return Err(ConfigError::key(
                "traces.endpoint",
                "an https:// endpoint needs traces.protocol: http/protobuf (OTLP over gRPC is \
                 plaintext here: a collector beside the server, or a sidecar)",
            ));
        }
        if !(0.0..=1.0).contains(&traces.sample_ratio) {
            return Err(ConfigError::key(
                "traces.sample_ratio",
                format!("must be between 0 and 1 (got {})", traces.sample_ratio),
            ));
        }
        if traces.service_name.is_empty() {
            return Err(ConfigError::key("traces.service_name", "must not be empty"));
        }
        check_sources("policy.sources", &self.policy.sources)?;
        if let Some(shadow) = &self.policy.shadow {
            if shadow.sources.is_empty() {
                return Err(ConfigError::key(
                    "policy.shadow.sources",
                    "must list at least one source (remove policy.shadow to turn the dry run off)",
                ));
            }
            check_sources("policy.shadow.sources", &shadow.sources)?;
        }
        Ok(())
    }
}

/// Checks each source of the list at `list` (`policy.sources`, `policy.shadow.sources`).
fn check_sources(list: &str, sources: &[SourceConfig]) -> Result<(), ConfigError> {
    {
        for (i, source) in sources.iter().enumerate() {
            let key = format!("{list}[{i}]");
            match source {
                SourceConfig::Builtin { builtin: false } => {
                    return Err(ConfigError::key(
                        key,
                        "`builtin: false` does nothing; remove the entry",
                    ));
                }
                SourceConfig::File { file } if file.as_os_str().is_empty() => {
                    return Err(ConfigError::key(key + ".file", "must not be empty"));
                }
                SourceConfig::BundleUrl {
                    bundle_url,
                    principal_id,
                    bearer_token_file,
                } => {
                    check_url(&format!("{key}.bundle_url"), bundle_url)?;
                    if let Some(id) = principal_id
                        .as_deref()
                        .filter(|id| !crate::identity::is_carriable_id(id))
                    {
                        return Err(ConfigError::key(
                            key + ".principal_id",
                            format!(
                                "{id:?} is not a principal id NMP accepts (1-256 of \
                                 A-Z a-z 0-9 @ . _ - : + /)"
                            ),
                        ));
                    }
                    if bearer_token_file
                        .as_ref()
                        .is_some_and(|f| f.as_os_str().is_empty())
                    {
                        return Err(ConfigError::key(
                            key + ".bearer_token_file",
                            "must not be empty",
                        ));
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// The repository (the server's sources, README), two levels above this crate.
    fn workspace_root() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn yaml(text: &str) -> Result<Config, ConfigError> {
        parse(text, "test.yaml", [])
    }

    fn yaml_env(text: &str, vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        parse(text, "test.yaml", env(vars))
    }

    fn err(r: Result<Config, ConfigError>) -> String {
        let msg = r.expect_err("expected a config error").to_string();
        assert!(!msg.contains('\n'), "error must be one line: {msg}");
        msg
    }

    #[test]
    fn defaults() {
        let c = Config::default();
        assert!(c.auth.enabled, "auth is on unless turned off explicitly");
        assert!(!c.auth.allow_unsigned_jwt);
        assert!(c.auth.bootstrap_bindings);
        assert_eq!(c.auth.default_workspace, "default");
        assert_eq!(c.auth.policy_data_refresh_interval, 30);
        assert_eq!(c.auth.oidc.leeway_seconds, 60);
        assert_eq!(c.auth.oidc.discovery_cache_ttl, 300);
        assert_eq!(c.auth.oidc.groups_claim, "groups");
        assert_eq!(c.server.grpc_addr.to_string(), "127.0.0.1:9191");
        assert_eq!(c.server.http_addr.to_string(), "127.0.0.1:8000");
        assert_eq!(c.identity.jwt_authn_metadata_key, "jwt_payload");
        assert!(c.identity.verify_bearer && !c.identity.trust_principal_headers);
        assert_eq!(
            c.policy.sources,
            vec![SourceConfig::Builtin { builtin: true }]
        );
        assert_eq!(c.policy.max_staleness_seconds, 300);
        c.validate().unwrap();
    }

    #[test]
    fn empty_or_null_document_gives_defaults() {
        for text in ["", "\n", "# only a comment\n", "null\n", "~"] {
            assert_eq!(yaml(text).unwrap(), Config::default(), "{text:?}");
        }
    }

    #[test]
    fn full_example_parses() {
        let c = yaml(
            r#"
auth:
  enabled: true
  admin_email: admin@example.com
  oidc:
    enabled: true
    issuer: https://idp.example.com/realms/nmp
    additional_issuers: [http://idp.internal/realms/nmp]
    audience: nmp-api
    jwks_uri: null
    scope_prefix: "api://client-id/"
server:
  grpc_addr: 0.0.0.0:9191
  http_addr: "[::]:8000"
identity:
  trust_principal_headers: true
policy:
  sources:
    - file: policy.yaml
    - bundle_url: http://auth:8000/apis/auth/v2/iam/opa-bundle.tar.gz
    - builtin: true
  max_staleness_seconds: 600
"#,
        )
        .unwrap();
        assert_eq!(c.auth.admin_email.as_deref(), Some("admin@example.com"));
        assert_eq!(c.auth.oidc.audience.as_deref(), Some("nmp-api"));
        assert_eq!(
            c.auth.oidc.scope_prefix.as_deref(),
            Some("api://client-id/")
        );
        assert_eq!(c.server.http_addr.to_string(), "[::]:8000");
        assert_eq!(
            c.policy.sources,
            vec![
                SourceConfig::File {
                    file: "policy.yaml".into()
                },
                SourceConfig::BundleUrl {
                    bundle_url: "http://auth:8000/apis/auth/v2/iam/opa-bundle.tar.gz".into(),
                    principal_id: None,
                    bearer_token_file: None,
                },
                SourceConfig::Builtin { builtin: true },
            ]
        );
        // Serialize/deserialize round trip keeps the source forms.
        let back: Config = serde_json::from_value(serde_json::to_value(&c).unwrap()).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn unknown_keys_are_named() {
        let msg = err(yaml("surver: {}\n"));
        assert!(msg.contains("surver"), "{msg}");
        let msg = err(yaml("auth:\n  oidc:\n    isuer: https://x\n"));
        assert!(msg.contains("auth.oidc.isuer"), "{msg}");
        assert!(msg.contains("unknown field"), "{msg}");
    }

    #[test]
    fn wrong_types_are_named() {
        let msg = err(yaml("server:\n  grpc_addr: not-an-address\n"));
        assert!(msg.contains("at server.grpc_addr:"), "{msg}");
        let msg = err(yaml("auth:\n  oidc:\n    leeway_seconds: soon\n"));
        assert!(msg.contains("at auth.oidc.leeway_seconds:"), "{msg}");
        let msg = err(yaml("auth:\n  enabled: [1]\n"));
        assert!(msg.contains("at auth.enabled:"), "{msg}");
        // serde would fill a struct from a list by position; a section must be a mapping.
        let msg = err(yaml("- 1\n"));
        assert!(
            msg.contains("at (top level): expected a mapping, got a list"),
            "{msg}"
        );
        let msg = err(yaml("auth: [false]\n"));
        assert!(msg.contains("at auth: expected a mapping"), "{msg}");
        let msg = err(yaml("auth:\n  oidc: true\n"));
        assert!(msg.contains("at auth.oidc: expected a mapping"), "{msg}");
        // An empty section means defaults.
        assert_eq!(yaml("auth:\nserver:\n").unwrap(), Config::default());
    }

    #[test]
    fn bad_source_entry_lists_the_forms() {
        for entry in [
            "- fiel: x.yaml",
            "- policy.yaml",
            "- {file: a, builtin: true}",
        ] {
            let msg = err(yaml(&format!(
                "policy:\n  sources:\n    - builtin: true\n    {entry}\n"
            )));
            assert!(msg.contains("policy.sources[1]"), "{msg}");
            assert!(
                msg.contains("file: PATH") && msg.contains("bundle_url: URL"),
                "{msg}"
            );
            assert!(msg.contains("builtin: true"), "{msg}");
        }
    }

    #[test]
    fn env_nested_string() {
        let c = yaml_env(
            "auth:\n  oidc:\n    enabled: true\n",
            &[("NMP_AUTH_OIDC__ISSUER", "https://idp.example.com")],
        )
        .unwrap();
        assert_eq!(
            c.auth.oidc.issuer.as_deref(),
            Some("https://idp.example.com")
        );
        // Creates missing sections, and overrides the file.
        let c = yaml_env("", &[("NMP_AUTH_OIDC__CLIENT_ID", "nmp")]).unwrap();
        assert_eq!(c.auth.oidc.client_id, "nmp");
        let c = yaml_env(
            "auth:\n  admin_email: a@x\n",
            &[("NMP_AUTH_ADMIN_EMAIL", "b@x")],
        )
        .unwrap();
        assert_eq!(c.auth.admin_email.as_deref(), Some("b@x"));
    }

    #[test]
    fn env_bool() {
        for (raw, want) in [
            ("false", false),
            ("FALSE", false),
            ("0", false),
            ("True", true),
            ("1", true),
        ] {
            let c = yaml_env("", &[("NMP_AUTH_ENABLED", raw)]).unwrap();
            assert_eq!(c.auth.enabled, want, "{raw}");
        }
        let c = yaml_env(
            "",
            &[
                ("NMP_AUTH_OIDC__ENABLED", "true"),
                ("NMP_AUTH_OIDC__ISSUER", "https://i"),
            ],
        )
        .unwrap();
        assert!(c.auth.oidc.enabled);
    }

    #[test]
    fn env_int() {
        let c = yaml_env("", &[("NMP_AUTH_OIDC__LEEWAY_SECONDS", "120")]).unwrap();
        assert_eq!(c.auth.oidc.leeway_seconds, 120);
        let c = yaml_env("", &[("NMP_AUTH_POLICY_DATA_REFRESH_INTERVAL", " 5 ")]).unwrap();
        assert_eq!(c.auth.policy_data_refresh_interval, 5);
    }

    #[test]
    fn env_list() {
        let want = vec!["https://a".to_string(), "https://b".to_string()];
        for raw in [
            "[https://a, https://b]",
            r#"["https://a","https://b"]"#,
            "https://a, https://b",
        ] {
            let c = yaml_env("", &[("NMP_AUTH_OIDC__ADDITIONAL_ISSUERS", raw)]).unwrap();
            assert_eq!(c.auth.oidc.additional_issuers, want, "{raw}");
        }
        let c = yaml_env("", &[("NMP_AUTH_OIDC__ADDITIONAL_ISSUERS", "")]).unwrap();
        assert!(c.auth.oidc.additional_issuers.is_empty());
    }

    #[test]
    fn env_strings_stay_strings() {
        let c = yaml_env(
            "",
            &[
                ("NMP_AUTH_ADMIN_EMAIL", "123"),
                ("NMP_AUTH_DEFAULT_WORKSPACE", "true"),
                ("NMP_AUTH_OIDC__CLIENT_ID", "007"),
            ],
        )
        .unwrap();
        assert_eq!(c.auth.admin_email.as_deref(), Some("123"));
        assert_eq!(c.auth.default_workspace, "true");
        assert_eq!(c.auth.oidc.client_id, "007");
        // null or empty clears an optional value.
        for raw in ["", "null"] {
            let c = yaml_env(
                "auth:\n  oidc:\n    audience: x\n",
                &[("NMP_AUTH_OIDC__AUDIENCE", raw)],
            )
            .unwrap();
            assert_eq!(c.auth.oidc.audience, None);
        }
    }

    #[test]
    fn env_other_prefixes_are_ignored() {
        let c = yaml_env(
            "",
            &[("NMP_OTHER", "x"), ("HOME", "/root"), ("NMP_AUTHX", "1")],
        )
        .unwrap();
        assert_eq!(c, Config::default());
    }

    #[test]
    fn env_unknown_key_names_the_variable() {
        let msg = err(yaml_env("", &[("NMP_AUTH_OIDC__ISUER", "https://x")]));
        assert!(
            msg.contains("NMP_AUTH_OIDC__ISUER: unknown configuration key auth.oidc.isuer"),
            "{msg}"
        );
        assert!(
            msg.contains("(did you mean NMP_AUTH_OIDC__ISSUER?)"),
            "{msg}"
        );
        let msg = err(yaml_env("", &[("NMP_AUTH_OIDC", "x")]));
        assert!(
            msg.contains("NMP_AUTH_OIDC: auth.oidc is a section"),
            "{msg}"
        );
        let msg = err(yaml_env("", &[("NMP_AUTH_ENABLED__X", "x")]));
        assert!(msg.contains("NMP_AUTH_ENABLED__X"), "{msg}");
    }

    #[test]
    fn unknown_nmp_auth_variables_are_warned_about() {
        let warnings = unknown_env_warnings([
            "NMP_AUTHZ_WHATEVER_THIS_IS",
            "NMP_AUTHZ_ENABLED",
            "NMP_AUTHZ_OIDC_ISSUER",
            "NMP_AUTHZ_LOG_FORMT",
            "NMP_AUTHX",
            "NMP_AUTHZ_ENABLED",
            // Read by the server, validated by `load`, used by the scripts, or not ours.
            "NMP_AUTHZ_LOG_FORMAT",
            "NMP_AUTHZ_DECISION_LOG_SAMPLE",
            "NMP_AUTH_ENABLED",
            "NMP_AUTH_OIDC__ISUER",
            "NMP_AUTHZ_BIN",
            "NMP_OTHER",
            "HOME",
        ]);
        let reads = "nmp-authz reads NMP_AUTH_<KEY> overrides, NMP_AUTHZ_LOG_FORMAT, \
                     NMP_AUTHZ_DECISION_LOG_SAMPLE";
        assert_eq!(
            warnings,
            [
                format!("unknown variable NMP_AUTHX: {reads}"),
                "unknown variable NMP_AUTHZ_ENABLED (did you mean NMP_AUTH_ENABLED?)".into(),
                "unknown variable NMP_AUTHZ_LOG_FORMT (did you mean NMP_AUTHZ_LOG_FORMAT?)".into(),
                "unknown variable NMP_AUTHZ_OIDC_ISSUER (did you mean NMP_AUTH_OIDC__ISSUER?)"
                    .into(),
                format!("unknown variable NMP_AUTHZ_WHATEVER_THIS_IS: {reads}"),
            ]
        );
    }

    /// Every `NMP_AUTHZ_*` name in the server's source is in [`SERVER_ENV_VARS`], or it would be
    /// warned about as unknown while being read.
    #[test]
    fn every_variable_the_server_reads_is_known() {
        fn scan(dir: &Path, found: &mut Vec<String>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    scan(&path, found);
                } else if path.extension().is_some_and(|e| e == "rs")
                    && !path.ends_with("config.rs")
                {
                    let text = std::fs::read_to_string(&path).unwrap();
                    for (at, _) in text.match_indices("\"NMP_AUTHZ_") {
                        let name = text[at + 1..]
                            .chars()
                            .take_while(|c| c.is_ascii_uppercase() || *c == '_')
                            .collect();
                        found.push(name);
                    }
                }
            }
        }
        let mut found = Vec::new();
        scan(&workspace_root().join("src"), &mut found);
        assert!(!found.is_empty(), "the scan found no variable at all");
        for name in found {
            assert!(
                SERVER_ENV_VARS.contains(&name.as_str()),
                "{name} is read but not in SERVER_ENV_VARS"
            );
        }
    }

    /// README's configuration reference has a row for every key, with its default.
    #[test]
    fn the_readme_documents_every_key_and_its_default() {
        fn flow(v: &Value) -> String {
            match v {
                Value::Array(items) => {
                    format!(
                        "[{}]",
                        items.iter().map(flow).collect::<Vec<_>>().join(", ")
                    )
                }
                Value::Object(map) => {
                    let fields: Vec<_> = map
                        .iter()
                        .map(|(k, v)| format!("{k}: {}", flow(v)))
                        .collect();
                    format!("{{{}}}", fields.join(", "))
                }
                Value::String(s) if s.is_empty() => "\"\"".into(),
                Value::String(s) => s.clone(),
                other => other.to_string(),
            }
        }
        fn leaves(v: &Value, key: &str, out: &mut Vec<(String, Value)>) {
            match v {
                Value::Object(map) => {
                    for (k, child) in map {
                        let child_key = if key.is_empty() {
                            k.clone()
                        } else {
                            format!("{key}.{k}")
                        };
                        leaves(child, &child_key, out);
                    }
                }
                leaf => out.push((key.to_owned(), leaf.clone())),
            }
        }
        let readme = std::fs::read_to_string(workspace_root().join("README.md")).unwrap();
        let mut keys = Vec::new();
        leaves(
            &serde_json::to_value(Config::default()).unwrap(),
            "",
            &mut keys,
        );
        for (key, default) in keys {
            let row = readme
                .lines()
                .find(|l| l.starts_with(&format!("| `{key}` |")))
                .unwrap_or_else(|| panic!("README's configuration reference has no row for {key}"));
            let cell = row.split(" | ").nth(2).unwrap();
            let documented = match &default {
                Value::Null => cell == "unset",
                Value::String(s) => {
                    cell == format!("`{}`", flow(&default)) || cell == format!("`\"{s}\"`")
                }
                _ => cell == format!("`{}`", flow(&default)),
            };
            assert!(
                documented,
                "{key}: README says {cell}, the default is {}",
                flow(&default)
            );
        }
    }

    #[test]
    fn env_bad_value_names_the_variable() {
        let msg = err(yaml_env("", &[("NMP_AUTH_ENABLED", "maybe")]));
        assert!(
            msg.contains("NMP_AUTH_ENABLED:") && msg.contains("maybe"),
            "{msg}"
        );
        let msg = err(yaml_env("", &[("NMP_AUTH_OIDC__LEEWAY_SECONDS", "-1")]));
        assert!(msg.contains("NMP_AUTH_OIDC__LEEWAY_SECONDS:"), "{msg}");
        let msg = err(yaml_env(
            "",
            &[("NMP_AUTH_OIDC__ADDITIONAL_ISSUERS", "[a, {b")],
        ));
        assert!(msg.contains("NMP_AUTH_OIDC__ADDITIONAL_ISSUERS:"), "{msg}");
    }

    #[test]
    fn validation_names_the_key() {
        let cases = [
            (
                "auth:\n  oidc:\n    leeway_seconds: 900\n",
                "config error at auth.oidc.leeway_seconds: must be at most 300 (got 900)",
            ),
            (
                "auth:\n  policy_data_refresh_interval: 0\n",
                "at auth.policy_data_refresh_interval:",
            ),
            (
                "policy:\n  max_staleness_seconds: 10\n",
                "at policy.max_staleness_seconds:",
            ),
            (
                "auth:\n  oidc:\n    enabled: true\n",
                "at auth.oidc.issuer: required",
            ),
            (
                "auth:\n  oidc:\n    issuer: idp.example.com\n",
                "at auth.oidc.issuer: must be an http",
            ),
            (
                "auth:\n  oidc:\n    additional_issuers: [https://a, ftp://b]\n",
                "at auth.oidc.additional_issuers[1]:",
            ),
            (
                "auth:\n  oidc:\n    jwks_uri: /keys\n",
                "at auth.oidc.jwks_uri:",
            ),
            ("policy:\n  sources: []\n", "at policy.sources: must list"),
            (
                "policy:\n  sources: [{builtin: false}]\n",
                "at policy.sources[0]:",
            ),
            (
                "policy:\n  sources: [{bundle_url: auth:8000/b.tar.gz}]\n",
                "at policy.sources[0].bundle_url:",
            ),
            (
                "policy:\n  sources: [{file: ''}]\n",
                "at policy.sources[0].file:",
            ),
        ];
        for (text, want) in cases {
            let msg = err(yaml(text));
            assert!(msg.contains(want), "{text:?}: {msg}");
        }
        // Validation also covers values set from the environment.
        let msg = err(yaml_env("", &[("NMP_AUTH_OIDC__LEEWAY_SECONDS", "301")]));
        assert!(msg.contains("at auth.oidc.leeway_seconds:"), "{msg}");
    }

    #[test]
    fn pdp_listener_keys() {
        let c = yaml("").unwrap();
        assert_eq!((c.pdp.addr, c.pdp.unix_socket.as_deref()), (None, None));
        assert_eq!(c.pdp.socket_mode(), Some(0o660));
        let c = yaml("pdp:\n  addr: 127.0.0.1:8181\n  unix_socket: /run/nmp-authz/pdp.sock\n  unix_socket_mode: \"0600\"\n").unwrap();
        assert_eq!(c.pdp.addr.unwrap().port(), 8181);
        assert_eq!(c.pdp.socket_mode(), Some(0o600));
        for (text, needle) in [
            (
                "pdp:\n  unix_socket_mode: \"0999\"\n",
                "at pdp.unix_socket_mode:",
            ),
            (
                "pdp:\n  unix_socket_mode: \"01777\"\n",
                "at pdp.unix_socket_mode:",
            ),
            (
                "pdp:\n  unix_socket: pdp.sock\n",
                "at pdp.unix_socket: must be an absolute path",
            ),
            ("pdp:\n  adr: 127.0.0.1:1\n", "pdp.adr"),
        ] {
            let msg = err(yaml(text));
            assert!(msg.contains(needle), "{text:?}: {msg}");
        }
    }

    #[test]
    fn bundle_sources_carry_a_credential_and_bootstrap_is_local() {
        let url = "http://auth:8000/apis/auth/v2/iam/opa-bundle.tar.gz";
        let c = yaml(&format!(
            "policy:\n  sources:\n    - bundle_url: {url}\n      principal_id: service:nmp-authz\n  bootstrap:\n    - builtin: true\n"
        ))
        .unwrap();
        assert_eq!(
            c.policy.sources,
            vec![SourceConfig::BundleUrl {
                bundle_url: url.into(),
                principal_id: Some("service:nmp-authz".into()),
                bearer_token_file: None,
            }]
        );
        assert_eq!(
            c.policy.bootstrap,
            vec![SourceConfig::Builtin { builtin: true }]
        );
        let c = yaml(&format!(
            "policy:\n  sources:\n    - bundle_url: {url}\n      bearer_token_file: /var/run/token\n"
        ))
        .unwrap();
        assert!(matches!(
            &c.policy.sources[0],
            SourceConfig::BundleUrl { bearer_token_file: Some(f), .. } if f.ends_with("token")
        ));
        for (source, needle) in [
            (
                "principal_id: service:x\n      bearer_token_file: /t",
                "not both",
            ),
            (
                "principal_id: \"service:a b\"",
                "at policy.sources[0].principal_id:",
            ),
            ("principal_id: 5", "principal_id must be a string"),
            ("token: x", "unknown key \"token\""),
        ] {
            let msg = err(yaml(&format!(
                "policy:\n  sources:\n    - bundle_url: {url}\n      {source}\n"
            )));
            assert!(msg.contains(needle), "{source:?}: {msg}");
        }
        let msg = err(yaml(&format!(
            "policy:\n  bootstrap:\n    - bundle_url: {url}\n"
        )));
        assert!(
            msg.contains("at policy.bootstrap[0]: must be local"),
            "{msg}"
        );
    }

    #[test]
    fn traces_keys() {
        let c = yaml("").unwrap();
        assert!(!c.traces.enabled, "off by default");
        let c = yaml(
            "traces:\n  enabled: true\n  endpoint: http://collector:4318/v1/traces\n  \
             protocol: http/protobuf\n  sample_ratio: 0.25\n",
        )
        .unwrap();
        assert_eq!(c.traces.protocol, OtlpProtocol::HttpProtobuf);
        assert_eq!(c.traces.sample_ratio, 0.25);
        for (text, named) in [
            ("traces:\n  sample_ratio: 1.5\n", "traces.sample_ratio"),
            ("traces:\n  endpoint: collector:4317\n", "traces.endpoint"),
            (
                "traces:\n  endpoint: https://collector:4317\n",
                "traces.endpoint",
            ),
            ("traces:\n  protocol: zipkin\n", "traces.protocol"),
            ("traces:\n  ratio: 1\n", "ratio"),
        ] {
            let error = yaml(text).unwrap_err().to_string();
            assert!(error.contains(named), "{text}: {error}");
        }
    }

    #[test]
    fn shadow_policy_keys() {
        assert!(
            yaml("").unwrap().policy.shadow.is_none(),
            "no dry run by default"
        );
        let c = yaml("policy:\n  shadow:\n    sources:\n      - file: candidate.yaml\n").unwrap();
        assert_eq!(
            c.policy.shadow.unwrap().sources,
            vec![SourceConfig::File {
                file: "candidate.yaml".into()
            }]
        );
        for (text, named) in [
            (
                "policy:\n  shadow:\n    sources: []\n",
                "policy.shadow.sources",
            ),
            ("policy:\n  shadow: {}\n", "policy.shadow.sources"),
            ("policy:\n  shadow:\n    source: []\n", "source"),
            (
                "policy:\n  shadow:\n    sources:\n      - bundle_url: ftp://x\n",
                "policy.shadow.sources[0].bundle_url",
            ),
            (
                "policy:\n  shadow:\n    sources:\n      - builtin: false\n",
                "policy.shadow.sources[0]",
            ),
        ] {
            let error = yaml(text).unwrap_err().to_string();
            assert!(error.contains(named), "{text}: {error}");
        }
    }

    #[test]
    fn http_authz_keys() {
        let c = Config::default();
        assert!(c.http_authz.enabled);
        assert_eq!(c.http_authz.path_prefix, "/apis/auth/ext-authz");
        assert_eq!(
            c.http_authz.trusted_forwarded_headers,
            [ForwardedForm::Envoy]
        );
        let c = yaml(
            "http_authz:\n  enabled: false\n  path_prefix: /authz\n  trusted_forwarded_headers: [nginx, traefik]\n",
        )
        .unwrap();
        assert!(!c.http_authz.enabled);
        assert_eq!(c.http_authz.path_prefix, "/authz");
        assert_eq!(
            c.http_authz.trusted_forwarded_headers,
            [ForwardedForm::Nginx, ForwardedForm::Traefik]
        );
        let cases = [
            ("http_authz:\n  enabeld: true\n", "http_authz.enabeld"),
            (
                "http_authz:\n  trusted_forwarded_headers: [haproxy]\n",
                "at http_authz.trusted_forwarded_headers[0]:",
            ),
            (
                "http_authz:\n  trusted_forwarded_headers: []\n",
                "at http_authz.trusted_forwarded_headers: must list",
            ),
            (
                "http_authz:\n  trusted_forwarded_headers: [envoy, envoy]\n",
                "at http_authz.trusted_forwarded_headers[1]: listed twice",
            ),
        ];
        for (text, want) in cases {
            let msg = err(yaml(text));
            assert!(msg.contains(want), "{text:?}: {msg}");
        }
        for prefix in [
            "",
            "/",
            "authz",
            "/authz/",
            "/a//b",
            "/a/../b",
            "/a?b",
            "/a%2fb",
            "/metrics",
            "/health",
            "/apis/auth/v2",
            "/apis/auth/v2/authz/x",
            "/apis/auth/discovery",
        ] {
            let msg = err(yaml(&format!("http_authz:\n  path_prefix: {prefix:?}\n")));
            assert!(
                msg.contains("at http_authz.path_prefix:"),
                "{prefix:?}: {msg}"
            );
        }
    }

    #[test]
    fn yaml_1_1_booleans_are_accepted() {
        // NMP reads its config with PyYAML (YAML 1.1), where `yes`/`no` are booleans.
        let c = yaml("auth:\n  enabled: no\n  bootstrap_bindings: yes\n").unwrap();
        assert!(!c.auth.enabled && c.auth.bootstrap_bindings);
    }

    #[test]
    fn duplicate_keys_are_an_error() {
        let msg = err(yaml("auth:\n  enabled: true\n  enabled: false\n"));
        assert!(
            msg.contains("test.yaml") && msg.contains("duplicate"),
            "{msg}"
        );
        assert!(!msg.contains("DuplicateKeyPolicy"), "{msg}");
    }
}
