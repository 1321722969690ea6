//! Create a collection, upsert points with payloads, search with and without a filter.
//!
//! ```text
//! cargo run --release -- serve &                              # a node on 127.0.0.1:7070
//! cargo run -p quiver-client --example quickstart [-- http://127.0.0.1:7070]
//! ```

use quiver_client::wire::{CollectionConfig, Metric, PointId, PointInput, SearchRequest};
use quiver_client::Client;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "http://127.0.0.1:7070".into());
    // Discovers the leader and the replicas from any node; reads carry this client's writes' index.
    let client = Client::builder([url])
        .read_your_writes(true)
        .connect()
        .await?;

    let config = CollectionConfig::new(3, Metric::Cosine);
    client.create_collection("quickstart", &config).await?;
    let points = [
        ("doc-1", [0.9, 0.1, 0.0], "en"),
        ("doc-2", [0.1, 0.9, 0.0], "de"),
        ("doc-3", [0.7, 0.3, 0.1], "en"),
    ]
    .into_iter()
    .map(|(id, v, lang)| PointInput {
        id: PointId::Str(id.into()),
        vector: v.to_vec(),
        payload: Some(serde_json::json!({ "lang": lang })),
    })
    .collect();
    let w = client.upsert("quickstart", points).await?;
    println!("upserted at index {}", w.index);

    let found = client
        .search("quickstart", &SearchRequest::new(vec![1.0, 0.0, 0.0], 2))
        .await?;
    for hit in &found.hits {
        println!("{} {:.3} {:?}", hit.id, hit.score, hit.payload);
    }
    let mut german = SearchRequest::new(vec![1.0, 0.0, 0.0], 2);
    german.filter = Some(serde_json::from_value(serde_json::json!({
        "must": [{"key": "lang", "match": {"value": "de"}}]
    }))?);
    let found = client.search("quickstart", &german).await?;
    let ids: Vec<String> = found.hits.iter().map(|h| h.id.to_string()).collect();
    println!("lang = de: {ids:?}");
    client.delete_collection("quickstart").await?;
    Ok(())
}
