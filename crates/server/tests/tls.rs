//! HTTPS against the real binary (docs/http-api.md, "Serving"): `serve --tls-cert --tls-key`
//! with a certificate a private CA the test makes has signed; the CLI and the Rust client reach
//! it with `--ca-cert` / `ca_certificate` and refuse it without; plain HTTP to it fails; a
//! certificate that does not match its key stops the start; SIGHUP serves a renewed
//! certificate; the dashboard's cookie is `Secure`.

#![allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test

mod common;

use std::path::PathBuf;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

/// A private CA and a certificate it signed for `localhost` and `127.0.0.1`, written as PEM
/// files into a fresh folder: (ca.pem, cert.pem, key.pem).
struct Pki {
    dir: PathBuf,
    ca_pem: String,
    ca_key: KeyPair,
    ca_params: CertificateParams,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("tls-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "Tollgate test CA");
        let ca_pem = ca_params.self_signed(&ca_key).unwrap().pem();
        std::fs::write(dir.join("ca.pem"), &ca_pem).unwrap();
        Pki {
            dir,
            ca_pem,
            ca_key,
            ca_params,
        }
    }

    /// A server certificate signed by the CA, written to `cert.pem` and `key.pem`, with
    /// `cn` as its common name; the PEM of the certificate.
    fn issue(&self, cn: &str) -> String {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        let issuer = Issuer::from_params(&self.ca_params, &self.ca_key);
        let cert = params.signed_by(&key, &issuer).unwrap().pem();
        std::fs::write(self.dir.join("cert.pem"), &cert).unwrap();
        std::fs::write(self.dir.join("key.pem"), key.serialize_pem()).unwrap();
        cert
    }

    fn path(&self, file: &str) -> String {
        self.dir.join(file).display().to_string()
    }
}

async fn tollgate(args: &[&str]) -> (Option<i32>, String, String) {
    let out = common::run_cli(args, &[], None).await;
    (
        out.status.code(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_serves_clients_that_trust_its_ca_and_only_them() {
    let pki = Pki::new("serve");
    pki.issue("first");
    let (_child, base) = common::spawn_serve([
        "--memory",
        "--tls-cert",
        &pki.path("cert.pem"),
        "--tls-key",
        &pki.path("key.pem"),
    ])
    .await;
    assert!(base.starts_with("https://127.0.0.1:"), "{base}");

    // The CLI: refused without the CA (not a system root), fine with --ca-cert.
    let (code, _, err) = tollgate(&["limits", "ls", "--server", &base]).await;
    assert_eq!(code, Some(2), "an unknown CA was trusted");
    assert!(
        err.to_lowercase().contains("certificate") || err.contains("connect"),
        "{err}"
    );
    let (code, out, err) = tollgate(&[
        "limits",
        "put",
        "api",
        "5/s",
        "--server",
        &base,
        "--ca-cert",
        &pki.path("ca.pem"),
    ])
    .await;
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("api"), "{out}");
    let (code, _, err) = tollgate(&[
        "limits",
        "ls",
        "--server",
        &base,
        "--ca-cert",
        "/nonexistent.pem",
    ])
    .await;
    assert_eq!(code, Some(2));
    assert!(err.contains("cannot read --ca-cert"), "{err}");

    // The Rust client, by `localhost` too (the certificate names both).
    let client = tollgate_client::Client::builder()
        .base_url(base.replace("127.0.0.1", "localhost"))
        .ca_certificate(pki.ca_pem.clone())
        .build()
        .unwrap();
    let limit = client.get_limit("api").await.unwrap();
    assert_eq!(limit.key, "api");
    let untrusting = tollgate_client::Client::new(base.clone()).unwrap();
    assert!(untrusting.get_limit("api").await.is_err());
    let garbage = tollgate_client::Client::builder()
        .base_url(base.clone())
        .ca_certificate("not a certificate")
        .build();
    assert!(matches!(
        garbage,
        Err(tollgate_client::Error::InvalidCertificate)
    ));

    // Plain HTTP to the HTTPS port gets no answer.
    let plain = reqwest::Client::new()
        .get(base.replace("https://", "http://") + "/healthz")
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    assert!(
        plain.is_err() || !plain.unwrap().status().is_success(),
        "plain HTTP was served"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_that_cannot_be_used_stops_the_start() {
    let pki = Pki::new("bad");
    pki.issue("one");
    let cert = pki.path("cert.pem");
    let other = Pki::new("other");
    other.issue("two");
    let serve = |cert: String, key: String| async move {
        tokio::time::timeout(
            Duration::from_secs(30),
            tokio::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
                .args(["serve", "--memory", "--listen", "127.0.0.1:0"])
                .args(["--tls-cert", &cert, "--tls-key", &key])
                .kill_on_drop(true)
                .output(),
        )
        .await
        .unwrap()
        .unwrap()
    };
    // The key of another certificate.
    let out = serve(cert.clone(), other.path("key.pem")).await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot use --tls-cert"), "{err}");
    // A file that is not PEM, and one that is not there.
    let out = serve(cert.clone(), cert.replace("cert.pem", "nope.pem")).await;
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read --tls-key"));
    std::fs::write(pki.dir.join("junk.pem"), "junk").unwrap();
    let out = serve(pki.path("junk.pem"), pki.path("key.pem")).await;
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a PEM file"));
    // One without the other is refused by the arguments.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["serve", "--memory", "--tls-cert", &cert])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// The common name of the certificate the server at `base` presents.
async fn presented_cn(base: &str, ca: &str) -> String {
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    tollgate_server::tls::install_provider();
    let mut roots = rustls::RootCertStore::empty();
    use rustls_pki_types::pem::PemObject as _;
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(ca.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let addr = base.trim_start_matches("https://");
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    tls.write_all(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tls.read_to_end(&mut answer).await;
    let (_, session) = tls.get_ref();
    let der = session.peer_certificates().unwrap()[0].to_vec();
    // The common name is the last printable string in the DER: good enough for names we chose.
    let text = String::from_utf8_lossy(&der).into_owned();
    ["first", "second", "one", "two"]
        .into_iter()
        .find(|cn| text.contains(cn))
        .unwrap_or("?")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_serves_a_renewed_certificate() {
    let pki = Pki::new("renew");
    pki.issue("first");
    let (mut child, base) = common::spawn_serve_with(
        [
            "--memory",
            "--tls-cert",
            &pki.path("cert.pem"),
            "--tls-key",
            &pki.path("key.pem"),
        ],
        |cmd| {
            cmd.stderr(std::process::Stdio::piped())
                .env("RUST_LOG", "info");
        },
    )
    .await;
    let mut log = common::ServerLog::of(&mut child);
    assert_eq!(presented_cn(&base, &pki.ca_pem).await, "first");
    pki.issue("second");
    common::hang_up(&child);
    log.until("TLS certificate and key read again").await;
    assert_eq!(presented_cn(&base, &pki.ca_pem).await, "second");
    // Files that no longer match keep the certificate in force.
    std::fs::write(
        pki.dir.join("key.pem"),
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    common::hang_up(&child);
    log.until("the certificate in force stays").await;
    assert_eq!(presented_cn(&base, &pki.ca_pem).await, "second");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_cookie_is_secure_over_https() {
    let pki = Pki::new("cookie");
    pki.issue("first");
    let secret = "tls-read-secret";
    let tokens = pki.dir.join("tokens.toml");
    std::fs::write(&tokens, common::token_table("r", "read", secret)).unwrap();
    let (_child, base) = common::spawn_serve([
        "--memory",
        "--tls-cert",
        &pki.path("cert.pem"),
        "--tls-key",
        &pki.path("key.pem"),
        "--tokens-file",
        &tokens.display().to_string(),
    ])
    .await;
    tollgate_server::tls::install_provider();
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(pki.ca_pem.as_bytes()).unwrap())
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let answer = client
        .post(format!("{base}/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={secret}"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 303);
    let cookie = answer.headers()["set-cookie"].to_str().unwrap();
    assert!(cookie.contains("; Secure"), "{cookie}");
}
