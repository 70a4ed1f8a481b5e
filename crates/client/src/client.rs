//! [`Client`] and [`ClientBuilder`]: the base URL, the timeouts, and one request path that
//! every route goes through (URL building, JSON in and out, errors).

use std::time::Duration;

use reqwest::{Method, StatusCode, Url};
use serde::Serialize;
use serde::de::DeserializeOwned;

use tollgate_api::ErrorEnvelope;

use crate::error::{Error, api_error, root_cause};

/// The default timeout of a call, on top of any wait it asks the server for.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// The default time to wait for a connection to the server.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A Tollgate server, reached over HTTP. Cheap to clone: clones share connections.
///
/// Every call is one request. Calls that ask the server to wait (`wait_ms` in
/// [`Client::acquire`] and [`Client::worker_lease`], `timeout_ms` in
/// [`Client::barrier_wait`]) get that wait added to their timeout, so a long poll is never cut
/// short by the client.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: Url,
    timeout: Duration,
    /// `Bearer <token>`, marked sensitive (never shown in `Debug`).
    authorization: Option<reqwest::header::HeaderValue>,
}

/// Configures a [`Client`]: timeouts, and a `reqwest::Client` to share.
///
/// ```
/// use std::time::Duration;
/// let client = tollgate_client::Client::builder()
///     .base_url("http://127.0.0.1:7070")
///     .timeout(Duration::from_secs(10))
///     .connect_timeout(Duration::from_secs(2))
///     .build()?;
/// # Ok::<(), tollgate_client::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    base_url: String,
    timeout: Duration,
    connect_timeout: Duration,
    http: Option<reqwest::Client>,
    token: Option<Token>,
    /// PEM certificates of private CAs to trust besides the system's roots.
    ca_certs: Vec<Vec<u8>>,
}

/// A token's secret; `Debug` never shows it.
#[derive(Clone)]
struct Token(String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl Default for ClientBuilder {
    fn default() -> ClientBuilder {
        ClientBuilder {
            base_url: "http://127.0.0.1:7070".to_owned(),
            timeout: DEFAULT_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            http: None,
            token: None,
            ca_certs: Vec::new(),
        }
    }
}

impl ClientBuilder {
    /// The server's base URL (default `http://127.0.0.1:7070`, where `tollgate serve`
    /// listens). A path is kept as a prefix (`http://proxy/tollgate/` → `/tollgate/v1/…`).
    #[must_use]
    pub fn base_url(mut self, url: impl Into<String>) -> ClientBuilder {
        self.base_url = url.into();
        self
    }

    /// How long a call may take, on top of any wait it asks the server for (default
    /// [`DEFAULT_TIMEOUT`]).
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> ClientBuilder {
        self.timeout = timeout;
        self
    }

    /// How long to wait for a connection (default [`DEFAULT_CONNECT_TIMEOUT`]). Applies only
    /// to the HTTP client the builder makes, not to one given with
    /// [`ClientBuilder::http_client`].
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> ClientBuilder {
        self.connect_timeout = timeout;
        self
    }

    /// Sends through `http` instead of a client of its own: to share its connection pool, or
    /// its TLS, proxy and header settings. Its own timeout, if it has one, still applies.
    #[must_use]
    pub fn http_client(mut self, http: reqwest::Client) -> ClientBuilder {
        self.http = Some(http);
        self
    }

    /// Sends `Authorization: Bearer <secret>` with every call: the token of a server started
    /// with `--tokens-file` (docs/http-api.md, "Access control").
    #[must_use]
    pub fn token(mut self, secret: impl Into<String>) -> ClientBuilder {
        self.token = Some(Token(secret.into()));
        self
    }

    /// Trusts the CA certificate(s) in `pem` for `https://` servers, besides the system's
    /// roots: for a server whose certificate a private CA signed. Applies only to the HTTP
    /// client the builder makes.
    #[must_use]
    pub fn ca_certificate(mut self, pem: impl Into<Vec<u8>>) -> ClientBuilder {
        self.ca_certs.push(pem.into());
        self
    }

    /// The client.
    ///
    /// # Errors
    /// [`Error::InvalidUrl`] for a base URL that is not `http` or `https` with a host, or
    /// that has a query or fragment; [`Error::InvalidToken`] for a token that cannot be sent
    /// in a header; [`Error::InvalidCertificate`] for a CA file with no PEM certificate;
    /// [`Error::Build`] when the HTTP client cannot be made.
    pub fn build(self) -> Result<Client, Error> {
        let base = parse_base(&self.base_url)?;
        let http = match self.http {
            Some(http) => http,
            None => {
                let mut builder = reqwest::Client::builder().connect_timeout(self.connect_timeout);
                for pem in &self.ca_certs {
                    let certs = reqwest::Certificate::from_pem_bundle(pem).map_err(Error::Build)?;
                    if certs.is_empty() {
                        return Err(Error::InvalidCertificate);
                    }
                    for cert in certs {
                        builder = builder.add_root_certificate(cert);
                    }
                }
                builder.build().map_err(Error::Build)?
            }
        };
        let authorization = match self.token {
            Some(Token(secret)) => {
                let mut value =
                    reqwest::header::HeaderValue::from_str(&format!("Bearer {}", secret.trim()))
                        .map_err(|_| Error::InvalidToken)?;
                value.set_sensitive(true);
                Some(value)
            }
            None => None,
        };
        Ok(Client {
            http,
            base,
            timeout: self.timeout,
            authorization,
        })
    }
}

fn parse_base(given: &str) -> Result<Url, Error> {
    let invalid = |reason: &str| Error::InvalidUrl {
        url: given.to_owned(),
        reason: reason.to_owned(),
    };
    let url = Url::parse(given).map_err(|e| invalid(&e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid("the scheme must be http or https"));
    }
    if url.host_str().is_none_or(str::is_empty) || url.cannot_be_a_base() {
        return Err(invalid("it has no host"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid("a base URL takes no query or fragment"));
    }
    Ok(url)
}

/// A duration in whole milliseconds, rounded up (a wait or time to live of 1.5 ms is 2 ms,
/// never 1, and never 0 for a non-zero one), saturating.
pub(crate) fn millis_ceil(d: Duration) -> u64 {
    let ms = d.as_nanos().div_ceil(1_000_000);
    u64::try_from(ms).unwrap_or(u64::MAX)
}

impl Client {
    /// A client for the server at `base_url` (`http://127.0.0.1:7070`), with the default
    /// timeouts.
    ///
    /// ```
    /// let client = tollgate_client::Client::new("http://127.0.0.1:7070")?;
    /// assert!(tollgate_client::Client::new("127.0.0.1:7070").is_err()); // no scheme
    /// # Ok::<(), tollgate_client::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`ClientBuilder::build`].
    pub fn new(base_url: impl Into<String>) -> Result<Client, Error> {
        Client::builder().base_url(base_url).build()
    }

    /// A builder, for timeouts and a shared `reqwest::Client`.
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }

    /// The server's base URL.
    pub fn base_url(&self) -> &Url {
        &self.base
    }

    /// The URL of `segments` under the base, each one percent-encoded as one path segment
    /// (a key `a/b` stays one segment).
    pub(crate) fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        // `parse_base` refused URLs that cannot be a base, the only case where this fails.
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    /// Sends one request and reads its JSON answer. `wait` is how long the server may hold
    /// the request on purpose; it is added to the timeout.
    pub(crate) async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        url: Url,
        body: Option<&(impl Serialize + ?Sized)>,
        wait: Duration,
    ) -> Result<T, Error> {
        let (status, bytes, method, url) = self.send(method, url, body, wait).await?;
        serde_json::from_slice(&bytes).map_err(|e| Error::Decode {
            method,
            url,
            status: status.as_u16(),
            reason: format!("{e}; the body starts {}", snippet(&bytes)),
        })
    }

    /// Sends one request whose answer has no body worth reading (`204`).
    pub(crate) async fn call_empty(
        &self,
        method: Method,
        url: Url,
        body: Option<&(impl Serialize + ?Sized)>,
    ) -> Result<(), Error> {
        self.send(method, url, body, Duration::ZERO).await?;
        Ok(())
    }

    /// Sends, and answers the status and body of a success; errors for everything else.
    async fn send(
        &self,
        method: Method,
        url: Url,
        body: Option<&(impl Serialize + ?Sized)>,
        wait: Duration,
    ) -> Result<(StatusCode, Vec<u8>, String, String), Error> {
        let timeout = self.timeout.saturating_add(wait);
        let method_name = method.as_str().to_owned();
        let url_text = url.to_string();
        let mut request = self.http.request(method, url).timeout(timeout);
        if let Some(authorization) = &self.authorization {
            request = request.header(reqwest::header::AUTHORIZATION, authorization.clone());
        }
        if let Some(body) = body {
            let bytes = serde_json::to_vec(body).map_err(Error::Encode)?;
            request = request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(bytes);
        }
        let transport = |e: reqwest::Error, method: &str, url: &str| {
            if e.is_connect() {
                Error::Connect {
                    url: self.base.to_string(),
                    reason: root_cause(&e),
                    source: e,
                }
            } else if e.is_timeout() {
                Error::Timeout {
                    method: method.to_owned(),
                    url: url.to_owned(),
                    timeout,
                    source: e,
                }
            } else {
                Error::Transport {
                    method: method.to_owned(),
                    url: url.to_owned(),
                    reason: root_cause(&e),
                    source: e,
                }
            }
        };
        let response = request
            .send()
            .await
            .map_err(|e| transport(e, &method_name, &url_text))?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| transport(e, &method_name, &url_text))?
            .to_vec();
        if status.is_success() {
            return Ok((status, bytes, method_name, url_text));
        }
        match serde_json::from_slice::<ErrorEnvelope>(&bytes) {
            Ok(envelope) => Err(api_error(envelope.error, status.as_u16())),
            Err(_) => Err(Error::Decode {
                method: method_name,
                url: url_text,
                status: status.as_u16(),
                reason: format!(
                    "an error status without a Tollgate error body; the body starts {}",
                    snippet(&bytes)
                ),
            }),
        }
    }
}

/// The start of a body, for error messages.
fn snippet(bytes: &[u8]) -> String {
    const MAX: usize = 200;
    if bytes.is_empty() {
        return "empty".to_owned();
    }
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(MAX)]);
    let text: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if bytes.len() > MAX {
        format!("{text:?}…")
    } else {
        format!("{text:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_are_checked() {
        for good in [
            "http://127.0.0.1:7070",
            "http://localhost:7070/",
            "https://tollgate.example/prefix/",
        ] {
            assert!(Client::new(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "127.0.0.1:7070",
            "localhost",
            "ftp://host/",
            "http://",
            "mailto:x@y",
            "http://host/?q=1",
            "http://host/#top",
        ] {
            match Client::new(bad) {
                Err(Error::InvalidUrl { url, .. }) => assert_eq!(url, bad),
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    #[test]
    fn segments_are_encoded_under_the_base_path() {
        let client = Client::new("http://h:1/prefix").unwrap();
        assert_eq!(
            client.url(&["v1", "limits", "a/b c?"]).as_str(),
            "http://h:1/prefix/v1/limits/a%2Fb%20c%3F"
        );
        let client = Client::new("http://h:1/").unwrap();
        assert_eq!(client.url(&["healthz"]).as_str(), "http://h:1/healthz");
    }

    #[test]
    fn millis_round_up() {
        assert_eq!(millis_ceil(Duration::ZERO), 0);
        assert_eq!(millis_ceil(Duration::from_nanos(1)), 1);
        assert_eq!(millis_ceil(Duration::from_micros(1_500)), 2);
        assert_eq!(millis_ceil(Duration::from_secs(2)), 2_000);
        assert_eq!(millis_ceil(Duration::MAX), u64::MAX);
    }
}
