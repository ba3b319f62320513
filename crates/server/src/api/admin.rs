//! The admin listener: the operator's requests and the metrics, behind the admin token.
//!
//! `POST /admin/v1` takes an [`crate::admin::Request`] and answers its JSON; `GET /metrics`
//! answers the Prometheus text format; `GET /healthz` answers without a token. The listener is
//! loopback only ([`crate::Config::check`]), and the token is in `DATA/admin.token`.

use super::*;
use crate::admin::{AdminError, Call, Effect};

/// What the admin routes share: the public API's state and the token.
#[derive(Clone)]
pub(crate) struct AdminState {
    pub(crate) app: Shared,
    pub(crate) token: Arc<zeroize::Zeroizing<String>>,
    /// Allows `GET /metrics` only.
    pub(crate) metrics_token: Arc<zeroize::Zeroizing<String>>,
}

impl std::fmt::Debug for AdminState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminState { token: [redacted], .. }")
    }
}

/// Checks the admin token (or, for `GET /metrics`, the metrics token).
fn authorize(
    state: &AdminState,
    headers: &axum::http::HeaderMap,
    metrics: bool,
) -> Result<(), ApiError> {
    let given = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .unwrap_or("");
    let metrics_ok = metrics && crate::admin::token_matches(&state.metrics_token, given);
    if !metrics_ok && !crate::admin::token_matches(&state.token, given) {
        return Err(ApiError::unauthorized(
            "wrong or missing admin token (Authorization: Bearer, from DATA/admin.token)",
        ));
    }
    Ok(())
}

/// Refuses a request without the token before anything of its body is read.
async fn require_token(
    State(state): State<AdminState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let metrics = request.uri().path() == "/metrics";
    match authorize(&state, request.headers(), metrics) {
        Ok(()) => next.run(request).await,
        Err(e) => e.into_response(),
    }
}

/// `POST /admin/v1`.
async fn call(
    State(state): State<AdminState>,
    body: Result<Json<Call>, JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Json(Call { operator, request }) = body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::TooLarge, r.body_text())
        } else {
            ApiError::bad_request(r.body_text())
        }
    })?;
    let actor = format!("{} (admin API)", crate::admin::actor_name(&operator));
    let op = serde_json::to_value(&request).ok().and_then(|v| v["op"].as_str().map(str::to_owned));
    tracing::info!(actor, op = op.as_deref().unwrap_or(""), "operator request");
    let app = state.app.clone();
    let outcome = tokio::task::spawn_blocking(move || {
        crate::admin::execute(&app.config, app.store.as_ref(), request, &actor)
    })
    .await
    .map_err(|e| ApiError::internal("admin task failed", &e))?
    .map_err(|e| match e {
        AdminError::Invalid(message) => ApiError::bad_request(message),
        AdminError::Server(e) => ApiError::internal("admin request failed", &e),
    })?;
    for effect in outcome.effects {
        match effect {
            Effect::Rebar => state.app.refresh_barred().await,
            // Senders learn at once that these devices are gone (`dropped`), and take them
            // out of their groups.
            Effect::Revoke(devices) => state.app.revoke(&devices),
            Effect::Tombstone(address) => {
                if let Ok(address) = address.parse::<Address>() {
                    let label = sotto_core::kt::label(&address);
                    if let Err(e) = state.app.kt.publish(label, sotto_core::kt::tombstone()).await {
                        tracing::error!(error = %e, "could not tombstone a deleted address; it will be reconciled");
                    }
                }
            }
            Effect::OperatorKey(key) => state.app.set_operator_key(Some(key)),
        }
    }
    Ok(Json(outcome.answer))
}

/// `GET /metrics`.
async fn metrics(State(state): State<AdminState>) -> Result<Response, ApiError> {
    let totals = blocking(&state.app, |s| s.totals()).await?;
    let text = crate::metrics::METRICS.render(&totals);
    Ok(([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text)
        .into_response())
}

/// The admin listener's routes.
pub(crate) fn router(state: AdminState) -> Router {
    Router::new()
        .route("/admin/v1", post(call))
        .route("/metrics", get(metrics))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), require_token))
        .route("/healthz", get(healthz))
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, ErrorCode::BadRequest, "no such endpoint")
        })
        .layer(DefaultBodyLimit::max(SMALL_BODY))
        .with_state(state)
}
