//! Corpus files written on the fly for tests: `.npy` matrices with chosen contents.

use std::path::{Path, PathBuf};

use npyz::WriterBuilder;

/// Copies `source` to `destination` as tools replace files: written beside it, then renamed over
/// it, so a corpus watch never reads it half written.
pub fn copy_into_place(source: &Path, destination: &Path) {
    let part = destination.with_extension("part");
    std::fs::copy(source, &part).expect("copy the corpus");
    std::fs::rename(&part, destination).expect("rename the corpus into place");
}

/// Writes a float32 `.npy` of `rows x columns` from `values` (row-major).
pub fn write_matrix(path: &Path, rows: usize, columns: usize, values: &[f32]) -> PathBuf {
    assert_eq!(values.len(), rows * columns);
    write_npy(path, &[rows as u64, columns as u64], values)
}

/// Writes a float16 `.npy` of `rows x columns` from `values` (row-major), each rounded to the
/// nearest half-precision value.
pub fn write_matrix_f16(path: &Path, rows: usize, columns: usize, values: &[f32]) -> PathBuf {
    assert_eq!(values.len(), rows * columns);
    let halves: Vec<half::f16> = values.iter().map(|&v| half::f16::from_f32(v)).collect();
    write_npy(path, &[rows as u64, columns as u64], &halves)
}

/// Writes an int64 `.npy` id vector.
pub fn write_ids(path: &Path, ids: &[i64]) -> PathBuf {
    write_npy(path, &[ids.len() as u64], ids)
}

fn write_npy<T: npyz::AutoSerialize + Copy>(path: &Path, shape: &[u64], values: &[T]) -> PathBuf {
    let file = std::io::BufWriter::new(std::fs::File::create(path).expect("create npy"));
    let mut writer =
        npyz::WriteOptions::<T>::new().default_dtype().shape(shape).writer(file).begin_nd().expect("npy header");
    writer.extend(values.iter().copied()).expect("npy data");
    writer.finish().expect("npy finish");
    path.to_owned()
}

/// `clusters` well-separated Gaussian blobs of `per_cluster` points in `dims` dimensions, from a
/// fixed pseudo-random sequence (no RNG dependency; the same bytes on every run).
pub fn clustered(clusters: usize, per_cluster: usize, dims: usize) -> Vec<f32> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f32 / (1u64 << 53) as f32 - 0.5
    };
    let centers: Vec<f32> = (0..clusters * dims).map(|_| next() * 10.0).collect();
    let mut values = Vec::with_capacity(clusters * per_cluster * dims);
    for cluster in 0..clusters {
        for _ in 0..per_cluster {
            for d in 0..dims {
                values.push(centers[cluster * dims + d] + next());
            }
        }
    }
    values
}
