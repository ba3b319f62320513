//! Key transparency endpoints: signed roots, lookup and history proofs, audit proofs.

use super::*;
use crate::kt::{MAX_AUDIT_SPAN, RootRow};

fn signed_root(r: RootRow) -> proto::SignedRoot {
    proto::SignedRoot {
        epoch: r.epoch,
        hash: Bytes(r.hash),
        previous: Bytes(r.previous),
        time: r.time,
        signature: Bytes(r.signature),
    }
}

fn kt_failed(e: crate::Error) -> ApiError {
    ApiError::internal("key directory failed", &e)
}

/// Publishes an account's current device list to the key directory. A failure is logged, not
/// returned: the list is stored, and the directory is reconciled with the store at start and
/// on every sweep.
pub(super) async fn publish(state: &Shared, address: &Address, list: &crate::store::ListRecord) {
    let signed = sotto_core::account::SignedList {
        body: list.body.clone(),
        signature: list.signature.clone(),
    };
    let value = sotto_core::kt::commitment(&list.identity_key, &signed);
    if let Err(e) = state.kt.publish(sotto_core::kt::label(address), value).await {
        tracing::error!(error = %e, "could not publish a device list; it will be reconciled");
    }
}

/// `GET /v1/kt/roots`.
pub(super) async fn roots(
    State(state): State<Shared>,
    query: Result<Query<HashMap<String, u64>>, QueryRejection>,
) -> Result<Json<proto::KtRoots>, ApiError> {
    let Query(q) = query.map_err(|r| ApiError::bad_request(r.body_text()))?;
    let from = q.get("from").copied().unwrap_or(0);
    let limit = q.get("limit").copied().unwrap_or(1000).clamp(1, 1000) as u32;
    let roots = state.kt.roots(from, limit).await.map_err(kt_failed)?;
    Ok(Json(proto::KtRoots { roots: roots.into_iter().map(signed_root).collect() }))
}

async fn proof(
    state: &Shared,
    caller: Option<u64>,
    peer: IpAddr,
    address: &str,
    history: bool,
) -> Result<Json<proto::KtProof>, ApiError> {
    if caller.is_none() {
        state
            .registration_rate
            .check(peer)
            .map_err(|wait| ApiError::rate_limited("requests from this address", wait))?;
    }
    let address = parse_address(state, address)?;
    let label = sotto_core::kt::label(&address);
    let found = if history { state.kt.history(label).await } else { state.kt.lookup(label).await };
    let (root, proof) = found.map_err(kt_failed)?.ok_or_else(|| unknown_user(&address))?;
    Ok(Json(proto::KtProof { root: signed_root(root), proof: Bytes(proof) }))
}

/// `GET /v1/kt/lookup/{address}`: the proof of an address's current value.
pub(super) async fn lookup(
    State(state): State<Shared>,
    MaybeDevice(caller): MaybeDevice,
    ClientIp(client): ClientIp,
    Path(address): Path<String>,
) -> Result<Json<proto::KtProof>, ApiError> {
    proof(&state, caller, client, &address, false).await
}

/// `GET /v1/kt/history/{address}`: the proof of every value an address ever had.
pub(super) async fn history(
    State(state): State<Shared>,
    MaybeDevice(caller): MaybeDevice,
    ClientIp(client): ClientIp,
    Path(address): Path<String>,
) -> Result<Json<proto::KtProof>, ApiError> {
    proof(&state, caller, client, &address, true).await
}

/// `GET /v1/kt/audit?start=A&end=B`.
pub(super) async fn audit(
    State(state): State<Shared>,
    query: Result<Query<HashMap<String, u64>>, QueryRejection>,
) -> Result<Json<proto::KtAudit>, ApiError> {
    let Query(q) = query.map_err(|r| ApiError::bad_request(r.body_text()))?;
    let (Some(&start), Some(&end)) = (q.get("start"), q.get("end")) else {
        return Err(ApiError::bad_request("give start and end epochs"));
    };
    let latest = state.kt.latest_root().await.map_err(kt_failed)?.epoch;
    if start >= end || end > latest || end - start > MAX_AUDIT_SPAN {
        return Err(ApiError::bad_request(format!(
            "need start < end <= {latest} and end - start <= {MAX_AUDIT_SPAN}"
        )));
    }
    let proof = state.kt.audit(start, end).await.map_err(kt_failed)?;
    Ok(Json(proto::KtAudit { proof: Bytes(proof) }))
}
