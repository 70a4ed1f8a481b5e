//! The published contract (docs/openapi.json): the committed document is the one the server
//! generates from its wire types and serves at `/openapi.json` without a token; every route
//! docs/http-api.md names is in it, and every operation in it is named there.

#![allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::Value;

fn repo_file(path: &str) -> String {
    let at = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path);
    std::fs::read_to_string(&at).unwrap_or_else(|e| panic!("{}: {e}", at.display()))
}

#[test]
fn the_committed_document_is_the_generated_one() {
    let committed = repo_file("docs/openapi.json");
    let generated = tollgate_server::openapi::document_text();
    assert!(
        committed == generated,
        "docs/openapi.json differs from what the server generates: \
         run `cargo run -q -p tollgate-server -- openapi > docs/openapi.json` and commit it"
    );
}

/// `(method, path)` of every operation in the document.
fn operations(document: &Value) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (path, item) in document["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            out.insert((method.to_uppercase(), path.clone()));
        }
    }
    out
}

#[test]
fn every_route_of_the_prose_contract_is_in_the_document_and_back() {
    let prose = repo_file("docs/http-api.md");
    let mut named = BTreeSet::new();
    // Every `METHOD /path` in backticks, its query left out.
    for piece in prose.split('`').skip(1).step_by(2) {
        let Some((method, path)) = piece.split_once(' ') else {
            continue;
        };
        if !matches!(method, "GET" | "PUT" | "POST" | "DELETE")
            || !path.starts_with('/')
            || path.contains(char::is_whitespace)
        {
            continue;
        }
        let path = path.split('?').next().unwrap();
        named.insert((method.to_owned(), path.to_owned()));
    }
    assert!(
        named.len() > 25,
        "too few routes read from docs/http-api.md: {named:?}"
    );
    let documented = operations(&tollgate_server::openapi::document());
    let missing: Vec<_> = named.difference(&documented).collect();
    assert!(
        missing.is_empty(),
        "named in docs/http-api.md, not in the document: {missing:?}"
    );
    let unnamed: Vec<_> = documented.difference(&named).collect();
    assert!(
        unnamed.is_empty(),
        "in the document, never named in docs/http-api.md: {unnamed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_serves_the_document_without_a_token() {
    let dir =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("openapi-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let tokens = dir.join("tokens.toml");
    std::fs::write(&tokens, common::token_table("a", "admin", "s")).unwrap();
    let (_child, base) =
        common::spawn_serve(["--memory", "--tokens-file", &tokens.display().to_string()]).await;
    let answer = reqwest::get(format!("{base}/openapi.json")).await.unwrap();
    assert_eq!(answer.status().as_u16(), 200);
    assert_eq!(answer.headers()["content-type"], "application/json");
    let served: Value = answer.json().await.unwrap();
    assert_eq!(served, tollgate_server::openapi::document());
    assert_eq!(served["openapi"], "3.1.0");
    // Every operation says which role it needs, as the middleware decides it.
    for (method, path) in operations(&served) {
        let op = &served["paths"][&path][method.to_lowercase()];
        let concrete = path
            .replace("{key}", "k")
            .replace("{id}", "i")
            .replace("{name}", "n");
        let needed = tollgate_server::auth::needed(&method.parse().unwrap(), &concrete);
        assert_eq!(
            op["x-tollgate-role"].as_str(),
            needed.map(|r| r.as_str()),
            "{method} {path}"
        );
    }
}
