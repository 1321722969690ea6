//! Request handlers: validate, then write through the writer or read from the engine.

use axum::extract::{Path, Query, State};
use axum::Json;
use utoipa::OpenApi;

use super::{ApiJson, AppState, ErrorBody, ErrorDetail};
use crate::engine::SearchParams;
use crate::error::{Error, Result};
use crate::filter::{Condition, Filter, Match, Range};
use crate::index::normalize;
use crate::model::{
    validate_collection_name, BatchSearchRequest, BatchSearchResponse, CollectionConfig,
    CollectionInfo, CollectionList, Command, DeleteRequest, DeleteSelector, GetPointsRequest,
    GetPointsResponse, Health, Hit, HnswConfig, Metric, PointId, PointInput, PointRecord,
    PointResponse, PointWrite, ReadParams, Reply, SearchRequest, SearchResponse, UpsertRequest,
    WriteResponse, MAX_K,
};

/// Most searches in one batch request.
const MAX_BATCH_SEARCHES: usize = 1_024;

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

#[utoipa::path(get, path = "/collections", responses((status = 200, body = CollectionList)))]
pub async fn list_collections(
    State(state): State<AppState>,
    Query(read): Query<ReadParams>,
) -> Result<Json<CollectionList>> {
    let index = state.cluster.ensure_read(&read.consistency()).await?;
    let engine = state.engine.clone();
    let collections = blocking(move || Ok(engine.list())).await?;
    Ok(Json(CollectionList { collections, index }))
}

#[utoipa::path(put, path = "/collections/{name}", request_body = CollectionConfig,
    responses((status = 200, body = WriteResponse), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create_collection(
    State(state): State<AppState>,
    Path(name): Path<String>,
    ApiJson(config): ApiJson<CollectionConfig>,
) -> Result<Json<WriteResponse>> {
    check_name(&name)?;
    config.validate().map_err(|(f, m)| Error::invalid(f, m))?;
    let (index, reply) = write(&state, Command::CreateCollection { name, config }).await?;
    let created = matches!(reply, Reply::Created { created: true });
    Ok(Json(WriteResponse {
        index,
        upserted: None,
        deleted: None,
        created: Some(created),
    }))
}

#[utoipa::path(get, path = "/collections/{name}",
    responses((status = 200, body = CollectionInfo), (status = 404, body = ErrorBody)))]
pub async fn get_collection(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(read): Query<ReadParams>,
) -> Result<Json<CollectionInfo>> {
    let index = state.cluster.ensure_read(&read.consistency()).await?;
    let engine = state.engine.clone();
    let mut info = blocking(move || engine.info(&name)).await?;
    info.index = index;
    Ok(Json(info))
}

#[utoipa::path(delete, path = "/collections/{name}",
    responses((status = 200, body = WriteResponse), (status = 404, body = ErrorBody)))]
pub async fn delete_collection(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<WriteResponse>> {
    state.engine.get(&name)?;
    let (index, reply) = write(&state, Command::DeleteCollection { name: name.clone() }).await?;
    if matches!(reply, Reply::Dropped { existed: false }) {
        return Err(Error::CollectionNotFound(name));
    }
    Ok(Json(WriteResponse {
        index,
        upserted: None,
        deleted: None,
        created: None,
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
    if let Some((at, why)) = crate::index::vector_problem(&v) {
        let field = match at {
            Some(i) => format!("{field}[{i}]"),
            None => field.to_string(),
        };
        return Err(Error::invalid(field, why));
    }
    if config.metric == Metric::Cosine && !normalize(&mut v) {
        return Err(Error::invalid(
            field,
            "a zero vector has no direction (cosine metric)",
        ));
    }
    Ok(v)
}

#[utoipa::path(put, path = "/collections/{name}/points", request_body = UpsertRequest,
    responses((status = 200, body = WriteResponse), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 413, body = ErrorBody)))]
pub async fn upsert_points(
    State(state): State<AppState>,
    Path(name): Path<String>,
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
        index,
        upserted: Some(upserted),
        deleted: None,
        created: None,
    }))
}

#[utoipa::path(get, path = "/collections/{name}/points/{id}",
    responses((status = 200, body = PointResponse), (status = 404, body = ErrorBody)))]
pub async fn get_point(
    State(state): State<AppState>,
    Path((name, id)): Path<(String, String)>,
    Query(read): Query<ReadParams>,
) -> Result<Json<PointResponse>> {
    let index = state.cluster.ensure_read(&read.consistency()).await?;
    // A path segment of digits may name an integer id or a string id made of digits.
    let point = match state.engine.get_point(&name, &PointId::from_path(&id)) {
        Err(Error::PointNotFound(_)) if matches!(PointId::from_path(&id), PointId::Num(_)) => {
            state.engine.get_point(&name, &PointId::Str(id))?
        }
        other => other?,
    };
    Ok(Json(PointResponse { point, index }))
}

#[utoipa::path(post, path = "/collections/{name}/points/get", request_body = GetPointsRequest,
    responses((status = 200, body = GetPointsResponse), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_points(
    State(state): State<AppState>,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<GetPointsRequest>,
) -> Result<Json<GetPointsResponse>> {
    if req.ids.is_empty() || req.ids.len() > MAX_K {
        return Err(Error::invalid("ids", format!("must hold 1 to {MAX_K} ids")));
    }
    let index = state
        .cluster
        .ensure_read(&req.consistency.clone().unwrap_or_default())
        .await?;
    let collection = state.engine.get(&name)?;
    let points = req
        .ids
        .iter()
        .filter_map(|id| collection.get(id))
        .map(|mut p| {
            if !req.with_vector {
                p.vector = Vec::new();
            }
            p
        })
        .collect();
    Ok(Json(GetPointsResponse { points, index }))
}

#[utoipa::path(post, path = "/collections/{name}/points/delete", request_body = DeleteRequest,
    responses((status = 200, body = WriteResponse), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn delete_points(
    State(state): State<AppState>,
    Path(name): Path<String>,
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
        index,
        upserted: None,
        deleted: Some(deleted),
        created: None,
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
    })
}

#[utoipa::path(post, path = "/collections/{name}/points/search", request_body = SearchRequest,
    responses((status = 200, body = SearchResponse), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn search(
    State(state): State<AppState>,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<SearchRequest>,
) -> Result<Json<SearchResponse>> {
    // Consistency first: the collection itself may only exist from the awaited index on.
    let consistency = req.consistency.clone().unwrap_or_default();
    let index = state.cluster.ensure_read(&consistency).await?;
    let collection = state.engine.get(&name)?;
    let params = prepare_search(req, collection.config(), state.config.default_ef, "")?;
    let hits = blocking(move || Ok(collection.search(&params))).await?;
    Ok(Json(SearchResponse { hits, index }))
}

#[utoipa::path(post, path = "/collections/{name}/points/search/batch", request_body = BatchSearchRequest,
    responses((status = 200, body = BatchSearchResponse), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn search_batch(
    State(state): State<AppState>,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<BatchSearchRequest>,
) -> Result<Json<BatchSearchResponse>> {
    let consistency = req.consistency.clone().unwrap_or_default();
    let index = state.cluster.ensure_read(&consistency).await?;
    let collection = state.engine.get(&name)?;
    if req.searches.is_empty() || req.searches.len() > MAX_BATCH_SEARCHES {
        return Err(Error::invalid(
            "searches",
            format!("must hold 1 to {MAX_BATCH_SEARCHES} searches"),
        ));
    }
    let params = req
        .searches
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            prepare_search(
                s,
                collection.config(),
                state.config.default_ef,
                &format!("searches[{i}]."),
            )
        })
        .collect::<Result<Vec<_>>>()?;
    let results =
        blocking(move || Ok(params.iter().map(|p| collection.search(p)).collect())).await?;
    Ok(Json(BatchSearchResponse { results, index }))
}
