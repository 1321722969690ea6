//! quiver against PostgreSQL + pgvector under the same C-client search load (issue 11), in one
//! run: the shared peer scripts (`../shared/peers/pgvector/`) send it, pgbench to pgvector's
//! streaming standby and wrk to a quiver read replica, one after the other for each client
//! count. Each side searches at the smallest ef of its list whose recall@10 on all the shared
//! queries reaches the target, measured here on the replica that takes the load. Used by the
//! `pgvector` and `bench` examples.
//!
//! pgvector must already run: `setup.sh` installs PostgreSQL, pgvector, pgbench and wrk, and
//! `standby.py` starts a primary with its standby and loads the shared base set into
//! `items_bulk`. quiver's two nodes are started here, from the release binary, with the query
//! cache off (both sides cycle through the same 100 queries).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use quiver::dataset::{read_fvecs, read_ivecs, recall_at};
use quiver_client::wire::SearchRequest;
use quiver_client::Client;

use super::{wait_ready, NodeProcess};

// What to measure: flags shared by the `pgvector` and `bench` examples (a plain comment, which
// clap does not take as either example's help text).
#[derive(clap::Args)]
pub struct Against {
    /// The peer scripts' folder (default: `peers/pgvector` beside the data set's `data/`).
    #[arg(long)]
    pub pg_scripts: Option<PathBuf>,
    /// Concurrent clients, one row each per round.
    #[arg(long, value_delimiter = ',', default_value = "4,8")]
    pub pg_clients: Vec<usize>,
    /// Seconds of load per row and side.
    #[arg(long, default_value_t = 15)]
    pub pg_secs: u64,
    /// Rounds over the client counts.
    #[arg(long, default_value_t = 2)]
    pub pg_rounds: usize,
    /// The recall@10 both sides must reach.
    #[arg(long, default_value_t = 0.95)]
    pub pg_recall: f64,
    /// quiver's candidate ef values, smallest first.
    #[arg(long, value_delimiter = ',', default_value = "16,20,24,28,32,40,48,64")]
    pub pg_quiver_efs: Vec<usize>,
    /// pgvector's candidate `hnsw.ef_search` values, smallest first.
    #[arg(long, value_delimiter = ',', default_value = "10,12,16,20,24,32,40,64")]
    pub pg_efs: Vec<usize>,
    /// The quantisation of quiver's collection (`quiver import --quantization`).
    #[arg(long, default_value = "none")]
    pub pg_quantization: String,
}

/// pgvector's standby, as `standby.py` starts it.
const STANDBY_PORT: &str = "55433";
const COLLECTION: &str = "docs";
const K: usize = 10;

/// Runs `cmd` and returns its standard output, or an error with its standard error.
fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().map_err(|e| anyhow::anyhow!("{cmd:?}: {e}"))?;
    anyhow::ensure!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn psql(sql_args: &[&str]) -> Command {
    let mut cmd = Command::new("psql");
    cmd.args([
        "-h",
        "127.0.0.1",
        "-p",
        STANDBY_PORT,
        "-U",
        "postgres",
        "-X",
        "-At",
    ])
    .args(["-v", "ON_ERROR_STOP=1"])
    .args(sql_args)
    .arg("postgres");
    cmd
}

/// Why the comparison cannot run here, if it cannot.
fn missing(bin: &Path, scripts: &Path, base_len: usize) -> Option<String> {
    let setup = format!(
        "`{0}/setup.sh ../peers-venv` then `../peers-venv/bin/python {0}/standby.py` set it up",
        scripts.display()
    );
    if !bin.exists() {
        return Some(format!(
            "{} is missing (`cargo build --release` makes it)",
            bin.display()
        ));
    }
    // wrk has no --version: `-v` prints its version (and exits 1).
    for (tool, flag) in [
        ("psql", "--version"),
        ("pgbench", "--version"),
        ("wrk", "-v"),
    ] {
        if Command::new(tool).arg(flag).output().is_err() {
            return Some(format!("{tool} is not installed: {setup}"));
        }
    }
    match output(&mut psql(&["-c", "SELECT count(*) FROM items_bulk"])) {
        Ok(n) if n.trim() == base_len.to_string() => None,
        Ok(n) => Some(format!(
            "pgvector's standby holds {} rows, not {base_len}: {setup}",
            n.trim()
        )),
        Err(e) => Some(format!("pgvector's standby does not answer ({e}): {setup}")),
    }
}

/// pgvector's recall@10 over every query at `ef_search` = `ef`, read from its standby with psql.
fn pg_recall(queries: &[Vec<f32>], truth: &[Vec<i32>], ef: usize) -> anyhow::Result<f64> {
    let mut sql = format!("SET hnsw.ef_search = {ef};\n");
    for q in queries {
        let mut literal = String::with_capacity(q.len() * 12);
        for (i, x) in q.iter().enumerate() {
            // Rust prints the shortest text that reads back as the same f32.
            let _ = write!(literal, "{}{x}", if i == 0 { "" } else { "," });
        }
        let _ = writeln!(
            sql,
            "SELECT array_to_string(ARRAY(SELECT id FROM items_bulk ORDER BY embedding <=> \
             '[{literal}]'::vector LIMIT {K}), ',');"
        );
    }
    let file = tempfile::NamedTempFile::new()?;
    std::fs::write(file.path(), sql)?;
    let out = output(&mut psql(&["-f", &file.path().to_string_lossy()]))?;
    let rows: Vec<&str> = out.lines().filter(|l| *l != "SET").collect();
    anyhow::ensure!(
        rows.len() == queries.len(),
        "psql printed {} rows",
        rows.len()
    );
    let mut sum = 0.0;
    for (row, t) in rows.iter().zip(truth) {
        let ids: Vec<u64> = row
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::parse)
            .collect::<Result<_, _>>()?;
        sum += recall_at(&ids, t, K);
    }
    Ok(sum / queries.len() as f64)
}

/// quiver's recall@10 over every query at `ef`, searched on `url` (cache off).
async fn quiver_recall(
    url: &str,
    queries: &[Vec<f32>],
    truth: &[Vec<i32>],
    ef: usize,
) -> anyhow::Result<f64> {
    let client = Client::new(url, None)?;
    let mut sum = 0.0;
    for (q, t) in queries.iter().zip(truth) {
        let mut req = SearchRequest::new(q.clone(), K);
        req.ef = Some(ef);
        req.with_payload = false;
        req.cache = false;
        let hits = client.search(COLLECTION, &req).await?.hits;
        let ids: Vec<u64> = hits
            .iter()
            .filter_map(|h| match &h.id {
                quiver::model::PointId::Num(n) => Some(*n),
                quiver::model::PointId::Str(_) => None,
            })
            .collect();
        sum += recall_at(&ids, t, K);
    }
    Ok(sum / queries.len() as f64)
}

/// The first ef of `efs` whose recall reaches `target` (else the last), with its recall; every
/// recall measured is printed.
async fn choose<F, Fut>(
    side: &str,
    efs: &[usize],
    target: f64,
    recall: F,
) -> anyhow::Result<(usize, f64)>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<f64>>,
{
    let mut chosen = None;
    for &ef in efs {
        let r = recall(ef).await?;
        println!("{side} ef {ef}: recall@10 {r:.3}");
        chosen = Some((ef, r));
        if r >= target {
            break;
        }
    }
    chosen.ok_or_else(|| anyhow::anyhow!("no ef to try for {side}"))
}

/// The figure after `key` in a line of the scripts' output (`tps = 4226.1 (without ...)`,
/// `rps=7700.2 p50_ms=0.470 ...`).
fn figure(out: &str, key: &str) -> anyhow::Result<f64> {
    out.split(key)
        .nth(1)
        .and_then(|rest| {
            rest.trim_start_matches([' ', '='])
                .split(|c: char| !(c.is_ascii_digit() || c == '.'))
                .next()
        })
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no `{key}` figure in {out:?}"))
}

/// Starts quiver's leader and replica, matches recall, and prints a row per client count and
/// round. Prints why and returns when pgvector or the tools are not set up.
/// `bin` is the server binary (`target/release/quiver`), `data` the shared data set's folder.
pub async fn measure(bin: &Path, data: &Path, a: &Against) -> anyhow::Result<()> {
    let scripts = a
        .pg_scripts
        .clone()
        .unwrap_or_else(|| data.join("../../peers/pgvector"));
    let queries = read_fvecs(&data.join("queries.fvecs"), None)?;
    let truth = read_ivecs(&data.join("groundtruth.ivecs"), None)?;
    let base_file = data.join("base.fvecs");
    // Rows of the base set, from its size (a row is a 4-byte length and the floats): the
    // vectors themselves are read by `quiver import`.
    let dim = queries.first().map_or(0, Vec::len);
    let base_len = (std::fs::metadata(&base_file)?.len() / (4 + 4 * dim as u64)) as usize;
    if let Some(why) = missing(bin, &scripts, base_len) {
        println!("skipped: {why}");
        return Ok(());
    }
    let (pg_ef, pg_r) = choose("pgvector", &a.pg_efs, a.pg_recall, |ef| {
        let (q, t) = (&queries, &truth);
        async move { pg_recall(q, t, ef) }
    })
    .await?;

    let root = tempfile::tempdir()?;
    let flags = "--query-cache-mb 0";
    let leader = NodeProcess::spawn(bin, &root.path().join("n0"), None, flags)?;
    wait_ready(&leader.url, Duration::from_secs(60)).await?;
    let replica = NodeProcess::spawn(bin, &root.path().join("n1"), Some(&leader.url), flags)?;
    wait_ready(&replica.url, Duration::from_secs(60)).await?;
    let started = Instant::now();
    output(
        Command::new(bin)
            .args(["import", "--url", &leader.url, "-c", COLLECTION])
            .args(["--create", "cosine", "--wait-indexed"])
            .args(["--quantization", &a.pg_quantization, "--file"])
            .arg(&base_file),
    )?;
    // The replica takes the load: wait until it holds every point in its graph.
    let on_replica = Client::new(&replica.url, None)?;
    loop {
        match on_replica.collection(COLLECTION).await {
            Ok(info) if info.points == base_len && info.unindexed == 0 => break,
            _ if started.elapsed() > Duration::from_secs(1200) => {
                anyhow::bail!("the replica did not index {base_len} points within 20 minutes")
            }
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    println!(
        "quiver: {base_len} points imported (quantization {}) and indexed on the replica in {:.1} s",
        a.pg_quantization,
        started.elapsed().as_secs_f64()
    );
    let (q_ef, q_r) = choose("quiver", &a.pg_quiver_efs, a.pg_recall, |ef| {
        let (url, q, t) = (replica.url.clone(), &queries, &truth);
        async move { quiver_recall(&url, q, t, ef).await }
    })
    .await?;

    println!(
        "\n| clients | round | pgvector ef_search {pg_ef} (recall {pg_r:.3}) q/s | quiver ef {q_ef} \
         (recall {q_r:.3}) q/s | quiver / pgvector | quiver p50 / p99 ms |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    let secs = a.pg_secs.to_string();
    for round in 1..=a.pg_rounds {
        for &c in &a.pg_clients {
            let c_s = c.to_string();
            let pg = output(
                Command::new(scripts.join("pgbench_search.sh"))
                    .args([&pg_ef.to_string(), &c_s, &secs])
                    .arg(data.join("queries.fvecs")),
            )?;
            let pg_qps = figure(&pg, "tps")?;
            let q = output(
                Command::new(scripts.join("wrk_search.sh"))
                    .args([&replica.url, COLLECTION, &q_ef.to_string(), &c_s, &secs])
                    .arg(data.join("queries.fvecs")),
            )?;
            anyhow::ensure!(
                figure(&q, "errors")? == 0.0 && figure(&q, "non2xx")? == 0.0,
                "wrk saw failures: {q}"
            );
            let q_qps = figure(&q, "rps")?;
            println!(
                "| {c} | {round} | {pg_qps:.0} | {q_qps:.0} | {:.2}× | {:.2} / {:.2} |",
                q_qps / pg_qps,
                figure(&q, "p50_ms")?,
                figure(&q, "p99_ms")?
            );
        }
    }
    Ok(())
}
