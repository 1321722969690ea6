//! Scalar int8 quantisation (issue 10): what a graph stores per point, and how two compare.
//!
//! A quantised collection's graph and search copy hold, per point, a code of `dim + 8` bytes:
//! the scale `s` (f32, little endian), the squared norm of the decoded vector (f32), then one
//! `i8` per dimension, `round(x / s)` with `s = max |x| / 127`. A per-vector scale needs no
//! training, so a code depends on its vector alone and every node encodes the same bytes. Two
//! codes compare through an exact integer dot product, scaled once, so their distance is the same
//! on every CPU and nodes still build identical graphs. The full vectors stay on disk, and the
//! engine rescores the graph's candidates with them.

use hnsw_rs::prelude::Distance;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::kernels::{dot, dot_i8, l2_squared};
use super::{graph_distance, GraphDistance};
use crate::model::Metric;

/// Bytes before the codes: scale and squared norm.
pub const CODE_HEADER: usize = 8;

/// What a graph stores per point: `f32` (the vector itself) or `u8` (an int8 code).
pub trait Element:
    Clone + Copy + Send + Sync + Serialize + DeserializeOwned + std::fmt::Debug + 'static
{
    /// hnsw_rs' distance over this element.
    type Dist: Distance<Self> + Send + Sync + Copy;
    /// The graph's distance for `metric`.
    fn distance(metric: Metric) -> Self::Dist;
    /// How long the stored form of a `dim`-dimensional vector is.
    fn row_len(dim: usize) -> usize;
    /// The search copy's distance: smaller is closer, in the graph's order.
    fn search_distance(metric: Metric, q: &[Self], row: &[Self]) -> f32;
    /// Writes the int8 code of a row into `out`, `row_len + CODE_HEADER` bytes for a vector
    /// ([`encode_into`]; a code is its own, `out` as long as it).
    fn code_into(row: &[Self], out: &mut [u8]);
}

impl Element for f32 {
    type Dist = GraphDistance;
    fn distance(metric: Metric) -> GraphDistance {
        GraphDistance(metric)
    }
    fn row_len(dim: usize) -> usize {
        dim
    }
    #[inline]
    fn search_distance(metric: Metric, q: &[f32], row: &[f32]) -> f32 {
        match metric {
            Metric::Cosine | Metric::Dot => -dot(q, row),
            Metric::L2 => l2_squared(q, row),
        }
    }
    fn code_into(row: &[f32], out: &mut [u8]) {
        encode_into(row, out)
    }
}

impl Element for u8 {
    type Dist = CodeDistance;
    fn distance(metric: Metric) -> CodeDistance {
        CodeDistance(metric)
    }
    fn row_len(dim: usize) -> usize {
        dim + CODE_HEADER
    }
    #[inline]
    fn search_distance(metric: Metric, q: &[u8], row: &[u8]) -> f32 {
        CodeDistance(metric).eval(q, row)
    }
    fn code_into(row: &[u8], out: &mut [u8]) {
        out.copy_from_slice(row)
    }
}

/// The int8 code of `v` (see the module docs).
pub fn encode(v: &[f32]) -> Vec<u8> {
    let mut out = vec![0; v.len() + CODE_HEADER];
    encode_into(v, &mut out);
    out
}

/// [`encode`] into `out`, which is `v.len() + CODE_HEADER` bytes long: a search copy writes its
/// codes in place, without an allocation per point.
pub fn encode_into(v: &[f32], out: &mut [u8]) {
    let max = v.iter().fold(0f32, |m, x| m.max(x.abs()));
    let scale = if max > 0.0 && max.is_finite() {
        max / 127.0
    } else {
        0.0
    };
    let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
    let (header, codes) = out.split_at_mut(CODE_HEADER);
    for (c, x) in codes.iter_mut().zip(v) {
        *c = quantize(x * inv);
    }
    let squares = dot_i8(codes, codes);
    let norm2 = scale * scale * squares as f32;
    header[..4].copy_from_slice(&scale.to_le_bytes());
    header[4..].copy_from_slice(&norm2.to_le_bytes());
}

/// `y.round().clamp(-127.0, 127.0) as i8` (halves away from zero), bit for bit, for the finite
/// `y` that [`encode`] scales to at most about 127 in magnitude: without SSE4.1, `f32::round`
/// is a call to libm's `roundf` per element, which was a tenth of opening a quantised collection
/// (the codes are rebuilt from the full vectors at every open and join). Truncation and the
/// fraction are exact for |y| < 2^23, so the result is the same on every CPU, and so is the
/// graph built on the codes.
#[inline(always)]
fn quantize(y: f32) -> u8 {
    let t = y as i32;
    let frac = y - t as f32;
    let r = t + i32::from(frac >= 0.5) - i32::from(frac <= -0.5);
    r.clamp(-127, 127) as i8 as u8
}

/// The vector a code stands for (for tests and measurements).
pub fn decode(code: &[u8]) -> Vec<f32> {
    let (scale, _) = header(code);
    code[CODE_HEADER.min(code.len())..]
        .iter()
        .map(|c| *c as i8 as f32 * scale)
        .collect()
}

#[inline]
fn header(code: &[u8]) -> (f32, f32) {
    match code.get(..CODE_HEADER) {
        Some(h) => (
            f32::from_le_bytes([h[0], h[1], h[2], h[3]]),
            f32::from_le_bytes([h[4], h[5], h[6], h[7]]),
        ),
        None => (0.0, 0.0),
    }
}

/// The graph distance between two codes: [`GraphDistance`] of the decoded vectors, from an exact
/// integer dot product.
#[derive(Clone, Copy, Debug)]
pub struct CodeDistance(pub Metric);

impl Distance<u8> for CodeDistance {
    #[inline]
    fn eval(&self, a: &[u8], b: &[u8]) -> f32 {
        let ((sa, na), (sb, nb)) = (header(a), header(b));
        let ip = match (a.get(CODE_HEADER..), b.get(CODE_HEADER..)) {
            (Some(x), Some(y)) => dot_i8(x, y),
            _ => 0,
        };
        let d = (sa * sb) * ip as f32;
        graph_distance(self.0, || d, || (na + nb - 2.0 * d).max(0.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantize_rounds_exactly_as_round_then_clamp() {
        let old = |y: f32| y.round().clamp(-127.0, 127.0) as i8 as u8;
        // Every half and its neighbours, zeros, the clamp's edges, and a dense sweep.
        let mut ys = vec![
            0.0f32, -0.0, 127.0, -127.0, 127.00002, -127.00002, 300.0, -300.0,
        ];
        for h in -260..=260 {
            let y = h as f32 * 0.5;
            ys.extend([y, y.next_up(), y.next_down()]);
        }
        ys.extend((0..200_000).map(|i| (i as f32 * 0.618_034).sin() * 127.5));
        for y in ys {
            assert_eq!(quantize(y), old(y), "y = {y:e}");
        }
    }

    #[test]
    fn codes_round_trip_within_half_a_step() {
        let v: Vec<f32> = (0..384)
            .map(|i| ((i * 7) as f32 * 0.13).sin() * 0.2)
            .collect();
        let c = encode(&v);
        assert_eq!(c.len(), 384 + CODE_HEADER);
        let (scale, norm2) = header(&c);
        let back = decode(&c);
        for (x, y) in v.iter().zip(&back) {
            assert!((x - y).abs() <= scale * 0.5 + 1e-7, "{x} {y}");
        }
        let direct: f32 = back.iter().map(|x| x * x).sum();
        assert!((norm2 - direct).abs() < 1e-4 * direct.max(1.0));
        // The largest magnitude maps to ±127 exactly.
        assert!(c[CODE_HEADER..]
            .iter()
            .any(|b| *b as i8 == 127 || *b as i8 == -127));
        // A zero vector encodes to zeros and compares without NaN.
        let z = encode(&[0.0; 8]);
        assert!(z.iter().all(|b| *b == 0));
        for m in [Metric::Cosine, Metric::Dot, Metric::L2] {
            assert!(!CodeDistance(m).eval(&z, &z).is_nan());
            assert!(!CodeDistance(m).eval(&z, &[]).is_nan());
        }
    }

    #[test]
    fn code_distances_follow_the_full_distances() {
        let a: Vec<f32> = (0..64).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..64).map(|i| (i as f32 * 0.41 + 0.3).sin()).collect();
        for m in [Metric::Dot, Metric::L2, Metric::Cosine] {
            let (mut x, mut y) = (a.clone(), b.clone());
            if m == Metric::Cosine {
                super::super::normalize(&mut x);
                super::super::normalize(&mut y);
            }
            let full = GraphDistance(m).eval(&x, &y);
            let code = CodeDistance(m).eval(&encode(&x), &encode(&y));
            let decoded = GraphDistance(m).eval(&decode(&encode(&x)), &decode(&encode(&y)));
            assert!(
                (full - code).abs() < 0.02 * full.abs().max(1.0),
                "{m:?}: {full} {code}"
            );
            assert!((decoded - code).abs() < 1e-4 * full.abs().max(1.0), "{m:?}");
        }
    }
}
