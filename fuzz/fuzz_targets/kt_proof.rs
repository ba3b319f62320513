//! Key directory proofs (JSON, from the server) against a fixed root.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sotto_core::kt::{self, Root};

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else { return };
    let root = Root { epoch: 3, hash: vec![1; 32], previous: vec![2; 32], time: 0 };
    let vrf = [3u8; 32];
    let address = sotto_fuzz::address();
    match which % 3 {
        0 => {
            let _ = kt::verify_lookup(&vrf, &root, &address, rest);
        }
        1 => {
            let _ = kt::verify_history(&vrf, &root, &address, rest);
        }
        _ => {
            let _ = kt::committed_identity(rest);
        }
    }
});
