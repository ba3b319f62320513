//! The plaintext inside MLS application messages: what another member wrote.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sotto_core::content::Message;

fuzz_target!(|data: &[u8]| {
    if let Ok(message) = Message::decode(data) {
        // What decodes encodes and decodes again to the same message.
        let again = Message::decode(&message.encode()).expect("re-decode");
        assert_eq!(again, message);
    }
});
