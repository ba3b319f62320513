//! The authorization matrix: every route of [`routes`] × every kind of caller → the status it
//! gets. The expected matrix is the table in `docs/reliability.md`; a route without a row
//! there, or a cell that changed, fails this test (which then prints the table it saw).

use std::net::SocketAddr;

use axum::body::Body;
use tower::ServiceExt as _;

use super::*;
use crate::store::tests::list;
use crate::store::{BlobRecord, NewAccount, QueueLimits, SqliteStore};

/// The callers, in the matrix's column order.
const CALLERS: [&str; 8] =
    ["none", "forged", "expired", "other account", "sibling", "owner", "revoked", "wiped"];

struct World {
    app: Router,
    tokens: Vec<Option<String>>,
    blob: String,
    /// A second file of the owner's, for `DELETE` (the first stays for the routes after it).
    doomed: String,
    link: String,
    _dir: tempfile::TempDir,
}

/// A server with an account (`owner@localhost`) of four devices — the owner, a sibling, a
/// revoked one and a wiped one — another account, a group of the owner and the sibling, an
/// unfinished file of the owner's and an open link.
async fn world() -> World {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = Config { data_dir: dir.path().to_path_buf(), ..Config::default() };
    let store = SqliteStore::open(&dir.path().join("sotto.db")).expect("store");
    let now = unix_now();
    let first = list(1);
    let account =
        |address, key| NewAccount { address, device_key: key, invite_hash: None, list: &first };
    let owner = store.register(&account("owner@localhost", b"k-owner"), now).expect("owner");
    let other = store.register(&account("other@localhost", b"k-other"), now).expect("other");
    let mut version = 1;
    let mut link = |key: &[u8]| {
        version += 1;
        let id = store.update_devices(
            "owner@localhost",
            version - 1,
            &list(version),
            Some(key),
            &[],
            now,
        );
        id.expect("link").expect("new device")
    };
    let (sibling, revoked, wiped) = (link(b"k-sibling"), link(b"k-revoked"), link(b"k-wiped"));
    store.update_devices("owner@localhost", 4, &list(5), None, &[revoked], now).expect("revoke");
    store.put_wipe(wiped, &(b"command".to_vec(), vec![0; 64]), now).expect("wipe");
    let joining = [sibling];
    let (first, next) = (credential(0), credential(1));
    let create = crate::store::Submission {
        id: None,
        digest: [0; 32],
        group_id: b"matrix",
        ordering: Ordering::Advance(0),
        to: crate::store::To::Group(crate::store::GroupAuth {
            credential: &first,
            next: Some(&next),
            device: Some(owner),
            roster: None,
        }),
        message: b"commit",
        welcome: Some((&joining[..], &b"welcome"[..])),
        removed: &[],
        limits: QueueLimits::UNLIMITED,
        expires_at: None,
    };
    store.submit(&create, now).expect("group");
    let blob_id = vec![7u8; 16];
    let blob = BlobRecord {
        id: blob_id.clone(),
        device: owner,
        address: "owner@localhost".into(),
        size: 10,
        received: 0,
        created_at: now,
        expires_at: now + 3600,
        lifetime: 3600,
    };
    store.create_blob(&blob, u64::MAX, u64::MAX).expect("blob");
    let doomed = BlobRecord { id: vec![8u8; 16], ..blob };
    store.create_blob(&doomed, u64::MAX, u64::MAX).expect("blob");
    std::fs::create_dir_all(dir.path().join("blobs")).expect("blobs dir");
    for id in [&blob_id, &doomed.id] {
        std::fs::write(dir.path().join("blobs").join(hex::encode(id)), b"").expect("blob file");
    }
    store.open_link(&[9u8; 16], b"request", now).expect("link");

    let sessions = Sessions::load_or_create(&dir.path().join("session.key")).expect("sessions");
    let token = |device: u64| Some(sessions.token(device, now + 3600));
    let tokens = vec![
        None,
        Some(format!("v1.{owner}.{}.{}", now + 3600, "00".repeat(32))),
        Some(sessions.token(owner, now - 10)),
        token(other),
        token(sibling),
        token(owner),
        token(revoked),
        token(wiped),
    ];
    let kt = crate::kt::KeyDirectory::open(dir.path(), crate::Clock::default())
        .await
        .expect("key directory");
    let (_stop, stopping) = watch::channel(false);
    let state =
        AppState::new(Arc::new(store), config, sessions, stopping, None, kt).expect("state");
    World {
        app: router(Arc::new(state)),
        tokens,
        blob: hex::encode(&blob_id),
        doomed: hex::encode([8u8; 16]),
        link: hex::encode([9u8; 16]),
        _dir: dir,
    }
}

/// The request each route gets: a path with its parameters filled in, and a body aimed at the
/// owner's things where the route has an owner.
fn request_for(w: &World, method: &str, route: &str) -> (String, String) {
    let path = route.replace("{address}", "owner@localhost").replace(
        "{id}",
        match (method, route.starts_with("/v1/blobs")) {
            ("DELETE", true) => &w.doomed,
            (_, true) => &w.blob,
            _ => &w.link,
        },
    );
    let body = match (method, route) {
        ("POST", "/v1/auth/challenge") => r#"{"device_id": 1}"#.to_string(),
        ("POST", "/v1/keypackages") => r#"{"key_packages": []}"#.to_string(),
        ("POST", "/v1/keypackages/claim") => r#"{"address": "owner@localhost"}"#.to_string(),
        ("POST", "/v1/blobs") => r#"{"size": 10}"#.to_string(),
        ("PUT", "/v1/blobs/{id}") => "x".to_string(),
        ("POST", "/v1/queue/ack") => r#"{"up_to": 0}"#.to_string(),
        // A usable X25519 public key.
        ("PUT", "/v1/queue/key") => serde_json::json!({
            "key": Bytes(sotto_core::queue::QueueKey::from_seed(&[5; 32]).expect("key").public().to_vec())
        })
        .to_string(),
        // An application message into the owner's group, with the group's credential: who
        // sends it does not matter, only a token that is not valid does.
        ("POST", "/v1/messages") => serde_json::json!({
            "group_id": "bWF0cml4", "kind": "application", "epoch": 1,
            "credential": Bytes(credential(1).as_bytes().to_vec()),
            "delivery": {"message": "aGk="}
        })
        .to_string(),
        _ => "{}".to_string(),
    };
    let path = if method == "PUT" { format!("{path}?offset=0") } else { path };
    (path, body)
}

/// The matrix group's credential for an epoch.
fn credential(epoch: u8) -> crate::store::GroupCredential {
    crate::store::GroupCredential::from_bytes(&[epoch + 1; 32]).expect("credential")
}

async fn status(w: &World, method: &str, path: &str, token: Option<&str>, body: String) -> u16 {
    let mut request = axum::http::Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json");
    if let Some(t) = token {
        request = request.header("authorization", format!("Bearer {t}"));
    }
    let mut request = request.body(Body::from(body)).expect("request");
    let peer = SocketAddr::from(([127, 0, 0, 1], 40000));
    request.extensions_mut().insert(axum::extract::ConnectInfo(PeerAddr(peer)));
    w.app.clone().oneshot(request).await.expect("infallible").status().as_u16()
}

/// The matrix in `docs/reliability.md`: rows `| METHOD path | status | … |`.
fn documented() -> Vec<(String, Vec<u16>)> {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/reliability.md"))
            .expect("docs/reliability.md");
    doc.lines()
        .filter_map(|line| {
            let cells: Vec<&str> =
                line.trim().trim_matches('|').split('|').map(str::trim).collect();
            let route = cells.first()?.trim_matches('`');
            let (method, _) = route.split_once(' ')?;
            if !["GET", "POST", "PUT", "DELETE"].contains(&method)
                || cells.len() != CALLERS.len() + 1
            {
                return None;
            }
            let statuses =
                cells[1..].iter().map(|c| c.parse().ok()).collect::<Option<Vec<u16>>>()?;
            Some((route.to_string(), statuses))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_every_caller_as_documented() {
    let w = world().await;
    let mut seen = Vec::new();
    for (route, methods, _) in routes() {
        for &method in methods {
            let mut row = Vec::new();
            for token in &w.tokens {
                let (path, body) = request_for(&w, method, route);
                row.push(status(&w, method, &path, token.as_deref(), body).await);
            }
            seen.push((format!("{method} {route}"), row));
        }
        // A method the route does not declare is not served.
        let (path, _) = request_for(&w, "GET", route);
        let owner = w.tokens[5].as_deref();
        assert_eq!(status(&w, "PATCH", &path, owner, String::new()).await, 405, "{route}");
    }
    let table: String = seen
        .iter()
        .map(|(route, row)| {
            let cells: Vec<String> = row.iter().map(u16::to_string).collect();
            format!("| `{route}` | {} |\n", cells.join(" | "))
        })
        .collect();
    assert_eq!(
        documented(),
        seen.iter().map(|(r, s)| (r.clone(), s.clone())).collect::<Vec<_>>(),
        "docs/reliability.md disagrees with the server; the server answered:\n| route | {} |\n{table}",
        CALLERS.join(" | ")
    );
}
