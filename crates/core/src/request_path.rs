//! The gateway's rule for request paths: the path nmp-authz authorizes must be the one the
//! upstream acts on.
//!
//! Upstream frameworks percent-decode the path before they route it, and some of them also
//! resolve dot segments, merge slashes, strip `;` parameters or treat `\` as `/`. A path on
//! which two readings could differ is refused with 400 rather than guessed at; every other path
//! is percent-decoded once, as the upstream will decode it, and decided in that form. Behind the
//! companion Envoy config most of these never arrive (it normalises the path, merges slashes and
//! rejects escaped slashes); this rule holds wherever nmp-authz is deployed. Matching stays
//! case-sensitive, as NMP's routers are.

use std::borrow::Cow;

/// Why a path is refused; the text goes into the 400 body.
pub(crate) type Refusal = &'static str;

/// The path to decide on: the original when it holds no percent-encoding (the usual case,
/// borrowed), else the path with its part before the query decoded. The query is left as sent.
pub fn canonical(path: &str) -> Result<Cow<'_, str>, Refusal> {
    let (base, query) = match path.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (path, None),
    };
    if !base.starts_with('/') {
        return Err("Ambiguous path: it must start with /");
    }
    let decoded = if base.contains('%') {
        Cow::Owned(decode(base)?)
    } else {
        Cow::Borrowed(base)
    };
    check_characters(&decoded)?;
    check_segments(&decoded)?;
    Ok(match (decoded, query) {
        (Cow::Borrowed(_), _) => Cow::Borrowed(path),
        (Cow::Owned(mut decoded), Some(query)) => {
            decoded.push('?');
            decoded.push_str(query);
            Cow::Owned(decoded)
        }
        (Cow::Owned(decoded), None) => Cow::Owned(decoded),
    })
}

/// Percent-decodes once. What decodes to a character that would change how the path splits
/// or would be decoded again (`/`, `\`, `?`, `#`, `%`), or to bytes that are not UTF-8, is
/// refused.
fn decode(base: &str) -> Result<String, Refusal> {
    let bytes = base.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'%' {
            out.push(bytes[i]);
            i += 1;
            continue;
        }
        let byte = bytes
            .get(i + 1..i + 3)
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .filter(|hex| hex.bytes().all(|b| b.is_ascii_hexdigit()))
            .and_then(|hex| u8::from_str_radix(hex, 16).ok())
            .ok_or("Ambiguous path: malformed percent-encoding")?;
        if matches!(byte, b'/' | b'\\' | b'?' | b'#' | b'%') {
            return Err("Ambiguous path: an encoded /, \\, ?, # or % in the path");
        }
        out.push(byte);
        i += 3;
    }
    String::from_utf8(out).map_err(|_| "Ambiguous path: it does not decode to UTF-8")
}

/// Characters that some upstreams read differently from others: control characters (some
/// truncate at NUL or a line break), `\` (a separator on some), `;` (parameters, stripped by
/// some), `#`. A space (`%20`, in a file name say) means the same to every reader.
fn check_characters(path: &str) -> Result<(), Refusal> {
    if path
        .chars()
        .any(|c| c.is_control() || matches!(c, '\\' | ';' | '#'))
    {
        return Err("Ambiguous path: a control character, \\, ; or # in the path");
    }
    Ok(())
}

/// Dot segments would be resolved by some upstreams and not others; an empty segment (`//`)
/// merged by some. A single trailing slash is kept: it names a different route, which NMP's
/// upstreams redirect rather than serve.
fn check_segments(path: &str) -> Result<(), Refusal> {
    let segments: &str = &path[1..];
    let mut parts = segments.split('/').peekable();
    while let Some(segment) = parts.next() {
        let last = parts.peek().is_none();
        if segment == "." || segment == ".." {
            return Err("Ambiguous path: a . or .. segment");
        }
        if segment.is_empty() && !last {
            return Err("Ambiguous path: an empty segment (//)");
        }
    }
    Ok(())
}

/// An HTTP method as Envoy passes it on: an upper-case token (`GET`, `M-SEARCH`). HTTP methods
/// are case-sensitive: `get` is not `GET`, and an upstream that upper-cases it would serve
/// what was decided as something else.
pub fn is_method_token(method: &str) -> bool {
    method
        .bytes()
        .all(|b| b.is_ascii_uppercase() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(path: &str) -> String {
        canonical(path)
            .unwrap_or_else(|e| panic!("{path}: {e}"))
            .into_owned()
    }

    #[test]
    fn plain_paths_pass_unchanged_and_borrowed() {
        for path in [
            "/",
            "/apis/models/v2/workspaces/default/models",
            "/apis/models/v2/workspaces/default/models?page=2&q=a%2Fb",
            "/apis/files/v2/workspaces/ws/filesets/f/-/data/part-0001.jsonl",
            "/apis/models/v2/workspaces/default/models/",
            "/health/live",
        ] {
            assert!(
                matches!(canonical(path), Ok(Cow::Borrowed(p)) if p == path),
                "{path}"
            );
        }
    }

    #[test]
    fn percent_encoding_is_decoded_once_before_the_query_only() {
        assert_eq!(
            ok("/apis/models/v2/workspaces/d%65fault/models"),
            "/apis/models/v2/workspaces/default/models"
        );
        assert_eq!(
            ok("/apis/secrets/v2/workspaces/ws/secrets/s/%61ccess?x=%2F"),
            "/apis/secrets/v2/workspaces/ws/secrets/s/access?x=%2F"
        );
        assert_eq!(
            ok("/apis/files/v2/workspaces/ws/filesets/f/-/caf%C3%A9%20menu.txt"),
            "/apis/files/v2/workspaces/ws/filesets/f/-/café menu.txt"
        );
    }

    #[test]
    fn ambiguous_paths_are_refused() {
        for path in [
            "",
            "apis/models",
            "?q=1",
            "/apis/models/v2/workspaces/a%2Fb/models",
            "/apis/models/v2/workspaces/a%2fb/models",
            "/apis/models/v2/workspaces/a%5Cb/models",
            "/apis/models/v2/workspaces/a%3Fb/models",
            "/apis/models/v2/workspaces/a%23b/models",
            "/apis/models/v2/workspaces/%2561/models",
            "/apis/models/v2/workspaces/a%zzb/models",
            "/apis/models/v2/workspaces/a%4/models",
            "/apis/models/v2/workspaces/a%/models",
            "/apis/models/v2/workspaces/%FF/models",
            "/apis/models/v2/workspaces/default/../system/models",
            "/apis/models/v2/workspaces/default/%2e%2e/system/models",
            "/apis/models/v2/workspaces/default/%2E/models",
            "/apis/models/v2/workspaces/./default/models",
            "/internal/../apis/models",
            "//internal",
            "/apis//models/v2/workspaces/default/models",
            "/apis/models/v2/workspaces/default;x=1/models",
            "/apis/models/v2/workspaces/default%3Bx/models",
            "/apis/models/v2/workspaces/de\\fault/models",
            "/apis/models/v2/workspaces/de%09fault/models",
            "/apis/models/v2/workspaces/de%00fault/models",
            "/apis/models/v2/workspaces/de\nfault/models",
            "/apis/models/v2/workspaces/de#fault/models",
        ] {
            assert!(canonical(path).is_err(), "{path:?} was accepted");
        }
    }

    #[test]
    fn dots_inside_names_are_not_dot_segments() {
        for path in [
            "/apis/models/v2/workspaces/ws/models/llama-3.1",
            "/apis/models/v2/workspaces/ws/models/...",
            "/apis/models/v2/workspaces/ws/models/.hidden",
        ] {
            assert_eq!(ok(path), path);
        }
    }
}
