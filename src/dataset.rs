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

/// The exact top `k` of every query by brute force, for unit vectors (cosine or dot), as row
/// numbers; ties go to the smaller row. Queries run in parallel, each keeping its best `k` by
/// partial selection rather than sorting every score.
pub fn exact_top_k(base: &[Vec<f32>], queries: &[Vec<f32>], k: usize) -> Vec<Vec<i32>> {
    use rayon::prelude::*;
    queries
        .par_iter()
        .map(|q| {
            let mut d: Vec<(f32, i32)> = base
                .iter()
                .enumerate()
                .map(|(i, v)| (-crate::index::dot(q, v), i as i32))
                .collect();
            let by = |a: &(f32, i32), b: &(f32, i32)| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1));
            if d.len() > k {
                d.select_nth_unstable_by(k, by);
                d.truncate(k);
            }
            d.sort_by(by);
            // Not `into_iter().collect()`: that collects in place and keeps the million-entry
            // buffer as each query's answer (8 MB a query, 8 GB of a bench's peak at 1M).
            d.iter().map(|x| x.1).collect()
        })
        .collect()
}

/// splitmix64: a tiny, portable generator, so that a derived set is the same on every machine and
/// in every version (no dependence on `rand`'s algorithms).
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Row `i` of a set derived from a real one (issue 10's recipe for sizes beyond the shared data):
/// `normalize(base[i mod base.len()] + sigma · g)`, with `g` standard normal drawn from a stream
/// seeded by `(seed, i)`. Any row can be made alone, in any order, on any thread.
pub fn derived_row(base: &[Vec<f32>], i: u64, seed: u64, sigma: f32) -> Vec<f32> {
    let src = &base[(i % base.len() as u64) as usize];
    let mut state = seed ^ i.wrapping_mul(0xD1B5_4A32_D192_ED03);
    let mut uniform = || (splitmix64(&mut state) >> 11) as f64 / (1u64 << 53) as f64;
    let mut v: Vec<f32> = Vec::with_capacity(src.len());
    while v.len() < src.len() {
        // Box-Muller: two uniforms in (0, 1] give two independent standard normals.
        let (u1, u2) = (1.0 - uniform(), uniform());
        let r = (-2.0 * u1.ln()).sqrt();
        let t = std::f64::consts::TAU * u2;
        for g in [r * t.cos(), r * t.sin()] {
            if v.len() < src.len() {
                let x = src[v.len()];
                v.push(x + sigma * g as f32);
            }
        }
    }
    let norm = v
        .iter()
        .map(|x| f64::from(*x) * f64::from(*x))
        .sum::<f64>()
        .sqrt() as f32;
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
    v
}

/// The recipe's noise: standard deviation per element before normalising.
pub const DERIVED_SIGMA: f32 = 0.03;
/// The recipe's seed for points ...
pub const POINT_SEED: u64 = 1;
/// ... and for queries (derived from the queries file).
pub const QUERY_SEED: u64 = 2;

/// Rows `range` of a derived set ([`derived_row`]), made in parallel, in order.
pub fn derived_rows(
    base: &[Vec<f32>],
    range: std::ops::Range<u64>,
    seed: u64,
    sigma: f32,
) -> Vec<Vec<f32>> {
    use rayon::prelude::*;
    range
        .into_par_iter()
        .map(|i| derived_row(base, i, seed, sigma))
        .collect()
}

/// Writes rows as `.fvecs`.
pub fn write_fvecs_row(out: &mut impl std::io::Write, row: &[f32]) -> std::io::Result<()> {
    out.write_all(&(row.len() as i32).to_le_bytes())?;
    for x in row {
        out.write_all(&x.to_le_bytes())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_top_k_is_the_sorted_best_k() {
        let base = vec![
            vec![1.0, 0.0],
            vec![0.0, 1.0],
            vec![0.6, 0.8],
            vec![0.8, 0.6],
        ];
        let top = exact_top_k(&base, &[vec![1.0, 0.0], vec![0.0, 1.0]], 2);
        assert_eq!(top, vec![vec![0, 3], vec![1, 2]]);
        assert_eq!(
            exact_top_k(&base, &[vec![1.0, 0.0]], 9)[0],
            vec![0, 3, 2, 1]
        );
    }

    #[test]
    fn derived_rows_are_reproducible_unit_and_near_their_source() {
        let base = vec![vec![1.0, 0.0, 0.0, 0.0], vec![0.0, 1.0, 0.0, 0.0]];
        let a = derived_row(&base, 7, 42, 0.03);
        assert_eq!(a, derived_row(&base, 7, 42, 0.03));
        assert_ne!(a, derived_row(&base, 7, 43, 0.03));
        assert_ne!(a, derived_row(&base, 9, 42, 0.03));
        let norm: f32 = a.iter().map(|x| x * x).sum();
        assert!((norm - 1.0).abs() < 1e-5);
        // Row 7 derives from base[1], with noise of 0.03 per element.
        assert!(a[1] > 0.9, "{a:?}");
        // Pure noise: standard normal elements, normalised, have mean ~0 and variance ~1/n; the
        // fourth moment tells a normal (3) from a uniform (1.8).
        let big = vec![vec![0.0f32; 4096]];
        let g: Vec<f64> = derived_row(&big, 0, 1, 1.0)
            .iter()
            .map(|&x| f64::from(x) * 64.0)
            .collect();
        let n = g.len() as f64;
        let mean = g.iter().sum::<f64>() / n;
        let var = g.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
        let kurtosis = g.iter().map(|x| (x - mean).powi(4)).sum::<f64>() / n / (var * var);
        assert!(mean.abs() < 0.1, "{mean}");
        assert!((var - 1.0).abs() < 0.1, "{var}");
        assert!((kurtosis - 3.0).abs() < 0.3, "{kurtosis}");
    }
}
