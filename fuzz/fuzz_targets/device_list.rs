//! Signed device lists: parsed as the server hands them out, then (signed with a fixed key,
//! so the fuzzer reaches the checks after the signature) verified and checked as an update.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sotto_core::account::{DeviceList, SignedList};

fuzz_target!(|data: &[u8]| {
    let signed = SignedList { body: data.to_vec(), signature: vec![0; 64] };
    let _ = DeviceList::verify(&signed);
    let Ok(mut list) = serde_json::from_slice::<DeviceList>(data) else { return };
    let key = sotto_fuzz::identity();
    list.identity_key = key.public();
    let signed = list.sign(&key);
    if let Ok(list) = DeviceList::verify(&signed) {
        let known = list.clone();
        assert!(matches!(list.check_update(&known), Ok(false)));
        let next = list.next(list.issued_at.saturating_add(1));
        let _ = next.check_update(&list);
        let _ = list.endorsed_by(&[0; 32]);
    }
});
