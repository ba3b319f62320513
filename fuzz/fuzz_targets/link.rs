//! The linking channel: sealed parts as the server relays them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sotto_core::account::LinkPart;

fuzz_target!(|data: &[u8]| {
    let link = sotto_fuzz::link();
    for part in [LinkPart::Request, LinkPart::Response, LinkPart::History] {
        assert!(link.open(part, data).is_none() || data.len() >= 16, "opened under 16 bytes");
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = sotto_core::account::LinkSecret::parse(text);
    }
});
