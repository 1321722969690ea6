//! Distance kernels. Written as sixteen independent accumulators so that the compiler vectorises
//! them; on x86_64 CPUs with AVX2 (detected at run time) the same lanes run as explicit 256-bit
//! instructions, and the int8 dot product runs with AVX-512 VNNI where the CPU has it.
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
/// order of every build: lane `j` sums `x[16c + j] * y[16c + j]` over the chunks `c`, then
/// [`reduce16`] folds the lanes and the remainder is added.
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
    reduce16(&acc) + dot_generic(ra, rb)
}

/// Folds sixteen lane sums in the one order every build uses.
#[inline(always)]
fn reduce16(acc: &[f32; 16]) -> f32 {
    let mut s = 0.0;
    for j in 0..8 {
        s += acc[j] + acc[j + 8];
    }
    s
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
    reduce16(&acc) + l2_generic(ra, rb)
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
    acc.iter().sum::<i32>() + dot_i8_tail(ra, rb)
}

#[inline(always)]
fn dot_i8_tail(a: &[u8], b: &[u8]) -> i32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| i32::from(*x as i8 as i16 * *y as i8 as i16))
        .sum()
}

/// The AVX2 builds, written with intrinsics. Left to the compiler (as `target_feature` builds of
/// the loops above), the sixteen lanes came out as pairs of floats in 128-bit registers
/// (`vmovsd` / `vmulps xmm`), and a 384-d distance took most of a search's time. Here two 256-bit
/// registers hold lanes 0-7 and 8-15, multiplied then added (never fused), so every lane sees
/// exactly the operations of [`dot_wide`] and [`l2_wide`] in the same order: the same bits on
/// every CPU, which the tests below check.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    /// Lane sums of `f(x, y)` over the 16-float chunks of `a` and `b` (of equal length `n`),
    /// and how many floats those chunks cover.
    #[inline(always)]
    fn lanes(a: &[f32], b: &[f32], f: impl Fn(__m256, __m256) -> __m256) -> ([f32; 16], usize) {
        let n = a.len().min(b.len());
        let chunks = n / 16;
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        // SAFETY: only reached from the `target_feature(enable = "avx2")` functions below, which
        // run where the CPU has AVX2 (`super::level`); every load reads floats 16c..16c + 16 with
        // 16c + 16 ≤ n, inside both slices; the stores write the 16 floats of `acc`.
        unsafe {
            let (mut lo, mut hi) = (_mm256_setzero_ps(), _mm256_setzero_ps());
            for c in 0..chunks {
                let (xa, ya) = (
                    _mm256_loadu_ps(pa.add(16 * c)),
                    _mm256_loadu_ps(pb.add(16 * c)),
                );
                let (xb, yb) = (
                    _mm256_loadu_ps(pa.add(16 * c + 8)),
                    _mm256_loadu_ps(pb.add(16 * c + 8)),
                );
                lo = _mm256_add_ps(lo, f(xa, ya));
                hi = _mm256_add_ps(hi, f(xb, yb));
            }
            let mut acc = [0f32; 16];
            _mm256_storeu_ps(acc.as_mut_ptr(), lo);
            _mm256_storeu_ps(acc.as_mut_ptr().add(8), hi);
            (acc, chunks * 16)
        }
    }

    #[target_feature(enable = "avx2")]
    pub fn dot(a: &[f32], b: &[f32]) -> f32 {
        let (acc, done) = lanes(a, b, |x, y| _mm256_mul_ps(x, y));
        let n = a.len().min(b.len());
        super::reduce16(&acc) + super::dot_generic(&a[done..n], &b[done..n])
    }

    #[target_feature(enable = "avx2")]
    pub fn l2(a: &[f32], b: &[f32]) -> f32 {
        let (acc, done) = lanes(a, b, |x, y| {
            let d = _mm256_sub_ps(x, y);
            _mm256_mul_ps(d, d)
        });
        let n = a.len().min(b.len());
        super::reduce16(&acc) + super::l2_generic(&a[done..n], &b[done..n])
    }

    /// 32 bytes at a time: each half sign-extended to sixteen i16, multiplied and summed in
    /// pairs into i32 (`vpmaddwd`). Exact, so any order gives the same sum.
    #[target_feature(enable = "avx2")]
    pub fn dot_i8(a: &[u8], b: &[u8]) -> i32 {
        let n = a.len().min(b.len());
        let chunks = n / 32;
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut lanes = [0i32; 8];
        // SAFETY: AVX2 is enabled for this function; every load reads bytes 32c..32c + 32 with
        // 32c + 32 ≤ n, inside both slices; the store writes the 8 i32 of `lanes`.
        unsafe {
            let mut acc = _mm256_setzero_si256();
            for c in 0..chunks {
                let x = _mm256_loadu_si256(pa.add(32 * c) as *const __m256i);
                let y = _mm256_loadu_si256(pb.add(32 * c) as *const __m256i);
                let (xl, yl) = (
                    _mm256_cvtepi8_epi16(_mm256_castsi256_si128(x)),
                    _mm256_cvtepi8_epi16(_mm256_castsi256_si128(y)),
                );
                let (xh, yh) = (
                    _mm256_cvtepi8_epi16(_mm256_extracti128_si256::<1>(x)),
                    _mm256_cvtepi8_epi16(_mm256_extracti128_si256::<1>(y)),
                );
                acc = _mm256_add_epi32(acc, _mm256_madd_epi16(xl, yl));
                acc = _mm256_add_epi32(acc, _mm256_madd_epi16(xh, yh));
            }
            _mm256_storeu_si256(lanes.as_mut_ptr() as *mut __m256i, acc);
        }
        let done = chunks * 32;
        lanes.iter().sum::<i32>() + super::dot_i8_tail(&a[done..n], &b[done..n])
    }
}

/// The int8 dot product with AVX-512 VNNI: `vpdpbusd` multiplies 64 unsigned bytes by 64 signed
/// ones and sums each four into an i32 lane. The codes are signed, so `a` is read as `a + 128`
/// (its top bit flipped) and `128 · Σb` taken off again, with a second `vpdpbusd` of ones by `b`
/// summing `b`. Integer arithmetic is exact, and wraps the same way whatever the order, so the
/// result is the same as every other build's (the true sum fits an i32; see [`super::dot_i8_wide`]).
#[cfg(target_arch = "x86_64")]
mod vnni {
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx512f,avx512vnni")]
    pub fn dot_i8(a: &[u8], b: &[u8]) -> i32 {
        let n = a.len().min(b.len());
        let chunks = n / 64;
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        // SAFETY: AVX-512 F and VNNI are enabled for this function; every load reads bytes
        // 64c..64c + 64 with 64c + 64 ≤ n, inside both slices.
        let (shifted, sum_b) = unsafe {
            let flip = _mm512_set1_epi8(i8::MIN);
            let ones = _mm512_set1_epi8(1);
            let (mut prod, mut sum) = (_mm512_setzero_si512(), _mm512_setzero_si512());
            for c in 0..chunks {
                let x = _mm512_loadu_si512(pa.add(64 * c) as *const __m512i);
                let y = _mm512_loadu_si512(pb.add(64 * c) as *const __m512i);
                prod = _mm512_dpbusd_epi32(prod, _mm512_xor_si512(x, flip), y);
                sum = _mm512_dpbusd_epi32(sum, ones, y);
            }
            (_mm512_reduce_add_epi32(prod), _mm512_reduce_add_epi32(sum))
        };
        let done = chunks * 64;
        shifted
            .wrapping_sub(sum_b.wrapping_mul(128))
            .wrapping_add(super::dot_i8_tail(&a[done..n], &b[done..n]))
    }
}

/// Whether this CPU runs the AVX-512 VNNI int8 kernel (std caches what it detects).
#[cfg(target_arch = "x86_64")]
#[inline]
fn has_vnni() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512vnni")
}

/// Whether this CPU runs the AVX2 kernels (std caches what it detects).
#[cfg(target_arch = "x86_64")]
#[inline]
fn has_avx2() -> bool {
    std::arch::is_x86_feature_detected!("avx2")
}

/// Asks the CPU to start loading `bytes` bytes from `at` into its caches (a hint: nothing is
/// read, and no address faults), a cache line at a time.
#[inline(always)]
pub fn prefetch(at: *const u8, bytes: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let mut off = 0;
        while off < bytes {
            // SAFETY: prefetch is only a hint; it reads nothing and never faults.
            #[allow(unused_unsafe)]
            unsafe {
                _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(off) as *const i8)
            };
            off += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (at, bytes);
}

/// Dot product of the common prefix of `a` and `b`.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU has AVX2 (`has_avx2`).
        return unsafe { avx2::dot(a, b) };
    }
    dot_wide(a, b)
}

/// Squared Euclidean distance of the common prefix of `a` and `b`.
#[inline]
pub fn l2_squared(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU has AVX2 (`has_avx2`).
        return unsafe { avx2::l2(a, b) };
    }
    l2_wide(a, b)
}

/// Dot product of the common prefix of two int8 code arrays (bytes read as `i8`).
#[inline]
pub fn dot_i8(a: &[u8], b: &[u8]) -> i32 {
    #[cfg(target_arch = "x86_64")]
    if has_vnni() {
        // SAFETY: the CPU has AVX-512 F and VNNI (`has_vnni`).
        return unsafe { vnni::dot_i8(a, b) };
    }
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU has AVX2 (`has_avx2`).
        return unsafe { avx2::dot_i8(a, b) };
    }
    dot_i8_wide(a, b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_build_gives_bit_identical_distances() {
        for n in [1usize, 7, 8, 15, 16, 17, 31, 33, 100, 384, 1_000] {
            let a: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin() * 3.1).collect();
            let b: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos() / 7.0).collect();
            let (d, l) = (dot_wide(&a, &b), l2_wide(&a, &b));
            assert_eq!(dot(&a, &b).to_bits(), d.to_bits(), "dot, n = {n}");
            assert_eq!(l2_squared(&a, &b).to_bits(), l.to_bits(), "l2, n = {n}");
            // The portable lanes, written out one by one: the order every build must keep.
            let mut acc = [0f32; 16];
            let whole = n / 16 * 16;
            for (i, (x, y)) in a[..whole].iter().zip(&b[..whole]).enumerate() {
                acc[i % 16] += x * y;
            }
            let want = reduce16(&acc) + dot_generic(&a[whole..], &b[whole..]);
            assert_eq!(d.to_bits(), want.to_bits(), "portable dot, n = {n}");
        }
    }

    type Int8Dot = fn(&[u8], &[u8]) -> i32;

    /// Every int8 kernel this CPU can run, with its name.
    fn int8_kernels() -> Vec<(&'static str, Int8Dot)> {
        let mut all: Vec<(&'static str, Int8Dot)> =
            vec![("dispatch", dot_i8), ("portable", dot_i8_wide)];
        #[cfg(target_arch = "x86_64")]
        {
            if has_avx2() {
                // SAFETY: the CPU has AVX2.
                all.push(("avx2", |a, b| unsafe { avx2::dot_i8(a, b) }));
            }
            if has_vnni() {
                // SAFETY: the CPU has AVX-512 F and VNNI.
                all.push(("vnni", |a, b| unsafe { vnni::dot_i8(a, b) }));
            }
        }
        all
    }

    #[test]
    fn int8_dot_is_exact() {
        let kernels = int8_kernels();
        for n in [0usize, 1, 31, 32, 33, 63, 64, 65, 127, 128, 129, 384, 1_000] {
            let a: Vec<u8> = (0..n).map(|i| ((i * 37) % 255) as u8).collect();
            let b: Vec<u8> = (0..n).map(|i| ((i * 11 + 3) % 256) as u8).collect();
            let want: i32 = a
                .iter()
                .zip(&b)
                .map(|(x, y)| *x as i8 as i32 * *y as i8 as i32)
                .sum();
            for (name, dot) in &kernels {
                assert_eq!(dot(&a, &b), want, "{name}, n = {n}");
            }
        }
        // The extremes at the largest dimension: every product (-128) · (-128), 127 · 127, or
        // (-128) · 127, and mixed signs whose partial sums pass an i32 before the correction.
        let min = vec![0x80u8; 65_536];
        let max = vec![0x7fu8; 65_536];
        for (name, dot) in &kernels {
            assert_eq!(dot(&min, &min), 1 << 30, "{name}");
            assert_eq!(dot(&max, &max), 127 * 127 * 65_536, "{name}");
            assert_eq!(dot(&min, &max), -128 * 127 * 65_536, "{name}");
            assert_eq!(dot(&max, &min), -128 * 127 * 65_536, "{name}");
        }
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
