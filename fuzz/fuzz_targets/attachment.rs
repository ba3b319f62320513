//! Attachment chunks as the server streams them back.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sotto_core::attachment::FileKey;

fuzz_target!(|data: &[u8]| {
    let Some((&position, chunk)) = data.split_first() else { return };
    let key = FileKey::from_parts(&[5; 32], &[6; 7]).expect("key");
    let last = position & 0x80 != 0;
    let _ = key.open(u32::from(position & 0x7f), last, chunk);
    if let Ok(name) = std::str::from_utf8(chunk) {
        let safe = sotto_core::attachment::safe_file_name(name);
        assert!(!safe.contains('/') && !safe.starts_with('.') && !safe.is_empty());
        let _ = sotto_core::attachment::media_type(name);
    }
});
