//! Sealed bytes: queued copies as a device fetches them (sealed by the server to its queue
//! key), and group rosters as the server reads them back.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sotto_core::queue::{OVERHEAD, QueueKey};
use sotto_core::roster::{GroupCredential, open_roster};

fuzz_target!(|data: &[u8]| {
    let key = QueueKey::from_seed(&[7; 32]).expect("a 32-byte seed");
    if let Ok(plain) = key.open(1, data) {
        assert!(plain.len() + OVERHEAD <= data.len(), "opened more than was sealed");
    }
    let credential = GroupCredential::from_bytes(&[7; 32]).expect("a 32-byte credential");
    if let Ok(roster) = open_roster(&credential, b"group", 1, data) {
        assert!(roster.len() * 8 < data.len(), "a roster larger than its sealed bytes");
    }
});
