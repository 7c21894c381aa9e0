//! The few FAISS calls the `faiss` crate does not wrap (or wraps wrongly), over `faiss-sys`.
//! Each returns FAISS's own error text, so failures stay explainable.

use std::{ffi::CStr, os::raw::c_int};

use faiss::index::IndexImpl;
use faiss_sys::{FaissIndex, FaissVectorTransform};

use crate::faiss_layout::Vectors;

unsafe extern "C" {
    // From libgomp, which faiss-sys links for FAISS's OpenMP loops.
    fn omp_set_num_threads(threads: c_int);
}

/// Caps the OpenMP threads FAISS uses for this process.
pub fn set_faiss_threads(threads: usize) {
    let threads = c_int::try_from(threads.max(1)).unwrap_or(c_int::MAX);
    // SAFETY: plain setter on the OpenMP runtime; any positive value is valid.
    unsafe { omp_set_num_threads(threads) }
}

/// Keeps BLAS single-threaded. OpenBLAS's own thread pool spins while FAISS's OpenMP threads
/// work and the other way round; on two cores that spinning took most of the kNN time. The
/// parallelism comes from OpenMP and our own threads instead.
pub fn single_threaded_blas() {
    // Looked up at run time: the BLAS behind libblas.so.3 need not be OpenBLAS.
    // SAFETY: dlsym with a NUL-terminated name; a non-null result is OpenBLAS's setter, whose
    // C signature is `void openblas_set_num_threads(int)`.
    unsafe {
        let symbol = libc::dlsym(libc::RTLD_DEFAULT, c"openblas_set_num_threads".as_ptr());
        if !symbol.is_null() {
            let set: extern "C" fn(c_int) = std::mem::transmute(symbol);
            set(1);
        }
    }
}

fn last_error() -> String {
    // SAFETY: FAISS returns a thread-local C string or null.
    let message = unsafe { faiss_sys::faiss_get_last_error() };
    if message.is_null() {
        "unknown FAISS error".to_owned()
    } else {
        // SAFETY: non-null and NUL-terminated, valid until the next FAISS call on this thread.
        unsafe { CStr::from_ptr(message) }.to_string_lossy().trim().to_owned()
    }
}

fn check(code: c_int) -> Result<(), String> {
    if code == 0 { Ok(()) } else { Err(last_error()) }
}

/// The vectors a loaded index stores, with its ids.
pub struct IndexVectors {
    /// The ID map's ids, when the index has one.
    pub ids: Option<Vec<i64>>,
    /// Row-major vectors, `ntotal x d`.
    pub vectors: Vec<f32>,
    pub dimensions: usize,
}

/// Reads every vector of an index that holds them as `held` says (its file said so; the C API
/// has no cast for an HNSW index), unwrapping an `IndexIDMap`/`IndexIDMap2` if present. Returns
/// `None` when FAISS read a type other than the one expected.
pub fn read_index_vectors(index: &IndexImpl, held: Vectors) -> Result<Option<IndexVectors>, String> {
    let outer: *mut FaissIndex = index.inner_ptr();
    // SAFETY: `outer` is a live index owned by `index`; the casts return null or a view of it.
    unsafe {
        let (inner, ids) = if !faiss_sys::faiss_IndexIDMap_cast(outer).is_null() {
            let map = faiss_sys::faiss_IndexIDMap_cast(outer);
            let (mut ptr, mut len) = (std::ptr::null_mut(), 0usize);
            faiss_sys::faiss_IndexIDMap_id_map(map, &mut ptr, &mut len);
            (faiss_sys::faiss_IndexIDMap_sub_index(map), Some(copy_ids(ptr, len)))
        } else if !faiss_sys::faiss_IndexIDMap2_cast(outer).is_null() {
            let map = faiss_sys::faiss_IndexIDMap2_cast(outer);
            let (mut ptr, mut len) = (std::ptr::null_mut(), 0usize);
            faiss_sys::faiss_IndexIDMap2_id_map(map, &mut ptr, &mut len);
            (faiss_sys::faiss_IndexIDMap2_sub_index(map), Some(copy_ids(ptr, len)))
        } else {
            (outer, None)
        };
        // An HNSW index reconstructs a row from its flat storage, a scalar quantizer by decoding
        // its code; both in row order.
        let expected = match held {
            Vectors::Flat => !faiss_sys::faiss_IndexFlat_cast(inner).is_null(),
            Vectors::Float16 => !faiss_sys::faiss_IndexScalarQuantizer_cast(inner).is_null(),
            Vectors::HnswFlat => true,
        };
        if inner.is_null() || !expected {
            return Ok(None);
        }
        let dimensions = usize::try_from(faiss_sys::faiss_Index_d(inner)).unwrap_or(0);
        let total = usize::try_from(faiss_sys::faiss_Index_ntotal(inner)).unwrap_or(0);
        let len = total.checked_mul(dimensions).ok_or_else(|| format!("index claims {total} x {dimensions} values"))?;
        let mut vectors = vec![0f32; len];
        if total > 0 {
            check(faiss_sys::faiss_Index_reconstruct_n(inner, 0, total as i64, vectors.as_mut_ptr()))?;
        }
        Ok(Some(IndexVectors { ids, vectors, dimensions }))
    }
}

unsafe fn copy_ids(ptr: *mut i64, len: usize) -> Vec<i64> {
    if ptr.is_null() || len == 0 {
        Vec::new()
    } else {
        // SAFETY: FAISS hands out its id vector's buffer and length.
        unsafe { std::slice::from_raw_parts(ptr, len) }.to_vec()
    }
}

/// Rows the eigenvalue estimate of `pca_project` projects (a stride through the corpus).
const SPECTRUM_SAMPLE_ROWS: usize = 10_000;

/// Rows projected at a time, so the full-width projection is never held for the whole corpus.
const PROJECTION_CHUNK_ROWS: usize = 4_096;

/// Given the variance along each PCA axis, how many axes to keep.
pub type WidthChooser<'a> = &'a dyn Fn(&[f32]) -> usize;

/// FAISS's PCAMatrix trained on `vectors` (`n x d_in`), with its first `d_out` axes. `choose`,
/// if given, sees the variance along each of them (the covariance's largest eigenvalues, in
/// decreasing order, estimated on a stride of at most 10,000 rows) and returns how many to keep;
/// without it all `d_out` are kept. The rows are projected onto those and returned
/// (`n x width`) with the width.
pub fn pca_project(
    vectors: &[f32],
    d_in: usize,
    d_out: usize,
    choose: Option<WidthChooser>,
) -> Result<(Vec<f32>, usize), String> {
    let n = vectors.len() / d_in;
    let mut pca: *mut faiss_sys::FaissPCAMatrix = std::ptr::null_mut();
    // SAFETY: `pca` is created, used with correctly sized buffers, and freed on every path.
    unsafe {
        check(faiss_sys::faiss_PCAMatrix_new_with(&mut pca, d_in as c_int, d_out as c_int, 0.0, 0))?;
        let transform = pca as *mut FaissVectorTransform;
        let apply = |rows: &[f32], out: &mut [f32]| {
            faiss_sys::faiss_VectorTransform_apply_noalloc(
                transform,
                (rows.len() / d_in) as i64,
                rows.as_ptr(),
                out.as_mut_ptr(),
            )
        };
        let result = (|| {
            check(faiss_sys::faiss_VectorTransform_train(transform, n as i64, vectors.as_ptr()))?;
            let width = match choose {
                None => d_out,
                Some(choose) => {
                    let stride = n.div_ceil(SPECTRUM_SAMPLE_ROWS).max(1);
                    let sample: std::borrow::Cow<[f32]> = if stride == 1 {
                        vectors.into()
                    } else {
                        vectors.chunks_exact(d_in).step_by(stride).flatten().copied().collect::<Vec<_>>().into()
                    };
                    let mut projected = vec![0f32; sample.len() / d_in * d_out];
                    apply(&sample, &mut projected);
                    choose(&column_variances(&projected, d_out)).clamp(1, d_out)
                }
            };
            let mut reduced = Vec::with_capacity(n * width);
            let mut chunk_out = vec![0f32; PROJECTION_CHUNK_ROWS.min(n) * d_out];
            for rows in vectors.chunks(PROJECTION_CHUNK_ROWS * d_in) {
                let out = &mut chunk_out[..rows.len() / d_in * d_out];
                apply(rows, out);
                for row in out.chunks_exact(d_out) {
                    reduced.extend_from_slice(&row[..width]);
                }
            }
            Ok((reduced, width))
        })();
        faiss_sys::faiss_VectorTransform_free(transform);
        result
    }
}

/// Variance of each column of `rows` (`m x d`), about the column's mean.
fn column_variances(rows: &[f32], d: usize) -> Vec<f32> {
    let m = (rows.len() / d).max(1) as f64;
    let mut sums = vec![0f64; d];
    let mut squares = vec![0f64; d];
    for row in rows.chunks_exact(d) {
        for (j, &v) in row.iter().enumerate() {
            sums[j] += f64::from(v);
            squares[j] += f64::from(v) * f64::from(v);
        }
    }
    sums.iter().zip(&squares).map(|(s, q)| ((q / m) - (s / m).powi(2)).max(0.0) as f32).collect()
}
