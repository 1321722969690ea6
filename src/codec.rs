//! bincode, written once: the Raft log, the store's records and Raft RPC bodies all use
//! bincode 1.3's default format (fixint; trailing bytes allowed), and every decode has a size
//! limit, since both stored and network input must not allocate without bound.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Largest value a decode may allocate.
const DECODE_LIMIT: u64 = 1 << 30;

/// Encodes `v`. quiver's own types always encode (no maps with non-string keys, no unsized
/// sequences), so a failure is a bug: it fails loudly instead of writing an empty value to disk
/// or onto the wire (architecture review §4).
pub fn encode<T: Serialize + ?Sized>(v: &T) -> Vec<u8> {
    bincode::serialize(v).expect("quiver's stored and sent types always encode with bincode")
}

/// Decodes what [`encode`] wrote, allocating at most 1 GiB.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, bincode::Error> {
    use bincode::Options;
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .allow_trailing_bytes()
        .with_limit(DECODE_LIMIT)
        .deserialize(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_reads_what_the_default_format_wrote() {
        let v = (7u64, "id".to_string(), vec![1.5f32, -2.0]);
        assert_eq!(encode(&v), bincode::serialize(&v).unwrap());
        assert_eq!(decode::<(u64, String, Vec<f32>)>(&encode(&v)).unwrap(), v);
        // A length prefix claiming more than the limit is refused, not allocated.
        let mut huge = encode(&(u64::MAX / 2));
        huge.extend_from_slice(&[0; 8]);
        assert!(decode::<Vec<u8>>(&huge).is_err());
    }
}
