//! What padding costs: message contents padded to a few sizes (`content::padded_len`) and
//! files padded to their Padmé length (`attachment::padme`). Prints a Markdown report and
//! writes it to `docs/bench/padding.md` (or the path given):
//! `cargo run -p sotto-core --example padding_overhead`. Every figure is exact arithmetic on
//! real encodings; nothing here is timed.
#![forbid(unsafe_code)]

use std::collections::BTreeSet;
use std::fmt::Write as _;

use sotto_core::attachment::{self, Layout};
use sotto_core::content::{self, Body, Message};

/// What MLS adds around an application message's content (sender data, signature, tag,
/// group id, epoch): 299 bytes on the wire for 100 bytes of content in either ciphersuite
/// (docs/bench/pq.md).
const MLS_FRAMING: u64 = 199;

/// A text message as a client sends it (random id, clock, count), with a text of `chars`
/// characters of ordinary prose.
fn text_message(chars: usize) -> Message {
    const PROSE: &str = "The quick brown fox jumps over the lazy dog; see you at 5, ok? ";
    let text: String = PROSE.chars().cycle().take(chars).collect();
    Message {
        v: 1,
        id: "8f14e45fceea167a5a36dedd4bea2543".into(),
        sent_at: 1_800_000_000_000,
        expires_in: None,
        n: Some(1234),
        root: None,
        body: Body::text(text),
    }
}

/// Overhead figures over a weighted set of (unpadded, padded) sizes.
struct Figures {
    mean_unpadded: f64,
    mean_padded: f64,
    /// Extra bytes over all bytes, weighted: what the padding adds to the traffic.
    total: f64,
    /// The mean of each item's own overhead.
    mean: f64,
    worst: f64,
    worst_at: u64,
    sizes: usize,
}

fn figures(items: impl Iterator<Item = (u64, u64, u64, f64)>) -> Figures {
    // (label, unpadded, padded, weight)
    let (mut w, mut un, mut pa, mut mean) = (0.0, 0.0, 0.0, 0.0);
    let (mut worst, mut worst_at) = (0.0f64, 0);
    let mut sizes = BTreeSet::new();
    for (label, unpadded, padded, weight) in items {
        let overhead = (padded - unpadded) as f64 / unpadded as f64;
        w += weight;
        un += weight * unpadded as f64;
        pa += weight * padded as f64;
        mean += weight * overhead;
        if overhead > worst {
            (worst, worst_at) = (overhead, label);
        }
        sizes.insert(padded);
    }
    Figures {
        mean_unpadded: un / w,
        mean_padded: pa / w,
        total: (pa - un) / un,
        mean: mean / w,
        worst,
        worst_at,
        sizes: sizes.len(),
    }
}

fn pct(x: f64) -> String {
    format!("{:.1} %", x * 100.0)
}

fn pct2(x: f64) -> String {
    format!("{:.2} %", x * 100.0)
}

fn bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 30 && n.is_multiple_of(1 << 30) => format!("{} GiB", n >> 30),
        n if n >= 1 << 20 && n.is_multiple_of(1 << 20) => format!("{} MiB", n >> 20),
        n if n >= 1 << 10 && n.is_multiple_of(1 << 10) => format!("{} KiB", n >> 10),
        n if n >= 1 << 20 => format!("{:.2} MiB", n as f64 / (1 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} B"),
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::env::args().nth(1).unwrap_or_else(|| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/bench/padding.md").to_string()
    });
    let mut r = String::new();
    writeln!(r, "# Padding: what hiding sizes costs\n")?;
    writeln!(
        r,
        "`cargo run -p sotto-core --example padding_overhead` (exact arithmetic on real \
         encodings, nothing timed). Message contents are padded with trailing spaces to the \
         next power of two from {} B to {} KiB, then to a multiple of {} KiB \
         (`content::padded_len`); files are padded with zeros to their Padmé length before \
         encryption (`attachment::padme`: the last E − S bits of the length rounded up, \
         E = ⌊log2 L⌋, S = ⌊log2 E⌋ + 1). Overhead is extra bytes over the unpadded size.\n",
        content::MIN_PADDED_LEN,
        content::MAX_PADDED_BUCKET >> 10,
        content::MAX_PADDED_BUCKET >> 10,
    )?;

    // Message contents.
    let texts: Vec<(u64, u64, u64)> = (1..=4000)
        .map(|chars| {
            let m = text_message(chars);
            let unpadded = serde_json::to_vec(&m)?.len() as u64;
            Ok((chars as u64, unpadded, m.encode().len() as u64))
        })
        .collect::<Result<_, serde_json::Error>>()?;
    let uniform = figures(texts.iter().map(|&(c, u, p)| (c, u, p, 1.0)));
    // Most texts are short: weight 1/length (as many texts of 1–10 characters as of 10–100,
    // 100–1000, 1000–4000 together... log-uniform).
    let short = figures(texts.iter().map(|&(c, u, p)| (c, u, p, 1.0 / c as f64)));
    writeln!(r, "## Message contents\n")?;
    writeln!(
        r,
        "A text message as the client sends it (128-bit id, clock, message count; no \
         disappearing timer, no key-directory root) with 1 to 4000 characters of ASCII \
         prose. The JSON envelope alone is {} B.\n",
        texts[0].1 - 1
    )?;
    writeln!(
        r,
        "| text lengths | mean unpadded | mean padded | traffic overhead | on the wire | \
         mean overhead | worst overhead | distinct sizes |"
    )?;
    writeln!(r, "|---|---:|---:|---:|---:|---:|---:|---:|")?;
    for (name, f) in [
        ("1–4000 characters, uniform", &uniform),
        ("1–4000 characters, weight 1/length (most texts short)", &short),
    ] {
        writeln!(
            r,
            "| {name} | {:.0} B | {:.0} B | {} | {} | {} | {} (at {} {}) | {} |",
            f.mean_unpadded,
            f.mean_padded,
            pct(f.total),
            pct((f.mean_padded - f.mean_unpadded) / (f.mean_unpadded + MLS_FRAMING as f64)),
            pct(f.mean),
            pct(f.worst),
            f.worst_at,
            if f.worst_at == 1 { "character" } else { "characters" },
            f.sizes
        )?;
    }
    let distinct: BTreeSet<u64> = texts.iter().map(|t| t.2).collect();
    writeln!(
        r,
        "\nTraffic overhead: the extra bytes over all bytes (what padding adds to the \
         traffic); on the wire: the same with the MLS framing around each message ({MLS_FRAMING} B, \
         docs/bench/pq.md); mean overhead: the mean of each message's own.\n"
    )?;
    writeln!(
        r,
        "The padded sizes over 1–4000 characters: {}. Without padding, every length \
         is its own size ({} of them). Every legal message, up to the longest (a 64 KiB text of \
         escaped characters with 64 mentions, about 505 KiB), takes one of 13 sizes: 256 B to \
         128 KiB by powers of two, then 256, 384 and 512 KiB.\n",
        distinct.iter().map(|&s| bytes(s)).collect::<Vec<_>>().join(", "),
        texts.iter().map(|t| t.1).collect::<BTreeSet<_>>().len()
    )?;
    writeln!(r, "Other contents (unpadded → padded):\n")?;
    let id = "0123456789abcdef0123456789abcdef".to_string();
    let root = sotto_core::kt::SeenRoot {
        epoch: 1000,
        hash: vec![1; 32],
        previous: vec![2; 32],
        time: 1_800_000_000,
        signature: vec![3; 64],
    };
    let file = Body::File {
        blob: "00".repeat(16),
        key: "11".repeat(32),
        nonce: "22".repeat(7),
        size: 2_345_678,
        sha256: "33".repeat(32),
        name: "holiday photo.jpg".into(),
        media_type: "image/jpeg".into(),
        padded: true,
    };
    let base = text_message(1);
    let others = [
        (
            "reaction",
            Message {
                v: 2,
                body: Body::Reaction { target: id.clone(), emoji: "👍".into() },
                ..base.clone()
            },
        ),
        (
            "read receipt, 1 message",
            Message {
                v: 2,
                body: Body::Receipt { receipt: content::ReceiptKind::Read, ids: vec![id.clone()] },
                ..base.clone()
            },
        ),
        (
            "read receipt, 20 messages",
            Message {
                v: 2,
                body: Body::Receipt {
                    receipt: content::ReceiptKind::Read,
                    ids: vec![id.clone(); 20],
                },
                ..base.clone()
            },
        ),
        ("file reference", Message { body: file, ..base.clone() }),
        (
            "20-character text with a key-directory root",
            Message { root: Some(root), ..text_message(20) },
        ),
        ("longest text, 64 KiB of ASCII", text_message(content::MAX_TEXT_LEN)),
    ];
    writeln!(r, "| content | unpadded | padded | overhead |")?;
    writeln!(r, "|---|---:|---:|---:|")?;
    for (name, m) in others {
        let (u, p) = (serde_json::to_vec(&m)?.len() as u64, m.encode().len() as u64);
        writeln!(r, "| {name} | {u} B | {} | {} |", bytes(p), pct((p - u) as f64 / u as f64))?;
    }
    writeln!(r)?;

    // Files.
    const POINTS: u32 = 20_000;
    let (lo, hi) = (1u64 << 10, 1u64 << 30);
    let sizes: Vec<u64> = (0..=POINTS)
        .map(|i| {
            let x = (lo as f64).ln()
                + ((hi as f64).ln() - (lo as f64).ln()) * f64::from(i) / f64::from(POINTS);
            x.exp().round() as u64
        })
        .collect();
    let plain = figures(sizes.iter().map(|&s| (s, s, attachment::padme(s), 1.0)));
    let stored = figures(
        sizes
            .iter()
            .map(|&s| (s, attachment::encrypted_len(s), Layout::new(s, true).sealed_len(), 1.0)),
    );
    // The worst size of each octave is its first plus one: the most rounding on the least.
    let worst_exact = (10..30)
        .map(|e| {
            let s = (1u64 << e) + 1;
            ((attachment::padme(s) - s) as f64 / s as f64, s)
        })
        .fold((0.0, 0), |a, b| if b.0 > a.0 { b } else { a });
    // Distinct padded sizes from 1 KiB to 1 GiB: 2^S per octave.
    let distinct: u64 = (10u32..30)
        .map(|e| {
            let s = u32::BITS - e.leading_zeros();
            1u64 << s
        })
        .sum::<u64>()
        + 1;
    writeln!(r, "## Files\n")?;
    writeln!(
        r,
        "{} sizes from 1 KiB to 1 GiB, log-spaced (as many in each octave). Overhead of the \
         padding on the file, and on the blob the server stores (64 KiB STREAM chunks with \
         a 16-byte tag each, padded or not).\n",
        POINTS + 1
    )?;
    writeln!(r, "| | mean overhead | worst overhead | distinct sizes, 1 KiB–1 GiB |")?;
    writeln!(r, "|---|---:|---:|---:|")?;
    writeln!(
        r,
        "| file (Padmé) | {} | {} (at {} B; {} at {} B over every size) | {} (instead of {}) |",
        pct2(plain.mean),
        pct2(plain.worst),
        plain.worst_at,
        pct2(worst_exact.0),
        worst_exact.1,
        distinct,
        hi - lo + 1
    )?;
    writeln!(
        r,
        "| blob on the server | {} | {} (at {} B) | |\n",
        pct2(stored.mean),
        pct2(stored.worst),
        stored.worst_at
    )?;
    writeln!(r, "By octave (the worst is the octave's first size plus one):\n")?;
    writeln!(r, "| sizes | rounded to a multiple of | sizes in the octave | worst overhead |")?;
    writeln!(r, "|---|---:|---:|---:|")?;
    for e in [10u32, 13, 16, 20, 23, 26, 29] {
        let s = u32::BITS - e.leading_zeros();
        let first = (1u64 << e) + 1;
        writeln!(
            r,
            "| {} – {} | {} | {} | {} |",
            bytes(1 << e),
            bytes(1 << (e + 1)),
            bytes(1 << (e - s)),
            1u64 << s,
            pct2((attachment::padme(first) - first) as f64 / first as f64)
        )?;
    }
    print!("{r}");
    std::fs::write(&out, &r)?;
    eprintln!("written to {out}");
    Ok(())
}
