//! The `quiver` command line's client commands: `import`, `search`, `derive` and `probe` (the
//! binary in `main.rs` only parses the command line and dispatches).

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use quiver_client::Client;

use crate::model::{
    CollectionConfig, Consistency, Metric, PointId, PointInput, Quantization, SearchRequest,
};

#[derive(Parser)]
pub struct DeriveArgs {
    /// The real vectors to derive from (.fvecs).
    #[arg(long, default_value = "../shared/data/minilm-debian/base.fvecs")]
    from: PathBuf,
    /// Rows to write.
    #[arg(long, default_value_t = 1_000_000)]
    count: u64,
    /// Output file (.fvecs).
    #[arg(long)]
    out: PathBuf,
    /// Noise seed (the benchmark uses 1 for points and 2 for queries).
    #[arg(long, default_value_t = crate::dataset::POINT_SEED)]
    seed: u64,
    /// Standard deviation of the noise added to each element before normalising.
    #[arg(long, default_value_t = crate::dataset::DERIVED_SIGMA)]
    sigma: f32,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Fvecs,
    Jsonl,
}

#[derive(Parser)]
struct Target {
    /// Node URL.
    #[arg(long, env = "QUIVER_URL", default_value = "http://127.0.0.1:7070")]
    url: String,
    /// API key, if the node requires one.
    #[arg(long, env = "QUIVER_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Collection name.
    #[arg(long, short)]
    collection: String,
}

#[derive(Parser)]
pub struct ImportArgs {
    #[command(flatten)]
    target: Target,
    /// Input file: .fvecs (ids = row numbers) or .jsonl (one `{"id","vector","payload"}` per line).
    #[arg(long)]
    file: PathBuf,
    /// Input format (default: from the file extension).
    #[arg(long, value_enum)]
    format: Option<Format>,
    /// For .fvecs: a text file whose line i becomes point i's payload `{"text": ...}`.
    #[arg(long)]
    texts: Option<PathBuf>,
    /// Create the collection first (idempotent) with this metric; the dimension comes from the file.
    #[arg(long, value_enum)]
    create: Option<MetricArg>,
    /// With `--create`: `int8` keeps int8 codes in memory and the full vectors on disk;
    /// `int8_ram` walks int8 codes and keeps the full vectors in memory (faster search).
    #[arg(long, value_enum, default_value = "none")]
    quantization: QuantizationArg,
    /// Points per request.
    #[arg(long, default_value_t = 500)]
    batch: usize,
    /// Requests in flight.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Import at most this many points.
    #[arg(long)]
    limit: Option<usize>,
    /// After the last write, wait until every point is in the graph and report that rate too.
    #[arg(long)]
    wait_indexed: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum MetricArg {
    Cosine,
    L2,
    Dot,
}

#[derive(Clone, Copy, ValueEnum)]
enum QuantizationArg {
    None,
    Int8,
    #[value(name = "int8_ram")]
    Int8Ram,
}

impl From<QuantizationArg> for Quantization {
    fn from(q: QuantizationArg) -> Quantization {
        match q {
            QuantizationArg::None => Quantization::None,
            QuantizationArg::Int8 => Quantization::Int8,
            QuantizationArg::Int8Ram => Quantization::Int8Ram,
        }
    }
}

impl From<MetricArg> for Metric {
    fn from(m: MetricArg) -> Metric {
        match m {
            MetricArg::Cosine => Metric::Cosine,
            MetricArg::L2 => Metric::L2,
            MetricArg::Dot => Metric::Dot,
        }
    }
}

#[derive(Parser)]
pub struct SearchArgs {
    #[command(flatten)]
    target: Target,
    /// Query vector as a JSON array.
    #[arg(long, conflicts_with = "fvecs")]
    vector: Option<String>,
    /// Take the query from this .fvecs file ...
    #[arg(long)]
    fvecs: Option<PathBuf>,
    /// ... at this row.
    #[arg(long, default_value_t = 0)]
    row: usize,
    /// Neighbours wanted.
    #[arg(long, short, default_value_t = 10)]
    k: usize,
    /// Search breadth.
    #[arg(long)]
    ef: Option<usize>,
    /// Payload filter as JSON, e.g. '{"must":[{"key":"lang","match":{"value":"en"}}]}'.
    #[arg(long)]
    filter: Option<String>,
    /// Brute force.
    #[arg(long)]
    exact: bool,
}

pub async fn probe(url: &str) -> anyhow::Result<()> {
    let http = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(2))
        .build()?;
    let resp = http.get(url).send().await?;
    let status = resp.status();
    if !status.is_success() {
        bail!("{url}: {status} {}", resp.text().await.unwrap_or_default());
    }
    Ok(())
}

fn load_points(args: &ImportArgs) -> anyhow::Result<Vec<PointInput>> {
    let format = match args.format {
        Some(f) => f,
        None => match args.file.extension().and_then(|e| e.to_str()) {
            Some("fvecs") => Format::Fvecs,
            Some("jsonl") | Some("ndjson") | Some("json") => Format::Jsonl,
            _ => bail!(
                "cannot tell the format of {}; pass --format",
                args.file.display()
            ),
        },
    };
    Ok(match format {
        Format::Fvecs => {
            let rows = crate::dataset::read_fvecs(&args.file, args.limit)?;
            let texts = match &args.texts {
                Some(p) => Some(crate::dataset::read_lines(p, args.limit)?),
                None => None,
            };
            rows.into_iter()
                .enumerate()
                .map(|(i, vector)| PointInput {
                    id: PointId::Num(i as u64),
                    vector,
                    payload: texts
                        .as_ref()
                        .and_then(|t| t.get(i))
                        .map(|t| serde_json::json!({ "text": t })),
                })
                .collect()
        }
        Format::Jsonl => {
            let lines = crate::dataset::read_lines(&args.file, args.limit)?;
            lines
                .iter()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty())
                .map(|(i, l)| serde_json::from_str(l).with_context(|| format!("line {}", i + 1)))
                .collect::<anyhow::Result<_>>()?
        }
    })
}

pub fn derive(args: DeriveArgs) -> anyhow::Result<()> {
    use std::io::Write;
    let base = crate::dataset::read_fvecs(&args.from, None)?;
    anyhow::ensure!(!base.is_empty(), "no vectors in {}", args.from.display());
    let file = std::fs::File::create(&args.out)?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    let bar = ProgressBar::new(args.count);
    bar.set_style(ProgressStyle::with_template(
        "{bar:40} {pos}/{len} rows, {per_sec}, eta {eta}",
    )?);
    const CHUNK: u64 = 16_384;
    for start in (0..args.count).step_by(CHUNK as usize) {
        let end = (start + CHUNK).min(args.count);
        let rows = crate::dataset::derived_rows(&base, start..end, args.seed, args.sigma);
        for row in &rows {
            crate::dataset::write_fvecs_row(&mut out, row)?;
        }
        bar.inc(end - start);
    }
    out.flush()?;
    bar.finish();
    eprintln!(
        "wrote {} rows of {} dimensions to {}",
        args.count,
        base[0].len(),
        args.out.display()
    );
    Ok(())
}

pub async fn import(args: ImportArgs) -> anyhow::Result<()> {
    let points = load_points(&args)?;
    anyhow::ensure!(!points.is_empty(), "no points in {}", args.file.display());
    let client = Client::new(&args.target.url, args.target.api_key.clone())?;
    let name = args.target.collection.clone();
    if let Some(metric) = args.create {
        let config = CollectionConfig {
            quantization: args.quantization.into(),
            ..CollectionConfig::new(points[0].vector.len(), metric.into())
        };
        client.create_collection(&name, &config).await?;
    }
    let bar = ProgressBar::new(points.len() as u64);
    bar.set_style(ProgressStyle::with_template(
        "{bar:40} {pos}/{len} points, {per_sec}, eta {eta}",
    )?);
    let started = std::time::Instant::now();
    let total = points.len();
    // The points move into their requests as they are sent, and each request's vectors are
    // freed once it is answered: cloning every chunk up front held the file twice (3.2 GB of
    // client memory for a million 384-d points).
    let mut points = points.into_iter();
    let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(args.concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let permit = sem.clone().acquire_owned().await?;
        let chunk: Vec<PointInput> = points.by_ref().take(args.batch.max(1)).collect();
        if chunk.is_empty() {
            break;
        }
        let (client, name, bar) = (client.clone(), name.clone(), bar.clone());
        tasks.spawn(async move {
            let n = chunk.len() as u64;
            let r = client.upsert(&name, chunk).await;
            bar.inc(n);
            drop(permit);
            r
        });
    }
    let mut last_index = 0;
    while let Some(r) = tasks.join_next().await {
        last_index = last_index.max(r??.index);
    }
    bar.finish();
    let secs = started.elapsed().as_secs_f64();
    println!(
        "imported {total} points in {secs:.1} s ({:.0} points/s), last index {last_index}",
        total as f64 / secs
    );
    if args.wait_indexed {
        // Until the last point is in the graph: the rate a collection can really take.
        let consistency = Consistency::MinIndex {
            min_index: last_index,
        };
        loop {
            let info = client.collection_with(&name, Some(&consistency)).await?;
            if info.unindexed == 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        let secs = started.elapsed().as_secs_f64();
        println!(
            "indexed {total} points in {secs:.1} s ({:.0} points/s until the last is in the graph)",
            total as f64 / secs
        );
    }
    Ok(())
}

pub async fn search(args: SearchArgs) -> anyhow::Result<()> {
    let vector: Vec<f32> = match (&args.vector, &args.fvecs) {
        (Some(v), _) => {
            serde_json::from_str(v).context("--vector must be a JSON array of numbers")?
        }
        (None, Some(p)) => {
            let mut rows = crate::dataset::read_fvecs(p, Some(args.row + 1))?;
            anyhow::ensure!(
                rows.len() == args.row + 1,
                "row {} not in {}",
                args.row,
                p.display()
            );
            rows.pop().unwrap_or_default()
        }
        (None, None) => bail!("give --vector or --fvecs"),
    };
    let client = Client::new(&args.target.url, args.target.api_key.clone())?;
    let mut req = SearchRequest::new(vector, args.k);
    req.ef = args.ef;
    req.exact = args.exact;
    if let Some(f) = &args.filter {
        req.filter = Some(serde_json::from_str(f).context("--filter must be a JSON filter")?);
    }
    let resp = client.search(&args.target.collection, &req).await?;
    println!("{}", serde_json::to_string_pretty(&resp)?);
    Ok(())
}
