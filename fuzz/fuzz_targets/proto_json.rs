//! Request and response bodies and WebSocket frames: every JSON type the server or a client
//! decodes from the other side, and the live connection's binary frames (version 2), which
//! must encode back to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sotto_proto as proto;
use sotto_proto::live::{Down, Up};

fn decode<T: serde::de::DeserializeOwned>(data: &[u8]) {
    let _ = serde_json::from_slice::<T>(data);
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else { return };
    match which % 18 {
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
        15 => {
            if let Ok(frame @ (Down::Messages(_) | Down::Acked(_))) = Down::from_binary(rest) {
                // A time of 0 reads as unknown and is written as 0 again.
                assert_eq!(frame.to_binary(), rest, "a page re-encodes differently");
            }
        }
        16 => {
            if let Ok(frame) = Up::from_binary(rest) {
                assert_eq!(frame.to_binary(), rest, "an acknowledgement re-encodes differently");
            }
        }
        _ => {
            if let Ok(text) = std::str::from_utf8(rest) {
                let _ = text.parse::<sotto_core::Address>();
                let _ = text.parse::<sotto_core::DeviceRef>();
            }
        }
    }
});
