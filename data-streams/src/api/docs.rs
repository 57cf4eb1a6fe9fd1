//! The API's description: an OpenAPI 3.1 document generated from the handlers' `#[utoipa::path]`
//! attributes and the types' `ToSchema` derives (`GET /openapi.json`), and Swagger UI on it
//! (`GET /docs`, served from the binary by [`crate::console`]).

use serde::Serialize;
use serde_json::{json, Value};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoResponses, Modify, OpenApi, ToSchema};

/// Every error: `{"error": "<one line>", "detail": {"code": …, …}}`.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"error": "the stream is not valid", "detail": {"code": "invalid_stream",
    "message": "the stream is not valid", "problems": ["interval must be between 1000 and 2678400000 ms"]}}))]
pub struct ErrorBody {
    /// What went wrong, in one line.
    error: String,
    detail: ErrorDetail,
}

/// The machine-readable part of an error.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    code: ErrorCode,
    /// The same line as `error` (absent for internal errors).
    message: Option<String>,
    /// `invalid_stream`: every problem with the stream, each naming its field.
    problems: Option<Vec<String>>,
    /// `bad_request`: what the parser said.
    info: Option<Value>,
    /// `invalid_streams` and bulk `conflict`: each refused item of a bulk request (the first
    /// 1,000), with its position, id and problems.
    items: Option<Vec<super::bulk::ItemProblem>>,
}

/// The error codes. Pushes (`POST /streams/{id}/ingest`) add where a bad line is (`line`,
/// `offset`) and what was committed before it (`accepted`, `acked_through_line`,
/// `result_ids`); answers that ask to come back add `retry_after_s`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadRequest,
    InvalidStream,
    NotFound,
    Unauthorized,
    Forbidden,
    Conflict,
    PayloadTooLarge,
    UnsupportedMediaType,
    Unavailable,
    SweepOverBudget,
    SweepDiscovery,
    MalformedLine,
    LineTooLong,
    NotRecords,
    BodyUnreadable,
    StoreUnavailable,
    DatabaseUnavailable,
    StreamBusy,
    ServerBusy,
    IdempotencyKeyInUse,
    InvalidStreams,
    Internal,
}

/// The errors every data route can answer with. A route lists these, plus [`NotFoundError`]
/// when it names an existing thing and [`BodyErrors`] when it takes a JSON body.
#[derive(IntoResponses)]
#[allow(dead_code)] // Documentation only: the handlers answer with `ApiError`.
pub enum CommonErrors {
    /// A malformed id, cursor, limit or time; malformed JSON, or JSON of another shape.
    #[response(status = 400)]
    BadRequest(ErrorBody),
    /// No valid token or session.
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    /// A change on a console session without its `X-CSRF-Token`.
    #[response(status = 403)]
    Forbidden(ErrorBody),
    /// The database or the object store is not reachable; try again.
    #[response(status = 503)]
    Unavailable(ErrorBody),
}

/// The error of a route that reads, or acts on, one existing thing.
#[derive(IntoResponses)]
#[allow(dead_code)] // Documentation only: the handlers answer with `ApiError`.
pub enum NotFoundError {
    /// No such stream or result.
    #[response(status = 404)]
    NotFound(ErrorBody),
}

/// The errors of a route that takes a JSON body.
#[derive(IntoResponses)]
#[allow(dead_code)] // Documentation only: the handlers answer with `ApiError`.
pub enum BodyErrors {
    /// The body is over `MAX_BODY_BYTES`.
    #[response(status = 413)]
    PayloadTooLarge(ErrorBody),
    /// Not `Content-Type: application/json`.
    #[response(status = 415)]
    UnsupportedMediaType(ErrorBody),
    /// The stream is not valid: `detail.problems` lists every problem.
    #[response(status = 422)]
    Invalid(ErrorBody),
}

/// The stream `scripts/run-dev.sh` creates: Berlin from the simulator, every 15 s.
pub fn example_stream() -> Value {
    json!({
        "adapter": "IQAIR_DAILY",
        "endpoint": "http://127.0.0.1:8090/v2/nearest_city",
        "secret_key": "demo",
        "interval": 15000,
        "bucket_name": "results",
        "params": {"lat": 52.52, "lon": 13.405}
    })
}

/// The bearer token and the console's session cookie, as security schemes.
struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("DATA_STREAMS_API_TOKEN (when it is set)"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "session",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                super::auth::SESSION_COOKIE,
                "The console's session (POST /session); changes also need X-CSRF-Token",
            ))),
        );
    }
}

/// The document's frame: info, tags, security, and the schemas no path names directly.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "data-streams",
        description = "Pulls air-quality readings (and other JSON APIs) on a schedule into a \
                       warehouse: streams, their results, readings and failed runs, the workers \
                       that run them, and the live channel. With DATA_STREAMS_API_TOKEN set, \
                       every route but /healthz, /readyz and the console's own needs the token \
                       as a bearer, or a console session."
    ),
    modifiers(&Security),
    security(("bearer" = []), ("session" = [])),
    tags(
        (name = "streams", description = "What to fetch, how often, with which key"),
        (name = "data", description = "What was fetched: references, raw objects, readings, failed runs"),
        (name = "reports", description = "Readings summed up by place and time"),
        (name = "live", description = "Results as they are committed (WebSocket)"),
        (name = "system", description = "Workers, the reconciler, health and metrics"),
        (name = "console", description = "The web console's session"),
    ),
    components(schemas(ErrorBody, ErrorDetail, ErrorCode))
)]
pub struct ApiDoc;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_is_openapi_3_1_with_every_route_and_both_schemes() {
        let doc = serde_json::to_value(super::super::openapi()).unwrap();
        assert!(
            doc["openapi"].as_str().unwrap().starts_with("3.1"),
            "{}",
            doc["openapi"]
        );
        let paths = doc["paths"].as_object().unwrap();
        for path in [
            "/streams",
            "/streams/{id}",
            "/streams/{id}/start",
            "/streams/{id}/stop",
            "/streams/{id}/results",
            "/streams/{id}/measurements",
            "/streams/{id}/failures",
            "/streams/{id}/runs",
            "/runs/{id}",
            "/results/{id}/raw",
            "/workers",
            "/cluster",
            "/reconciler",
            "/reconciler/audit",
            "/audit",
            "/healthz",
            "/readyz",
            "/metrics",
            "/session",
            "/live",
            "/reports/aqi",
            "/streams/{id}/coverage",
            "/reparse",
            "/jobs",
            "/jobs/{id}",
            "/tables",
            "/tables/compact",
        ] {
            assert!(paths.contains_key(path), "{path} is not documented");
        }
        let schemes = &doc["components"]["securitySchemes"];
        assert_eq!(schemes["bearer"]["scheme"], "bearer");
        assert_eq!(schemes["session"]["in"], "cookie");
        assert_eq!(paths["/healthz"]["get"]["security"], json!([{}]), "open");
        assert!(doc["components"]["schemas"]["StreamView"].is_object());
        let create = &paths["/streams"]["post"];
        assert_eq!(
            create["requestBody"]["content"]["application/json"]["example"]["adapter"],
            "IQAIR_DAILY"
        );
        for status in ["201", "400", "401", "413", "415", "422", "503"] {
            assert!(
                create["responses"][status].is_object(),
                "POST /streams {status}"
            );
        }
        let mut ids: Vec<&str> = paths
            .values()
            .flat_map(|item| item.as_object().unwrap().values())
            .filter_map(|op| op["operationId"].as_str())
            .collect();
        let count = ids.len();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), count, "operation ids are unique: {ids:?}");
        let result = &doc["components"]["schemas"]["ResultRow"]["example"];
        assert_eq!(result["status"], "ok", "a result example");
        let reading = &doc["components"]["schemas"]["MeasurementRow"]["example"];
        assert_eq!(reading["aqius"], 66.0, "a measurement example");
    }
}
