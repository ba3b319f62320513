//! Writes seed inputs for the fuzz targets in `fuzz/` (one file per seed under
//! `DIR/<target>/`): a real instance of every format each target decodes, made with the same
//! calls the tests make. `cargo run -p sotto-core --example fuzz_seeds -- fuzz/corpus`
#![forbid(unsafe_code)]

use std::path::Path;

use openmls_memory_storage::MemoryStorage;
use sotto_core::DeviceRef;
use sotto_core::account::{DeviceList, IdentityKey, LinkPart, LinkSecret, Signer, WipeCommand};
use sotto_core::attachment::FileKey;
use sotto_core::content::{Body, ChatKind, Message, VERSION};
use sotto_core::mls::{self, DeviceKey, Identity, Provider};

fn write(dir: &Path, target: &str, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let dir = dir.join(target);
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join(format!("seed-{name}")), bytes)
}

fn tagged(tag: u8, bytes: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(bytes);
    out
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args().nth(1).ok_or("usage: fuzz_seeds DIR")?;
    let dir = Path::new(&dir);
    let address: sotto_core::Address = "fuzz@example.org".parse()?;

    // content
    let bodies = [
        Body::text("hello"),
        Body::ChatInfo { kind: ChatKind::Group, name: Some("team".into()) },
        Body::Timer { seconds: 3600 },
        Body::File {
            blob: "00".repeat(16),
            key: "11".repeat(32),
            nonce: "22".repeat(7),
            size: 5,
            sha256: "33".repeat(32),
            name: "a.txt".into(),
            media_type: "text/plain".into(),
            padded: true,
        },
        Body::Text {
            text: "re: hi @fuzz@example.org".into(),
            reply_to: Some("0123456789abcdef0123456789abcdef".into()),
            mentions: vec!["fuzz@example.org".into()],
        },
        Body::Reaction { target: "0123456789abcdef0123456789abcdef".into(), emoji: "👍".into() },
        Body::Edit { target: "0123456789abcdef0123456789abcdef".into(), text: "fixed".into() },
        Body::Delete { target: "0123456789abcdef0123456789abcdef".into() },
        Body::Receipt {
            receipt: sotto_core::content::ReceiptKind::Read,
            ids: vec!["0123456789abcdef0123456789abcdef".into()],
        },
        Body::ChatInfo { kind: ChatKind::Note, name: None },
    ];
    for (i, body) in bodies.into_iter().enumerate() {
        let m = Message {
            v: VERSION,
            id: format!("m{i}"),
            sent_at: 1,
            expires_in: Some(60),
            n: Some(1),
            root: (i == 0).then(|| sotto_core::kt::SeenRoot {
                epoch: 4,
                hash: vec![1; 32],
                previous: vec![2; 32],
                time: 1_800_000_000,
                signature: vec![3; 64],
            }),
            body,
        };
        write(dir, "content", &i.to_string(), &m.encode())?;
    }

    // device_list and wipe
    let identity = IdentityKey::from_secret(&[7u8; 32])?;
    let (list, _, _) = DeviceList::new_account(address.clone(), &[1u8; 32], 1)?;
    write(dir, "device_list", "new-account", &list.body)?;
    let cmd = WipeCommand::new(address.clone(), vec![1; 32], Signer::Identity, 1)?;
    write(dir, "wipe", "command", &cmd.sign(&identity).body)?;

    // link
    let link = LinkSecret::parse("MFRG-GZDF-MZTW-Q2LK-NNWG-23TO-OA")?;
    for (name, part) in [
        ("request", LinkPart::Request),
        ("response", LinkPart::Response),
        ("history", LinkPart::History),
    ] {
        write(dir, "link", name, &link.seal(part, b"{\"device_key\":\"00\"}")?)?;
    }

    // sealed: a queued copy sealed to the fixed queue key, and a sealed roster
    let queue = sotto_core::queue::QueueKey::from_seed(&[7; 32])?;
    let sealer = sotto_core::queue::Sealer::new(queue.public(), 1)?;
    write(dir, "sealed", "copy", &sealer.seal(1, b"an MLS message")?)?;
    let credential = sotto_core::roster::GroupCredential::from_bytes(&[7; 32])?;
    write(
        dir,
        "sealed",
        "roster",
        &sotto_core::roster::seal_roster(&credential, b"group", 1, &[1, 2, 3])?,
    )?;

    // attachment: position byte (high bit: last chunk), then the chunk
    let key = FileKey::from_parts(&[5; 32], &[6; 7])?;
    write(dir, "attachment", "last", &tagged(0x80, &key.seal(0, true, b"a small file")?))?;
    write(dir, "attachment", "first", &tagged(0, &key.seal(0, false, &[9; 256])?))?;

    // proto_json: selector byte, then the JSON
    let json: [(u8, &str); 5] = [
        (
            0,
            r#"{"submission_id":"AAAA","group_id":"Z3JvdXA=","kind":"commit","epoch":0,"delivery":{"recipients":[2],"message":"aGk="},"welcome":{"recipients":[3],"message":"aGk="},"removed":[4]}"#,
        ),
        (2, r#"{"type":"ack","up_to":7}"#),
        (3, r#"{"type":"message","seq":1,"message":"aGk="}"#),
        (12, r#"{"error":{"code":"stale_epoch","message":"x","epoch":3}}"#),
        (15, "alice@example.org/3"),
    ];
    for (i, (tag, text)) in json.iter().enumerate() {
        write(dir, "proto_json", &i.to_string(), &tagged(*tag, text.as_bytes()))?;
    }
    write(dir, "kt_proof", "empty", &tagged(0, b"{}"))?;

    // mls: selector byte (even: a key package; odd: a message to process)
    let member = |name: &str,
                  id: u64|
     -> Result<(Provider<MemoryStorage>, Identity), Box<dyn std::error::Error>> {
        let p = Provider::new(MemoryStorage::default());
        let device = DeviceRef { address: format!("{name}@example.org").parse()?, device_id: id };
        let me = Identity { device, key: DeviceKey::generate()? };
        me.key.store(&p)?;
        Ok((p, me))
    };
    for (suite, tag) in [(mls::Suite::Classical, ""), (mls::Suite::PostQuantum, "-x-wing")] {
        let (pa, alice) = member("alice", 1)?;
        let (pb, bob) = member("bob", 2)?;
        let kp = mls::key_packages(&pb, &bob, suite, 1, false)?.remove(0);
        write(dir, "mls", &format!("key-package{tag}"), &tagged(0, &kp))?;
        let group = mls::create_group(&pa, &alice, suite)?;
        let valid = mls::validate_key_package(&pa, &kp, &bob.device.address, Some(2))?;
        let out = mls::add_members(&pa, &group, &alice, &[valid])?;
        mls::merge_pending_commit(&pa, &group)?;
        let welcome = out.welcome.ok_or("no welcome")?;
        write(dir, "mls", &format!("welcome{tag}"), &tagged(1, &welcome))?;
        write(dir, "mls", &format!("commit{tag}"), &tagged(1, &out.commit))?;
        let app = mls::encrypt(&pa, &group, &alice, b"hello")?;
        write(dir, "mls", &format!("application{tag}"), &tagged(1, &app))?;
    }
    Ok(())
}
