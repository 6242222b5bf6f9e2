//! The C ABI between Envoy 1.40 (`envoy.filters.http.dynamic_modules`, ABI `v0.2.0`) and this
//! module: the event hooks Envoy looks up in the library (`envoy_dynamic_module_on_*`) and the
//! callbacks Envoy's process provides (`envoy_dynamic_module_callback_*`). Written from the
//! declarations in Envoy's `source/extensions/dynamic_modules/abi.h`; only this file uses
//! `unsafe`, and only to move bytes between Envoy's buffers and [`Gate`].
//!
//! Every hook that runs code of the module's runs it under `catch_unwind` (the others return a
//! constant): a panic never unwinds into Envoy (that would abort it). A panic or failure while
//! deciding answers 503 and stops the request: never an allow.
//!
//! Envoy requires every HTTP filter hook to be exported even where a filter has no use for it
//! (bodies, trailers, callouts, schedulers, watermarks); those here do nothing and let the
//! stream continue.

use std::ffi::{c_char, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::Instant;

use crate::gate::{Action, Answer, Gate, METADATA_NAMESPACE};
use crate::policy::Severity;
use crate::record::{Level, Records};

/// The ABI version this module was written against (Envoy 1.40 expects `v0.2.0`; Envoy only
/// warns on a mismatch, so a module loaded by another Envoy version must be rebuilt and
/// retested against that version's abi.h).
const ABI_VERSION: &std::ffi::CStr = c"v0.2.0";

// ---- abi.h types ----

/// `envoy_dynamic_module_type_envoy_buffer`: bytes owned by Envoy.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct EnvoyBuffer {
    pub ptr: *const c_char,
    pub length: usize,
}

/// `envoy_dynamic_module_type_module_buffer`: bytes owned by the module.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ModuleBuffer {
    pub ptr: *const c_char,
    pub length: usize,
}

impl ModuleBuffer {
    fn of(text: &str) -> Self {
        Self {
            ptr: text.as_ptr().cast(),
            length: text.len(),
        }
    }

    /// A null buffer: `set_header` with it removes the header.
    const NULL: Self = Self {
        ptr: std::ptr::null(),
        length: 0,
    };
}

/// `envoy_dynamic_module_type_module_http_header` and `..._envoy_http_header` (same layout).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct HttpHeader {
    key_ptr: *const c_char,
    key_length: usize,
    value_ptr: *const c_char,
    value_length: usize,
}

/// Opaque pointers: Envoy's filter config / filter objects, and the module's.
type EnvoyPtr = *mut c_void;
type ModulePtr = *const c_void;

// C enums (int): the values this module passes or returns.
/// `envoy_dynamic_module_type_http_header_type_RequestHeader`.
const REQUEST_HEADER: u32 = 0;
/// `..._request_headers_status_Continue` (and every other hook's `Continue`: also 0).
const CONTINUE: u32 = 0;
/// `..._request_headers_status_StopIteration`.
const STOP_ITERATION: u32 = 1;
/// `envoy_dynamic_module_type_log_level`: Info, Warn, Error.
const LOG_INFO: u32 = 2;
const LOG_WARN: u32 = 3;
const LOG_ERROR: u32 = 4;
/// `envoy_dynamic_module_type_metrics_result_Success`.
const METRICS_SUCCESS: u32 = 0;

// ---- callbacks Envoy provides (resolved in Envoy's process when it loads the module) ----

unsafe extern "C" {
    fn envoy_dynamic_module_callback_log(level: u32, message: ModuleBuffer);
    fn envoy_dynamic_module_callback_log_enabled(level: u32) -> bool;
    fn envoy_dynamic_module_callback_http_get_headers_size(
        filter: EnvoyPtr,
        header_type: u32,
    ) -> usize;
    fn envoy_dynamic_module_callback_http_get_headers(
        filter: EnvoyPtr,
        header_type: u32,
        result: *mut HttpHeader,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_set_header(
        filter: EnvoyPtr,
        header_type: u32,
        key: ModuleBuffer,
        value: ModuleBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_send_response(
        filter: EnvoyPtr,
        status_code: u32,
        headers: *mut HttpHeader,
        headers_size: usize,
        body: ModuleBuffer,
        details: ModuleBuffer,
    );
    fn envoy_dynamic_module_callback_http_set_dynamic_metadata_string(
        filter: EnvoyPtr,
        namespace: ModuleBuffer,
        key: ModuleBuffer,
        value: ModuleBuffer,
    );
    fn envoy_dynamic_module_callback_http_filter_config_define_counter(
        config: EnvoyPtr,
        name: ModuleBuffer,
        label_names: *mut ModuleBuffer,
        label_names_length: usize,
        counter_id: *mut usize,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_increment_counter(
        filter: EnvoyPtr,
        id: usize,
        label_values: *mut ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> u32;
}

/// Writes to Envoy's log (component `dynamic_modules`). Safe to call from any thread: Envoy's
/// logger is.
fn log(level: u32, message: &str) {
    // SAFETY: the buffer points into `message`, alive for the call; Envoy copies it.
    unsafe { envoy_dynamic_module_callback_log(level, ModuleBuffer::of(message)) }
}

fn log_policy(severity: Severity, message: &str) {
    log(
        match severity {
            Severity::Info => LOG_INFO,
            Severity::Error => LOG_ERROR,
        },
        message,
    );
}

/// The decision records' lines, to Envoy's log.
fn log_record(level: Level, line: &str) {
    log(
        match level {
            Level::Info => LOG_INFO,
            Level::Warn => LOG_WARN,
        },
        line,
    );
}

/// What a filter configuration holds: the gate, the process's decision records, and its
/// counters when Envoy defined them.
#[derive(Debug)]
struct FilterConfig {
    gate: Gate,
    records: Arc<Records>,
    /// `<metrics_namespace>.decisions` with labels status and reason.
    decisions: Option<usize>,
    /// `<metrics_namespace>.decision_records_dropped`: records the writer's queue had no room
    /// for.
    records_dropped: Option<usize>,
}

const COUNTER_LABELS: [&str; 2] = ["status", "reason"];

// ---- event hooks ----

/// Called once when Envoy loads the module.
#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_program_init() -> *const c_char {
    ABI_VERSION.as_ptr()
}

/// A filter configuration: `config` is the filter's `filter_config` (a
/// `google.protobuf.StringValue` holding the YAML). Null (Envoy rejects the configuration)
/// when it does not parse or its policy does not load.
///
/// # Safety
/// Envoy passes buffers valid for the call and its own config object.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_new(
    config_envoy: EnvoyPtr,
    _name: EnvoyBuffer,
    config: EnvoyBuffer,
) -> ModulePtr {
    let created = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: Envoy's buffer, valid for this hook.
        let bytes = unsafe { bytes(config.ptr, config.length) };
        let text = std::str::from_utf8(bytes).map_err(|_| "the configuration is not UTF-8")?;
        let env = nmp_authz_core::config::env_overrides(std::env::vars_os())
            .map_err(|e| e.to_string())?;
        let gate = Gate::from_config(text, env, log_policy)?;
        let mut id = 0usize;
        let mut labels = COUNTER_LABELS.map(ModuleBuffer::of);
        // SAFETY: the name and label buffers live across the call; `id` is a valid out pointer.
        let defined = unsafe {
            envoy_dynamic_module_callback_http_filter_config_define_counter(
                config_envoy,
                ModuleBuffer::of("decisions"),
                labels.as_mut_ptr(),
                labels.len(),
                &mut id,
            )
        };
        let decisions = (defined == METRICS_SUCCESS).then_some(id);
        let mut dropped_id = 0usize;
        // SAFETY: as above; no labels.
        let defined = unsafe {
            envoy_dynamic_module_callback_http_filter_config_define_counter(
                config_envoy,
                ModuleBuffer::of("decision_records_dropped"),
                std::ptr::null_mut(),
                0,
                &mut dropped_id,
            )
        };
        let records_dropped = (defined == METRICS_SUCCESS).then_some(dropped_id);
        let records = Records::shared(Arc::new(log_record))?;
        Ok::<_, String>(Box::new(FilterConfig {
            gate,
            records,
            decisions,
            records_dropped,
        }))
    }));
    match created {
        Ok(Ok(config)) => Box::into_raw(config).cast_const().cast(),
        Ok(Err(e)) => {
            log(
                LOG_ERROR,
                &format!("nmp-authz: filter configuration refused: {e}"),
            );
            std::ptr::null()
        }
        Err(_) => {
            log(LOG_ERROR, "nmp-authz: filter configuration panicked");
            std::ptr::null()
        }
    }
}

/// # Safety
/// `config` is a pointer [`envoy_dynamic_module_on_http_filter_config_new`] returned, given
/// back once.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_destroy(config: ModulePtr) {
    if config.is_null() {
        return;
    }
    // SAFETY: made by Box::into_raw in config_new; Envoy destroys a configuration once, after
    // every filter made from it (each holds the configuration alive).
    let config = unsafe { Box::from_raw(config.cast_mut().cast::<FilterConfig>()) };
    // Stops and joins the policy thread, and the record writer with the last configuration.
    let _ = catch_unwind(AssertUnwindSafe(move || drop(config)));
}

/// Per-route configuration is not used: none is accepted.
#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_per_route_config_new(
    _name: EnvoyBuffer,
    _config: EnvoyBuffer,
) -> ModulePtr {
    let refused = "nmp-authz: per-route configuration is not supported";
    let _ = catch_unwind(|| log(LOG_ERROR, refused));
    std::ptr::null()
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_per_route_config_destroy(_config: ModulePtr) {
}

/// A stream's filter: the configuration itself (the decision needs no per-stream state, so
/// nothing is allocated per request).
#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_new(
    config: ModulePtr,
    _filter_envoy: EnvoyPtr,
) -> ModulePtr {
    config
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_destroy(_filter: ModulePtr) {}

/// The decision: on allow, the principal's headers set and the client's other `x-nmp-*`
/// removed; otherwise the denial answered here. 503 if anything goes wrong.
///
/// # Safety
/// `filter_envoy` is Envoy's live filter; `filter` the pointer `on_http_filter_new` returned.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_headers(
    filter_envoy: EnvoyPtr,
    filter: ModulePtr,
    _end_of_stream: bool,
) -> u32 {
    // The clock is read only when a record may be written: Envoy writes info lines.
    // SAFETY: no arguments.
    let started = unsafe { envoy_dynamic_module_callback_log_enabled(LOG_INFO) }.then(Instant::now);
    let decided = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: `filter` is a FilterConfig from config_new, alive while its filters are.
        let config = unsafe { &*filter.cast::<FilterConfig>() };
        // SAFETY: a live filter in its request-headers hook.
        let raw = unsafe { request_headers(filter_envoy) };
        // SAFETY: Envoy's header buffers, valid until a header is changed (in `act`, after the
        // last use of `headers`).
        let headers = unsafe { header_bytes(&raw) };
        #[cfg(feature = "test-panic")]
        panic_on_request(&headers);
        let answer = config.gate.decide(&headers, unix_now());
        if let Some(started) = started {
            let dropped = config.records.decision(&answer, &headers, started);
            if dropped > 0 {
                // SAFETY: a live filter.
                unsafe { count(filter_envoy, config.records_dropped, &mut [], dropped) };
            }
        }
        drop(headers);
        // SAFETY: as above; `answer` owns everything it holds, so the header buffers Envoy
        // lent for the decision are no longer referred to when headers change.
        unsafe { act(filter_envoy, config, &answer) }
    }));
    decided.unwrap_or_else(|_| {
        // Counted and recorded as every answer is (`decisions`, status 503, reason
        // `internal_error`; a decision record, written whatever the denial budget).
        let _ = catch_unwind(|| {
            // SAFETY: as above.
            let config = unsafe { &*filter.cast::<FilterConfig>() };
            let mut labels = [ModuleBuffer::of("503"), ModuleBuffer::of(INTERNAL_ERROR)];
            // SAFETY: a live filter.
            unsafe { count(filter_envoy, config.decisions, &mut labels, 1) };
            if let Some(started) = started {
                // SAFETY: a live filter in its request-headers hook; its header buffers read
                // afresh (a panic in `act` may have changed headers), used before the 503.
                let raw = unsafe { request_headers(filter_envoy) };
                let headers = unsafe { header_bytes(&raw) };
                let dropped = config
                    .records
                    .internal_error(INTERNAL_ERROR, &headers, started);
                if dropped > 0 {
                    // SAFETY: a live filter.
                    unsafe { count(filter_envoy, config.records_dropped, &mut [], dropped) };
                }
            }
        });
        // SAFETY: as above.
        unsafe { internal_error(filter_envoy) }
    })
}

/// The reason of a 503 answered because deciding panicked.
const INTERNAL_ERROR: &str = "internal_error";

/// The request's headers as Envoy lends them.
///
/// # Safety
/// `filter_envoy` is a live filter in a request hook.
unsafe fn request_headers(filter_envoy: EnvoyPtr) -> Vec<HttpHeader> {
    // SAFETY: a live filter.
    let size = unsafe {
        envoy_dynamic_module_callback_http_get_headers_size(filter_envoy, REQUEST_HEADER)
    };
    let empty = HttpHeader {
        key_ptr: std::ptr::null(),
        key_length: 0,
        value_ptr: std::ptr::null(),
        value_length: 0,
    };
    let mut raw = vec![empty; size];
    // SAFETY: `raw` has room for the `size` headers Envoy reported.
    let read = unsafe {
        envoy_dynamic_module_callback_http_get_headers(
            filter_envoy,
            REQUEST_HEADER,
            raw.as_mut_ptr(),
        )
    };
    if !read {
        raw.clear();
    }
    raw
}

/// `raw` as byte pairs, handed to the gate.
///
/// # Safety
/// `raw` holds Envoy's header buffers, unchanged while the pairs are used.
unsafe fn header_bytes(raw: &[HttpHeader]) -> Vec<(&[u8], &[u8])> {
    raw.iter()
        // SAFETY: the caller's promise.
        .map(|h| unsafe {
            (
                bytes(h.key_ptr, h.key_length),
                bytes(h.value_ptr, h.value_length),
            )
        })
        .collect()
}

/// A header that makes the request hook panic, for the test of the 503 a panic answers
/// (`tests/envoy_module.rs`). Only in builds with the `test-panic` feature, which the test
/// builds into a target directory of its own: never in the library operators build.
#[cfg(feature = "test-panic")]
fn panic_on_request(headers: &[(&[u8], &[u8])]) {
    if headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case(b"nmp-authz-test-panic"))
    {
        panic!("nmp-authz-test-panic: a panic while deciding, on request");
    }
}

/// Adds `value` to the counter `id` (if Envoy defined it) with `labels`.
///
/// # Safety
/// `filter_envoy` is a live filter.
unsafe fn count(
    filter_envoy: EnvoyPtr,
    id: Option<usize>,
    labels: &mut [ModuleBuffer],
    value: u64,
) {
    if let Some(id) = id {
        // SAFETY: the label buffers live across the call; a live filter.
        unsafe {
            envoy_dynamic_module_callback_http_filter_increment_counter(
                filter_envoy,
                id,
                labels.as_mut_ptr(),
                labels.len(),
                value,
            );
        }
    }
}

/// Carries out `answer`; the hook's status.
///
/// # Safety
/// `filter_envoy` is a live filter in its request-headers hook.
unsafe fn act(filter_envoy: EnvoyPtr, config: &FilterConfig, answer: &Answer) -> u32 {
    // SAFETY (for the calls below): module buffers alive across each call; a live filter.
    for (key, value) in &answer.facts {
        unsafe {
            envoy_dynamic_module_callback_http_set_dynamic_metadata_string(
                filter_envoy,
                ModuleBuffer::of(METADATA_NAMESPACE),
                ModuleBuffer::of(key),
                ModuleBuffer::of(value),
            );
        }
    }
    let mut labels = [
        ModuleBuffer::of(answer.status.http_label()),
        ModuleBuffer::of(answer.outcome.as_str()),
    ];
    unsafe { count(filter_envoy, config.decisions, &mut labels, 1) };
    match &answer.action {
        Action::Continue { set, remove } => {
            for (key, value) in set {
                let (key, value) = (ModuleBuffer::of(key), ModuleBuffer::of(value));
                unsafe {
                    envoy_dynamic_module_callback_http_set_header(
                        filter_envoy,
                        REQUEST_HEADER,
                        key,
                        value,
                    );
                }
            }
            for key in remove {
                unsafe {
                    envoy_dynamic_module_callback_http_set_header(
                        filter_envoy,
                        REQUEST_HEADER,
                        ModuleBuffer::of(key),
                        ModuleBuffer::NULL,
                    );
                }
            }
            CONTINUE
        }
        Action::Respond {
            status,
            headers,
            body,
        } => {
            let mut headers: Vec<HttpHeader> = headers
                .iter()
                .map(|(k, v)| HttpHeader {
                    key_ptr: k.as_ptr().cast(),
                    key_length: k.len(),
                    value_ptr: v.as_ptr().cast(),
                    value_length: v.len(),
                })
                .collect();
            unsafe {
                envoy_dynamic_module_callback_http_send_response(
                    filter_envoy,
                    u32::from(*status),
                    headers.as_mut_ptr(),
                    headers.len(),
                    ModuleBuffer::of(body),
                    ModuleBuffer::of(answer.outcome.as_str()),
                );
            }
            STOP_ITERATION
        }
    }
}

/// The answer when deciding failed: 503, never an allow.
///
/// # Safety
/// `filter_envoy` is a live filter in its request-headers hook.
unsafe fn internal_error(filter_envoy: EnvoyPtr) -> u32 {
    const BODY: &str = r#"{"detail":"Authorization is unavailable: internal error"}"#;
    let (key, value) = ("content-type", "application/json");
    let mut headers = [HttpHeader {
        key_ptr: key.as_ptr().cast(),
        key_length: key.len(),
        value_ptr: value.as_ptr().cast(),
        value_length: value.len(),
    }];
    let _ = catch_unwind(|| log(LOG_ERROR, "nmp-authz: deciding a request panicked: 503"));
    // SAFETY: static buffers; a live filter.
    unsafe {
        envoy_dynamic_module_callback_http_send_response(
            filter_envoy,
            503,
            headers.as_mut_ptr(),
            headers.len(),
            ModuleBuffer::of(BODY),
            ModuleBuffer::of("nmp_authz_internal_error"),
        );
    }
    STOP_ITERATION
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// # Safety
/// `ptr` is null with `length` 0, or points to `length` readable bytes that outlive the use.
unsafe fn bytes<'a>(ptr: *const c_char, length: usize) -> &'a [u8] {
    if ptr.is_null() || length == 0 {
        return &[];
    }
    // SAFETY: the caller's promise.
    unsafe { std::slice::from_raw_parts(ptr.cast::<u8>(), length) }
}

// ---- hooks this filter has no use for: the stream continues ----

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_body(
    _filter_envoy: EnvoyPtr,
    _filter: ModulePtr,
    _end_of_stream: bool,
) -> u32 {
    CONTINUE
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_trailers(
    _filter_envoy: EnvoyPtr,
    _filter: ModulePtr,
) -> u32 {
    CONTINUE
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_headers(
    _filter_envoy: EnvoyPtr,
    _filter: ModulePtr,
    _end_of_stream: bool,
) -> u32 {
    CONTINUE
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_body(
    _filter_envoy: EnvoyPtr,
    _filter: ModulePtr,
    _end_of_stream: bool,
) -> u32 {
    CONTINUE
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_trailers(
    _filter_envoy: EnvoyPtr,
    _filter: ModulePtr,
) -> u32 {
    CONTINUE
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_stream_complete(
    _filter_envoy: EnvoyPtr,
    _filter: ModulePtr,
) {
}

/// A local reply (ours or another filter's) is sent as it is.
#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_local_reply(
    _filter_envoy: EnvoyPtr,
    _filter: ModulePtr,
    _response_code: u32,
    _details: EnvoyBuffer,
    _reset_imminent: bool,
) -> u32 {
    CONTINUE
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_scheduled(
    _filter_envoy: EnvoyPtr,
    _filter: ModulePtr,
    _event_id: u64,
) {
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_scheduled(
    _config_envoy: EnvoyPtr,
    _config: ModulePtr,
    _event_id: u64,
) {
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark(
    _filter_envoy: EnvoyPtr,
    _filter: ModulePtr,
) {
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark(
    _filter_envoy: EnvoyPtr,
    _filter: ModulePtr,
) {
}

// Callouts and streams: never started by this module, so never called; present because Envoy
// resolves them.

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_callout_done(
    _filter_envoy: EnvoyPtr,
    _filter: ModulePtr,
    _callout_id: u64,
    _result: u32,
    _headers: *mut HttpHeader,
    _headers_size: usize,
    _body_chunks: *mut EnvoyBuffer,
    _body_chunks_size: usize,
) {
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_headers(
    _filter_envoy: EnvoyPtr,
    _filter: ModulePtr,
    _stream_id: u64,
    _headers: *mut HttpHeader,
    _headers_size: usize,
    _end_stream: bool,
) {
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_data(
    _filter_envoy: EnvoyPtr,
    _filter: ModulePtr,
    _stream_id: u64,
    _data: *const EnvoyBuffer,
    _data_count: usize,
    _end_stream: bool,
) {
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_trailers(
    _filter_envoy: EnvoyPtr,
    _filter: ModulePtr,
    _stream_id: u64,
    _trailers: *mut HttpHeader,
    _trailers_size: usize,
) {
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_complete(
    _filter_envoy: EnvoyPtr,
    _filter: ModulePtr,
    _stream_id: u64,
) {
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_reset(
    _filter_envoy: EnvoyPtr,
    _filter: ModulePtr,
    _stream_id: u64,
    _reason: u32,
) {
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_callout_done(
    _config_envoy: EnvoyPtr,
    _config: ModulePtr,
    _callout_id: u64,
    _result: u32,
    _headers: *mut HttpHeader,
    _headers_size: usize,
    _body_chunks: *mut EnvoyBuffer,
    _body_chunks_size: usize,
) {
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_headers(
    _config_envoy: EnvoyPtr,
    _config: ModulePtr,
    _stream_id: u64,
    _headers: *mut HttpHeader,
    _headers_size: usize,
    _end_stream: bool,
) {
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_data(
    _config_envoy: EnvoyPtr,
    _config: ModulePtr,
    _stream_id: u64,
    _data: *const EnvoyBuffer,
    _data_count: usize,
    _end_stream: bool,
) {
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_trailers(
    _config_envoy: EnvoyPtr,
    _config: ModulePtr,
    _stream_id: u64,
    _trailers: *mut HttpHeader,
    _trailers_size: usize,
) {
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_complete(
    _config_envoy: EnvoyPtr,
    _config: ModulePtr,
    _stream_id: u64,
) {
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_reset(
    _config_envoy: EnvoyPtr,
    _config: ModulePtr,
    _stream_id: u64,
    _reason: u32,
) {
}
