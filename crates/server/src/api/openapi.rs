//! The OpenAPI 3.1 document of the public HTTP API, served at `/v1/openapi.json` and committed
//! as `docs/openapi.json` (a test keeps the two equal).
//!
//! The schemas come from `sotto-proto`'s types (utoipa derives them, so they follow the serde
//! attributes); the operations are the table below, which a test holds to the router's own
//! table ([`super::routes`]), so a route cannot be added without its description.

use utoipa::OpenApi as _;
use utoipa::openapi::path::{
    HttpMethod, Operation, OperationBuilder, ParameterBuilder, ParameterIn,
};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{
    Content, ObjectBuilder, OpenApi, PathItem, Paths, Ref, Required, ResponseBuilder, Type,
};

use sotto_proto as proto;

#[derive(utoipa::OpenApi)]
#[openapi(components(schemas(
    proto::ServerInfo,
    proto::RegisterRequest,
    proto::RegisterResponse,
    proto::ChallengeRequest,
    proto::ChallengeResponse,
    proto::TokenRequest,
    proto::TokenResponse,
    proto::UploadKeyPackages,
    proto::KeyPackageCount,
    proto::ClaimRequest,
    proto::ClaimResponse,
    proto::DevicesResponse,
    proto::UpdateDevicesRequest,
    proto::UpdateDevicesResponse,
    proto::RecoverRequest,
    proto::WipeRequest,
    proto::WipeResponse,
    proto::PendingWipe,
    proto::WipeConfirm,
    proto::NewBlob,
    proto::BlobStatus,
    proto::Deleted,
    proto::OpenLink,
    proto::LinkState,
    proto::LinkReply,
    proto::SubmitRequest,
    proto::SubmitResponse,
    proto::QueueResponse,
    proto::AckRequest,
    proto::AckResponse,
    proto::QueueKey,
    proto::KtRoots,
    proto::KtProof,
    proto::KtAudit,
    proto::ErrorBody,
)))]
struct Schemas;

/// Who may call an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Auth {
    /// Anyone.
    Public,
    /// A device's bearer token.
    Token,
    /// Anyone; with a token, more is answered.
    Either,
}

/// What an operation takes in its body.
#[derive(Debug, Clone, Copy)]
enum Input {
    None,
    Json(&'static str),
    Octets,
}

/// What an operation answers on success.
#[derive(Debug, Clone, Copy)]
enum Output {
    /// A JSON body of this schema.
    Json(&'static str),
    /// A page of the queue: `QueueResponse` in JSON, or the binary page for a client whose
    /// `Accept` names its media type.
    Page,
    /// `{}`.
    Empty,
    /// `{"status": "..."}`.
    Status,
    /// The file's bytes (200, or 206 from a `Range`).
    Octets,
    /// The document itself.
    Document,
    /// A WebSocket upgrade.
    Upgrade,
}

/// Where a parameter goes.
#[derive(Debug, Clone, Copy)]
enum At {
    Path,
    Query,
    Header,
}

/// A parameter: name, where, integer (or string), required.
type Param = (&'static str, At, bool, bool);

/// One operation: method, path, summary, who, input, output, parameters and the error
/// statuses it can answer (besides 429 and 413, which every operation can).
type Op = (
    &'static str,
    &'static str,
    &'static str,
    Auth,
    Input,
    Output,
    &'static [Param],
    &'static [u16],
);

const ADDRESS: Param = ("address", At::Path, false, true);
const ID: Param = ("id", At::Path, false, true);
const RANGE: Param = ("Range", At::Header, false, false);
const OFFSET: Param = ("offset", At::Query, true, false);
const FROM: Param = ("from", At::Query, true, false);
const LIMIT: Param = ("limit", At::Query, true, false);
const AFTER: Param = ("after", At::Query, true, false);
const START: Param = ("start", At::Query, true, true);
const END: Param = ("end", At::Query, true, true);

/// Every operation of the public API.
fn operations() -> Vec<Op> {
    use Auth::*;
    use Input::{Json as In, None as Nothing, Octets as Bytes};
    use Output::*;
    vec![
        (
            "GET",
            "/v1/info",
            "What this server is: domain, registration, its keys.",
            Public,
            Nothing,
            Json("ServerInfo"),
            &[],
            &[],
        ),
        ("GET", "/v1/openapi.json", "This document.", Public, Nothing, Document, &[], &[]),
        ("GET", "/healthz", "The process answers.", Public, Nothing, Status, &[], &[]),
        (
            "GET",
            "/readyz",
            "The process and its database answer.",
            Public,
            Nothing,
            Status,
            &[],
            &[507],
        ),
        (
            "POST",
            "/v1/register",
            "Create an account and its first device.",
            Public,
            In("RegisterRequest"),
            Json("RegisterResponse"),
            &[],
            &[400, 403, 409, 507],
        ),
        (
            "POST",
            "/v1/auth/challenge",
            "A nonce for a device to sign.",
            Public,
            In("ChallengeRequest"),
            Json("ChallengeResponse"),
            &[],
            &[400, 404],
        ),
        (
            "POST",
            "/v1/auth/token",
            "A bearer token for a signed nonce.",
            Public,
            In("TokenRequest"),
            Json("TokenResponse"),
            &[],
            &[400, 401, 403],
        ),
        (
            "POST",
            "/v1/keypackages",
            "Upload this device's key packages.",
            Token,
            In("UploadKeyPackages"),
            Json("KeyPackageCount"),
            &[],
            &[400, 401, 403, 507],
        ),
        (
            "GET",
            "/v1/keypackages",
            "This device's key package stock.",
            Token,
            Nothing,
            Json("KeyPackageCount"),
            &[],
            &[401, 403],
        ),
        (
            "POST",
            "/v1/keypackages/claim",
            "Claim one key package per device of an account.",
            Token,
            In("ClaimRequest"),
            Json("ClaimResponse"),
            &[],
            &[400, 401, 403, 404],
        ),
        (
            "GET",
            "/v1/users/{address}/devices",
            "An account's signed device list.",
            Either,
            Nothing,
            Json("DevicesResponse"),
            &[ADDRESS],
            &[400, 401, 403, 404],
        ),
        (
            "POST",
            "/v1/devices",
            "Replace this account's device list (link, revoke).",
            Token,
            In("UpdateDevicesRequest"),
            Json("UpdateDevicesResponse"),
            &[],
            &[400, 401, 403, 404, 409, 507],
        ),
        (
            "POST",
            "/v1/devices/wipe",
            "Order a device of this account to erase itself.",
            Token,
            In("WipeRequest"),
            Json("WipeResponse"),
            &[],
            &[400, 401, 403, 404, 507],
        ),
        (
            "POST",
            "/v1/operator/wipe",
            "The operator orders a managed account's device to erase itself.",
            Public,
            In("WipeRequest"),
            Json("WipeResponse"),
            &[],
            &[400, 403, 404, 507],
        ),
        (
            "GET",
            "/v1/wipe",
            "The wipe ordered for this device, if any.",
            Token,
            Nothing,
            Json("PendingWipe"),
            &[],
            &[401, 403],
        ),
        (
            "POST",
            "/v1/wipe/confirm",
            "This device confirms it erased itself.",
            Token,
            In("WipeConfirm"),
            Json("WipeResponse"),
            &[],
            &[400, 401, 403, 404, 507],
        ),
        (
            "POST",
            "/v1/links",
            "Open a device link with the new device's sealed request.",
            Public,
            In("OpenLink"),
            Empty,
            &[],
            &[400, 409, 507],
        ),
        (
            "GET",
            "/v1/links/{id}",
            "A link's sealed parts.",
            Public,
            Nothing,
            Json("LinkState"),
            &[ID],
            &[400, 404],
        ),
        (
            "POST",
            "/v1/links/{id}",
            "Answer a link (the approving device).",
            Token,
            In("LinkReply"),
            Empty,
            &[ID],
            &[400, 401, 403, 404, 409, 507],
        ),
        (
            "POST",
            "/v1/recover",
            "Take an account back with its recovery key.",
            Public,
            In("RecoverRequest"),
            Json("UpdateDevicesResponse"),
            &[],
            &[400, 403, 404, 409, 507],
        ),
        (
            "POST",
            "/v1/blobs",
            "Start an attachment upload; or, with a group's credential and no token, a file for \
             a message kept by reference, which names no uploader.",
            Either,
            In("NewBlob"),
            Json("BlobStatus"),
            &[],
            &[400, 401, 403, 507],
        ),
        (
            "GET",
            "/v1/blobs/{id}",
            "Download an attachment's ciphertext (from a Range).",
            Token,
            Nothing,
            Octets,
            &[ID, RANGE],
            &[400, 401, 403, 404, 409, 416],
        ),
        (
            "PUT",
            "/v1/blobs/{id}",
            "Append to an upload at its durable end (a file made with a group's credential: \
             no token).",
            Either,
            Bytes,
            Json("BlobStatus"),
            &[ID, OFFSET],
            &[400, 401, 403, 404, 409, 507],
        ),
        (
            "DELETE",
            "/v1/blobs/{id}",
            "Delete an attachment this account uploaded.",
            Token,
            Nothing,
            Json("Deleted"),
            &[ID],
            &[400, 401, 403, 404],
        ),
        (
            "GET",
            "/v1/blobs/{id}/status",
            "How much of an upload the server holds.",
            Either,
            Nothing,
            Json("BlobStatus"),
            &[ID],
            &[400, 401, 403, 404],
        ),
        (
            "GET",
            "/v1/kt/roots",
            "The key directory's signed roots.",
            Public,
            Nothing,
            Json("KtRoots"),
            &[FROM, LIMIT],
            &[400],
        ),
        (
            "GET",
            "/v1/kt/lookup/{address}",
            "An address's directory entry, with its proof.",
            Either,
            Nothing,
            Json("KtProof"),
            &[ADDRESS],
            &[400, 401, 403, 404],
        ),
        (
            "GET",
            "/v1/kt/history/{address}",
            "An address's directory history, with its proof.",
            Either,
            Nothing,
            Json("KtProof"),
            &[ADDRESS],
            &[400, 401, 403, 404],
        ),
        (
            "GET",
            "/v1/kt/audit",
            "The proof that epochs only appended.",
            Public,
            Nothing,
            Json("KtAudit"),
            &[START, END],
            &[400],
        ),
        (
            "POST",
            "/v1/messages",
            "Submit a message, proposal or commit for a group, sealed: it names no sender and \
             carries the group's credential (a token only for a group without a sealed roster).",
            Either,
            In("SubmitRequest"),
            Json("SubmitResponse"),
            &[],
            &[400, 401, 403, 404, 409, 507],
        ),
        (
            "GET",
            "/v1/queue",
            "A page of this device's queue.",
            Token,
            Nothing,
            Page,
            &[AFTER, LIMIT],
            &[400, 401, 403],
        ),
        (
            "POST",
            "/v1/queue/ack",
            "Delete this device's queued messages up to a position.",
            Token,
            In("AckRequest"),
            Json("AckResponse"),
            &[],
            &[400, 401, 403, 507],
        ),
        (
            "PUT",
            "/v1/queue/key",
            "Set the key this device's queued copies are sealed to.",
            Token,
            In("QueueKey"),
            Json("QueueKey"),
            &[],
            &[400, 401, 403],
        ),
        (
            "GET",
            "/v1/ws",
            "Live delivery over a WebSocket: JSON text frames, or binary pages with the subprotocol `sotto.2`.",
            Token,
            Nothing,
            Upgrade,
            &[],
            &[400, 401, 403, 426],
        ),
    ]
}

fn error_response(status: u16) -> utoipa::openapi::Response {
    let what = match status {
        400 => "The request is malformed.",
        401 => "No token, or an unknown or expired one; or a signature that does not verify.",
        403 => "Not allowed: revoked device, barred account, invite refused, not a member.",
        404 => "No such account, device, link, file or endpoint.",
        409 => "A conflict: stale epoch, taken address, wrong offset, concurrent change.",
        413 => "The body is larger than the server accepts.",
        416 => "The Range starts past the file's end.",
        426 => "A WebSocket upgrade is required.",
        429 => "Too many requests; retry after `Retry-After` seconds.",
        507 => "The server cannot store this now (storage full, quota, queue full).",
        _ => "An error.",
    };
    ResponseBuilder::new()
        .description(what)
        .content("application/json", Content::new(Some(Ref::from_schema_name("ErrorBody"))))
        .build()
}

fn operation(op: &Op) -> Operation {
    let (_, path, summary, auth, input, output, params, errors) = *op;
    let mut builder = OperationBuilder::new()
        .summary(Some(summary))
        .operation_id(Some(format!("{} {path}", op.0.to_ascii_lowercase())));
    for &(name, place, integer, required) in params {
        let schema = if integer {
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(
                    utoipa::openapi::KnownFormat::UInt64,
                )))
                .minimum(Some(0))
        } else {
            ObjectBuilder::new().schema_type(Type::String)
        };
        builder = builder.parameter(
            ParameterBuilder::new()
                .name(name)
                .parameter_in(match place {
                    At::Path => ParameterIn::Path,
                    At::Query => ParameterIn::Query,
                    At::Header => ParameterIn::Header,
                })
                .required(if required { Required::True } else { Required::False })
                .schema(Some(schema)),
        );
    }
    builder = match input {
        Input::None => builder,
        Input::Json(schema) => builder.request_body(Some(
            RequestBodyBuilder::new()
                .required(Some(Required::True))
                .content("application/json", Content::new(Some(Ref::from_schema_name(schema))))
                .build(),
        )),
        Input::Octets => builder.request_body(Some(
            RequestBodyBuilder::new()
                .required(Some(Required::True))
                .content(
                    "application/octet-stream",
                    Content::new(Some(ObjectBuilder::new().schema_type(Type::String))),
                )
                .build(),
        )),
    };
    let json = |schema: utoipa::openapi::RefOr<utoipa::openapi::Schema>, what: &str| {
        ResponseBuilder::new()
            .description(what)
            .content("application/json", Content::new(Some(schema)))
            .build()
    };
    let object = || ObjectBuilder::new().schema_type(Type::Object).into();
    builder = match output {
        Output::Json(schema) => {
            builder.response("200", json(Ref::from_schema_name(schema).into(), "Done."))
        }
        Output::Page => builder.response(
            "200",
            ResponseBuilder::new()
                .description(
                    "The page: JSON with base64 bodies, or, for a client whose Accept names \
                     it, the binary layout of sotto_proto::live (no base64).",
                )
                .content(
                    "application/json",
                    Content::new(Some(Ref::from_schema_name("QueueResponse"))),
                )
                .content(
                    sotto_proto::live::PAGE_MEDIA_TYPE,
                    Content::new(Some(ObjectBuilder::new().schema_type(Type::String))),
                ),
        ),
        Output::Empty => builder.response("200", json(object(), "Done.")),
        Output::Document => builder.response("200", json(object(), "The OpenAPI document.")),
        Output::Status => builder.response(
            "200",
            json(
                ObjectBuilder::new()
                    .schema_type(Type::Object)
                    .property("status", ObjectBuilder::new().schema_type(Type::String))
                    .required("status")
                    .into(),
                "It answers.",
            ),
        ),
        Output::Octets => {
            let bytes = || Content::new(Some(ObjectBuilder::new().schema_type(Type::String)));
            builder
                .response(
                    "200",
                    ResponseBuilder::new()
                        .description("The whole file.")
                        .content("application/octet-stream", bytes()),
                )
                .response(
                    "206",
                    ResponseBuilder::new()
                        .description("The file from the Range's start.")
                        .content("application/octet-stream", bytes()),
                )
        }
        Output::Upgrade => builder.response(
            "101",
            ResponseBuilder::new().description("Switching to the WebSocket protocol.").build(),
        ),
    };
    for status in errors.iter().chain(&[413, 429]) {
        builder = builder.response(status.to_string(), error_response(*status));
    }
    match auth {
        Auth::Public => builder = builder.securities(Some(Vec::<SecurityRequirement>::new())),
        Auth::Token => {
            builder = builder.security(SecurityRequirement::new("token", Vec::<String>::new()))
        }
        Auth::Either => {
            builder = builder
                .security(SecurityRequirement::new("token", Vec::<String>::new()))
                .security(SecurityRequirement::default());
        }
    }
    builder.build()
}

fn method(name: &str) -> HttpMethod {
    match name {
        "POST" => HttpMethod::Post,
        "PUT" => HttpMethod::Put,
        "DELETE" => HttpMethod::Delete,
        _ => HttpMethod::Get,
    }
}

/// The document.
pub(crate) fn document() -> OpenApi {
    let mut doc = Schemas::openapi();
    doc.info.title = "Sotto server API".into();
    doc.info.version = env!("CARGO_PKG_VERSION").into();
    doc.info.description = Some(
        "The public HTTP API of a Sotto server: it relays and stores MLS ciphertexts it cannot \
         read. Binary fields are standard base64. Authenticated operations take \
         `Authorization: Bearer TOKEN`, from signing a challenge with the device key. Errors \
         are `{\"error\": {\"code\", \"message\"}}` with a stable code."
            .into(),
    );
    doc.info.license =
        Some(utoipa::openapi::LicenseBuilder::new().name("Apache-2.0 OR MIT").build());
    let mut paths = Paths::new();
    for op in operations() {
        paths.add_path_operation(op.1, vec![method(op.0)], operation(&op));
    }
    doc.paths = paths;
    if let Some(components) = doc.components.as_mut() {
        components
            .add_security_scheme("token", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
    }
    let _ = PathItem::default;
    doc
}

/// Writes unsigned formats as OpenAPI tools spell them (`uint64`; utoipa 5 writes
/// `u-int64`).
fn fix_formats(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            if let Some(serde_json::Value::String(format)) = map.get_mut("format")
                && let Some(bits) = format.strip_prefix("u-int")
            {
                *format = format!("uint{bits}");
            }
            map.values_mut().for_each(fix_formats);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(fix_formats),
        _ => {}
    }
}

/// The document as served and committed: pretty JSON, ending with a newline.
pub(crate) fn document_json() -> String {
    let mut value = serde_json::to_value(document()).unwrap_or_default();
    fix_formats(&mut value);
    let mut text = serde_json::to_string_pretty(&value).unwrap_or_default();
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_described_and_every_description_is_a_route() {
        let mut routed: Vec<(String, String)> = super::super::routes()
            .into_iter()
            .flat_map(|(path, methods, _)| {
                methods.iter().map(move |m| (m.to_string(), path.to_string()))
            })
            .collect();
        let mut described: Vec<(String, String)> =
            operations().into_iter().map(|op| (op.0.to_string(), op.1.to_string())).collect();
        routed.sort();
        described.sort();
        assert_eq!(routed, described);
    }

    #[test]
    fn the_committed_document_is_the_generated_one() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/openapi.json");
        let generated = document_json();
        if std::env::var_os("SOTTO_UPDATE_OPENAPI").is_some() {
            std::fs::write(path, &generated).expect("write docs/openapi.json");
        }
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            committed == generated,
            "docs/openapi.json is not the generated document; run \
             `SOTTO_UPDATE_OPENAPI=1 cargo test -p sotto-server openapi` and commit it"
        );
        let doc: serde_json::Value = serde_json::from_str(&generated).expect("JSON");
        assert_eq!(doc["openapi"], "3.1.0");
        assert!(doc["components"]["schemas"]["SubmitRequest"].is_object());
    }
}
