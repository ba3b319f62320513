//! Search and history over a large home: `Client::search` (SQLite FTS5 inside the encrypted
//! database) beside a plain `LIKE` scan of the same rows (what searching without the index
//! costs), then a chat's first history page, a page far back, and the chat list.
//!
//! ```text
//! cargo run --release -p sotto-client --example search_bench -- [--messages 100000]
//!     [--chats 50] [--out bench-results]
//! ```
//!
//! A home is registered against the real server's API in this process, then filled with
//! synthetic messages written straight into its database (a quarter of a million rows through
//! MLS would measure MLS, not search). Figures go to stdout and to `OUT/search.json` and
//! `OUT/search.md`.

#[path = "../tests/common/mod.rs"]
mod common;

#[path = "shared/mod.rs"]
mod shared;

use std::time::Instant;

use rusqlite::params;
use serde_json::json;
use sotto_client::Client;

const PASSPHRASE: &str = "correct horse battery staple";

/// Word `k` of the vocabulary: the syllables of the digits of `k + 100` (`lokaka`, …), so that
/// words read like words and a word's start matches a handful of others, as in a language.
fn vocab(k: u64) -> String {
    const SYLLABLES: [&str; 10] = ["ka", "lo", "mi", "ne", "su", "ta", "ri", "po", "de", "vu"];
    (k + 100).to_string().bytes().map(|d| SYLLABLES[usize::from(d - b'0')]).collect()
}

/// A deterministic stream of words: common ones, rarer ones, and a few names.
struct Words(u64);

impl Words {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn word(&mut self) -> String {
        let n = self.next();
        match n % 100 {
            // A vocabulary of 2000 everyday words, Zipf-like: low numbers far more often.
            0..=94 => vocab((n >> 8) % (1 + (n >> 20) % 2000)),
            95..=98 => vocab(2000 + (n >> 8) % 50_000),
            _ => {
                ["meeting", "contract", "patient", "invoice", "café"][(n >> 8) as usize % 5].into()
            }
        }
    }

    fn text(&mut self) -> String {
        let len = 3 + self.next() % 25;
        (0..len).map(|_| self.word()).collect::<Vec<_>>().join(" ")
    }
}

/// Runs `f` `n` times; the median and 95th percentile in milliseconds.
fn time(n: usize, mut f: impl FnMut() -> usize) -> (f64, f64, usize) {
    let mut samples = Vec::with_capacity(n);
    let mut found = 0;
    for _ in 0..n {
        let start = Instant::now();
        found = f();
        samples.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    samples.sort_by(f64::total_cmp);
    (samples[n / 2], samples[(n * 95 / 100).min(n - 1)], found)
}

fn main() {
    let shared::Options { messages, chats, out } = shared::options();
    let world = common::World::new();
    let home = world._dir.path().join("alice");
    drop(world.client("alice"));

    // Fill: chats (left, so that listing them loads no MLS group) and their messages.
    let fill = Instant::now();
    let mut db = shared::open_db(&home, PASSPHRASE);
    let tx = db.transaction().expect("tx");
    let mut words = Words(0x9e37_79b9_7f4a_7c15);
    let base = 1_700_000_000_000i64;
    for c in 0..chats {
        tx.execute(
            "INSERT INTO chats (group_id, kind, name, state, created_at)
             VALUES (?1, 'group', ?2, 'left', ?3)",
            params![format!("chat{c:04}").into_bytes(), format!("chat {c}"), base],
        )
        .expect("chat");
    }
    {
        let mut insert = tx
            .prepare(
                "INSERT INTO messages (group_id, msg_id, sender, kind, body, status, sent_at,
                                       received_at, reported, read_at)
                 VALUES (?1, ?2, ?3, 'text', ?4, 'received', ?5, ?5, 1, ?5)",
            )
            .expect("prepare");
        for i in 0..messages {
            let chat = format!("chat{:04}", i % chats).into_bytes();
            let id = format!("{:032x}", words.next() as u128 | ((i as u128) << 64));
            let at = base + i as i64 * 1000;
            insert.execute(params![chat, id, "bob@localhost", words.text(), at]).expect("row");
        }
    }
    tx.commit().expect("commit");
    let fill_s = fill.elapsed().as_secs_f64();
    let size = std::fs::metadata(home.join("sotto.db")).map(|m| m.len()).unwrap_or(0);

    let client = Client::open(&home, PASSPHRASE).expect("open home");
    let runs = 30;
    let (common, rare) = (vocab(1), vocab(2000 + 4242));
    let queries = [
        ("common word", common.as_str()),
        ("rare word", rare.as_str()),
        ("word start", "meet"),
        ("two words", "contract invoice"),
        ("accented", "cafe"),
    ];
    let mut rows = Vec::new();
    println!(
        "{messages} messages in {chats} chats ({:.1} MB database, filled in {fill_s:.1} s)",
        size as f64 / 1e6
    );
    println!(
        "{:<12} {:>14} {:>14} {:>8}   {:>14} {:>8}",
        "query", "fts5 median ms", "p95 ms", "found", "LIKE median ms", "found"
    );
    for (name, query) in queries {
        let (fts, fts_p95, found) =
            time(runs, || client.search(query, None, 50).expect("search").len());
        // The reference: every word as a substring, newest 50 (no index can help a LIKE).
        let like_sql = {
            let conds: Vec<String> = query
                .split_whitespace()
                .map(|w| format!("body LIKE '%{}%'", w.replace('\'', "''")))
                .collect();
            format!(
                "SELECT COUNT(*) FROM (SELECT id FROM messages WHERE kind = 'text' AND {}
                 ORDER BY id DESC LIMIT 50)",
                conds.join(" AND ")
            )
        };
        let (like, _, like_found) = time(runs.min(10), || {
            db.query_row(&like_sql, [], |r| r.get::<_, i64>(0)).expect("like") as usize
        });
        println!(
            "{name:<12} {fts:>14.2} {fts_p95:>14.2} {found:>8}   {like:>14.2} {like_found:>8}"
        );
        rows.push(json!({
            "query": name, "text": query, "fts_median_ms": fts, "fts_p95_ms": fts_p95,
            "found": found, "like_median_ms": like, "like_found": like_found,
        }));
    }
    let one_chat = format!("chat {}", 7 % chats);
    let (scoped, scoped_p95, scoped_found) =
        time(runs, || client.search(&common, Some(&one_chat), 50).expect("search").len());
    println!("{:<12} {scoped:>14.2} {scoped_p95:>14.2} {scoped_found:>8}", "one chat");
    rows.push(json!({
        "query": "common word, one chat", "text": common, "fts_median_ms": scoped,
        "fts_p95_ms": scoped_p95, "found": scoped_found,
    }));
    let first_chat = "chat 0";
    let (page, page_p95, _) =
        time(runs, || client.history(first_chat, 50, None).expect("history").len());
    let middle = client.history(first_chat, 1000, None).expect("history");
    let before = middle.first().map(|m| m.id.clone()).expect("a message");
    let (back, back_p95, _) =
        time(runs, || client.history(first_chat, 50, Some(&before)).expect("page").len());
    let (list, list_p95, listed) = time(10, || client.chats(true).expect("chats").len());
    println!("history, newest 50 of one chat:     median {page:.2} ms, p95 {page_p95:.2} ms");
    println!("history, 50 from 1000 back:         median {back:.2} ms, p95 {back_p95:.2} ms");
    println!("chats, all {listed}:                    median {list:.2} ms, p95 {list_p95:.2} ms");

    std::fs::create_dir_all(&out).expect("out dir");
    let result = json!({
        "messages": messages, "chats": chats, "database_bytes": size, "fill_seconds": fill_s,
        "search": rows,
        "history_first_page_ms": page, "history_first_page_p95_ms": page_p95,
        "history_page_back_ms": back, "history_page_back_p95_ms": back_p95,
        "chats_ms": list, "chats_p95_ms": list_p95,
    });
    std::fs::write(out.join("search.json"), serde_json::to_vec_pretty(&result).expect("json"))
        .expect("write search.json");
    let mut md = format!(
        "# Search over {messages} messages in {chats} chats\n\n| query | FTS5 median ms | p95 ms | found | LIKE median ms |\n|---|---|---|---|---|\n"
    );
    for r in &rows {
        md.push_str(&format!(
            "| {} (`{}`) | {:.2} | {:.2} | {} | {:.2} |\n",
            r["query"].as_str().unwrap_or(""),
            r["text"].as_str().unwrap_or(""),
            r["fts_median_ms"].as_f64().unwrap_or(0.0),
            r["fts_p95_ms"].as_f64().unwrap_or(0.0),
            r["found"],
            r["like_median_ms"].as_f64().unwrap_or(0.0)
        ));
    }
    md.push_str(&format!(
        "\nHistory, newest 50 of a chat: {page:.2} ms; 50 from 1000 back: {back:.2} ms; the chat list ({listed}): {list:.2} ms.\n"
    ));
    std::fs::write(out.join("search.md"), md).expect("write search.md");
    println!("wrote {}", out.join("search.json").display());
}
