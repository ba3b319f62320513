//! Registers a fresh account on a server with open registration and prints a bearer token for
//! its device: for tools that exercise the HTTP API directly (scripts/schemathesis.sh).
//!
//! `cargo run -p sotto --example api_token -- URL [ADDRESS]`

use base64::Engine as _;
use serde_json::{Value, json};
use sotto_core::auth;
use sotto_core::mls::DeviceKey;

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn post(agent: &ureq::Agent, url: &str, body: &Value) -> anyhow::Result<Value> {
    let mut resp = agent.post(url).send_json(body)?;
    let status = resp.status();
    let value: Value = resp.body_mut().read_json()?;
    anyhow::ensure!(status.is_success(), "{url}: {status} {value}");
    Ok(value)
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let server = args.next().ok_or_else(|| anyhow::anyhow!("usage: api_token URL [ADDRESS]"))?;
    let server = server.trim_end_matches('/');
    let agent: ureq::Agent =
        ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let mut info = agent.get(&format!("{server}/v1/info")).call()?;
    let info: Value = info.body_mut().read_json()?;
    let domain = info["domain"].as_str().unwrap_or("localhost").to_string();
    let address = args.next().unwrap_or_else(|| format!("api{}@{domain}", std::process::id()));
    let parsed = address.parse()?;
    let key = DeviceKey::generate()?;
    let signature = key.sign(&auth::registration_payload(&parsed, key.public()))?;
    let (list, _, _) =
        sotto_core::account::DeviceList::new_account(parsed, key.public(), sotto_core::unix_now())?;
    let registered = post(
        &agent,
        &format!("{server}/v1/register"),
        &json!({
            "address": address, "invite": null, "device_key": b64(key.public()),
            "signature": b64(&signature),
            "device_list": {"body": b64(&list.body), "signature": b64(&list.signature)},
        }),
    )?;
    let device = registered["device_id"].as_u64().unwrap_or(0);
    let challenge =
        post(&agent, &format!("{server}/v1/auth/challenge"), &json!({"device_id": device}))?;
    let nonce = base64::engine::general_purpose::STANDARD
        .decode(challenge["nonce"].as_str().unwrap_or(""))?;
    let signature = key.sign(&auth::challenge_payload(&domain, device, &nonce))?;
    let token = post(
        &agent,
        &format!("{server}/v1/auth/token"),
        &json!({
            "device_id": device, "nonce": b64(&nonce), "signature": b64(&signature),
        }),
    )?;
    println!("{}", token["token"].as_str().unwrap_or(""));
    Ok(())
}
