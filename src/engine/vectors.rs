//! The full vectors of a quantised collection, on disk (issue 10).
//!
//! A quantised collection keeps only int8 codes in memory; searches rescore the graph's
//! candidates, and reads return vectors, from this file: row `iid` holds the `dim` floats of
//! internal id `iid` (little endian) at offset `iid · dim · 4`. It is a cache of the store, not
//! a second source of truth: it is rewritten from sled whenever the collection is opened, so it
//! needs no fsync and survives no crash on its own. Reads and writes are positional (`pread`,
//! `pwrite`), so searches read rows concurrently with apply writing new ones, and the rows live
//! in the kernel's page cache rather than in the process.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use parking_lot::Mutex;
use std::collections::HashMap;

use crate::model::{CollectionConfig, Quantization};

/// One collection's vector file.
pub struct VectorFile {
    /// `None` when it could not be created: every row is then kept in `spilled`.
    file: Option<File>,
    path: PathBuf,
    dim: usize,
    /// Rows whose write failed (a full disk): kept here so that no read ever misses one.
    spilled: Mutex<HashMap<u64, Vec<f32>>>,
}

impl VectorFile {
    /// The vector file of collection `id` under `dir`, for a quantised collection.
    pub fn of(id: u64, config: &CollectionConfig, dir: &Path) -> Option<VectorFile> {
        (config.quantization != Quantization::None)
            .then(|| VectorFile::create(&dir.join(format!("{id}.f32")), config.dim))
    }

    /// Creates (or empties) the file at `path` for vectors of `dim` floats. A file that cannot
    /// be created is logged, and the vectors are kept in memory instead.
    pub fn create(path: &Path, dim: usize) -> VectorFile {
        let open = || {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(path)
        };
        let file = open()
            .inspect_err(|e| tracing::error!(file = %path.display(), error = %e, "cannot create the vector file; keeping vectors in memory"))
            .ok();
        VectorFile {
            file,
            path: path.to_path_buf(),
            dim,
            spilled: Mutex::new(HashMap::new()),
        }
    }

    fn offset(&self, iid: u64) -> u64 {
        iid * self.dim as u64 * 4
    }

    /// Writes the vector of `iid`. A failed write keeps the vector in memory instead (and says
    /// so in the log): the point stays readable and its scores exact.
    pub fn put(&self, iid: u64, v: &[f32]) {
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        let Some(file) = &self.file else {
            self.spilled.lock().insert(iid, v.to_vec());
            return;
        };
        if let Err(e) = file.write_all_at(&bytes, self.offset(iid)) {
            tracing::error!(file = %self.path.display(), error = %e, "cannot write a vector to disk; keeping it in memory");
            self.spilled.lock().insert(iid, v.to_vec());
        }
    }

    /// Reads the vector of `iid` into `out` (cleared first); false when it cannot be read.
    pub fn get_into(&self, iid: u64, bytes: &mut Vec<u8>, out: &mut Vec<f32>) -> bool {
        out.clear();
        bytes.resize(self.dim * 4, 0);
        let read = match &self.file {
            Some(f) => f.read_exact_at(bytes, self.offset(iid)),
            None => Err(std::io::ErrorKind::NotFound.into()),
        };
        match read {
            Ok(()) => {
                out.extend(
                    bytes
                        .chunks_exact(4)
                        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
                );
                true
            }
            Err(e) => match self.spilled.lock().get(&iid) {
                Some(v) => {
                    out.extend_from_slice(v);
                    true
                }
                None => {
                    tracing::error!(file = %self.path.display(), iid, error = %e, "cannot read a vector from disk");
                    false
                }
            },
        }
    }

    /// The vector of `iid`, if it can be read.
    pub fn get(&self, iid: u64) -> Option<Vec<f32>> {
        let (mut bytes, mut out) = (Vec::new(), Vec::new());
        self.get_into(iid, &mut bytes, &mut out).then_some(out)
    }

    /// Removes the file (the collection was dropped).
    pub fn remove(&self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_round_trip_at_their_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let f = VectorFile::create(&dir.path().join("v/1.f32"), 3);
        f.put(5, &[1.0, -2.5, 3.25]);
        f.put(0, &[0.5, 0.0, -0.0]);
        assert_eq!(f.get(5).unwrap(), vec![1.0, -2.5, 3.25]);
        assert_eq!(f.get(0).unwrap(), vec![0.5, 0.0, -0.0]);
        // A hole reads as zeros; past the end is an error.
        assert_eq!(f.get(2).unwrap(), vec![0.0; 3]);
        assert!(f.get(6).is_none());
        // Created again: empty.
        let f = VectorFile::create(&dir.path().join("v/1.f32"), 3);
        assert!(f.get(0).is_none());
        f.spilled.lock().insert(9, vec![7.0; 3]);
        assert_eq!(f.get(9).unwrap(), vec![7.0; 3]);
        // A file that cannot be created keeps every row in memory.
        let blocked = dir.path().join("file");
        std::fs::write(&blocked, b"").unwrap();
        let f = VectorFile::create(&blocked.join("1.f32"), 2);
        assert!(f.file.is_none());
        f.put(3, &[1.0, 2.0]);
        assert_eq!(f.get(3).unwrap(), vec![1.0, 2.0]);
    }
}
