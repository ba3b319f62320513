//! Device lists, linking, revocation, remote wipe and recovery.
//!
//! The server checks every signed object it is handed (so mistakes fail early and clearly),
//! but its checks protect nobody from the server itself: clients verify the same signatures
//! against keys they pinned, and that is what stops a lying server.

use sotto_core::account::{DeviceList, ListError, Signed, Signer, WipeCommand, WipeConfirmation};

use super::*;
use crate::store::{DeviceRecord, ListRecord};

/// Largest sealed request or response on a link.
const MAX_LINK_PART: usize = 64 * 1024;
/// Largest sealed history on a link (the body limit leaves room for base64).
const MAX_LINK_HISTORY: usize = MAX_BODY / 4 * 3 - 4096;
/// How long a link stays open.
pub(crate) const LINK_TTL_SECS: u64 = 15 * 60;

fn invalid_list(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::InvalidDeviceList, message)
}

fn bad_signature(message: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, ErrorCode::BadSignature, message)
}

fn signed(s: &proto::SignedData) -> Signed {
    Signed { body: s.body.0.clone(), signature: s.signature.0.clone() }
}

fn to_proto((body, signature): &(Vec<u8>, Vec<u8>)) -> proto::SignedData {
    proto::SignedData { body: Bytes(body.clone()), signature: Bytes(signature.clone()) }
}

/// Decodes and checks a signed list for `address`.
fn verify_list(
    address: &Address,
    data: &proto::SignedData,
) -> Result<(DeviceList, ListRecord), ApiError> {
    let s = sotto_core::account::SignedList {
        body: data.body.0.clone(),
        signature: data.signature.0.clone(),
    };
    let list = DeviceList::verify(&s).map_err(|e| invalid_list(e.to_string()))?;
    if &list.address != address {
        return Err(invalid_list(
            ListError::WrongAddress {
                expected: address.to_string(),
                found: list.address.to_string(),
            }
            .to_string(),
        ));
    }
    let record = ListRecord {
        version: list.version,
        identity_key: list.identity_key.clone(),
        recovery_key: list.recovery_key.clone(),
        operator_key: list.operator_key.clone(),
        body: s.body,
        signature: s.signature,
    };
    Ok((list, record))
}

fn check_device_signature(address: &Address, device: &proto::NewDevice) -> Result<(), ApiError> {
    if device.device_key.0.len() != 32 {
        return Err(ApiError::bad_request("device_key must be a 32-byte Ed25519 public key"));
    }
    let payload = auth::registration_payload(address, &device.device_key.0);
    if !auth::verify(&device.device_key.0, &payload, &device.signature.0) {
        return Err(bad_signature("the new device's signature does not verify with its key"));
    }
    Ok(())
}

/// Checks a new account's first list: version 1, listing exactly the registering device,
/// and naming no operator key other than this server's.
pub(super) fn first_list(
    state: &Shared,
    address: &Address,
    device_key: &[u8],
    data: &proto::SignedData,
) -> Result<ListRecord, ApiError> {
    let (list, record) = verify_list(address, data)?;
    if list.version != 1 || list.endorsement.is_some() {
        return Err(invalid_list("a new account's device list is version 1"));
    }
    if list.devices.len() != 1 || !list.lists(device_key) {
        return Err(invalid_list("a new account's device list holds exactly its first device"));
    }
    if list.operator_key.is_some() && list.operator_key != state.operator_key() {
        return Err(invalid_list("the list names an operator key this server does not have"));
    }
    Ok(record)
}

async fn own_account(state: &Shared, device: u64) -> Result<(Address, ListRecord), ApiError> {
    let (record, list) = blocking(state, move |s| {
        let Some(record) = s.device(device)? else { return Ok(None) };
        let list = s.device_list(&record.address)?;
        Ok(Some((record, list)))
    })
    .await?
    .ok_or_else(|| ApiError::unauthorized("unknown device"))?;
    let list = list.ok_or_else(|| {
        invalid_list("this account predates signed device lists; register it again")
    })?;
    let address = record
        .address
        .parse()
        .map_err(|e: sotto_core::Error| ApiError::internal("stored address", &e))?;
    Ok((address, list))
}

fn current_list(record: &ListRecord) -> Result<DeviceList, ApiError> {
    let s = sotto_core::account::SignedList {
        body: record.body.clone(),
        signature: record.signature.clone(),
    };
    DeviceList::verify(&s).map_err(|e| ApiError::internal("stored device list", &e))
}

/// `GET /v1/users/{address}/devices`: the signed list to anyone; device details to
/// authenticated devices, and last-seen times and wipes to the account's own devices.
pub(super) async fn list(
    State(state): State<Shared>,
    MaybeDevice(caller): MaybeDevice,
    ClientIp(client): ClientIp,
    Path(address): Path<String>,
) -> Result<Json<proto::DevicesResponse>, ApiError> {
    if caller.is_none() {
        // Without an account (recovery), asking costs like registering: no cheap enumeration.
        state
            .registration_rate
            .check(client)
            .map_err(|wait| ApiError::rate_limited("requests from this address", wait))?;
    }
    let address = parse_address(&state, &address)?;
    let addr = address.to_string();
    let (list, devices, own, mut wipes) = blocking(&state, move |s| {
        let list = s.device_list(&addr)?;
        let devices = if caller.is_some() { s.devices(&addr)? } else { Vec::new() };
        let own = match caller {
            Some(c) => devices.iter().any(|d| d.device_id == c),
            None => false,
        };
        let mut wipes = HashMap::new();
        if own {
            for d in &devices {
                if let Some(w) = s.wipe(d.device_id)? {
                    wipes.insert(d.device_id, w);
                }
            }
        }
        Ok((list, devices, own, wipes))
    })
    .await?;
    let Some(list) = list else {
        return Err(no_list(&state, &address).await);
    };
    Ok(Json(proto::DevicesResponse {
        address: address.to_string(),
        device_list: proto::SignedData { body: Bytes(list.body), signature: Bytes(list.signature) },
        devices: devices
            .into_iter()
            .map(|d: DeviceRecord| proto::DeviceInfo {
                device_id: d.device_id,
                device_key: Bytes(d.device_key),
                created_at: d.created_at,
                last_seen: if own { d.last_seen } else { None },
                revoked_at: d.revoked_at,
                wipe: wipes.remove(&d.device_id).map(|w| proto::WipeStatus {
                    command: to_proto(&w.command),
                    confirmation: w.confirmation.as_ref().map(to_proto),
                }),
            })
            .collect(),
    }))
}

/// Why an address has no device list: it was deleted (403 `account_deleted`, which the key
/// directory's tombstone lets clients check), or it never existed (404).
async fn no_list(state: &Shared, address: &Address) -> ApiError {
    let addr = address.to_string();
    match blocking(state, move |s| s.account(&addr)).await {
        Ok(Some(a)) if a.deleted_at.is_some() => ApiError::new(
            StatusCode::FORBIDDEN,
            ErrorCode::AccountDeleted,
            format!("{address} was deleted by this server's operator"),
        ),
        Ok(_) => unknown_user(address),
        Err(e) => e,
    }
}

/// `POST /v1/devices`: the next version of the caller's account's list. Unlisted devices are
/// revoked; `new_device` is registered.
pub(super) async fn update(
    State(state): State<Shared>,
    AuthDevice(caller): AuthDevice,
    ApiJson(req): ApiJson<proto::UpdateDevicesRequest>,
) -> Result<Json<proto::UpdateDevicesResponse>, ApiError> {
    let (address, current) = own_account(&state, caller).await?;
    let (list, record) = verify_list(&address, &req.device_list)?;
    let known = current_list(&current)?;
    match list.check_update(&known) {
        Ok(false) if list.version == known.version + 1 => {}
        Ok(true) => return Err(invalid_list("the identity key changes only by recovery")),
        Ok(false) => {
            return Err(invalid_list(format!(
                "the next device list is version {}, not {}",
                known.version + 1,
                list.version
            )));
        }
        Err(e) => return Err(invalid_list(e.to_string())),
    }
    if list.recovery_key != known.recovery_key || list.operator_key != known.operator_key {
        return Err(invalid_list("the recovery and operator keys cannot change here"));
    }
    if let Some(new) = &req.new_device {
        check_device_signature(&address, new)?;
        if !list.lists(&new.device_key.0) {
            return Err(invalid_list("the new device is not in the new list"));
        }
    }
    let addr = address.to_string();
    let devices = blocking(&state, move |s| s.devices(&addr)).await?;
    let active: Vec<&DeviceRecord> = devices.iter().filter(|d| d.revoked_at.is_none()).collect();
    let new_key = req.new_device.as_ref().map(|n| n.device_key.0.clone());
    for listed in &list.devices {
        let registered = active.iter().any(|d| d.device_key == listed.key);
        if !registered && new_key.as_ref() != Some(&listed.key) {
            return Err(invalid_list(
                "the list names a device that is not registered, or was revoked",
            ));
        }
    }
    if new_key.as_ref().is_some_and(|k| devices.iter().any(|d| &d.device_key == k)) {
        return Err(ApiError::bad_request("this device key is already registered"));
    }
    let me = active.iter().find(|d| d.device_id == caller);
    if me.is_none_or(|d| !list.lists(&d.device_key)) {
        return Err(invalid_list("a device cannot drop itself; revoke it from another device"));
    }
    let revoke: Vec<u64> =
        active.iter().filter(|d| !list.lists(&d.device_key)).map(|d| d.device_id).collect();
    let addr = address.to_string();
    let expected = known.version;
    let version = record.version;
    let revoked = revoke.clone();
    let published = record.clone();
    let device_id = blocking(&state, move |s| {
        s.update_devices(&addr, expected, &record, new_key.as_deref(), &revoke, unix_now())
    })
    .await?;
    super::kt::publish(&state, &address, &published).await;
    state.revoke(&revoked);
    if let Some(id) = device_id {
        tracing::info!(device_id = id, "linked a device");
    }
    for id in &revoked {
        tracing::info!(device_id = id, "revoked a device");
    }
    Ok(Json(proto::UpdateDevicesResponse { version, device_id, revoked }))
}

/// Finds the account device a wipe command names.
async fn wipe_target(
    state: &Shared,
    address: &Address,
    cmd: &WipeCommand,
) -> Result<u64, ApiError> {
    if &cmd.address != address {
        return Err(ApiError::bad_request("the wipe command is for another account"));
    }
    let addr = address.to_string();
    let devices = blocking(state, move |s| s.devices(&addr)).await?;
    devices.iter().find(|d| d.device_key == cmd.device_key).map(|d| d.device_id).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::UnknownDevice,
            "the wipe command names no device of this account",
        )
    })
}

async fn store_wipe(
    state: &Shared,
    target: u64,
    command: &proto::SignedData,
) -> Result<Json<proto::WipeResponse>, ApiError> {
    let blob = (command.body.0.clone(), command.signature.0.clone());
    blocking(state, move |s| s.put_wipe(target, &blob, unix_now())).await?;
    state.revoke(&[target]);
    tracing::info!(device_id = target, "a wipe was ordered; the device is revoked");
    Ok(Json(proto::WipeResponse { device_id: target }))
}

/// `POST /v1/devices/wipe`: a device orders another device of its account to erase itself.
pub(super) async fn wipe(
    State(state): State<Shared>,
    AuthDevice(caller): AuthDevice,
    ApiJson(req): ApiJson<proto::WipeRequest>,
) -> Result<Json<proto::WipeResponse>, ApiError> {
    let (address, current) = own_account(&state, caller).await?;
    let cmd = WipeCommand::verify_signature(&signed(&req.command), &current.identity_key, None)
        .map_err(|e| bad_signature(&e.to_string()))?;
    let target = wipe_target(&state, &address, &cmd).await?;
    if target == caller {
        return Err(ApiError::bad_request("a device cannot order its own wipe"));
    }
    store_wipe(&state, target, &req.command).await
}

/// `POST /v1/operator/wipe`: the operator orders a device of a managed account to erase
/// itself. The signature by the operator key is the authentication.
pub(super) async fn operator_wipe(
    State(state): State<Shared>,
    ApiJson(req): ApiJson<proto::WipeRequest>,
) -> Result<Json<proto::WipeResponse>, ApiError> {
    let Some(operator_key) = state.operator_key() else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            ErrorCode::NotManaged,
            "this server has no operator key",
        ));
    };
    let cmd = WipeCommand::verify_signature(&signed(&req.command), &[], Some(&operator_key))
        .map_err(|e| bad_signature(&e.to_string()))?;
    if cmd.signer != Signer::Operator {
        return Err(bad_signature("not an operator command"));
    }
    let address = parse_address(&state, cmd.address.as_str())?;
    let addr = address.to_string();
    let list = blocking(&state, move |s| s.device_list(&addr)).await?;
    let list = list.ok_or_else(|| unknown_user(&address))?;
    if list.operator_key.as_deref() != Some(operator_key.as_slice()) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            ErrorCode::NotManaged,
            format!("{address} has not accepted the operator's key; only its owner can wipe it"),
        ));
    }
    let target = wipe_target(&state, &address, &cmd).await?;
    store_wipe(&state, target, &req.command).await
}

/// `GET /v1/wipe`: the wipe ordered for the caller (revoked devices may ask).
pub(super) async fn pending_wipe(
    State(state): State<Shared>,
    AnyDevice(device): AnyDevice,
) -> Result<Json<proto::PendingWipe>, ApiError> {
    let wipe = blocking(&state, move |s| s.wipe(device)).await?;
    Ok(Json(proto::PendingWipe { command: wipe.map(|w| to_proto(&w.command)) }))
}

/// `POST /v1/wipe/confirm`: the device's signed word that it erased itself.
pub(super) async fn confirm_wipe(
    State(state): State<Shared>,
    AnyDevice(device): AnyDevice,
    ApiJson(req): ApiJson<proto::WipeConfirm>,
) -> Result<Json<proto::WipeResponse>, ApiError> {
    let wipe = blocking(&state, move |s| s.wipe(device)).await?;
    let wipe = wipe.ok_or_else(|| ApiError::bad_request("no wipe was ordered for this device"))?;
    let cmd: WipeCommand = serde_json::from_slice(&wipe.command.0)
        .map_err(|e| ApiError::internal("stored wipe command", &e))?;
    WipeConfirmation::verify(&signed(&req.confirmation), &cmd)
        .ok_or_else(|| bad_signature("the confirmation does not verify with the device key"))?;
    let blob = (req.confirmation.body.0, req.confirmation.signature.0);
    blocking(&state, move |s| s.confirm_wipe(device, &blob, unix_now())).await?;
    tracing::info!(device_id = device, "a device confirmed its wipe");
    Ok(Json(proto::WipeResponse { device_id: device }))
}

fn link_id(text: &str) -> Result<Vec<u8>, ApiError> {
    hex::decode(text)
        .ok()
        .filter(|id| id.len() == 16)
        .ok_or_else(|| ApiError::bad_request("a link id is 32 hex digits"))
}

pub(super) fn unknown_link() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        ErrorCode::UnknownLink,
        "no device is waiting for this code (mistyped, or expired after 15 minutes)",
    )
}

/// `POST /v1/links`: a new device opens a link (no account yet; limited per IP address).
pub(super) async fn open_link(
    State(state): State<Shared>,
    ClientIp(client): ClientIp,
    ApiJson(req): ApiJson<proto::OpenLink>,
) -> Result<Json<serde_json::Value>, ApiError> {
    state
        .registration_rate
        .check(client)
        .map_err(|wait| ApiError::rate_limited("links from this address", wait))?;
    if req.link_id.0.len() != 16 {
        return Err(ApiError::bad_request("link_id must be 16 bytes"));
    }
    if req.request.0.is_empty() || req.request.0.len() > MAX_LINK_PART {
        return Err(ApiError::bad_request(format!("a link request is 1 to {MAX_LINK_PART} bytes")));
    }
    blocking(&state, move |s| s.open_link(&req.link_id.0, &req.request.0, unix_now())).await?;
    Ok(Json(serde_json::json!({})))
}

/// `GET /v1/links/{id}`: the sealed parts (the id, derived from the secret code, is the
/// capability; the parts are sealed under the code).
pub(super) async fn get_link(
    State(state): State<Shared>,
    Path(id): Path<String>,
) -> Result<Json<proto::LinkState>, ApiError> {
    let id = link_id(&id)?;
    let link = blocking(&state, move |s| s.link(&id)).await?.ok_or_else(unknown_link)?;
    Ok(Json(proto::LinkState {
        request: Bytes(link.request),
        response: link.response.map(Bytes),
        history: link.history.map(Bytes),
    }))
}

/// `POST /v1/links/{id}`: the approving device's response or history.
pub(super) async fn reply_link(
    State(state): State<Shared>,
    AuthDevice(_): AuthDevice,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<proto::LinkReply>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let id = link_id(&id)?;
    if req.response.as_ref().is_some_and(|r| r.0.is_empty() || r.0.len() > MAX_LINK_PART) {
        return Err(ApiError::bad_request(format!(
            "a link response is 1 to {MAX_LINK_PART} bytes"
        )));
    }
    if req.history.as_ref().is_some_and(|h| h.0.len() > MAX_LINK_HISTORY) {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::TooLarge,
            format!("link history larger than {MAX_LINK_HISTORY} bytes"),
        ));
    }
    let response = req.response.map(|r| r.0);
    let history = req.history.map(|h| h.0);
    blocking(&state, move |s| s.reply_link(&id, response.as_deref(), history.as_deref())).await?;
    Ok(Json(serde_json::json!({})))
}

/// `POST /v1/recover`: a new identity key endorsed by the recovery key takes the account
/// back; every other device is revoked.
pub(super) async fn recover(
    State(state): State<Shared>,
    ClientIp(client): ClientIp,
    ApiJson(req): ApiJson<proto::RecoverRequest>,
) -> Result<Json<proto::UpdateDevicesResponse>, ApiError> {
    state
        .registration_rate
        .check(client)
        .map_err(|wait| ApiError::rate_limited("recovery attempts from this address", wait))?;
    let address = parse_address(&state, &req.address)?;
    let addr = address.to_string();
    let (current, account) =
        blocking(&state, move |s| Ok((s.device_list(&addr)?, s.account(&addr)?))).await?;
    // A barred account stays as the operator left it: recovery would replace its keys.
    if let Some(why) =
        account.as_ref().and_then(|a| a.barred(state.config.account_grace_secs, unix_now()))
    {
        return Err(barred_error(why));
    }
    let Some(current) = current else {
        return Err(no_list(&state, &address).await);
    };
    let known = current_list(&current)?;
    check_device_signature(&address, &req.device)?;
    let (list, record) = verify_list(&address, &req.device_list)?;
    if !list.endorsed_by(&known.recovery_key) {
        return Err(bad_signature("the recovery key does not match this account"));
    }
    if list.version != known.version + 1 || list.identity_key == known.identity_key {
        return Err(invalid_list(format!(
            "a recovery list is version {} with a new identity key",
            known.version + 1
        )));
    }
    if list.recovery_key != known.recovery_key || list.operator_key != known.operator_key {
        return Err(invalid_list("the recovery and operator keys cannot change here"));
    }
    if list.devices.len() != 1 || !list.lists(&req.device.device_key.0) {
        return Err(invalid_list("a recovery list holds exactly the recovering device"));
    }
    let addr = address.to_string();
    let key = req.device.device_key.0;
    let expected = known.version;
    let version = record.version;
    let published = record.clone();
    let (device_id, revoked) = blocking(&state, move |s| {
        let revoke: Vec<u64> = s
            .devices(&addr)?
            .into_iter()
            .filter(|d| d.revoked_at.is_none())
            .map(|d| d.device_id)
            .collect();
        let id = s.update_devices(&addr, expected, &record, Some(&key), &revoke, unix_now())?;
        Ok((id, revoke))
    })
    .await?;
    state.revoke(&revoked);
    super::kt::publish(&state, &address, &published).await;
    tracing::info!("an account was recovered; its other devices are revoked");
    Ok(Json(proto::UpdateDevicesResponse { version, device_id, revoked }))
}
