//! What the benchmark examples share: their options and the way into a home's database.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// `--messages N --chats N --out DIR`, with their defaults.
pub struct Options {
    pub messages: usize,
    pub chats: usize,
    pub out: PathBuf,
}

pub fn options() -> Options {
    let mut o = Options { messages: 100_000, chats: 50, out: PathBuf::from("bench-results") };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let value = args.next().expect("a value after each option");
        match a.as_str() {
            "--messages" => o.messages = value.parse().expect("number"),
            "--chats" => o.chats = value.parse::<usize>().expect("number").max(1),
            "--out" => o.out = value.into(),
            other => panic!("unknown option {other}"),
        }
    }
    o
}

/// A home's database, opened with its key unwrapped from `keys.json` with `passphrase` (the
/// file's format is the contract; nothing of the client's internals is used).
pub fn open_db(home: &Path, passphrase: &str) -> rusqlite::Connection {
    let file: serde_json::Value =
        serde_json::from_slice(&std::fs::read(home.join("keys.json")).expect("keys.json"))
            .expect("key file");
    let num = |k: &str| file[k].as_u64().expect("kdf parameter") as u32;
    let cost = sotto_core::KdfCost { m_kib: num("m_kib"), t: num("t"), p: num("p") };
    let salt = hex::decode(file["salt"].as_str().expect("salt")).expect("hex");
    let kek = sotto_core::passphrase_key(passphrase.as_bytes(), &salt, cost).expect("kdf");
    let wrapped = hex::decode(file["wrapped"].as_str().expect("wrapped")).expect("hex");
    let key = sotto_core::open(&kek, b"sotto/v1/home-key", &wrapped).expect("unwraps");
    let db = rusqlite::Connection::open(home.join("sotto.db")).expect("open db");
    db.execute_batch(&format!("PRAGMA key = \"x'{}'\";", hex::encode(&key[..]))).expect("key");
    db
}
