//! The HTTPS client of the Cradle API: pinned TLS, the bearer token, paging,
//! the event stream, and the API's JSON errors decoded into
//! [`ClientError::Api`] with the server's stable code. The CLI verbs use it,
//! and so does a node joining a cluster (`cluster::join`): neither imports
//! the other.
//!
//! Every connection verifies the server against one pinned CA (the cluster
//! CA `cradle login` saved, or `--ca-file`); verification cannot be turned
//! off. The one exception is [`fetch_ca_unverified`], which `cradle login`
//! uses to read the CA a server offers so that the user can pin it: it sends
//! no credential, and what it returns is trusted only once
//! [`check_pin`] agrees.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use reqwest::{header, Method, Url};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde::Deserialize;
use serde_json::Value;

use crate::tls;

/// How long to wait for a TCP connection and TLS handshake unless the
/// caller says otherwise (`cradle --timeout`).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one API call may take (not the event stream, which is endless),
/// or the connect timeout if that is longer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest response body read (one page of up to 10,000 objects fits).
pub const MAX_RESPONSE_BYTES: usize = 64 << 20;
/// Largest CA document accepted from `GET /api/v1/ca`.
pub const MAX_CA_BYTES: usize = 64 << 10;
/// Largest single server-sent event (an event carries one object).
pub const MAX_EVENT_BYTES: usize = 16 << 20;
/// Objects asked for per page when fetching a whole list.
pub const PAGE_SIZE: u64 = 1_000;
/// Pages one list may take (ten million objects): a stop for a server that
/// keeps handing out cursors.
pub const MAX_PAGES: usize = 10_000;
/// Longest non-JSON error text shown from a response.
const MAX_ERROR_TEXT: usize = 512;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server refused, with its JSON error body.
    #[error("{code}: {message}{}", field_note(.field.as_deref()))]
    Api {
        status: u16,
        code: String,
        message: String,
        field: Option<String>,
    },
    /// An error status without Cradle's JSON body (a proxy, or not Cradle).
    #[error("http_{status}: {text}")]
    Http { status: u16, text: String },
    #[error("{text:?} is not an API endpoint: {reason}")]
    Endpoint { text: String, reason: String },
    #[error("cannot reach {url}: {detail}")]
    Transport { url: String, detail: String },
    #[error("{url}: {detail}")]
    Response { url: String, detail: String },
    #[error("the cluster CA: {0}")]
    Ca(String),
    #[error("refusing the server: {0}")]
    Chain(String),
    #[error("building the HTTPS client: {0}")]
    Build(String),
    #[error("event stream: {0}")]
    Stream(String),
}

fn field_note(field: Option<&str>) -> String {
    field.map(|f| format!(" (field: {f})")).unwrap_or_default()
}

/// Turns an error response into [`ClientError::Api`] when it carries the
/// API's `{code, message, field}` body, otherwise [`ClientError::Http`] with
/// the start of whatever text it had.
pub fn decode_error(status: u16, body: &[u8]) -> ClientError {
    #[derive(Deserialize)]
    struct ErrorBody {
        code: String,
        message: String,
        #[serde(default)]
        field: Option<String>,
    }
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(e) => ClientError::Api {
            status,
            code: e.code,
            message: e.message,
            field: e.field.filter(|f| !f.is_empty()),
        },
        Err(_) => {
            let text: String = String::from_utf8_lossy(body)
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .take(MAX_ERROR_TEXT)
                .collect();
            let text = text.trim();
            let text = if text.is_empty() {
                reqwest::StatusCode::from_u16(status)
                    .ok()
                    .and_then(|s| s.canonical_reason())
                    .unwrap_or("no error text")
                    .to_string()
            } else {
                text.to_string()
            };
            ClientError::Http { status, text }
        }
    }
}

/// Every message in an error's chain, outermost first, without the
/// repetitions layered HTTP errors tend to have.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut current = Some(error);
    while let Some(e) = current {
        let text = e.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        current = e.source();
    }
    if parts.len() > 1 && parts[0].starts_with("error sending request") {
        parts.remove(0);
    }
    parts.join(": ")
}

/// A transport failure, with a hint when it is a usual certificate problem.
fn transport(url: &Url, error: &reqwest::Error) -> ClientError {
    let mut detail = with_certificate_hint(error_chain(error));
    if error.is_timeout() {
        detail.push_str(
            " (no answer in time: is the member up and reachable? `--timeout` sets how long to wait)",
        );
    }
    ClientError::Transport {
        url: without_query(url),
        detail,
    }
}

/// Appends what to do about the certificate errors people run into.
fn with_certificate_hint(mut detail: String) -> String {
    let lower = detail.to_ascii_lowercase();
    if [
        "unknownissuer",
        "unknown issuer",
        "badsignature",
        "bad signature",
    ]
    .iter()
    .any(|p| lower.contains(p))
    {
        detail.push_str(
            " (the server's certificate is not issued by the pinned cluster CA: another cluster, or a rebuilt one? Run `cradle login` again)",
        );
    } else if ["notvalidforname", "not valid for name"]
        .iter()
        .any(|p| lower.contains(p))
    {
        detail.push_str(
            " (the server's certificate does not name this host: connect by a name or address it lists, or add one with the server's --tls-san)",
        );
    }
    detail
}

fn without_query(url: &Url) -> String {
    let mut url = url.clone();
    url.set_query(None);
    url.to_string()
}

/// The API base: `https://host[:port]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    url: Url,
}

impl Endpoint {
    /// Accepts `https://host:port`, or `host:port` meaning the same; refuses
    /// plain HTTP, credentials in the URL, and paths.
    pub fn parse(text: &str) -> Result<Endpoint, ClientError> {
        let fail = |reason: &str| ClientError::Endpoint {
            text: text.to_string(),
            reason: reason.to_string(),
        };
        let trimmed = text.trim();
        let with_scheme = if trimmed.contains("://") {
            trimmed.to_string()
        } else {
            format!("https://{trimmed}")
        };
        let url = Url::parse(&with_scheme).map_err(|e| fail(&e.to_string()))?;
        if url.scheme() != "https" {
            return Err(fail("the API is HTTPS only (https://host:port)"));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(fail("no host"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(fail(
                "credentials do not belong in the URL; use --user or a token",
            ));
        }
        if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
            return Err(fail("give only https://host:port, without a path"));
        }
        Ok(Endpoint { url })
    }

    /// The URL of an API route: `/api/v1/<path…>?<query>`, each path segment
    /// percent-encoded (a key holding `/` stays one segment).
    pub fn api_url(&self, path: &[&str], query: &[(String, String)]) -> Url {
        let mut url = self.url.clone();
        // An https URL with a host always has path segments.
        if let Ok(mut segments) = url.path_segments_mut() {
            segments.clear().push("api").push("v1").extend(path);
        }
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        url
    }

    /// The name the server's certificate must carry.
    fn server_name(&self) -> Result<ServerName<'static>, ClientError> {
        let host = self
            .url
            .host_str()
            .unwrap_or_default()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        ServerName::try_from(host.clone()).map_err(|_| ClientError::Endpoint {
            text: host,
            reason: "not a valid host name".into(),
        })
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.url.as_str().trim_end_matches('/'))
    }
}

/// A request body.
#[derive(Debug, Clone)]
pub enum Body {
    Empty,
    Json(Value),
    /// An RFC 6902 patch, sent as `application/json-patch+json`.
    JsonPatch(Value),
}

/// A successful response.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The JSON body; `null` when there was none.
    pub body: Value,
    /// `X-Next-Cursor`: more list items remain.
    pub next_cursor: Option<String>,
}

fn http_client(
    config: rustls::ClientConfig,
    connect_timeout: Duration,
) -> Result<reqwest::Client, ClientError> {
    reqwest::Client::builder()
        .use_preconfigured_tls(config)
        .connect_timeout(connect_timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("cradle/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| ClientError::Build(error_chain(&e)))
}

/// A client of one member's API that trusts only the pinned CA.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    endpoint: Endpoint,
    token: Option<String>,
    request_timeout: Duration,
}

impl Client {
    /// A client verifying the server against `ca_pem` and sending `token`
    /// as `Authorization: Bearer` (when given). `connect_timeout` bounds the
    /// TCP connection and TLS handshake.
    pub fn new(
        endpoint: Endpoint,
        ca_pem: &str,
        token: Option<String>,
        connect_timeout: Duration,
    ) -> Result<Client, ClientError> {
        let config =
            tls::client_config_for_ca(ca_pem).map_err(|e| ClientError::Ca(e.to_string()))?;
        Ok(Client {
            http: http_client(config, connect_timeout)?,
            endpoint,
            token,
            request_timeout: REQUEST_TIMEOUT.max(connect_timeout),
        })
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// One API call. `if_match` sends `If-Match: "<revision>"`.
    pub async fn call(
        &self,
        method: Method,
        path: &[&str],
        query: &[(String, String)],
        body: Body,
        if_match: Option<u64>,
    ) -> Result<Reply, ClientError> {
        let url = self.endpoint.api_url(path, query);
        let mut request = self
            .http
            .request(method, url.clone())
            .timeout(self.request_timeout)
            .header(header::ACCEPT, "application/json");
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(revision) = if_match {
            request = request.header(header::IF_MATCH, format!("\"{revision}\""));
        }
        request = match body {
            Body::Empty => request,
            Body::Json(value) => request.json(&value),
            Body::JsonPatch(value) => request
                .header(header::CONTENT_TYPE, "application/json-patch+json")
                .body(value.to_string()),
        };
        let response = request.send().await.map_err(|e| transport(&url, &e))?;
        reply(&url, response).await
    }

    pub async fn get(
        &self,
        path: &[&str],
        query: &[(String, String)],
    ) -> Result<Reply, ClientError> {
        self.call(Method::GET, path, query, Body::Empty, None).await
    }

    /// `GET /api/v1/{kind}`, page after page as `pager` plans them.
    pub async fn list(&self, kind: &str, mut pager: Pager) -> Result<Vec<Value>, ClientError> {
        let mut items = Vec::new();
        while let Some(query) = pager.next_query() {
            let reply = self.get(&[kind], &query).await?;
            let url = without_query(&self.endpoint.api_url(&[kind], &[]));
            let page = match reply.body {
                Value::Array(page) => page,
                _ => {
                    return Err(ClientError::Response {
                        url,
                        detail: "expected a JSON list".into(),
                    })
                }
            };
            pager
                .record(page.len(), reply.next_cursor)
                .map_err(|detail| ClientError::Response { url, detail })?;
            items.extend(page);
        }
        Ok(items)
    }

    /// `POST /api/v1/auth/token` with HTTP Basic credentials.
    pub async fn issue_token(
        &self,
        user: &str,
        password: &str,
        request: &Value,
    ) -> Result<Value, ClientError> {
        let url = self.endpoint.api_url(&["auth", "token"], &[]);
        let response = self
            .http
            .post(url.clone())
            .timeout(self.request_timeout)
            .basic_auth(user, Some(password))
            .json(request)
            .send()
            .await
            .map_err(|e| transport(&url, &e))?;
        Ok(reply(&url, response).await?.body)
    }

    /// Opens `GET /api/v1/events` (server-sent events). An error status is
    /// decoded; a success is returned for the caller to read with
    /// [`SseParser`].
    pub async fn open_events(
        &self,
        query: &[(String, String)],
    ) -> Result<reqwest::Response, ClientError> {
        let url = self.endpoint.api_url(&["events"], query);
        let mut request = self
            .http
            .get(url.clone())
            .header(header::ACCEPT, "text/event-stream");
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.map_err(|e| transport(&url, &e))?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status().as_u16();
        let body = read_limited(&url, response, MAX_RESPONSE_BYTES).await?;
        Err(decode_error(status, &body))
    }
}

async fn reply(url: &Url, response: reqwest::Response) -> Result<Reply, ClientError> {
    let status = response.status();
    let next_cursor = response
        .headers()
        .get("x-next-cursor")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .filter(|c| !c.is_empty());
    let bytes = read_limited(url, response, MAX_RESPONSE_BYTES).await?;
    if !status.is_success() {
        return Err(decode_error(status.as_u16(), &bytes));
    }
    let body = if bytes.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Response {
            url: without_query(url),
            detail: format!("the answer is not JSON: {e}"),
        })?
    };
    Ok(Reply { body, next_cursor })
}

async fn read_limited(
    url: &Url,
    mut response: reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, ClientError> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| transport(url, &e))? {
        if body.len() + chunk.len() > limit {
            return Err(ClientError::Response {
                url: without_query(url),
                detail: format!("the answer is larger than {limit} bytes"),
            });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Why a server's CA is not trusted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PinError {
    #[error("not trusting the server yet: its CA fingerprint is {presented}. Compare it with the fingerprint the cluster's first node printed; if they are the same, re-run with --ca-hash {presented}")]
    Unpinned { presented: String },
    #[error("refusing the server: its CA fingerprint is {presented}, not {expected} as --ca-hash says (a different cluster, or someone in between)")]
    HashMismatch { expected: String, presented: String },
    #[error("refusing the server: its CA fingerprint is {presented}, but the CA in --ca-file is {expected} (a different cluster, or someone in between)")]
    FileMismatch { expected: String, presented: String },
}

/// clap value parser for `--ca-hash`: `sha256:` and 64 hex digits (the
/// prefix may be left out), normalized to lower case.
pub fn parse_ca_hash(text: &str) -> Result<String, String> {
    let text = text.trim();
    let hex = text.strip_prefix("sha256:").unwrap_or(text);
    if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(format!(
            "{text:?} is not a CA fingerprint (expected sha256: and 64 hex digits)"
        ));
    }
    Ok(format!("sha256:{}", hex.to_ascii_lowercase()))
}

/// Decides whether the CA with fingerprint `presented` may be trusted: only
/// if it equals every pin the user gave (`--ca-hash`, the fingerprint of the
/// `--ca-file` certificate), and never when no pin was given.
pub fn check_pin(
    presented: &str,
    ca_hash: Option<&str>,
    ca_file_fingerprint: Option<&str>,
) -> Result<(), PinError> {
    if ca_hash.is_none() && ca_file_fingerprint.is_none() {
        return Err(PinError::Unpinned {
            presented: presented.to_string(),
        });
    }
    if let Some(expected) = ca_hash {
        let expected = parse_ca_hash(expected).unwrap_or_else(|_| expected.to_string());
        if !expected.eq_ignore_ascii_case(presented) {
            return Err(PinError::HashMismatch {
                expected,
                presented: presented.to_string(),
            });
        }
    }
    if let Some(expected) = ca_file_fingerprint {
        if !expected.eq_ignore_ascii_case(presented) {
            return Err(PinError::FileMismatch {
                expected: expected.to_string(),
                presented: presented.to_string(),
            });
        }
    }
    Ok(())
}

/// Plans the requests that fetch a list, following the server's paging
/// rules: a cursor pages in key order only, so a sorted list pages by offset.
#[derive(Debug, Clone)]
pub struct Pager {
    base: Vec<(String, String)>,
    mode: PageMode,
    offset: u64,
    cursor: Option<String>,
    pages: usize,
    done: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PageMode {
    /// `--limit` given: one page, exactly as asked.
    Single { limit: u64 },
    /// Sorted: `limit=PAGE_SIZE&offset=…` until a short page.
    Offset,
    /// Key order: follow `X-Next-Cursor`.
    Cursor,
}

impl Pager {
    /// `consistent` asks the first page for a linearizable read.
    pub fn new(
        filters: &[(String, String)],
        sort: Option<&str>,
        descending: bool,
        limit: Option<u64>,
        offset: u64,
        consistent: bool,
    ) -> Pager {
        let mut base: Vec<(String, String)> = filters.to_vec();
        if let Some(sort) = sort {
            base.push(("sort".into(), sort.to_string()));
        }
        if descending {
            base.push(("desc".into(), "true".into()));
        }
        let mode = match limit {
            Some(limit) => PageMode::Single { limit },
            None if sort.is_some() || descending => PageMode::Offset,
            None => PageMode::Cursor,
        };
        let mut pager = Pager {
            base,
            mode,
            offset,
            cursor: None,
            pages: 0,
            done: false,
        };
        if consistent {
            pager.base.push(("consistent".into(), "true".into()));
        }
        pager
    }

    /// The next page's query, or `None` when the list is complete.
    pub fn next_query(&mut self) -> Option<Vec<(String, String)>> {
        if self.done {
            return None;
        }
        let mut query = self.base.clone();
        if self.pages > 0 {
            // Only the first page needs the read barrier.
            query.retain(|(name, _)| name != "consistent");
        }
        let limit = match self.mode {
            PageMode::Single { limit } => limit,
            PageMode::Offset | PageMode::Cursor => PAGE_SIZE,
        };
        query.push(("limit".into(), limit.to_string()));
        match &self.cursor {
            Some(cursor) => query.push(("cursor".into(), cursor.clone())),
            None if self.offset > 0 => query.push(("offset".into(), self.offset.to_string())),
            None => {}
        }
        Some(query)
    }

    /// Takes in what a page returned. Errs if the server repeats a cursor or
    /// the list runs past [`MAX_PAGES`].
    pub fn record(&mut self, items: usize, next_cursor: Option<String>) -> Result<(), String> {
        self.pages += 1;
        match self.mode {
            PageMode::Single { .. } => self.done = true,
            PageMode::Offset => {
                self.offset += items as u64;
                self.done = (items as u64) < PAGE_SIZE;
            }
            PageMode::Cursor => match next_cursor {
                Some(cursor) if self.cursor.as_ref() == Some(&cursor) => {
                    return Err(format!("the server repeated the cursor {cursor:?}"));
                }
                Some(cursor) => self.cursor = Some(cursor),
                None => self.done = true,
            },
        }
        if !self.done && self.pages >= MAX_PAGES {
            return Err(format!(
                "more than {MAX_PAGES} pages; narrow the list with filters or --limit"
            ));
        }
        Ok(())
    }
}

/// One server-sent event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field; `message` when absent.
    pub event: String,
    pub id: Option<String>,
    pub data: String,
}

/// Incremental parser of a `text/event-stream` body (the subset the WHATWG
/// spec defines for `event`, `data` and `id`; `retry` and comments are
/// ignored). Bytes may arrive split anywhere.
#[derive(Debug, Default)]
pub struct SseParser {
    line: Vec<u8>,
    event: String,
    id: Option<String>,
    data: String,
    has_data: bool,
}

impl SseParser {
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Vec<SseEvent>, ClientError> {
        let mut events = Vec::new();
        for &byte in bytes {
            if byte != b'\n' {
                self.line.push(byte);
                if self.line.len() + self.data.len() > MAX_EVENT_BYTES {
                    return Err(ClientError::Stream(format!(
                        "an event is larger than {MAX_EVENT_BYTES} bytes"
                    )));
                }
                continue;
            }
            let mut line = std::mem::take(&mut self.line);
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            let line = String::from_utf8(line)
                .map_err(|_| ClientError::Stream("an event is not UTF-8 text".into()))?;
            if let Some(event) = self.line_done(&line) {
                events.push(event);
            }
        }
        Ok(events)
    }

    fn line_done(&mut self, line: &str) -> Option<SseEvent> {
        if line.is_empty() {
            let event = std::mem::take(&mut self.event);
            let data = std::mem::take(&mut self.data);
            if !std::mem::take(&mut self.has_data) {
                return None;
            }
            return Some(SseEvent {
                event: if event.is_empty() {
                    "message".into()
                } else {
                    event
                },
                id: self.id.clone(),
                data,
            });
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            "event" => self.event = value.to_string(),
            "id" if !value.contains('\0') => self.id = Some(value.to_string()),
            _ => {}
        }
        None
    }
}

/// What a server showed before it was trusted.
#[derive(Debug, Clone)]
pub struct UnverifiedCa {
    /// The body of `GET /api/v1/ca`.
    pub ca_pem: String,
    /// The certificate chain the server presented in the handshake,
    /// end-entity first.
    pub presented: Vec<CertificateDer<'static>>,
}

/// Reads the CA a server offers, over a connection whose certificate is not
/// yet trusted. Only for `cradle login`, before the user's pin is checked:
/// nothing secret is sent, and nothing received is trusted until
/// [`check_pin`] accepts the CA's fingerprint.
pub async fn fetch_ca_unverified(
    endpoint: &Endpoint,
    connect_timeout: Duration,
) -> Result<UnverifiedCa, ClientError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let recorder = Arc::new(RecordingVerifier {
        provider: provider.clone(),
        presented: Mutex::new(Vec::new()),
    });
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Build(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(recorder.clone())
        .with_no_client_auth();
    let http = http_client(config, connect_timeout)?;
    let url = endpoint.api_url(&["ca"], &[]);
    let response = http
        .get(url.clone())
        .timeout(REQUEST_TIMEOUT.max(connect_timeout))
        .send()
        .await
        .map_err(|e| transport(&url, &e))?;
    let status = response.status();
    let body = read_limited(&url, response, MAX_CA_BYTES).await?;
    if !status.is_success() {
        return Err(decode_error(status.as_u16(), &body));
    }
    let ca_pem = String::from_utf8(body).map_err(|_| ClientError::Response {
        url: url.to_string(),
        detail: "the CA is not PEM text".into(),
    })?;
    let presented = recorder
        .presented
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    Ok(UnverifiedCa { ca_pem, presented })
}

/// Checks that the chain a server presented is valid for `endpoint` under
/// `ca_pem` (the CA it served), so a CA that does not belong to the server
/// is refused before any credential is sent.
pub fn check_presented_chain(
    endpoint: &Endpoint,
    presented: &[CertificateDer<'static>],
    ca_pem: &str,
) -> Result<(), ClientError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in tls::parse_certs(ca_pem, std::path::Path::new("/api/v1/ca"))
        .map_err(|e| ClientError::Ca(e.to_string()))?
    {
        roots
            .add(cert)
            .map_err(|e| ClientError::Ca(e.to_string()))?;
    }
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .map_err(|e| ClientError::Ca(e.to_string()))?;
    let (end_entity, intermediates) = presented
        .split_first()
        .ok_or_else(|| ClientError::Chain("it presented no certificate".into()))?;
    verifier
        .verify_server_cert(
            end_entity,
            intermediates,
            &endpoint.server_name()?,
            &[],
            UnixTime::now(),
        )
        .map(|_| ())
        .map_err(|e| {
            ClientError::Chain(with_certificate_hint(format!(
                "the certificate it presented is not valid for {endpoint} under the CA it serves: {e}"
            )))
        })
}

/// A verifier that accepts any certificate chain and remembers it, while
/// still checking the handshake signatures (so the server holds the key of
/// the certificate it showed). Used only by [`fetch_ca_unverified`].
#[derive(Debug)]
struct RecordingVerifier {
    provider: Arc<CryptoProvider>,
    presented: Mutex<Vec<CertificateDer<'static>>>,
}

impl ServerCertVerifier for RecordingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let chain = std::iter::once(end_entity)
            .chain(intermediates)
            .map(|c| c.clone().into_owned())
            .collect();
        *self
            .presented
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = chain;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn error_bodies() {
        let check = |status: u16, body: &str, expected: &str| {
            assert_eq!(decode_error(status, body.as_bytes()).to_string(), expected)
        };
        check(
            409,
            r#"{"code": "conflict", "message": "revision is 7", "field": "revision"}"#,
            "conflict: revision is 7 (field: revision)",
        );
        check(
            401,
            r#"{"code": "token_expired", "message": "log in again"}"#,
            "token_expired: log in again",
        );
        check(400, r#"{"code": "x", "message": "y", "field": ""}"#, "x: y");
        check(
            502,
            "<html>\nBad gateway</html>",
            "http_502: <html> Bad gateway</html>",
        );
        check(503, "", "http_503: Service Unavailable");
        check(
            404,
            r#"{"error": "nope"}"#,
            "http_404: {\"error\": \"nope\"}",
        );
        let long = "x".repeat(10_000);
        let ClientError::Http { text, .. } = decode_error(500, long.as_bytes()) else {
            panic!("expected Http")
        };
        assert_eq!(text.len(), MAX_ERROR_TEXT);
    }

    #[test]
    fn endpoints() {
        let check =
            |text: &str, expected: Result<&str, &str>| match (Endpoint::parse(text), expected) {
                (Ok(e), Ok(wanted)) => assert_eq!(e.to_string(), wanted),
                (Err(e), Err(wanted)) => {
                    let e = e.to_string();
                    assert!(e.contains(wanted), "{text}: {e}")
                }
                (got, wanted) => panic!("{text}: got {got:?}, wanted {wanted:?}"),
            };
        check("https://node1:8443", Ok("https://node1:8443"));
        check("https://node1:8443/", Ok("https://node1:8443"));
        check("node1:8443", Ok("https://node1:8443"));
        check(" 10.0.0.1:8443 ", Ok("https://10.0.0.1:8443"));
        check("https://[::1]:8443", Ok("https://[::1]:8443"));
        check("http://node1:8443", Err("HTTPS only"));
        check("https://admin:pw@node1:8443", Err("credentials"));
        check("https://node1:8443/api/v1", Err("without a path"));
        check("https://node1:8443?x=1", Err("without a path"));
        check("", Err("is not an API endpoint"));
        check("https://no de", Err("is not an API endpoint"));
    }

    #[test]
    fn api_urls_encode_keys_and_queries() {
        let endpoint = Endpoint::parse("https://node1:8443").unwrap();
        let check = |path: &[&str], query: &[(&str, &str)], expected: &str| {
            let query: Vec<(String, String)> = query
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect();
            assert_eq!(endpoint.api_url(path, &query).as_str(), expected);
        };
        check(&["machines"], &[], "https://node1:8443/api/v1/machines");
        check(
            &["profiles", "rack/a b", "params", "x?"],
            &[],
            "https://node1:8443/api/v1/profiles/rack%2Fa%20b/params/x%3F",
        );
        check(
            &["machines"],
            &[("name", "a&b"), ("params.rack", "r 1")],
            "https://node1:8443/api/v1/machines?name=a%26b&params.rack=r+1",
        );
        assert_eq!(
            endpoint.server_name().unwrap(),
            ServerName::try_from("node1").unwrap()
        );
        let v6 = Endpoint::parse("https://[::1]:8443").unwrap();
        assert!(matches!(
            v6.server_name().unwrap(),
            ServerName::IpAddress(_)
        ));
    }

    #[test]
    fn pages_follow_cursors_or_offsets() {
        // Runs the pager against a fake list of `total` keys served in pages.
        fn run(mut pager: Pager, total: usize) -> Result<Vec<Vec<(String, String)>>, String> {
            let mut queries = Vec::new();
            while let Some(query) = pager.next_query() {
                let get = |name: &str| {
                    query
                        .iter()
                        .find(|(n, _)| n == name)
                        .map(|(_, v)| v.clone())
                };
                let limit: usize = get("limit").map_or(1_000, |l| l.parse().unwrap());
                let start: usize = match get("cursor") {
                    Some(c) => c.parse::<usize>().unwrap() + 1,
                    None => get("offset").map_or(0, |o| o.parse().unwrap()),
                };
                let end = total.min(start + limit);
                let items = end.saturating_sub(start);
                let cursor = (end < total && get("sort").is_none() && get("desc").is_none())
                    .then(|| (end - 1).to_string());
                queries.push(query);
                pager.record(items, cursor)?;
            }
            Ok(queries)
        }
        let q = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect()
        };
        let rack = [("params.rack".to_string(), "r1".to_string())];

        assert_eq!(
            run(Pager::new(&rack, None, false, None, 0, true), 2_500).unwrap(),
            vec![
                q(&[
                    ("params.rack", "r1"),
                    ("consistent", "true"),
                    ("limit", "1000")
                ]),
                q(&[("params.rack", "r1"), ("limit", "1000"), ("cursor", "999")]),
                q(&[("params.rack", "r1"), ("limit", "1000"), ("cursor", "1999")]),
            ]
        );
        assert_eq!(
            run(Pager::new(&[], None, false, None, 10, false), 5).unwrap(),
            vec![q(&[("limit", "1000"), ("offset", "10")])]
        );
        assert_eq!(
            run(Pager::new(&[], Some("name"), true, None, 0, false), 2_000).unwrap(),
            vec![
                q(&[("sort", "name"), ("desc", "true"), ("limit", "1000")]),
                q(&[
                    ("sort", "name"),
                    ("desc", "true"),
                    ("limit", "1000"),
                    ("offset", "1000")
                ]),
                q(&[
                    ("sort", "name"),
                    ("desc", "true"),
                    ("limit", "1000"),
                    ("offset", "2000")
                ]),
            ]
        );
        assert_eq!(
            run(Pager::new(&[], None, false, Some(5), 3, true), 2_000).unwrap(),
            vec![q(&[
                ("consistent", "true"),
                ("limit", "5"),
                ("offset", "3")
            ])]
        );

        let mut stuck = Pager::new(&[], None, false, None, 0, false);
        stuck.next_query();
        stuck.record(1_000, Some("c".into())).unwrap();
        stuck.next_query();
        assert!(stuck
            .record(1_000, Some("c".into()))
            .unwrap_err()
            .contains("repeated"));
    }

    #[test]
    fn server_sent_events_split_anywhere() {
        let stream = ": keep-alive\n\nid: 7\nevent: created\ndata: {\"revision\":7}\n\nid: 8\r\nevent: deleted\r\ndata: line1\r\ndata:line2\r\n\r\nretry: 5\nunknown\ndata\n\n";
        let expected = vec![
            SseEvent {
                event: "created".into(),
                id: Some("7".into()),
                data: "{\"revision\":7}".into(),
            },
            SseEvent {
                event: "deleted".into(),
                id: Some("8".into()),
                data: "line1\nline2".into(),
            },
            SseEvent {
                event: "message".into(),
                id: Some("8".into()),
                data: "".into(),
            },
        ];
        for chunk in [1, 2, 3, 7, stream.len()] {
            let mut parser = SseParser::default();
            let mut events = Vec::new();
            for piece in stream.as_bytes().chunks(chunk) {
                events.extend(parser.feed(piece).unwrap());
            }
            assert_eq!(events, expected, "chunk size {chunk}");
        }
        let mut parser = SseParser::default();
        assert!(parser.feed(&[b'd', 0xff, b'\n']).is_err());
        let mut parser = SseParser::default();
        let huge = vec![b'x'; MAX_EVENT_BYTES + 1];
        assert!(parser
            .feed(&huge)
            .unwrap_err()
            .to_string()
            .contains("larger than"));
    }

    /// A stand-in for a Cradle node: its TLS identity and a few routes.
    async fn serve(
        identity: &tls::ServerIdentity,
    ) -> (std::net::SocketAddr, tokio::sync::watch::Sender<bool>) {
        use axum::http::{HeaderMap, StatusCode};
        use axum::response::IntoResponse;
        use axum::routing::{get, post};

        let ca_pem = identity.ca_pem.clone();
        let app = axum::Router::new()
            .route("/api/v1/ca", get(move || async move { ca_pem }))
            .route(
                "/api/v1/auth/token",
                post(|headers: HeaderMap| async move {
                    // "admin:secret"
                    if headers.get("authorization").and_then(|v| v.to_str().ok())
                        == Some("Basic YWRtaW46c2VjcmV0")
                    {
                        axum::Json(json!({"token": "t0k", "info": {"id": "i1", "expires_at_unix": 9}}))
                            .into_response()
                    } else {
                        (
                            StatusCode::UNAUTHORIZED,
                            axum::Json(json!({"code": "unauthorized", "message": "wrong user name or password"})),
                        )
                            .into_response()
                    }
                }),
            )
            .route(
                "/api/v1/machines",
                get(|headers: HeaderMap, query: axum::extract::RawQuery| async move {
                    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some("Bearer t0k") {
                        return (
                            StatusCode::UNAUTHORIZED,
                            axum::Json(json!({"code": "unauthorized", "message": "a bearer token is required"})),
                        )
                            .into_response();
                    }
                    let query = query.0.unwrap_or_default();
                    if query.contains("cursor=m2") {
                        axum::Json(json!([{"uuid": "m3"}])).into_response()
                    } else {
                        ([("x-next-cursor", "m2")], axum::Json(json!([{"uuid": "m1"}, {"uuid": "m2"}])))
                            .into_response()
                    }
                }),
            );
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let limits = crate::api::listener::Limits {
            max_connections: 64,
            max_connections_per_source: 64,
            handshake_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            drain_timeout: Duration::from_secs(1),
        };
        let listener = crate::api::listener::Listener::new(
            tcp,
            Arc::new(identity.server_config().unwrap()),
            app,
            limits,
        );
        let (stop, stopped) = crate::service::Shutdown::new();
        tokio::spawn(crate::service::Service::run(listener, stopped));
        (addr, stop)
    }

    #[tokio::test]
    async fn pinned_tls_against_a_live_server() {
        tls::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let identity = tls::load_or_create(dir.path(), "cradle-node-1", &[]).unwrap();
        let (other_ca, _) = tls::generate_ca("someone else").unwrap();
        let (addr, stop) = serve(&identity).await;
        let endpoint = Endpoint::parse(&format!("https://127.0.0.1:{}", addr.port())).unwrap();

        // Before trust: the CA is read and the presented chain recorded.
        let offered = fetch_ca_unverified(&endpoint, CONNECT_TIMEOUT)
            .await
            .unwrap();
        assert_eq!(offered.ca_pem, identity.ca_pem);
        assert_eq!(offered.presented, identity.chain);
        check_presented_chain(&endpoint, &offered.presented, &offered.ca_pem).unwrap();
        let error = check_presented_chain(&endpoint, &offered.presented, &other_ca).unwrap_err();
        assert!(
            error.to_string().starts_with("refusing the server:"),
            "{error}"
        );
        let wrong_name = Endpoint::parse(&format!("https://127.0.0.2:{}", addr.port())).unwrap();
        let error = check_presented_chain(&wrong_name, &offered.presented, &offered.ca_pem)
            .unwrap_err()
            .to_string();
        assert!(error.contains("does not name this host"), "{error}");

        // Pinned: credentials, bearer tokens, paging and errors.
        let anonymous =
            Client::new(endpoint.clone(), &identity.ca_pem, None, CONNECT_TIMEOUT).unwrap();
        let error = anonymous
            .issue_token("admin", "wrong", &json!({}))
            .await
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "unauthorized: wrong user name or password"
        );
        let grant = anonymous
            .issue_token("admin", "secret", &json!({}))
            .await
            .unwrap();
        assert_eq!(grant["token"], "t0k");
        let error = anonymous
            .list("machines", Pager::new(&[], None, false, None, 0, true))
            .await;
        assert!(
            matches!(error, Err(ClientError::Api { status: 401, .. })),
            "{error:?}"
        );

        let client = Client::new(
            endpoint.clone(),
            &identity.ca_pem,
            Some("t0k".into()),
            CONNECT_TIMEOUT,
        )
        .unwrap();
        let all = client
            .list("machines", Pager::new(&[], None, false, None, 0, true))
            .await
            .unwrap();
        assert_eq!(
            all,
            vec![
                json!({"uuid": "m1"}),
                json!({"uuid": "m2"}),
                json!({"uuid": "m3"})
            ]
        );
        let error = client.get(&["nothing"], &[]).await.unwrap_err();
        assert!(
            matches!(error, ClientError::Http { status: 404, .. }),
            "{error:?}"
        );

        // A server under another CA is refused, with the reason.
        let stranger =
            Client::new(endpoint, &other_ca, Some("t0k".into()), CONNECT_TIMEOUT).unwrap();
        let error = stranger
            .get(&["machines"], &[])
            .await
            .unwrap_err()
            .to_string();
        assert!(error.contains("cannot reach https://127.0.0.1:"), "{error}");
        assert!(
            error.contains("not issued by the pinned cluster CA"),
            "{error}"
        );
        let _ = stop.send(true);
    }
}
