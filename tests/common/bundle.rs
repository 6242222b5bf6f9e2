//! NMP OPA bundles for tests: a small authorization document, its `opa-bundle.tar.gz`, and a
//! one-thread HTTP server that serves it with ETags (or anything else).

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

/// The one endpoint of [`document`], in workspace ws1.
pub const THINGS: &str = "/apis/x/v2/workspaces/ws1/things";

/// An authorization document binding `principal` as Viewer in ws1 (none when empty).
pub fn document(principal: &str) -> String {
    let principals = if principal.is_empty() {
        "{}".to_string()
    } else {
        format!(r#"{{"{principal}": {{"workspaces": {{"ws1": ["Viewer"]}}}}}}"#)
    };
    format!(
        r#"{{"authz": {{
            "roles": {{"Viewer": {{"permissions": ["things.read"]}}}},
            "endpoints": {{"/apis/x/v2/workspaces/{{workspace}}/things": {{"get": {{"permissions": ["things.read"]}}}}}},
            "principals": {principals}
        }}}}"#
    )
}

/// NMP's bundle layout: a gzip tar with `data.json` and `.manifest`.
pub fn bundle(data_json: &str, revision: &str) -> Vec<u8> {
    let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::default(),
    ));
    for (name, body) in [
        ("data.json", data_json.to_string()),
        (
            ".manifest",
            format!(r#"{{"revision": "{revision}", "roots": ["authz"]}}"#),
        ),
    ] {
        let mut header = tar::Header::new_gnu();
        header.set_size(body.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, name, body.as_bytes()).unwrap();
    }
    tar.into_inner().unwrap().finish().unwrap()
}

/// Each request's headers (names lower-cased), in order of arrival.
type SeenHeaders = Arc<Mutex<Vec<Vec<(String, String)>>>>;

/// What the bundle server answers with.
#[derive(Clone)]
pub enum Serve {
    Bundle {
        body: Vec<u8>,
        etag: String,
    },
    Raw(Vec<u8>),
    /// Read the request, then answer nothing and keep the connection open (up to a minute).
    Hang,
}

/// A one-thread HTTP/1.1 server for a bundle, recording each request's `If-None-Match` and
/// its headers (names lower-cased).
pub struct BundleServer {
    pub url: String,
    serve: Arc<Mutex<Serve>>,
    pub seen_if_none_match: Arc<Mutex<Vec<Option<String>>>>,
    pub seen_headers: SeenHeaders,
}

impl BundleServer {
    pub fn start(initial: Serve) -> BundleServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!(
            "http://{}/apis/auth/v2/iam/opa-bundle.tar.gz",
            listener.local_addr().unwrap()
        );
        let serve = Arc::new(Mutex::new(initial));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let headers = Arc::new(Mutex::new(Vec::new()));
        let (serve2, seen2, headers2) = (serve.clone(), seen.clone(), headers.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let answer = serve2.lock().unwrap().clone();
                // A thread per connection, so a hanging answer holds up no other.
                let (seen, headers) = (seen2.clone(), headers2.clone());
                std::thread::spawn(move || respond(stream, answer, &seen, &headers));
            }
        });
        BundleServer {
            url,
            serve,
            seen_if_none_match: seen,
            seen_headers: headers,
        }
    }

    pub fn set(&self, serve: Serve) {
        *self.serve.lock().unwrap() = serve;
    }
}

fn respond(
    mut stream: TcpStream,
    answer: Serve,
    seen: &Mutex<Vec<Option<String>>>,
    seen_headers: &SeenHeaders,
) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.push((name.to_ascii_lowercase(), value.trim().to_string()));
        }
    }
    let if_none_match = headers
        .iter()
        .find(|(name, _)| name == "if-none-match")
        .map(|(_, value)| value.clone());
    seen.lock().unwrap().push(if_none_match.clone());
    seen_headers.lock().unwrap().push(headers);
    let (head, body) = match answer {
        Serve::Bundle { etag, .. } if if_none_match.as_deref() == Some(etag.as_str()) => (
            format!("HTTP/1.1 304 Not Modified\r\nETag: {etag}\r\n"),
            Vec::new(),
        ),
        Serve::Bundle { body, etag } => (format!("HTTP/1.1 200 OK\r\nETag: {etag}\r\n"), body),
        Serve::Raw(body) => ("HTTP/1.1 200 OK\r\n".to_string(), body),
        Serve::Hang => {
            std::thread::sleep(std::time::Duration::from_secs(60));
            return;
        }
    };
    let head = format!(
        "{head}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(&body);
}
