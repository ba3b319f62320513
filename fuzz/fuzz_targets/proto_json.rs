//! Request and response bodies and WebSocket frames: every JSON type the server or a client
//! decodes from the other side.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sotto_proto as proto;

fn decode<T: serde::de::DeserializeOwned>(data: &[u8]) {
    let _ = serde_json::from_slice::<T>(data);
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else { return };
    match which % 16 {
        0 => decode::<proto::SubmitRequest>(rest),
        1 => decode::<proto::RegisterRequest>(rest),
        2 => decode::<proto::ClientFrame>(rest),
        3 => decode::<proto::ServerFrame>(rest),
        4 => decode::<proto::UpdateDevicesRequest>(rest),
        5 => decode::<proto::WipeRequest>(rest),
        6 => decode::<proto::RecoverRequest>(rest),
        7 => decode::<proto::OpenLink>(rest),
        8 => decode::<proto::LinkReply>(rest),
        9 => decode::<proto::NewBlob>(rest),
        10 => decode::<proto::ClaimRequest>(rest),
        11 => decode::<proto::QueueResponse>(rest),
        12 => decode::<proto::ErrorBody>(rest),
        13 => decode::<proto::ServerInfo>(rest),
        14 => decode::<proto::TokenRequest>(rest),
        _ => {
            if let Ok(text) = std::str::from_utf8(rest) {
                let _ = text.parse::<sotto_core::Address>();
                let _ = text.parse::<sotto_core::DeviceRef>();
            }
        }
    }
});
