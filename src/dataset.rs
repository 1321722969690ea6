//! Readers for the `.fvecs` / `.ivecs` formats (per row: little-endian i32 length, then that many
//! f32 or i32 values), used by `quiver import`, the benchmark and the recall tests.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use anyhow::{bail, Context};

fn read_rows<T>(
    path: &Path,
    limit: Option<usize>,
    conv: fn([u8; 4]) -> T,
) -> anyhow::Result<Vec<Vec<T>>> {
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut r = BufReader::with_capacity(1 << 20, f);
    let mut rows = Vec::new();
    let mut len = [0u8; 4];
    while limit.is_none_or(|l| rows.len() < l) {
        match r.read_exact(&mut len) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e.into()),
        }
        let n = i32::from_le_bytes(len);
        if !(1..=1 << 20).contains(&n) {
            bail!(
                "{}: bad row length {n} at row {}",
                path.display(),
                rows.len()
            );
        }
        let mut buf = vec![0u8; n as usize * 4];
        r.read_exact(&mut buf)
            .with_context(|| format!("{}: truncated row {}", path.display(), rows.len()))?;
        rows.push(
            buf.chunks_exact(4)
                .map(|c| conv([c[0], c[1], c[2], c[3]]))
                .collect(),
        );
    }
    Ok(rows)
}

/// Reads up to `limit` rows of an `.fvecs` file.
pub fn read_fvecs(path: &Path, limit: Option<usize>) -> anyhow::Result<Vec<Vec<f32>>> {
    read_rows(path, limit, f32::from_le_bytes)
}

/// Reads up to `limit` rows of an `.ivecs` file.
pub fn read_ivecs(path: &Path, limit: Option<usize>) -> anyhow::Result<Vec<Vec<i32>>> {
    read_rows(path, limit, i32::from_le_bytes)
}

/// Reads up to `limit` lines of a text file.
pub fn read_lines(path: &Path, limit: Option<usize>) -> anyhow::Result<Vec<String>> {
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut out = Vec::new();
    for line in BufReader::new(f).lines() {
        if limit.is_some_and(|l| out.len() >= l) {
            break;
        }
        out.push(line?);
    }
    Ok(out)
}

/// recall@k of `found` against the first `k` of `truth`.
pub fn recall_at(found: &[u64], truth: &[i32], k: usize) -> f64 {
    let want: std::collections::HashSet<u64> = truth.iter().take(k).map(|&t| t as u64).collect();
    found.iter().take(k).filter(|f| want.contains(f)).count() as f64 / k.max(1) as f64
}

/// The `p` quantile (0..=1) of an ascending slice, by nearest rank; 0 when empty.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p.clamp(0.0, 1.0)).round() as usize]
}
