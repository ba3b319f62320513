//! Wipe commands and confirmations: parsed, then (signed with a fixed key) checked as the
//! target device checks them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sotto_core::account::{Signed, WipeCommand, WipeConfirmation};

fuzz_target!(|data: &[u8]| {
    let key = sotto_fuzz::identity();
    let forged = Signed { body: data.to_vec(), signature: vec![0; 64] };
    let _ = WipeCommand::verify_signature(&forged, &key.public(), None);
    let Ok(command) = serde_json::from_slice::<WipeCommand>(data) else { return };
    let signed = command.sign(&key);
    let me = sotto_fuzz::address();
    let _ =
        WipeCommand::verify_for_target(&signed, &me, &[1; 32], 0, &key.public(), None, |_| false);
    let _ = WipeConfirmation::verify(&forged, &command);
});
