//! A typed async client for one quiver node over HTTP (reqwest). It shares only the DTOs in
//! [`crate::model`] with the server. Used by the CLI, the benchmark and the integration tests.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::model::{
    BatchSearchRequest, BatchSearchResponse, CollectionConfig, CollectionInfo, CollectionList,
    DeleteRequest, PointId, PointInput, PointResponse, SearchRequest, SearchResponse,
    UpsertRequest, WriteResponse,
};

/// What can go wrong talking to a node.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The node answered with an error.
    #[error("{status} {code}: {message}")]
    Api {
        /// HTTP status.
        status: StatusCode,
        /// The error code from the body (`invalid_input`, ...).
        code: String,
        /// The message from the body.
        message: String,
        /// The offending field, for `invalid_input`.
        field: Option<String>,
    },
    /// The request did not complete (connection, timeout, undecodable body).
    #[error("http: {0}")]
    Http(#[from] reqwest::Error),
}

#[derive(Deserialize)]
struct ErrorEnvelope {
    error: ErrorInner,
}
#[derive(Deserialize)]
struct ErrorInner {
    code: String,
    message: String,
    field: Option<String>,
}

/// A client for one node (cheap to clone; the connection pool is shared).
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    api_key: Option<String>,
}

impl Client {
    /// A client for the node at `base` (e.g. `http://127.0.0.1:7070`).
    pub fn new(base: &str, api_key: Option<String>) -> Result<Client, ClientError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .pool_max_idle_per_host(64)
            .build()?;
        Ok(Client {
            http,
            base: base.trim_end_matches('/').to_string(),
            api_key,
        })
    }

    /// The node's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    async fn call<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let mut req = self.http.request(method, format!("{}{}", self.base, path));
        if let Some(k) = &self.api_key {
            req = req.bearer_auth(k);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp.json().await?);
        }
        let text = resp.text().await.unwrap_or_default();
        let (code, message, field) = match serde_json::from_str::<ErrorEnvelope>(&text) {
            Ok(e) => (e.error.code, e.error.message, e.error.field),
            Err(_) => ("unknown".to_string(), text, None),
        };
        Err(ClientError::Api {
            status,
            code,
            message,
            field,
        })
    }

    /// `PUT /collections/{name}`.
    pub async fn create_collection(
        &self,
        name: &str,
        config: &CollectionConfig,
    ) -> Result<WriteResponse, ClientError> {
        self.call(Method::PUT, &format!("/collections/{name}"), Some(config))
            .await
    }

    /// `DELETE /collections/{name}`.
    pub async fn delete_collection(&self, name: &str) -> Result<WriteResponse, ClientError> {
        self.call::<(), _>(Method::DELETE, &format!("/collections/{name}"), None)
            .await
    }

    /// `GET /collections/{name}`.
    pub async fn collection(&self, name: &str) -> Result<CollectionInfo, ClientError> {
        self.call::<(), _>(Method::GET, &format!("/collections/{name}"), None)
            .await
    }

    /// `GET /collections`.
    pub async fn collections(&self) -> Result<CollectionList, ClientError> {
        self.call::<(), _>(Method::GET, "/collections", None).await
    }

    /// `PUT /collections/{name}/points`.
    pub async fn upsert(
        &self,
        name: &str,
        points: Vec<PointInput>,
    ) -> Result<WriteResponse, ClientError> {
        let body = UpsertRequest { points };
        self.call(
            Method::PUT,
            &format!("/collections/{name}/points"),
            Some(&body),
        )
        .await
    }

    /// `GET /collections/{name}/points/{id}`.
    pub async fn get_point(&self, name: &str, id: &PointId) -> Result<PointResponse, ClientError> {
        self.call::<(), _>(
            Method::GET,
            &format!("/collections/{name}/points/{id}"),
            None,
        )
        .await
    }

    /// `POST /collections/{name}/points/delete`.
    pub async fn delete_points(
        &self,
        name: &str,
        req: &DeleteRequest,
    ) -> Result<WriteResponse, ClientError> {
        self.call(
            Method::POST,
            &format!("/collections/{name}/points/delete"),
            Some(req),
        )
        .await
    }

    /// `POST /collections/{name}/points/search`.
    pub async fn search(
        &self,
        name: &str,
        req: &SearchRequest,
    ) -> Result<SearchResponse, ClientError> {
        self.call(
            Method::POST,
            &format!("/collections/{name}/points/search"),
            Some(req),
        )
        .await
    }

    /// `POST /collections/{name}/points/search/batch`.
    pub async fn search_batch(
        &self,
        name: &str,
        req: &BatchSearchRequest,
    ) -> Result<BatchSearchResponse, ClientError> {
        self.call(
            Method::POST,
            &format!("/collections/{name}/points/search/batch"),
            Some(req),
        )
        .await
    }
}
