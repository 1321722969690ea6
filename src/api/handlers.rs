//! Request handlers: validate, then write through the writer or read from the engine.

use axum::extract::State;
use axum::Json;
use serde::Serialize;
use utoipa::OpenApi;

use super::{ApiJson, ApiPath, ApiQuery, AppState, ErrorBody, ErrorDetail};
use crate::engine::SearchParams;
use crate::error::{Error, Result};
use crate::filter::{Condition, Filter, Match, Range};
use crate::model::{
    validate_collection_name, BatchSearchRequest, BatchSearchResponse, CollectionConfig,
    CollectionInfo, CollectionList, Command, DeleteRequest, DeleteSelector, GetPointsRequest,
    GetPointsResponse, Health, Hit, HnswConfig, Metric, PointId, PointInput, PointRecord,
    PointResponse, PointWrite, ReadParams, Reply, SearchRequest, SearchResponse, UpsertRequest,
    WriteResponse, MAX_ANSWER_BYTES, MAX_BATCH_K, MAX_BATCH_SEARCHES, MAX_GET_IDS, MAX_K,
    MAX_TOKEN,
};
use crate::model::{Consistency, ConsistencyLevel};

/// OpenAPI document, generated from the handler and DTO types.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "quiver",
        description = "A replicated vector store: HNSW search over sled."
    ),
    paths(
        healthz,
        list_collections,
        create_collection,
        get_collection,
        delete_collection,
        compact_collection,
        upsert_points,
        get_point,
        get_points,
        delete_points,
        search,
        search_batch
    ),
    components(schemas(
        CollectionConfig,
        HnswConfig,
        Metric,
        Consistency,
        ConsistencyLevel,
        CollectionInfo,
        CollectionList,
        PointId,
        PointInput,
        UpsertRequest,
        DeleteRequest,
        SearchRequest,
        BatchSearchRequest,
        Hit,
        PointRecord,
        GetPointsRequest,
        GetPointsResponse,
        Filter,
        Condition,
        Match,
        Range,
        WriteResponse,
        SearchResponse,
        BatchSearchResponse,
        PointResponse,
        ErrorBody,
        ErrorDetail,
        Health
    ))
)]
pub struct ApiDoc;

/// Error responses shared by the handlers' OpenAPI entries, so that each is described once.
/// They only describe responses (the handlers answer with [`Error`]), hence never built.
#[allow(dead_code)]
mod responses {
    use utoipa::IntoResponses;

    use super::ErrorBody;

    /// 401 and 500, which every endpoint but `/healthz` may answer.
    #[derive(IntoResponses)]
    pub enum CommonErrors {
        #[response(
            status = 401,
            description = "Missing or invalid API key (when keys are configured)"
        )]
        Unauthorized(ErrorBody),
        #[response(status = 500, description = "Internal error; see the server log")]
        Internal(ErrorBody),
    }

    /// What a read's consistency adds: 503 (no leader, or too stale) and 504 (wait timed out).
    #[derive(IntoResponses)]
    pub enum ReadErrors {
        #[response(
            status = 503,
            description = "No leader known, node unavailable, or too stale for `max_lag_ms`"
        )]
        Unavailable(ErrorBody),
        #[response(
            status = 504,
            description = "`min_index` or `linearizable` wait timed out"
        )]
        Timeout(ErrorBody),
    }

    /// What a write adds: 403 (read-only key) and 503 (no leader).
    #[derive(IntoResponses)]
    pub enum WriteErrors {
        #[response(status = 403, description = "A read-only API key tried to write")]
        Forbidden(ErrorBody),
        #[response(
            status = 503,
            description = "No leader known, or the node is unavailable"
        )]
        Unavailable(ErrorBody),
    }

    /// 400 for a read whose query parameters do not parse or validate.
    #[derive(IntoResponses)]
    #[response(
        status = 400,
        description = "Invalid query parameter; `error.field` names it"
    )]
    pub struct BadQuery(ErrorBody);

    /// 400 for a body that does not parse or validate.
    #[derive(IntoResponses)]
    #[response(status = 400, description = "Invalid input; `error.field` names it")]
    pub struct BadInput(ErrorBody);

    /// 400 for a body that carries vectors, which must match the collection's dimension.
    #[derive(IntoResponses)]
    #[response(
        status = 400,
        description = "Invalid input (a vector of another dimension included); `error.field` names it"
    )]
    pub struct BadVectorInput(ErrorBody);

    /// 404 for an endpoint under `/collections/{name}`.
    #[derive(IntoResponses)]
    #[response(status = 404, description = "No such collection")]
    pub struct NoCollection(ErrorBody);

    /// 413 for a write's body.
    #[derive(IntoResponses)]
    #[response(status = 413, description = "The body is larger than --max-body-bytes")]
    pub struct BodyTooLarge(ErrorBody);

    /// 413 for a read with a body, whose answer is bounded too.
    #[derive(IntoResponses)]
    #[response(
        status = 413,
        description = "The body is larger than --max-body-bytes (`payload_too_large`), or the answer would pass 64 MiB (`answer_too_large`)"
    )]
    pub struct BodyOrAnswerTooLarge(ErrorBody);

    /// 415 for an endpoint that takes a JSON body.
    #[derive(IntoResponses)]
    #[response(
        status = 415,
        description = "The body is not sent as Content-Type: application/json"
    )]
    pub struct NotJson(ErrorBody);
}

use responses::{
    BadInput, BadQuery, BadVectorInput, BodyOrAnswerTooLarge, BodyTooLarge, CommonErrors,
    NoCollection, NotJson, ReadErrors, WriteErrors,
};

fn check_name(name: &str) -> Result<()> {
    validate_collection_name(name).map_err(|m| Error::invalid("name", m))
}

async fn write(state: &AppState, cmd: Command) -> Result<(u64, Reply)> {
    let (index, reply) = state.writer.write(cmd).await?;
    match reply {
        Reply::Rejected(e) => Err(e.into()),
        r => Ok((index, r)),
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Internal(format!("worker failed: {e}")))?
}

/// The highest log index this node knows to exist: its own last log index, or the leader's commit
/// index as the leader last reported it (a replica's log may trail the leader's).
fn known_log_end(state: &AppState) -> u64 {
    let last_log = state.cluster.metrics().last_log_index.unwrap_or(0);
    last_log.max(state.cluster.committed())
}

/// [`read_at`] for the query parameters of a read without a body, each checked first.
async fn read_query(state: &AppState, read: &ReadParams) -> Result<u64> {
    if let Some((field, why)) = read.problem() {
        return Err(Error::invalid(field, why));
    }
    read_at(state, &read.consistency(), "").await
}

/// Makes a read meet its consistency and returns the index it is served at. `at` prefixes the
/// field names in errors (`consistency.` for bodies, nothing for query parameters).
///
/// A `min_index` past the end of the log is a client error, not a timeout, on a leader that surely
/// still leads (a quorum acknowledged it within half an election timeout, so every acknowledged
/// write is in its log): 400 at once. Anywhere else the token may come from a leader this node
/// has not heard of, so the read waits as usual and then answers 504.
async fn read_at(state: &AppState, c: &Consistency, at: &str) -> Result<u64> {
    match c {
        Consistency::MaxLag { max_lag_ms } if *max_lag_ms > MAX_TOKEN => {
            return Err(Error::invalid(
                format!("{at}max_lag_ms"),
                format!("must be at most {MAX_TOKEN}"),
            ))
        }
        Consistency::MinIndex { min_index } => {
            let past_end = |end: u64| {
                Error::invalid(
                    format!("{at}min_index"),
                    format!(
                        "{min_index} is past the end of the log ({end}); pass the index a write \
                         returned"
                    ),
                )
            };
            if *min_index > MAX_TOKEN {
                return Err(past_end(known_log_end(state)));
            }
            // Only a leader that surely still leads: one cut off from its quorum may have been
            // replaced by a leader that issued this token.
            if state.cluster.leads_surely() {
                let end = known_log_end(state);
                if *min_index > end {
                    return Err(past_end(end));
                }
            }
            // After the wait the same holds: a node that does not surely lead cannot tell a
            // forged token from one issued by a leader it has not heard of (it may be cut off),
            // so it answers 504.
            return match state.cluster.ensure_read(c).await {
                Err(e @ Error::ReadTimeout { .. }) => {
                    let end = known_log_end(state);
                    if state.cluster.leads_surely() && *min_index > end {
                        Err(past_end(end))
                    } else {
                        Err(e)
                    }
                }
                other => other,
            };
        }
        _ => {}
    }
    state.cluster.ensure_read(c).await
}

/// Size of a value's JSON encoding, without keeping it.
fn json_len<T: Serialize>(v: &T) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0 += b.len();
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Count(0);
    // Writing into a counter cannot fail; a value that cannot be encoded counts as empty.
    let _ = serde_json::to_writer(&mut c, v);
    c.0
}

/// Running total of an answer's size, failing once it passes [`MAX_ANSWER_BYTES`]. Reads check
/// it as they build their answer, so an oversized one is refused before it is all in memory.
struct AnswerBudget(usize);

impl AnswerBudget {
    fn new() -> Self {
        AnswerBudget(0)
    }

    fn add<T: Serialize>(&mut self, v: &T) -> Result<()> {
        self.0 += json_len(v) + 1;
        if self.0 > MAX_ANSWER_BYTES {
            return Err(Error::AnswerTooLarge(MAX_ANSWER_BYTES));
        }
        Ok(())
    }
}

/// Liveness: 200 while the node serves and its Raft runs; 503 once Raft stopped with a fatal
/// error (a restart is then the cure, which is what a liveness probe does).
#[utoipa::path(get, path = "/healthz", responses((status = 200, body = Health), (status = 503, body = ErrorBody)))]
pub async fn healthz(State(state): State<AppState>) -> Result<Json<Health>> {
    if let Some(why) = state.cluster.fatal() {
        return Err(Error::Unavailable(format!("raft stopped: {why}")));
    }
    Ok(Json(Health {
        status: "ok".into(),
        index: state.engine.last_applied(),
    }))
}

#[utoipa::path(get, path = "/collections", params(ReadParams),
    responses((status = 200, body = CollectionList),
        BadQuery, CommonErrors, ReadErrors))]
pub async fn list_collections(
    State(state): State<AppState>,
    ApiQuery(read): ApiQuery<ReadParams>,
) -> Result<Json<CollectionList>> {
    let index = read_query(&state, &read).await?;
    let engine = state.engine.clone();
    let collections = blocking(move || Ok(engine.list())).await?;
    Ok(Json(CollectionList { collections, index }))
}

#[utoipa::path(put, path = "/collections/{name}", request_body = CollectionConfig,
    params(("name" = String, Path, description = "Collection name", pattern = r"^[A-Za-z0-9_.\-]{1,128}$")),
    responses((status = 200, body = WriteResponse),
        (status = 409, description = "The collection exists with another configuration", body = ErrorBody),
        BadInput, BodyTooLarge, NotJson, CommonErrors, WriteErrors))]
pub async fn create_collection(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
    ApiJson(config): ApiJson<CollectionConfig>,
) -> Result<Json<WriteResponse>> {
    check_name(&name)?;
    config.validate().map_err(|(f, m)| Error::invalid(f, m))?;
    let (index, reply) = write(&state, Command::CreateCollection { name, config }).await?;
    let created = matches!(reply, Reply::Created { created: true });
    Ok(Json(WriteResponse {
        created: Some(created),
        ..WriteResponse::at(index)
    }))
}

#[utoipa::path(get, path = "/collections/{name}", params(("name" = String, Path, description = "Collection name"), ReadParams),
    responses((status = 200, body = CollectionInfo),
        BadQuery, NoCollection, CommonErrors, ReadErrors))]
pub async fn get_collection(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
    ApiQuery(read): ApiQuery<ReadParams>,
) -> Result<Json<CollectionInfo>> {
    let index = read_query(&state, &read).await?;
    let engine = state.engine.clone();
    let mut info = blocking(move || engine.info(&name)).await?;
    info.index = index;
    Ok(Json(info))
}

#[utoipa::path(delete, path = "/collections/{name}", params(("name" = String, Path, description = "Collection name")),
    responses((status = 200, body = WriteResponse),
        NoCollection, CommonErrors, WriteErrors))]
pub async fn delete_collection(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<WriteResponse>> {
    state.engine.get(&name)?;
    let (index, reply) = write(&state, Command::DeleteCollection { name: name.clone() }).await?;
    if matches!(reply, Reply::Dropped { existed: false }) {
        return Err(Error::CollectionNotFound(name));
    }
    Ok(Json(WriteResponse::at(index)))
}

#[utoipa::path(post, path = "/collections/{name}/compact", params(("name" = String, Path, description = "Collection name")),
    responses((status = 200, description = "A rebuild of the graph without the collection's tombstones started at `index` on every node (`compacted`: how many it drops; 0 when there were none)", body = WriteResponse),
        NoCollection, CommonErrors, WriteErrors))]
pub async fn compact_collection(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<WriteResponse>> {
    state.engine.get(&name)?;
    let (index, reply) = write(&state, Command::Compact { collection: name }).await?;
    let compacted = match reply {
        Reply::Compacted { tombstones } => tombstones,
        _ => 0,
    };
    Ok(Json(WriteResponse {
        compacted: Some(compacted),
        ..WriteResponse::at(index)
    }))
}

/// Validates one vector against a collection; normalises it for cosine.
fn prepare_vector(mut v: Vec<f32>, config: &CollectionConfig, field: &str) -> Result<Vec<f32>> {
    if v.len() != config.dim {
        return Err(Error::invalid(
            field,
            format!("expected dimension {}, got {}", config.dim, v.len()),
        ));
    }
    if let Err((at, why)) = crate::engine::prepare_vector(config.metric, &mut v) {
        let field = match at {
            Some(i) => format!("{field}[{i}]"),
            None => field.to_string(),
        };
        return Err(Error::invalid(field, why));
    }
    Ok(v)
}

#[utoipa::path(put, path = "/collections/{name}/points", request_body = UpsertRequest,
    params(("name" = String, Path, description = "Collection name")),
    responses((status = 200, body = WriteResponse),
        BadVectorInput, NoCollection, BodyTooLarge, NotJson, CommonErrors, WriteErrors))]
pub async fn upsert_points(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<UpsertRequest>,
) -> Result<Json<WriteResponse>> {
    let config = *state.engine.get(&name)?.config();
    if req.points.is_empty() {
        return Err(Error::invalid("points", "must not be empty"));
    }
    let points = blocking(move || {
        req.points
            .into_iter()
            .enumerate()
            .map(|(i, p): (usize, PointInput)| {
                let vector = prepare_vector(p.vector, &config, &format!("points[{i}].vector"))?;
                let payload = match p.payload {
                    None | Some(serde_json::Value::Null) => None,
                    Some(v @ serde_json::Value::Object(_)) => Some(v.to_string()),
                    Some(_) => {
                        return Err(Error::invalid(
                            format!("points[{i}].payload"),
                            "must be a JSON object",
                        ))
                    }
                };
                Ok(PointWrite {
                    id: p.id,
                    vector,
                    payload,
                })
            })
            .collect::<Result<Vec<_>>>()
    })
    .await?;
    let (index, reply) = write(
        &state,
        Command::Upsert {
            collection: name,
            points,
        },
    )
    .await?;
    let upserted = match reply {
        Reply::Upserted { count } => count,
        _ => 0,
    };
    Ok(Json(WriteResponse {
        upserted: Some(upserted),
        ..WriteResponse::at(index)
    }))
}

#[utoipa::path(get, path = "/collections/{name}/points/{id}",
    params(("name" = String, Path, description = "Collection name"),
        ("id" = String, Path, description = "Point id; all digits means the integer id, else the string id"),
        ReadParams),
    responses((status = 200, body = PointResponse),
        (status = 404, description = "No such collection or point", body = ErrorBody),
        BadQuery, CommonErrors, ReadErrors))]
pub async fn get_point(
    State(state): State<AppState>,
    ApiPath((name, id)): ApiPath<(String, String)>,
    ApiQuery(read): ApiQuery<ReadParams>,
) -> Result<Json<PointResponse>> {
    let index = read_query(&state, &read).await?;
    // A path segment of digits may name an integer id or a string id made of digits. Off the
    // async workers: the lookup takes the collection's state lock (review M7).
    let engine = state.engine.clone();
    let point = blocking(
        move || match engine.get_point(&name, &PointId::from_path(&id)) {
            Err(Error::PointNotFound(_)) if matches!(PointId::from_path(&id), PointId::Num(_)) => {
                engine.get_point(&name, &PointId::Str(id))
            }
            other => other,
        },
    )
    .await?;
    Ok(Json(PointResponse { point, index }))
}

#[utoipa::path(post, path = "/collections/{name}/points/get", request_body = GetPointsRequest,
    params(("name" = String, Path, description = "Collection name")),
    responses((status = 200, body = GetPointsResponse),
        BadInput, NoCollection, BodyOrAnswerTooLarge, NotJson, CommonErrors, ReadErrors))]
pub async fn get_points(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<GetPointsRequest>,
) -> Result<Json<GetPointsResponse>> {
    if req.ids.is_empty() || req.ids.len() > MAX_GET_IDS {
        return Err(Error::invalid(
            "ids",
            format!("must hold 1 to {MAX_GET_IDS} ids"),
        ));
    }
    let index = read_at(
        &state,
        &req.consistency.clone().unwrap_or_default(),
        "consistency.",
    )
    .await?;
    let collection = state.engine.get(&name)?;
    // Copying vectors is work proportional to the answer: off the async workers, and bounded.
    let points = blocking(move || {
        let mut budget = AnswerBudget::new();
        let mut points = Vec::new();
        for id in &req.ids {
            let Some(p) = collection.get(id, req.with_vector) else {
                continue;
            };
            budget.add(&p)?;
            points.push(p);
        }
        Ok(points)
    })
    .await?;
    Ok(Json(GetPointsResponse { points, index }))
}

#[utoipa::path(post, path = "/collections/{name}/points/delete", request_body = DeleteRequest,
    params(("name" = String, Path, description = "Collection name")),
    responses((status = 200, body = WriteResponse),
        (status = 400, description = "Invalid input (an empty filter included); `error.field` names it", body = ErrorBody),
        NoCollection, BodyTooLarge, NotJson, CommonErrors, WriteErrors))]
pub async fn delete_points(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<DeleteRequest>,
) -> Result<Json<WriteResponse>> {
    state.engine.get(&name)?;
    let selector = match (req.ids, req.filter) {
        (Some(ids), None) => {
            if ids.is_empty() {
                return Err(Error::invalid("ids", "must not be empty"));
            }
            DeleteSelector::Ids(ids)
        }
        (None, Some(f)) => {
            // An empty filter matches every point: one stray request must not empty a
            // collection. Dropping the collection is the explicit way to do that.
            if f.is_empty() {
                return Err(Error::invalid(
                    "filter",
                    "needs at least one condition (an empty filter would delete every point; \
                     to empty a collection, delete and re-create it)",
                ));
            }
            f.validate("filter")
                .map_err(|(fl, m)| Error::invalid(fl, m))?;
            let text = serde_json::to_string(&f).map_err(|e| Error::Internal(e.to_string()))?;
            DeleteSelector::Filter(text)
        }
        _ => {
            return Err(Error::invalid(
                "body",
                "give exactly one of `ids` and `filter`",
            ))
        }
    };
    let (index, reply) = write(
        &state,
        Command::Delete {
            collection: name,
            selector,
        },
    )
    .await?;
    let deleted = match reply {
        Reply::Deleted { count } => count,
        _ => 0,
    };
    Ok(Json(WriteResponse {
        deleted: Some(deleted),
        ..WriteResponse::at(index)
    }))
}

/// Validates a search request against a collection's config; `at` prefixes field names.
fn prepare_search(
    req: SearchRequest,
    config: &CollectionConfig,
    default_ef: usize,
    at: &str,
) -> Result<SearchParams> {
    if req.k == 0 || req.k > MAX_K {
        return Err(Error::invalid(
            format!("{at}k"),
            format!("must be between 1 and {MAX_K}"),
        ));
    }
    if let Some(ef) = req.ef {
        if ef == 0 || ef > MAX_K {
            return Err(Error::invalid(
                format!("{at}ef"),
                format!("must be between 1 and {MAX_K}"),
            ));
        }
    }
    if req.score_threshold.is_some_and(|t| !t.is_finite()) {
        return Err(Error::invalid(
            format!("{at}score_threshold"),
            "must be a finite number",
        ));
    }
    if let Some(f) = &req.filter {
        f.validate(&format!("{at}filter"))
            .map_err(|(fl, m)| Error::invalid(fl, m))?;
    }
    let vector = prepare_vector(req.vector, config, &format!("{at}vector"))?;
    Ok(SearchParams {
        vector,
        k: req.k,
        ef: req.ef.unwrap_or(default_ef).max(req.k),
        filter: req.filter,
        score_threshold: req.score_threshold,
        with_payload: req.with_payload,
        with_vector: req.with_vector,
        exact: req.exact,
        sized_ef: req.ef.is_none(),
    })
}

#[utoipa::path(post, path = "/collections/{name}/points/search", request_body = SearchRequest,
    params(("name" = String, Path, description = "Collection name")),
    responses((status = 200, body = SearchResponse),
        BadVectorInput, NoCollection, BodyOrAnswerTooLarge, NotJson, CommonErrors, ReadErrors))]
pub async fn search(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<SearchRequest>,
) -> Result<Json<SearchResponse>> {
    // Consistency first: the collection itself may only exist from the awaited index on.
    let consistency = req.consistency.clone().unwrap_or_default();
    let index = read_at(&state, &consistency, "consistency.").await?;
    let collection = state.engine.get(&name)?;
    let use_cache = req.cache;
    let params = prepare_search(req, collection.config(), state.config.default_ef, "")?;
    let quick = collection.quick_search(&params);
    let engine = state.engine.clone();
    let run = move || {
        let hits = engine.query_cache().search(&collection, &params, use_cache);
        let mut budget = AnswerBudget::new();
        for h in &hits {
            budget.add(h)?;
        }
        Ok(hits)
    };
    let hits = if quick { run()? } else { blocking(run).await? };
    Ok(Json(SearchResponse { hits, index }))
}

#[utoipa::path(post, path = "/collections/{name}/points/search/batch", request_body = BatchSearchRequest,
    params(("name" = String, Path, description = "Collection name")),
    responses((status = 200, body = BatchSearchResponse),
        (status = 400, description = "Invalid input (a vector of another dimension, or k adding up to more than 100,000, included); `error.field` names it", body = ErrorBody),
        NoCollection, BodyOrAnswerTooLarge, NotJson, CommonErrors, ReadErrors))]
pub async fn search_batch(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<BatchSearchRequest>,
) -> Result<Json<BatchSearchResponse>> {
    let consistency = req.consistency.clone().unwrap_or_default();
    let index = read_at(&state, &consistency, "consistency.").await?;
    let collection = state.engine.get(&name)?;
    if req.searches.is_empty() || req.searches.len() > MAX_BATCH_SEARCHES {
        return Err(Error::invalid(
            "searches",
            format!("must hold 1 to {MAX_BATCH_SEARCHES} searches"),
        ));
    }
    let total_k = req
        .searches
        .iter()
        .fold(0usize, |sum, s| sum.saturating_add(s.k));
    if total_k > MAX_BATCH_K {
        return Err(Error::invalid(
            "searches",
            format!("their k add up to {total_k}; a batch may ask for at most {MAX_BATCH_K}"),
        ));
    }
    let params = req
        .searches
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            let use_cache = s.cache;
            prepare_search(
                s,
                collection.config(),
                state.config.default_ef,
                &format!("searches[{i}]."),
            )
            .map(|p| (p, use_cache))
        })
        .collect::<Result<Vec<_>>>()?;
    let engine = state.engine.clone();
    // One search at a time, counting the answer as it grows: a batch whose answer would pass
    // the limit stops there instead of holding every result first.
    let results = blocking(move || {
        let mut budget = AnswerBudget::new();
        let mut results = Vec::with_capacity(params.len());
        for (p, use_cache) in &params {
            let hits = engine.query_cache().search(&collection, p, *use_cache);
            for h in &hits {
                budget.add(h)?;
            }
            results.push(hits);
        }
        Ok(results)
    })
    .await?;
    Ok(Json(BatchSearchResponse { results, index }))
}
