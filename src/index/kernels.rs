//! Distance kernels. Written as sixteen independent accumulators so that the compiler vectorises
//! them; on x86_64 CPUs with AVX2 and FMA, or AVX-512 (detected at run time), the same loop is
//! compiled for those features, which roughly halves the cost of a 384-d distance.
//!
//! Every build runs the same operations in the same order (Rust never contracts `a += x * y` into
//! a fused multiply-add, and lanes are independent), so a distance is bit-for-bit the same on
//! every CPU: nodes on different hardware build the same graph from the same log (review M6).

#[inline(always)]
fn dot_generic(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for j in 0..8 {
            acc[j] += x[j] * y[j];
        }
    }
    let mut s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

#[inline(always)]
fn l2_generic(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for j in 0..8 {
            let d = x[j] - y[j];
            acc[j] += d * d;
        }
    }
    let mut s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (x, y) in ra.iter().zip(rb) {
        let d = x - y;
        s += d * d;
    }
    s
}

/// Sixteen accumulators: one 512-bit register's worth, or two 256-bit ones. The one summation
/// order of every build.
#[inline(always)]
fn dot_wide(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for j in 0..16 {
            acc[j] += x[j] * y[j];
        }
    }
    let mut s = 0.0;
    for j in 0..8 {
        s += acc[j] + acc[j + 8];
    }
    s + dot_generic(ra, rb)
}

#[inline(always)]
fn l2_wide(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for j in 0..16 {
            let d = x[j] - y[j];
            acc[j] += d * d;
        }
    }
    let mut s = 0.0;
    for j in 0..8 {
        s += acc[j] + acc[j + 8];
    }
    s + l2_generic(ra, rb)
}

/// Dot product of two int8 code arrays (stored as bytes), exact in i32 for any length up to
/// 2^17 (127² · 2^17 < 2^31): integer sums are the same in every order and on every CPU.
#[inline(always)]
fn dot_i8_wide(a: &[u8], b: &[u8]) -> i32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0i32; 32];
    let (ca, cb) = (a.chunks_exact(32), b.chunks_exact(32));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for j in 0..32 {
            acc[j] += i32::from(x[j] as i8 as i16 * y[j] as i8 as i16);
        }
    }
    let mut s: i32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        s += i32::from(*x as i8 as i16 * *y as i8 as i16);
    }
    s
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub fn dot(a: &[f32], b: &[f32]) -> f32 {
        super::dot_wide(a, b)
    }
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub fn l2(a: &[f32], b: &[f32]) -> f32 {
        super::l2_wide(a, b)
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    #[target_feature(enable = "avx2,fma")]
    pub fn dot(a: &[f32], b: &[f32]) -> f32 {
        super::dot_wide(a, b)
    }
    #[target_feature(enable = "avx2,fma")]
    pub fn l2(a: &[f32], b: &[f32]) -> f32 {
        super::l2_wide(a, b)
    }
    #[target_feature(enable = "avx2")]
    pub fn dot_i8(a: &[u8], b: &[u8]) -> i32 {
        super::dot_i8_wide(a, b)
    }
}

/// Which kernel build this CPU runs: 0 portable, 1 AVX2+FMA, 2 AVX-512F.
#[cfg(target_arch = "x86_64")]
#[inline]
fn level() -> u8 {
    use std::sync::atomic::{AtomicU8, Ordering};
    static LEVEL: AtomicU8 = AtomicU8::new(u8::MAX);
    let l = LEVEL.load(Ordering::Relaxed);
    if l != u8::MAX {
        return l;
    }
    let avx2 =
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma");
    let l = if avx2 && std::arch::is_x86_feature_detected!("avx512f") {
        2
    } else {
        u8::from(avx2)
    };
    LEVEL.store(l, Ordering::Relaxed);
    l
}

/// Dot product of the common prefix of `a` and `b`.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    match level() {
        // SAFETY: the CPU supports the features each function was compiled for (`level`).
        2 => return unsafe { avx512::dot(a, b) },
        1 => return unsafe { avx2::dot(a, b) },
        _ => {}
    }
    dot_wide(a, b)
}

/// Squared Euclidean distance of the common prefix of `a` and `b`.
#[inline]
pub fn l2_squared(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    match level() {
        // SAFETY: the CPU supports the features each function was compiled for (`level`).
        2 => return unsafe { avx512::l2(a, b) },
        1 => return unsafe { avx2::l2(a, b) },
        _ => {}
    }
    l2_wide(a, b)
}

/// Dot product of the common prefix of two int8 code arrays (bytes read as `i8`).
#[inline]
pub fn dot_i8(a: &[u8], b: &[u8]) -> i32 {
    #[cfg(target_arch = "x86_64")]
    if level() >= 1 {
        // SAFETY: the CPU supports AVX2 (`level`).
        return unsafe { avx2::dot_i8(a, b) };
    }
    dot_i8_wide(a, b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_build_gives_bit_identical_distances() {
        for n in [1usize, 7, 8, 15, 16, 17, 31, 100, 384, 1_000] {
            let a: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin() * 3.1).collect();
            let b: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos() / 7.0).collect();
            let (d, l) = (dot_wide(&a, &b), l2_wide(&a, &b));
            assert_eq!(dot(&a, &b).to_bits(), d.to_bits(), "dot, n = {n}");
            assert_eq!(l2_squared(&a, &b).to_bits(), l.to_bits(), "l2, n = {n}");
            #[cfg(target_arch = "x86_64")]
            {
                if level() >= 1 {
                    // SAFETY: level() says this CPU has AVX2 and FMA.
                    let (d2, l2) = unsafe { (avx2::dot(&a, &b), avx2::l2(&a, &b)) };
                    assert_eq!((d2.to_bits(), l2.to_bits()), (d.to_bits(), l.to_bits()));
                }
                if level() >= 2 {
                    // SAFETY: level() says this CPU has AVX-512F.
                    let (d5, l5) = unsafe { (avx512::dot(&a, &b), avx512::l2(&a, &b)) };
                    assert_eq!((d5.to_bits(), l5.to_bits()), (d.to_bits(), l.to_bits()));
                }
            }
        }
    }

    #[test]
    fn int8_dot_is_exact() {
        for n in [0usize, 1, 31, 32, 33, 384, 1_000] {
            let a: Vec<u8> = (0..n).map(|i| ((i * 37) % 255) as u8).collect();
            let b: Vec<u8> = (0..n).map(|i| ((i * 11 + 3) % 256) as u8).collect();
            let want: i32 = a
                .iter()
                .zip(&b)
                .map(|(x, y)| *x as i8 as i32 * *y as i8 as i32)
                .sum();
            assert_eq!(dot_i8(&a, &b), want, "n = {n}");
            assert_eq!(dot_i8_wide(&a, &b), want, "n = {n}");
        }
        // The extreme: every product is 127 · 127 or (-128) · (-128) at the largest dimension.
        let a = vec![0x80u8; 65_536];
        assert_eq!(dot_i8(&a, &a), 1 << 30);
    }

    #[test]
    fn kernels_match_naive_for_every_length() {
        for n in 0..70 {
            let a: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
            let d: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            let l: f32 = a.iter().zip(&b).map(|(x, y)| (x - y) * (x - y)).sum();
            assert!((dot(&a, &b) - d).abs() < 1e-4);
            assert!((l2_squared(&a, &b) - l).abs() < 1e-4);
            assert!((dot_generic(&a, &b) - d).abs() < 1e-4);
            assert!((dot_wide(&a, &b) - d).abs() < 1e-4);
            assert!((l2_wide(&a, &b) - l).abs() < 1e-4);
        }
    }
}
