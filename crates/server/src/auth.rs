//! Access control (docs/http-api.md, "Access control"): bearer tokens listed in a tokens file
//! by the SHA-256 of their secret, each with a role; the middleware that checks every request
//! against the role its route needs; the dashboard's sign-in cookie, which authorizes GET
//! requests only.
//!
//! Without a tokens file the server is open (and `serve` refuses a non-loopback address unless
//! told `--insecure-no-auth`: `cli.rs`).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tollgate_api::ErrorCode;

use crate::error::ApiError;
use crate::state::AppState;

/// What a token may do. Each role includes the ones before it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Every `GET`: limits, tasks, runs, the dashboard, `/metrics`.
    Read,
    /// `read`, and what workers and producers do: acquire, leases, barriers, enqueue, events,
    /// lease runs, heartbeat, complete, fail, release and cancel them.
    Worker,
    /// Everything: also declaring and removing limits and defining tasks.
    Admin,
}

impl Role {
    /// The role's name, as in the tokens file.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Worker => "worker",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The role a request needs, from its method and path; `None`: no token needed.
pub fn needed(method: &Method, path: &str) -> Option<Role> {
    if matches!(path, "/healthz" | "/openapi.json" | "/login" | "/logout") {
        return None;
    }
    if method == Method::GET || method == Method::HEAD {
        return Some(Role::Read);
    }
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let admin = match segments.as_slice() {
        // Declaring, redefining and removing a limit.
        ["v1", "limits", _] => method == Method::PUT || method == Method::DELETE,
        // Defining a task.
        ["v1", "tasks", _] => method == Method::PUT,
        _ => false,
    };
    Some(if admin { Role::Admin } else { Role::Worker })
}

/// One token of the tokens file.
#[derive(Debug)]
pub struct Token {
    /// Its name: shown in logs and errors, never the secret.
    pub name: String,
    /// What it may do.
    pub role: Role,
    sha256: [u8; 32],
}

/// The tokens of one tokens file, as read.
#[derive(Debug)]
pub struct Tokens(Vec<Token>);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileShape {
    #[serde(default)]
    token: Vec<toml::Spanned<EntryShape>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryShape {
    name: toml::Spanned<String>,
    role: Role,
    sha256: toml::Spanned<String>,
}

/// `file:line:column` of byte offset `at` in `text` (both 1-based).
pub(crate) fn position(file: &Path, text: &str, at: usize) -> String {
    let before = &text[..at.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before.len(), |nl| before.len() - nl - 1)
        + 1;
    format!("{}:{line}:{column}", file.display())
}

/// The SHA-256 of a secret, as 64 lowercase hex digits.
pub fn sha256_hex(secret: &str) -> String {
    use std::fmt::Write as _;
    Sha256::digest(secret.as_bytes())
        .iter()
        .fold(String::with_capacity(64), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

fn parse_hex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut out = [0_u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// The most bytes of a token's name.
const MAX_NAME: usize = 128;

impl Tokens {
    /// Reads a tokens file's text; `file` names it in errors, which say line and column.
    ///
    /// # Errors
    /// TOML that does not parse, an unknown field, a missing or empty name, a name used twice,
    /// a role other than read, worker or admin, a `sha256` that is not 64 hex digits or that
    /// two tokens share, or no token at all (every request would be refused).
    pub fn parse(file: &Path, text: &str) -> Result<Tokens, String> {
        let shape: FileShape = toml::from_str(text).map_err(|e| {
            let at = e
                .span()
                .map_or(String::new(), |s| position(file, text, s.start));
            let at = if at.is_empty() {
                file.display().to_string()
            } else {
                at
            };
            format!("{at}: {}", e.message())
        })?;
        let mut tokens: Vec<Token> = Vec::with_capacity(shape.token.len());
        for entry in shape.token {
            let entry = entry.into_inner();
            let (name, name_at) = (
                entry.name.get_ref().clone(),
                position(file, text, entry.name.span().start),
            );
            if name.trim().is_empty() || name.len() > MAX_NAME || name.chars().any(char::is_control)
            {
                return Err(format!(
                    "{name_at}: a token's name must be 1 to {MAX_NAME} bytes without control characters, not {name:?}"
                ));
            }
            if tokens.iter().any(|t| t.name == name) {
                return Err(format!(
                    "{name_at}: the name {name:?} is used by two tokens; each token needs its own"
                ));
            }
            let hash_at = position(file, text, entry.sha256.span().start);
            let hex = entry.sha256.get_ref().trim().to_ascii_lowercase();
            let Some(sha256) = parse_hex(&hex) else {
                return Err(format!(
                    "{hash_at}: token {name:?}: sha256 must be the 64 hex digits of the secret's SHA-256 (`tollgate token new` prints it), not {:?}",
                    entry.sha256.get_ref()
                ));
            };
            if let Some(other) = tokens.iter().find(|t| t.sha256 == sha256) {
                return Err(format!(
                    "{hash_at}: tokens {:?} and {name:?} have the same sha256: one secret would have two names",
                    other.name
                ));
            }
            tokens.push(Token {
                name,
                role: entry.role,
                sha256,
            });
        }
        if tokens.is_empty() {
            return Err(format!(
                "{}: no [[token]] table: every request would be refused; add one with `tollgate token new --name NAME --role admin`",
                file.display()
            ));
        }
        Ok(Tokens(tokens))
    }

    /// The token whose secret this is. Every token is compared, in constant time, whatever
    /// matches: how long this takes says nothing about the secret.
    pub fn find(&self, secret: &str) -> Option<&Token> {
        let digest: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
        let mut found = None;
        for token in &self.0 {
            if bool::from(token.sha256.ct_eq(&digest)) {
                found = Some(token);
            }
        }
        found
    }

    /// How many tokens there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none (never, once parsed).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The server's access control: the tokens file and the tokens read from it last.
#[derive(Debug)]
pub struct Access {
    path: PathBuf,
    tokens: RwLock<Arc<Tokens>>,
    /// Whether the sign-in cookie is marked `Secure` (the server speaks HTTPS).
    secure_cookie: bool,
}

impl Access {
    /// Reads the tokens file at `path`.
    ///
    /// # Errors
    /// The file cannot be read or is not a valid tokens file ([`Tokens::parse`]).
    pub fn load(path: &Path, secure_cookie: bool) -> Result<Access, String> {
        let tokens = read(path)?;
        Ok(Access {
            path: path.to_owned(),
            tokens: RwLock::new(Arc::new(tokens)),
            secure_cookie,
        })
    }

    /// Reads the file again (on SIGHUP). A file that no longer reads or parses changes nothing:
    /// the previous tokens stay in force and the error says why.
    ///
    /// # Errors
    /// As [`Access::load`].
    pub fn reload(&self) -> Result<usize, String> {
        let tokens = read(&self.path)?;
        let n = tokens.len();
        *self
            .tokens
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(tokens);
        Ok(n)
    }

    /// The tokens file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The tokens in force.
    pub fn tokens(&self) -> Arc<Tokens> {
        Arc::clone(
            &self
                .tokens
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// The `Set-Cookie` value that signs the dashboard in with `secret`.
    pub(crate) fn sign_in_cookie(&self, secret: &str) -> String {
        let value = percent_encoding::utf8_percent_encode(secret, COOKIE_UNSAFE);
        format!(
            "{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict{}",
            if self.secure_cookie { "; Secure" } else { "" }
        )
    }

    /// The `Set-Cookie` value that signs the dashboard out.
    pub(crate) fn sign_out_cookie(&self) -> String {
        format!(
            "{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{}",
            if self.secure_cookie { "; Secure" } else { "" }
        )
    }
}

fn read(path: &Path) -> Result<Tokens, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the tokens file {}: {e}", path.display()))?;
    Tokens::parse(path, &text)
}

/// The dashboard's sign-in cookie.
pub(crate) const COOKIE: &str = "tollgate_token";

/// Bytes a cookie value cannot carry as they are (RFC 6265 cookie-octet), and `%`.
const COOKIE_UNSAFE: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b',')
    .add(b';')
    .add(b'\\')
    .add(b'%');

/// A request's credential.
enum Credential {
    None,
    /// An `Authorization` header that is not `Bearer <secret>`.
    Malformed,
    Bearer(String),
    Cookie(String),
}

fn credential(request: &Request) -> Credential {
    if let Some(value) = request.headers().get(header::AUTHORIZATION) {
        let Ok(value) = value.to_str() else {
            return Credential::Malformed;
        };
        let mut parts = value.trim().splitn(2, ' ');
        let (scheme, secret) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let secret = secret.trim();
        if !scheme.eq_ignore_ascii_case("bearer") || secret.is_empty() {
            return Credential::Malformed;
        }
        return Credential::Bearer(secret.to_owned());
    }
    for value in request.headers().get_all(header::COOKIE) {
        let Ok(value) = value.to_str() else { continue };
        for pair in value.split(';') {
            if let Some((name, v)) = pair.trim().split_once('=')
                && name == COOKIE
                && !v.is_empty()
            {
                let decoded = percent_encoding::percent_decode_str(v).decode_utf8_lossy();
                return Credential::Cookie(decoded.into_owned());
            }
        }
    }
    Credential::None
}

fn unauthorized(message: &str, invalid_token: bool) -> Response {
    let mut response =
        ApiError::new(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, message).into_response();
    let challenge = if invalid_token {
        "Bearer realm=\"tollgate\", error=\"invalid_token\""
    } else {
        "Bearer realm=\"tollgate\""
    };
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(challenge),
    );
    response
}

/// The middleware: lets a request through when its route needs no token, or when its token's
/// role has the right; else answers 401 `unauthorized` (no token, or one this server does not
/// know) or 403 `forbidden` (naming the role needed). `GET /` without a valid token shows the
/// dashboard's sign-in form instead.
pub(crate) async fn check(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Some(access) = state.settings().access.clone() else {
        return next.run(request).await;
    };
    let Some(needed) = needed(request.method(), request.uri().path()) else {
        return next.run(request).await;
    };
    let dashboard = request.uri().path() == "/" && request.method() == Method::GET;
    let reads = needed == Role::Read;
    let secret = match credential(&request) {
        Credential::Bearer(secret) => secret,
        // The cookie only signs in the dashboard's reads: a page elsewhere cannot make a
        // signed-in browser write (and SameSite=Strict keeps it from sending it at all).
        Credential::Cookie(secret) if reads => secret,
        Credential::Cookie(_) => {
            return unauthorized(
                "this route needs `Authorization: Bearer <token>`; the dashboard's sign-in cookie authorizes GET requests only",
                false,
            );
        }
        Credential::Malformed => {
            return unauthorized("the Authorization header must be `Bearer <token>`", true);
        }
        Credential::None if dashboard => return crate::dashboard::sign_in_page(None),
        Credential::None => {
            return unauthorized(
                "this route needs a token: send `Authorization: Bearer <token>` (tokens are made with `tollgate token new`)",
                false,
            );
        }
    };
    let tokens = access.tokens();
    let Some(token) = tokens.find(&secret) else {
        tracing::debug!(
            path = request.uri().path(),
            "refused a token this server does not know"
        );
        if dashboard {
            return crate::dashboard::sign_in_page(Some(
                "That token is not known to this server (or no longer): sign in again.",
            ));
        }
        return unauthorized("the token is not known to this server", true);
    };
    if token.role < needed {
        tracing::debug!(token = %token.name, role = %token.role, %needed, "refused: role without the right");
        return ApiError::new(
            StatusCode::FORBIDDEN,
            ErrorCode::Forbidden,
            format!(
                "{} {} needs the {needed} role{}; token {:?} has the {} role",
                request.method(),
                request.uri().path(),
                if needed == Role::Admin {
                    ""
                } else {
                    " or higher"
                },
                token.name,
                token.role
            ),
        )
        .into_response();
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Tokens, String> {
        Tokens::parse(Path::new("tokens.toml"), text)
    }

    fn table(name: &str, role: &str, secret: &str) -> String {
        format!(
            "[[token]]\nname = \"{name}\"\nrole = \"{role}\"\nsha256 = \"{}\"\n",
            sha256_hex(secret)
        )
    }

    #[test]
    fn a_secret_finds_its_token_and_only_its_own() {
        let text = table("ci", "worker", "s1") + &table("ops", "admin", "s2");
        let tokens = parse(&text).unwrap();
        assert_eq!(tokens.len(), 2);
        let ci = tokens.find("s1").unwrap();
        assert_eq!((ci.name.as_str(), ci.role), ("ci", Role::Worker));
        assert_eq!(tokens.find("s2").unwrap().role, Role::Admin);
        assert!(tokens.find("s3").is_none());
        assert!(tokens.find("").is_none());
        // Upper-case hex is read too.
        let upper = text.replace(&sha256_hex("s1"), &sha256_hex("s1").to_uppercase());
        assert!(parse(&upper).unwrap().find("s1").is_some());
    }

    #[test]
    fn sha256_is_the_standard_digest() {
        assert_eq!(
            sha256_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn every_bad_file_names_its_line_and_column() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "[[token]]\nname = \"a\"\nrole = \"root\"\n",
                "tokens.toml:3:",
                "root",
            ),
            (
                "[[token]]\nname = \"a\"\nrole = \"read\"\nsha256 = \"abc\"\n",
                "tokens.toml:4:10",
                "64 hex digits",
            ),
            (
                "[[token]]\nname = \"a\"\nrole = \"read\"\nsha = \"x\"\n",
                "tokens.toml:4:",
                "unknown field",
            ),
            ("[[token]\n", "tokens.toml:1:", ""),
            ("", "tokens.toml", "no [[token]]"),
            (
                "[[token]]\nname = \"\"\nrole = \"read\"\nsha256 = \"\"\n",
                "tokens.toml:2:8",
                "name",
            ),
        ];
        for (text, at, what) in cases {
            let e = parse(text).unwrap_err();
            assert!(e.starts_with(at), "{text:?}: {e}");
            assert!(e.contains(what), "{text:?}: {e}");
        }
        let twice = table("a", "read", "s1") + &table("a", "read", "s2");
        let e = parse(&twice).unwrap_err();
        assert!(
            e.starts_with("tokens.toml:6:8") && e.contains("two tokens"),
            "{e}"
        );
        let same = table("a", "read", "s1") + &table("b", "read", "s1");
        let e = parse(&same).unwrap_err();
        assert!(e.contains("same sha256"), "{e}");
    }

    #[test]
    fn routes_need_the_roles_of_the_design() {
        use Method as M;
        let cases = [
            (M::GET, "/healthz", None),
            (M::GET, "/openapi.json", None),
            (M::POST, "/login", None),
            (M::GET, "/", Some(Role::Read)),
            (M::GET, "/metrics", Some(Role::Read)),
            (M::GET, "/v1/limits/k", Some(Role::Read)),
            (M::HEAD, "/v1/runs", Some(Role::Read)),
            (M::PUT, "/v1/limits/k", Some(Role::Admin)),
            (M::DELETE, "/v1/limits/k", Some(Role::Admin)),
            (M::PUT, "/v1/tasks/t", Some(Role::Admin)),
            (M::POST, "/v1/acquire", Some(Role::Worker)),
            (M::POST, "/v1/acquire/batch", Some(Role::Worker)),
            (M::POST, "/v1/leases", Some(Role::Worker)),
            (M::DELETE, "/v1/leases/x", Some(Role::Worker)),
            (M::POST, "/v1/barriers/b/wait", Some(Role::Worker)),
            (M::POST, "/v1/tasks/t/runs", Some(Role::Worker)),
            (M::POST, "/v1/events", Some(Role::Worker)),
            (
                M::POST,
                "/v1/limits/stripe-api/feedback",
                Some(Role::Worker),
            ),
            (M::POST, "/v1/limits/stripe-api/pause", Some(Role::Worker)),
            (M::POST, "/v1/workers/lease", Some(Role::Worker)),
            (M::POST, "/v1/runs/r1/cancel", Some(Role::Worker)),
            (M::POST, "/nowhere", Some(Role::Worker)),
        ];
        for (method, path, role) in cases {
            assert_eq!(needed(&method, path), role, "{method} {path}");
        }
        assert!(Role::Admin > Role::Worker && Role::Worker > Role::Read);
    }

    #[test]
    fn the_cookie_keeps_any_secret_intact() {
        let access = Access {
            path: PathBuf::from("t"),
            tokens: RwLock::new(Arc::new(Tokens(Vec::new()))),
            secure_cookie: true,
        };
        let cookie = access.sign_in_cookie("a b;c%d\"é");
        assert!(
            cookie.ends_with("; Path=/; HttpOnly; SameSite=Strict; Secure"),
            "{cookie}"
        );
        let value = cookie
            .strip_prefix("tollgate_token=")
            .unwrap()
            .split(';')
            .next()
            .unwrap();
        let request = Request::builder()
            .header(header::COOKIE, format!("other=1; {COOKIE}={value}"))
            .body(axum::body::Body::empty())
            .unwrap();
        let Credential::Cookie(secret) = credential(&request) else {
            panic!("no cookie read")
        };
        assert_eq!(secret, "a b;c%d\"é");
    }
}
