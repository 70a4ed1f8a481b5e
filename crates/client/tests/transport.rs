//! What the client does when the server is down, slow, or answers something else than
//! Tollgate JSON: a typed error, quickly, never a panic or a hang.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tollgate_client::{AcquireEntry, Client, Error, ErrorCode};

/// A loopback address nothing listens on: bound, then closed.
async fn closed_port() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}

/// A server that answers every connection with `answer`, after reading the request head.
async fn canned(answer: &'static str) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = conn.write_all(answer.as_bytes()).await;
                let _ = conn.shutdown().await;
            });
        }
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn a_server_that_is_down_is_a_quick_transient_connection_error() {
    let base = closed_port().await;
    let client = Client::new(&base).unwrap();
    let before = Instant::now();
    let err = tokio::time::timeout(Duration::from_secs(10), client.health())
        .await
        .expect("no hang")
        .unwrap_err();
    assert!(before.elapsed() < Duration::from_secs(5));
    assert!(matches!(err, Error::Connect { .. }), "{err:?}");
    assert!(err.is_transient());
    assert_eq!(err.code(), None);
    let shown = err.to_string();
    assert!(shown.contains(&base), "names the URL: {shown}");
    assert!(!shown.contains('\n'), "one line: {shown}");
    // Every route fails the same way.
    let acquire = client.acquire(&[AcquireEntry::new("k")], None).await;
    assert!(matches!(acquire, Err(Error::Connect { .. })), "{acquire:?}");
}

#[tokio::test]
async fn a_server_that_never_answers_times_out() {
    // Accepts connections (the kernel does, on a bound socket) but never reads or answers.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let client = Client::builder()
        .base_url(&base)
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let err = tokio::time::timeout(Duration::from_secs(10), client.health())
        .await
        .expect("no hang")
        .unwrap_err();
    match &err {
        Error::Timeout { timeout, url, .. } => {
            assert_eq!(*timeout, Duration::from_millis(200));
            assert!(url.ends_with("/healthz"), "{url}");
        }
        other => panic!("{other:?}"),
    }
    assert!(err.is_transient());

    // A call that asks the server to wait gets that wait on top of its timeout.
    let before = Instant::now();
    let err = client
        .acquire(&[AcquireEntry::new("k")], Some(Duration::from_millis(300)))
        .await
        .unwrap_err();
    match err {
        Error::Timeout { timeout, .. } => assert_eq!(timeout, Duration::from_millis(500)),
        other => panic!("{other:?}"),
    }
    assert!(before.elapsed() >= Duration::from_millis(500));
    drop(listener);
}

#[tokio::test]
async fn answers_that_are_not_tollgate_json_are_decode_errors() {
    let proxy = canned(
        "HTTP/1.1 502 Bad Gateway\r\ncontent-type: text/html\r\ncontent-length: 22\r\n\r\n<html>bad gateway</ht>",
    )
    .await;
    let err = Client::new(&proxy).unwrap().health().await.unwrap_err();
    match &err {
        Error::Decode { status, reason, .. } => {
            assert_eq!(*status, 502);
            assert!(reason.contains("<html>"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    assert!(err.is_transient(), "a gateway error may pass");

    let garbage = canned("HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nnot json!").await;
    let err = Client::new(&garbage).unwrap().health().await.unwrap_err();
    assert!(matches!(err, Error::Decode { status: 200, .. }), "{err:?}");
    assert!(!err.is_transient());

    // An error envelope from anything speaking the protocol is read as the server's.
    let unavailable = canned(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 91\r\n\r\n{\"error\": {\"code\": \"store_unavailable\", \"message\": \"retry later\", \"transient\": true}}      ",
    )
    .await;
    let err = Client::new(&unavailable)
        .unwrap()
        .health()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(&ErrorCode::StoreUnavailable));
    assert!(err.is_transient());
}

#[test]
fn invalid_base_urls_are_refused_up_front() {
    for bad in ["localhost:7070", "ftp://h/", "http://h/?x=1", "not a url"] {
        let err = Client::new(bad).unwrap_err();
        assert!(matches!(err, Error::InvalidUrl { .. }), "{bad}: {err:?}");
        assert!(err.to_string().contains(bad), "{err}");
    }
}
