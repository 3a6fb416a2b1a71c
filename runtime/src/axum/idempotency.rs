//! [`Idempotency`]: exactly-once writes for requests carrying an `Idempotency-Key`, with
//! the response stored in the request's own transaction.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum_core::body::Body;
use axum_core::response::{IntoResponse, Response};
use http::{HeaderName, HeaderValue, Method, Request, StatusCode};
use http_body_util::BodyExt;
use sea_orm::{ConnectionTrait, DatabaseConnection, DbErr};

use super::problem::problem;
use super::slot::Handle;
use crate::dialect::idempotency as sql;
use crate::{Error, ErrorKind};

/// The header a client sends its key in.
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
/// The header set on a response replayed from a key's first request.
pub const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// Exactly-once writes over HTTP, as Stripe's idempotency keys and the IETF draft "The
/// Idempotency-Key HTTP Header Field": a request carrying `Idempotency-Key` (POST and
/// PATCH by default) runs its handler once; a retry with the same key and the same
/// request gets the first response again, without running it.
///
/// The first request's response (status, the chosen headers, body) is stored with the key
/// and a fingerprint of the request (method, path and query, body) **in the request's
/// transaction**: it exists if and only if the request's writes committed. So a client
/// that got no answer (a dropped connection, a 5xx, a `CommitUnknown`) retries with the
/// same key and gets either the stored response (its writes committed) or a first run
/// (nothing of the lost one committed).
///
/// - the same key with another request: 422;
/// - the same key while its first request is still running: 409 (with `Retry-After`);
/// - a response that is not a success (not 2xx or 3xx) is not stored: its writes rolled
///   back, and a retry runs the handler again;
/// - keys expire ([`Idempotency::ttl`], 24 h by default) and [`Idempotency::sweep`]
///   deletes expired ones;
/// - [`Idempotency::required`]: a request without a key is a 400;
/// - every error is a problem response.
///
/// Add it as a layer inside [`TxLayer`](super::TxLayer) (added before it), on the same
/// database; create its table once with [`Idempotency::migrate`] (PostgreSQL, MySQL and
/// MariaDB, SQLite):
///
/// ```no_run
/// # use axum::{Router, routing::post};
/// # async fn create() {}
/// # async fn app(db: sea_orm::DatabaseConnection) -> Result<Router, sea_orm::DbErr> {
/// use safe_db::axum::{Idempotency, TxLayer};
/// Idempotency::migrate(&db).await?;
/// Ok(Router::new()
///     .route("/agents", post(create))
///     .layer(Idempotency::new(db.clone()))
///     .layer(TxLayer::new(db)))
/// # }
/// ```
///
/// A claim whose request died with its process (a crash, not an error) is taken over once
/// its lock runs out ([`Idempotency::lock_for`], 60 s): until then a retry gets 409.
#[derive(Clone)]
pub struct Idempotency {
    db: DatabaseConnection,
    methods: Vec<Method>,
    required: bool,
    ttl: Duration,
    lock_for: Duration,
    max_body: usize,
    headers: Vec<HeaderName>,
}

impl Idempotency {
    /// Keys stored in `db` (the database of the [`TxLayer`](super::TxLayer) it runs in).
    pub fn new(db: DatabaseConnection) -> Self {
        Idempotency {
            db,
            methods: vec![Method::POST, Method::PATCH],
            required: false,
            ttl: Duration::from_secs(24 * 3600),
            lock_for: Duration::from_secs(60),
            max_body: 1 << 20,
            headers: vec![
                http::header::CONTENT_TYPE,
                http::header::LOCATION,
                http::header::ETAG,
            ],
        }
    }

    /// The methods whose requests are keyed (POST and PATCH by default).
    pub fn methods(mut self, methods: impl IntoIterator<Item = Method>) -> Self {
        self.methods = methods.into_iter().collect();
        self
    }

    /// Requests of those methods without a key are answered 400.
    pub fn required(mut self) -> Self {
        self.required = true;
        self
    }

    /// How long a key is kept (24 h by default).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// How long a claim holds a key while its request runs (60 s by default): after that
    /// another request with the key may take it over. Keep it above the request's
    /// timeout.
    pub fn lock_for(mut self, lock_for: Duration) -> Self {
        self.lock_for = lock_for;
        self
    }

    /// The largest request and response body kept (1 MiB by default): a larger request is
    /// a 413; a larger response is not stored, and the request rolls back (500).
    pub fn max_body(mut self, bytes: usize) -> Self {
        self.max_body = bytes;
        self
    }

    /// The response headers stored and replayed (`content-type`, `location` and `etag`
    /// by default).
    pub fn headers(mut self, headers: impl IntoIterator<Item = HeaderName>) -> Self {
        self.headers = headers.into_iter().collect();
        self
    }

    /// Creates the keys' table in `db` if it is absent (`safe_db_idempotency`).
    pub async fn migrate(db: &impl ConnectionTrait) -> Result<(), DbErr> {
        let backend = db.get_database_backend();
        db.execute_unprepared(sql::create_table(backend))
            .await
            .map(drop)
    }

    /// Deletes the keys that expired; returns how many.
    pub async fn sweep(&self) -> Result<u64, DbErr> {
        let backend = self.db.get_database_backend();
        Ok(self
            .db
            .execute_raw(sql::sweep(backend))
            .await?
            .rows_affected())
    }
}

impl<S> tower_layer::Layer<S> for Idempotency {
    type Service = IdempotencyService<S>;

    fn layer(&self, inner: S) -> IdempotencyService<S> {
        IdempotencyService {
            inner,
            config: Arc::new(self.clone()),
        }
    }
}

/// The service of [`Idempotency`].
#[derive(Clone)]
pub struct IdempotencyService<S> {
    inner: S,
    /// Shared: a request takes a reference, not a copy of the lists and the pool.
    config: Arc<Idempotency>,
}

impl<S> tower_service::Service<Request<Body>> for IdempotencyService<S>
where
    S: tower_service::Service<Request<Body>, Response = Response> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send,
{
    type Response = Response;
    type Error = S::Error;
    /// A keyless request's future is the inner service's own (no allocation); a keyed
    /// one's is boxed.
    type Future = futures_util::future::Either<
        S::Future,
        Pin<Box<dyn Future<Output = Result<Response, S::Error>> + Send>>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        // A request without a key goes through as it is, called by the service that was
        // polled ready; only a keyed one needs a copy of it, called later.
        if !self.config.methods.contains(request.method())
            || (!self.config.required && !request.headers().contains_key(&IDEMPOTENCY_KEY))
        {
            return futures_util::future::Either::Left(self.inner.call(request));
        }
        let fresh = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, fresh);
        let config = self.config.clone();
        futures_util::future::Either::Right(Box::pin(serve(config, inner, request)))
    }
}

/// A claim on a key. Dropped (however the request ended: answered, failed, its future
/// dropped at its deadline or by a client gone), it is released on a task of its own
/// unless a response was stored under it. That task's `DELETE` waits for the request's
/// transaction to end (on the row's lock where the transaction wrote the row, on SQLite's
/// write lock otherwise), so it sees that transaction's outcome.
struct Claim {
    db: DatabaseConnection,
    key: String,
    token: String,
}

impl Drop for Claim {
    fn drop(&mut self) {
        let (db, key, token) = (self.db.clone(), self.key.clone(), self.token.clone());
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { release(&db, &key, &token).await });
        }
    }
}

/// Deletes the claim (only this token's, only while no response is stored under it), asked
/// again after a deadlock or serialization failure: on Galera the claim's node may abort
/// the `DELETE` for a write-set of another node (seen as 1213 when a node was killed), and
/// an unreleased key answers 409 until its lock runs out.
async fn release(db: &DatabaseConnection, key: &str, token: &str) {
    let backend = db.get_database_backend();
    let mut attempt = 0;
    loop {
        attempt += 1;
        match db.execute_raw(sql::release(backend, key, token)).await {
            Ok(_) => return,
            Err(err) if attempt < 5 && ErrorKind::of(&err) == ErrorKind::SerializationFailure => {
                tokio::time::sleep(Duration::from_millis(20 * attempt)).await;
            }
            Err(err) => {
                tracing::warn!(error = %err, "an idempotency key's claim was not released: it \
                               is taken over once its lock runs out");
                return;
            }
        }
    }
}

/// Whether a claimed key is this request's to run, or what to answer instead.
enum Claimed {
    Run(Claim),
    Answer(Response),
}

async fn serve<S>(
    config: Arc<Idempotency>,
    mut inner: S,
    request: Request<Body>,
) -> Result<Response, S::Error>
where
    S: tower_service::Service<Request<Body>, Response = Response>,
{
    if !config.methods.contains(request.method()) {
        return inner.call(request).await;
    }
    let key = match request.headers().get(&IDEMPOTENCY_KEY) {
        None if config.required => {
            return Ok(problem(
                StatusCode::BAD_REQUEST,
                "urn:safe-db:problem:idempotency-key-missing",
                "This request needs an Idempotency-Key header.",
            ));
        }
        None => return inner.call(request).await,
        Some(value) => match value.to_str() {
            Ok(key) if !key.is_empty() && key.len() <= 255 => key.to_owned(),
            _ => {
                return Ok(problem(
                    StatusCode::BAD_REQUEST,
                    "urn:safe-db:problem:idempotency-key-invalid",
                    "The Idempotency-Key header must be 1 to 255 visible ASCII characters.",
                ));
            }
        },
    };
    let (parts, body) = request.into_parts();
    let body = match http_body_util::Limited::new(body, config.max_body)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            return Ok(problem(
                StatusCode::PAYLOAD_TOO_LARGE,
                "urn:safe-db:problem:too-large",
                "The request body is too large to be kept for its Idempotency-Key.",
            ));
        }
    };
    let Some(handle) = parts.extensions.get::<Handle>().cloned() else {
        // Checked before the handler runs: outside TxLayer its writes would commit on their
        // own, and no response could be stored with them.
        return Ok(Error::new(
            ErrorKind::Database,
            "the Idempotency layer runs outside TxLayer: add `.layer(idempotency)` before \
             `.layer(TxLayer::new(db))`, so that TxLayer wraps it",
        )
        .into_response());
    };
    let fingerprint = fingerprint(
        &parts.method,
        &parts.uri,
        parts.headers.get(http::header::AUTHORIZATION),
        &body,
    );
    let claim = match claim_detached(&config, key, fingerprint).await {
        Ok(Claimed::Run(claim)) => claim,
        Ok(Claimed::Answer(response)) => return Ok(response),
        Err(err) => return Ok(Error::from(err).into_response()),
    };
    let response = inner
        .call(Request::from_parts(parts, Body::from(body)))
        .await;
    let response = match response {
        Ok(response) => response,
        Err(err) => return Err(err),
    };
    let status = response.status();
    if !(status.is_success() || status.is_redirection()) {
        // Its writes roll back: nothing is stored (the claim is released as it drops), and
        // a retry runs the handler again.
        return Ok(response);
    }
    // The claim is released as it drops, once the request's transaction has ended, only
    // if that transaction did not commit the response.
    Ok(store(&config, handle, &claim, response).await)
}

/// [`claim`] on a task of its own: a request dropped while its claim's `INSERT` (or
/// take-over) is on the wire (its deadline, a client gone) would otherwise leave a claim
/// that nobody holds, once the statement commits, and the key in flight (409) until its
/// lock runs out (seen on Galera, where a node's death stalls commits for seconds). The
/// task finishes the claim and, if the request is gone by then, releases it. (Its runtime
/// shutting down meanwhile ends the request: `RequestEnded`.)
async fn claim_detached(
    config: &Arc<Idempotency>,
    key: String,
    fingerprint: String,
) -> Result<Claimed, DbErr> {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return claim(config, &key, &fingerprint).await;
    };
    let config = Arc::clone(config);
    // Its output, a claim taken, is dropped with the task if this request is gone by then
    // (tokio drops the output of a task whose handle was dropped), and its drop releases it.
    let task = runtime.spawn(async move { claim(&config, &key, &fingerprint).await });
    match task.await {
        Ok(claimed) => claimed,
        Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
        Err(_) => Err(crate::cause::raise(crate::Cause::RequestEnded)),
    }
}

/// Claims the key, or answers from what is stored under it.
async fn claim(config: &Idempotency, key: &str, fingerprint: &str) -> Result<Claimed, DbErr> {
    let db = &config.db;
    let backend = db.get_database_backend();
    let token = format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
    let lock_ms = i64::try_from(config.lock_for.as_millis()).unwrap_or(i64::MAX / 4);
    let ttl_ms = i64::try_from(config.ttl.as_millis()).unwrap_or(i64::MAX / 4);
    let claimed = |token: String| {
        Claimed::Run(Claim {
            db: db.clone(),
            key: key.to_owned(),
            token,
        })
    };
    for _ in 0..3 {
        let insert = sql::claim(backend, key, fingerprint, &token, lock_ms, ttl_ms);
        match db.execute_raw(insert).await {
            Ok(_) => return Ok(claimed(token)),
            Err(err) if ErrorKind::of(&err) == ErrorKind::UniqueViolation => {}
            Err(err) => return Err(err),
        }
        let Some(row) = db.query_one_raw(sql::look(backend, key)).await? else {
            continue; // released meanwhile: claim it again
        };
        let stored_print: String = row.try_get_by_index(0)?;
        let old: String = row.try_get_by_index(1)?;
        let state = int(&row, 2)?;
        let stale = int(&row, 3)? != 0;
        let expired = int(&row, 4)? != 0;
        if expired || (state == 0 && stale) {
            let take = sql::take_over(backend, key, &old, fingerprint, &token, lock_ms, ttl_ms);
            if db.execute_raw(take).await?.rows_affected() == 1 {
                return Ok(claimed(token));
            }
            continue;
        }
        if stored_print != fingerprint {
            return Ok(Claimed::Answer(problem(
                StatusCode::UNPROCESSABLE_ENTITY,
                "urn:safe-db:problem:idempotency-key-reused",
                "This Idempotency-Key was used with a different request.",
            )));
        }
        if state == 0 {
            let mut response = problem(
                StatusCode::CONFLICT,
                "urn:safe-db:problem:idempotency-key-in-flight",
                "A request with this Idempotency-Key is still being processed; retry later.",
            );
            response
                .headers_mut()
                .insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
            return Ok(Claimed::Answer(response));
        }
        return Ok(Claimed::Answer(replay(&row)?));
    }
    Err(crate::cause::raise(crate::Cause::IdempotencyKeyContended))
}

/// An integer column, whatever width each driver reads it as.
fn int(row: &sea_orm::QueryResult, index: usize) -> Result<i64, DbErr> {
    row.try_get_by_index::<i64>(index)
        .or_else(|_| row.try_get_by_index::<i32>(index).map(i64::from))
        .or_else(|_| row.try_get_by_index::<i16>(index).map(i64::from))
}

/// The stored response, replayed.
fn replay(row: &sea_orm::QueryResult) -> Result<Response, DbErr> {
    let status = int(row, 5)?;
    let headers: String = row.try_get_by_index(6)?;
    let body: Vec<u8> = row.try_get_by_index(7)?;
    let mut response = Response::new(Body::from(body));
    *response.status_mut() =
        StatusCode::from_u16(u16::try_from(status).unwrap_or(500)).unwrap_or(StatusCode::OK);
    let pairs: Vec<(String, String)> = serde_json::from_str(&headers).unwrap_or_default();
    for (name, value) in pairs {
        if let (Ok(name), Ok(value)) = (HeaderName::try_from(name), HeaderValue::try_from(value)) {
            response.headers_mut().append(name, value);
        }
    }
    response
        .headers_mut()
        .insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    Ok(response)
}

/// Stores a successful response under the claim, in the request's transaction; the
/// response as sent (its body buffered), or an error response that rolls it back.
async fn store(
    config: &Idempotency,
    handle: Handle,
    claim: &Claim,
    response: Response,
) -> Response {
    let (parts, body) = response.into_parts();
    let Ok(body) = http_body_util::Limited::new(body, config.max_body)
        .collect()
        .await
    else {
        return Error::new(
            ErrorKind::Database,
            "a response to a request with an Idempotency-Key was too large to store",
        )
        .into_response();
    };
    let body = body.to_bytes();
    let headers: Vec<(&str, &str)> = config
        .headers
        .iter()
        .flat_map(|name| parts.headers.get_all(name).iter().map(move |v| (name, v)))
        .filter_map(|(name, value)| Some((name.as_str(), value.to_str().ok()?)))
        .collect();
    let headers = serde_json::to_string(&headers).expect("strings serialize");
    let Some(tx) = handle.lease() else {
        return Error::from(crate::cause::raise(crate::Cause::RequestEnded)).into_response();
    };
    let stored = async {
        let tx = tx.get().await?;
        let backend = tx.get_database_backend();
        let update = sql::store(
            backend,
            &claim.key,
            &claim.token,
            parts.status.as_u16(),
            &headers,
            body.to_vec(),
        );
        Ok::<_, Error>(tx.execute_raw(update).await?.rows_affected())
    }
    .await;
    drop(tx);
    match stored {
        Ok(1) => Response::from_parts(parts, Body::from(body)),
        // Another request took the key over (this one outlived its lock): this one's
        // writes roll back.
        Ok(_) => problem(
            StatusCode::CONFLICT,
            "urn:safe-db:problem:idempotency-key-in-flight",
            "This request outlived its Idempotency-Key's lock and another took it over.",
        ),
        Err(err) => err.into_response(),
    }
}

/// A fingerprint of the request: two FNV-1a hashes (64 bits each, different offsets) of
/// its method, path and query, `Authorization` header and body, with the body's length.
/// Not a cryptographic hash: it tells a client's own requests apart. With the
/// `Authorization` header in it, another caller who sends the same key gets a 422, never
/// the stored response.
fn fingerprint(
    method: &Method,
    uri: &http::Uri,
    authorization: Option<&HeaderValue>,
    body: &[u8],
) -> String {
    let mut a: u64 = 0xcbf2_9ce4_8422_2325;
    let mut b: u64 = 0x6c62_272e_07bb_0142;
    let path = uri.path_and_query().map_or("", |p| p.as_str());
    let caller = authorization.map_or(&b""[..], HeaderValue::as_bytes);
    for part in [
        method.as_str().as_bytes(),
        b"\n",
        path.as_bytes(),
        b"\n",
        caller,
        b"\n",
        body,
    ] {
        for &byte in part {
            a = (a ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3);
            b = (b ^ u64::from(byte.rotate_left(3))).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    format!("{a:016x}{b:016x}{:x}", body.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_tell_requests_apart() {
        let uri: http::Uri = "/agents?x=1".parse().unwrap();
        let one = fingerprint(&Method::POST, &uri, None, b"{\"name\":\"ada\"}");
        assert_eq!(
            one,
            fingerprint(&Method::POST, &uri, None, b"{\"name\":\"ada\"}")
        );
        assert_ne!(
            one,
            fingerprint(&Method::POST, &uri, None, b"{\"name\":\"bob\"}")
        );
        assert_ne!(
            one,
            fingerprint(&Method::PATCH, &uri, None, b"{\"name\":\"ada\"}")
        );
        let other: http::Uri = "/agents?x=2".parse().unwrap();
        assert_ne!(
            one,
            fingerprint(&Method::POST, &other, None, b"{\"name\":\"ada\"}")
        );
        let alice = HeaderValue::from_static("Bearer alice");
        let hers = fingerprint(&Method::POST, &uri, Some(&alice), b"{\"name\":\"ada\"}");
        assert_ne!(one, hers);
        assert!(one.len() <= 64);
    }
}
