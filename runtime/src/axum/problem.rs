//! Errors as RFC 9457 problem responses: `safe_db::Error`'s own, and [`ProblemLayer`] for
//! the plain-text error responses of axum's extractors and router.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum_core::body::Body;
use axum_core::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, Request, StatusCode, header};

use crate::{Error, ErrorKind};

/// An RFC 9457 problem, the body of every `application/problem+json` response.
///
/// The fields are in alphabetical order: the body is the same, byte for byte, as the
/// `serde_json::json!` object (a sorted map) it replaces.
#[derive(serde::Serialize)]
struct Problem<'a> {
    detail: &'a str,
    status: u16,
    title: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
}

impl<'a> Problem<'a> {
    fn new(kind: &'a str, status: StatusCode, detail: &'a str) -> Self {
        Problem {
            detail,
            status: status.as_u16(),
            title: status.canonical_reason().unwrap_or("Error"),
            kind,
        }
    }

    /// The problem as the body of a response with these headers, whose content type it
    /// sets (and whose stale length it removes).
    fn into_body(self, headers: &mut HeaderMap) -> Body {
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        headers.remove(header::CONTENT_LENGTH);
        // Strings and a number: serializing cannot fail.
        Body::from(serde_json::to_string(&self).expect("a problem serializes"))
    }
}

/// A problem response of the layers' own (the idempotency keys'), not of an [`Error`].
pub(super) fn problem(status: StatusCode, kind: &str, detail: &str) -> Response {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = status;
    let body = Problem::new(kind, status, detail).into_body(response.headers_mut());
    *response.body_mut() = body;
    response
}

impl Error {
    /// The HTTP status this error maps to: not found 404, unique conflict 409, foreign-key
    /// violation and validation 422, serialization failure (after any retries) 503 with
    /// `Retry-After`, timeout 504, pool exhausted or unavailable 503, anything else 500.
    ///
    /// A serialization failure that survived the operation's retries is transient
    /// contention on the server, not a conflict the client must resolve: 503 with
    /// `Retry-After` tells clients and proxies to try the same request again, which 409
    /// does not.
    pub fn status(&self) -> StatusCode {
        match self.kind() {
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::UniqueViolation => StatusCode::CONFLICT,
            ErrorKind::ForeignKeyViolation | ErrorKind::Validation => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            ErrorKind::SerializationFailure | ErrorKind::PoolExhausted | ErrorKind::Unavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ErrorKind::Timeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorKind::ReadOnly | ErrorKind::Database | ErrorKind::CommitUnknown => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }

    /// What the client may read: the application's own message for not found and
    /// validation errors, a fixed sentence for everything else (no SQL, table or
    /// constraint names, connection strings or passwords).
    fn public_detail(&self) -> String {
        match self.kind() {
            ErrorKind::NotFound | ErrorKind::Validation if self.db_err().is_none() => {
                self.to_string()
            }
            ErrorKind::NotFound => "The requested resource does not exist.".into(),
            ErrorKind::Validation => "The request was rejected by a database constraint.".into(),
            ErrorKind::UniqueViolation => "The resource conflicts with an existing one.".into(),
            ErrorKind::ForeignKeyViolation => {
                "The request refers to a resource that does not exist.".into()
            }
            ErrorKind::SerializationFailure => {
                "The request conflicted with concurrent requests; retry it.".into()
            }
            ErrorKind::Timeout => "The database did not answer in time.".into(),
            ErrorKind::PoolExhausted | ErrorKind::Unavailable => {
                "The database is unavailable; retry later.".into()
            }
            ErrorKind::CommitUnknown => {
                "The connection to the database was lost while the change was being committed; \
                 it may or may not have been applied."
                    .into()
            }
            ErrorKind::ReadOnly | ErrorKind::Database => "An internal error occurred.".into(),
        }
    }

    fn problem_type(&self) -> &'static str {
        match self.kind() {
            ErrorKind::NotFound => "urn:safe-db:problem:not-found",
            ErrorKind::UniqueViolation => "urn:safe-db:problem:conflict",
            ErrorKind::ForeignKeyViolation => "urn:safe-db:problem:missing-reference",
            ErrorKind::Validation => "urn:safe-db:problem:validation",
            ErrorKind::SerializationFailure => "urn:safe-db:problem:contention",
            ErrorKind::Timeout => "urn:safe-db:problem:timeout",
            ErrorKind::PoolExhausted | ErrorKind::Unavailable => "urn:safe-db:problem:unavailable",
            ErrorKind::CommitUnknown => "urn:safe-db:problem:commit-unknown",
            ErrorKind::ReadOnly | ErrorKind::Database => "urn:safe-db:problem:internal",
        }
    }
}

/// An RFC 9457 `application/problem+json` response; the full error goes to the log.
impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(error = %self, kind = ?self.kind(), status = status.as_u16(), "request failed");
        } else {
            tracing::debug!(error = %self, kind = ?self.kind(), status = status.as_u16(), "request rejected");
        }
        let detail = self.public_detail();
        let mut response = Response::new(Body::empty());
        *response.status_mut() = status;
        let headers = response.headers_mut();
        let body = Problem::new(self.problem_type(), status, &detail).into_body(headers);
        if status == StatusCode::SERVICE_UNAVAILABLE {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        *response.body_mut() = body;
        response
    }
}

/// Makes error responses problem responses: an error response (4xx or 5xx) with a
/// plain-text body or none, which is what axum's extractors answer to malformed JSON, a
/// missing field, a wrong content type, a bad path parameter or query string, and what its
/// router answers to an unknown path or method, becomes an RFC 9457
/// `application/problem+json` response with the same status, the text (its first 4 KiB)
/// as its `detail`. Responses of any other type (safe-db's own problems among them),
/// compressed ones, and successes pass through untouched.
///
/// ```no_run
/// # use axum::{Router, routing::post};
/// # async fn create() {}
/// # fn app(db: sea_orm::DatabaseConnection) -> Router {
/// use safe_db::axum::{ProblemLayer, TxLayer};
/// Router::new()
///     .route("/agents", post(create))
///     .layer(TxLayer::new(db))
///     .layer(ProblemLayer)
/// # }
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct ProblemLayer;

impl<S> tower_layer::Layer<S> for ProblemLayer {
    type Service = ProblemService<S>;

    fn layer(&self, inner: S) -> ProblemService<S> {
        ProblemService { inner }
    }
}

/// The service of [`ProblemLayer`].
#[derive(Clone, Debug)]
pub struct ProblemService<S> {
    inner: S,
}

/// The most of a plain-text error body kept as a problem's `detail`.
const DETAIL_LIMIT: usize = 4096;

/// The text of a body's first `limit` bytes; the rest is not read.
async fn first_bytes(body: Body, limit: usize) -> String {
    use http_body_util::BodyExt;
    let mut body = std::pin::pin!(body);
    let mut bytes = Vec::new();
    while bytes.len() <= limit {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    bytes.extend_from_slice(&data);
                }
            }
            _ => break,
        }
    }
    let cut = bytes.len() > limit;
    bytes.truncate(limit);
    let mut text = String::from_utf8_lossy(&bytes).into_owned();
    if cut {
        text.push('…');
    }
    text
}

/// Whether `response` is an error response in plain text (or with no content type at all,
/// as axum's own 404 and 405 are), uncompressed: one `ProblemLayer` rewrites.
fn is_plain_error(response: &Response) -> bool {
    let status = response.status();
    let plain_text = match response.headers().get(header::CONTENT_TYPE) {
        None => true,
        Some(v) => v.to_str().is_ok_and(|v| v.starts_with("text/plain")),
    };
    let encoded = response.headers().contains_key(header::CONTENT_ENCODING);
    (status.is_client_error() || status.is_server_error()) && plain_text && !encoded
}

/// `response`, a plain-text error, as a problem with its text as `detail` (its other
/// headers kept).
async fn as_problem(response: Response) -> Response {
    let (mut parts, body) = response.into_parts();
    let text = first_bytes(body, DETAIL_LIMIT).await;
    let detail = if text.trim().is_empty() {
        parts.status.canonical_reason().unwrap_or("Error")
    } else {
        &text
    };
    let body = Problem::new("about:blank", parts.status, detail).into_body(&mut parts.headers);
    Response::from_parts(parts, body)
}

/// What a response becomes once the service has answered: a plain-text error is
/// rewritten (boxed: rare), anything else passes through as it is.
type Rewrite<E> = futures_util::future::Either<
    Pin<Box<dyn Future<Output = Result<Response, E>> + Send>>,
    std::future::Ready<Result<Response, E>>,
>;

fn rewrite<E: 'static>(called: Result<Response, E>) -> Rewrite<E> {
    use futures_util::future::Either;
    match called {
        Ok(response) if is_plain_error(&response) => {
            Either::Left(Box::pin(async move { Ok(as_problem(response).await) }))
        }
        other => Either::Right(std::future::ready(other)),
    }
}

impl<S, B> tower_service::Service<Request<B>> for ProblemService<S>
where
    S: tower_service::Service<Request<B>, Response = Response>,
    S::Error: 'static,
{
    type Response = Response;
    type Error = S::Error;
    /// The service's future, then its rewrite: not boxed, since most responses pass
    /// through (one allocation fewer per request).
    type Future = futures_util::future::Then<
        S::Future,
        Rewrite<S::Error>,
        fn(Result<Response, S::Error>) -> Rewrite<S::Error>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        use futures_util::FutureExt;
        self.inner.call(request).then(rewrite::<S::Error>)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The body is byte for byte what the `json!` object it replaced wrote.
    #[test]
    fn a_problem_is_the_json_object_it_replaced() {
        let status = StatusCode::CONFLICT;
        let detail = "The resource conflicts with an \"existing\" one.";
        let body = serde_json::to_string(&Problem::new("urn:x", status, detail)).unwrap();
        let object = serde_json::json!({
            "type": "urn:x",
            "title": "Conflict",
            "status": 409,
            "detail": detail,
        });
        assert_eq!(body, object.to_string());
    }
}
