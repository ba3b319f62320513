//! What arrives through the MLS seam: key packages a server hands out, and welcomes, commits,
//! proposals and application messages in a member's queue.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sotto_core::mls;

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else { return };
    let _ = mls::group_of(rest);
    let bob = sotto_fuzz::bob().lock().unwrap_or_else(|p| p.into_inner());
    if which % 2 == 0 {
        let _ = mls::validate_key_package(&bob.provider, rest, &sotto_fuzz::address(), None);
    } else {
        let _ = mls::process(&bob.provider, rest);
    }
});
