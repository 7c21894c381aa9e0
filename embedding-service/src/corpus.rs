//! Loading the corpus to map: a FAISS index, a `.npy` matrix (with optional ids), or the bundled
//! demo. Every way in ends in the same checks, so a bad corpus fails the same way whatever its
//! format: with a message naming the file and what to fix.

use std::{
    collections::HashMap,
    fs::File,
    io::{BufReader, Read},
    path::{Path, PathBuf},
};

use ndarray::Array2;
use npyz::{DType, NpyFile, Order};
use sha2::{Digest, Sha256};

use crate::{
    error::MapError,
    faiss_ext,
    faiss_layout::{self, Layout},
    files::{FileSignature, OpenError, RegularFile},
};

/// The bundled demo corpus: scikit-learn's digits, 1797 x 64 float32 (labels 0-9 beside it).
const DEMO_VECTORS: &[u8] = include_bytes!("../data/digits_X.npy");

/// Where the corpus comes from.
#[derive(Debug, Clone)]
pub enum CorpusSource {
    Demo,
    FaissIndex(PathBuf),
    Npy { vectors: PathBuf, ids: Option<PathBuf> },
}

impl CorpusSource {
    /// Picks the loader from the file name: `.npy` is a matrix, anything else a FAISS index.
    pub fn from_paths(corpus: Option<PathBuf>, ids: Option<PathBuf>) -> Self {
        match corpus {
            None => CorpusSource::Demo,
            Some(path) if path.extension().is_some_and(|ext| ext.eq_ignore_ascii_case("npy")) => {
                CorpusSource::Npy { vectors: path, ids }
            }
            Some(path) => CorpusSource::FaissIndex(path),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            CorpusSource::Demo => "bundled demo corpus (digits, 1797 x 64)".to_owned(),
            CorpusSource::FaissIndex(path) => format!("FAISS index {}", path.display()),
            CorpusSource::Npy { vectors, .. } => format!("npy matrix {}", vectors.display()),
        }
    }

    /// The files the corpus is read from (none for the demo).
    pub fn files(&self) -> Vec<PathBuf> {
        match self {
            CorpusSource::Demo => Vec::new(),
            CorpusSource::FaissIndex(path) => vec![path.clone()],
            CorpusSource::Npy { vectors, ids } => std::iter::once(vectors.clone()).chain(ids.clone()).collect(),
        }
    }

    /// The corpus as it is now, read from scratch.
    pub fn load(&self) -> Result<Corpus, MapError> {
        self.load_after(None).map(|(corpus, _)| corpus)
    }

    /// The corpus as it is now, and the version of its files that was read. `previous` is the
    /// version last read whole: a vectors file and its ids file are one version only
    /// when both changed since, so a pair replaced one file at a time is refused until the second
    /// file arrives, never read half old and half new (ids on the wrong rows).
    pub fn load_after(&self, previous: Option<&CorpusVersion>) -> Result<(Corpus, CorpusVersion), MapError> {
        let (vectors, ids, version) = match self {
            CorpusSource::Demo => {
                let bytes = DEMO_VECTORS;
                (read_npy_matrix(bytes, Path::new("<demo>"), bytes.len() as u64)?, None, CorpusVersion(Vec::new()))
            }
            CorpusSource::FaissIndex(path) => {
                let file = open(path)?;
                let version = CorpusVersion(vec![file.signature]);
                let (vectors, ids) = load_faiss_index(path, file)?;
                (vectors, ids, version)
            }
            CorpusSource::Npy { vectors: vectors_path, ids: ids_path } => {
                let vectors_file = open(vectors_path)?;
                let ids_file = ids_path.as_ref().map(|path| Ok::<_, MapError>((path, open(path)?))).transpose()?;
                let version = CorpusVersion(
                    std::iter::once(vectors_file.signature)
                        .chain(ids_file.iter().map(|(_, file)| file.signature))
                        .collect(),
                );
                if let (Some(previous), Some((ids_path, _))) = (previous, &ids_file) {
                    let changed: Vec<bool> = version.0.iter().zip(&previous.0).map(|(now, then)| now != then).collect();
                    if let [vectors_changed, ids_changed] = changed[..]
                        && vectors_changed != ids_changed
                    {
                        let (changed, unchanged) =
                            if vectors_changed { (vectors_path, *ids_path) } else { (*ids_path, vectors_path) };
                        return Err(MapError::HalfChangedPair {
                            changed: changed.clone(),
                            unchanged: unchanged.clone(),
                        });
                    }
                }
                let matrix =
                    read_whole(vectors_path, vectors_file, |reader, path, len| read_npy_matrix(reader, path, len))?;
                let ids = ids_file
                    .map(|(path, file)| {
                        read_whole(path, file, |reader, path, len| read_npy_ids(reader, path, len, matrix.nrows()))
                    })
                    .transpose()?;
                (matrix, ids, version)
            }
        };
        Ok((Corpus::new(vectors, ids)?, version))
    }
}

/// Which version of each corpus file a corpus was read from (none for the demo).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorpusVersion(Vec<FileSignature>);

/// Validated vectors with one unique id per row.
#[derive(Debug, Clone)]
pub struct Corpus {
    pub ids: Vec<i64>,
    /// `n x d`, finite values only.
    pub vectors: Array2<f32>,
}

impl Corpus {
    pub fn new(vectors: Array2<f32>, ids: Option<Vec<i64>>) -> Result<Self, MapError> {
        if vectors.nrows() == 0 || vectors.ncols() == 0 {
            return Err(MapError::EmptyCorpus);
        }
        if let Some(((row, column), _)) = vectors.indexed_iter().find(|(_, v)| !v.is_finite()) {
            return Err(MapError::NonFinite { row, column });
        }
        let ids = ids.unwrap_or_else(|| (0..vectors.nrows() as i64).collect());
        let mut seen = HashMap::with_capacity(ids.len());
        for (row, &id) in ids.iter().enumerate() {
            if let Some(first) = seen.insert(id, row) {
                return Err(MapError::DuplicateId { id, first, second: row });
            }
        }
        Ok(Corpus { ids, vectors })
    }

    pub fn len(&self) -> usize {
        self.vectors.nrows()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn dimensions(&self) -> usize {
        self.vectors.ncols()
    }

    /// SHA-256 over the shape, the ids and the vectors' bytes: equal corpora, equal fingerprints.
    pub fn fingerprint(&self) -> String {
        let mut hasher = Sha256::new();
        hasher.update((self.len() as u64).to_le_bytes());
        hasher.update((self.dimensions() as u64).to_le_bytes());
        for id in &self.ids {
            hasher.update(id.to_le_bytes());
        }
        // Fed in 64 KiB blocks: one hasher call per value costs more than the hashing itself at
        // hundreds of millions of values.
        let mut block = Vec::with_capacity(1 << 16);
        for value in &self.vectors {
            block.extend_from_slice(&value.to_le_bytes());
            if block.len() >= 1 << 16 {
                hasher.update(&block);
                block.clear();
            }
        }
        hasher.update(&block);
        format!("{:x}", hasher.finalize())
    }
}

/// Opens a corpus file: a regular file only, so a FIFO or a device fails here instead of blocking
/// or flooding the map thread.
fn open(path: &Path) -> Result<RegularFile, MapError> {
    RegularFile::open(path).map_err(|error| match error {
        OpenError::Missing => MapError::CorpusMissing { path: path.to_owned() },
        other => MapError::CorpusUnreadable { path: path.to_owned(), reason: other.to_string() },
    })
}

/// Reads `file` with `read` (given the file's length), then checks that it was not rewritten in
/// place meanwhile.
fn read_whole<T>(
    path: &Path,
    file: RegularFile,
    read: impl FnOnce(BufReader<&File>, &Path, u64) -> Result<T, MapError>,
) -> Result<T, MapError> {
    let value = read(BufReader::new(&file.file), path, file.signature.len);
    // A file rewritten while it was read fails to parse as often as not: that is said first,
    // rather than calling it corrupt.
    unchanged_since_opened(path, &file)?;
    value
}

/// Fails, as unreadable, if `file` (at `path`) was rewritten in place since it was opened.
fn unchanged_since_opened(path: &Path, file: &RegularFile) -> Result<(), MapError> {
    file.unchanged_since_opened()
        .map_err(|error| MapError::CorpusUnreadable { path: path.to_owned(), reason: error.to_string() })
}

fn corrupt(path: &Path, format: &'static str, reason: impl ToString) -> MapError {
    MapError::CorpusCorrupt { path: path.to_owned(), format, reason: reason.to_string() }
}

fn type_str(npy: &NpyFile<impl Read>) -> String {
    match npy.dtype() {
        DType::Plain(ts) => ts.to_string(),
        other => format!("{other:?}"),
    }
}

/// Longest `.npy` header accepted; numpy writes a few hundred bytes for a plain array.
const NPY_HEADER_MAX: usize = 16 * 1024;

/// Reads and checks a `.npy` header before npyz parses it, returning a reader that replays it.
/// npyz parses the header's Python literal with backtracking that takes time exponential in the
/// nesting depth: a 200-byte file with 20 `[` took 8 s, 30 would take hours, and the map would sit
/// in COMPUTING all that time (found by fuzzing). A plain array's header is one flat dict with
/// one shape tuple, so anything nested deeper is refused here.
/// Also returns the header's length in bytes, where the data begins.
fn checked_npy_header(mut reader: impl Read, path: &Path, format: &'static str) -> Result<(impl Read, u64), MapError> {
    let no_header = |e: std::io::Error| corrupt(path, format, format!("no .npy header: {e}"));
    let mut prefix = vec![0u8; 10];
    reader.read_exact(&mut prefix).map_err(no_header)?;
    if &prefix[..6] != b"\x93NUMPY" {
        return Err(corrupt(path, format, "the file does not start with the .npy magic bytes"));
    }
    let header_len = match prefix[6] {
        1 => usize::from(u16::from_le_bytes([prefix[8], prefix[9]])),
        2 | 3 => {
            let mut rest = [0u8; 2];
            reader.read_exact(&mut rest).map_err(no_header)?;
            prefix.extend_from_slice(&rest);
            u32::from_le_bytes([prefix[8], prefix[9], rest[0], rest[1]]) as usize
        }
        version => return Err(corrupt(path, format, format!(".npy format version {version} is not supported"))),
    };
    if header_len > NPY_HEADER_MAX {
        return Err(corrupt(path, format, format!("the .npy header is {header_len} bytes, over {NPY_HEADER_MAX}")));
    }
    let start = prefix.len();
    prefix.resize(start + header_len, 0);
    reader
        .read_exact(&mut prefix[start..])
        .map_err(|e| corrupt(path, format, format!("the .npy header is cut short: {e}")))?;
    let header = &prefix[start..];
    let count = |byte: u8| header.iter().filter(|&&b| b == byte).count();
    if count(b'[') > 0 || count(b'{') > 1 || count(b'(') > 1 {
        return Err(corrupt(
            path,
            format,
            "the .npy header is not a plain array's (structured or nested dtypes are not supported)",
        ));
    }
    let header_bytes = prefix.len() as u64;
    Ok((std::io::Cursor::new(prefix).chain(reader), header_bytes))
}

/// Checks, before any data is read, that the file is as long as its header says: a header may
/// declare billions of values in a short (or sparse) file, and reading them would allocate for
/// all of them before finding out.
fn check_data_length(
    path: &Path,
    format: &'static str,
    npy: &NpyFile<impl Read>,
    header_bytes: u64,
    file_bytes: u64,
) -> Result<(), MapError> {
    let item_bytes = match type_str(npy).as_str() {
        "<f8" | "<i8" | "<u8" => 8,
        "<f4" | "<i4" | "<u4" => 4,
        "<f2" => 2,
        // Any other type is refused by name afterwards.
        _ => return Ok(()),
    };
    let shape = npy.shape();
    let data_bytes = shape.iter().try_fold(item_bytes, |bytes: u64, &n| bytes.checked_mul(n));
    let expected = data_bytes.and_then(|data| data.checked_add(header_bytes));
    if expected != Some(file_bytes) {
        let declared = data_bytes.map_or_else(|| "more than 2^64".to_owned(), |bytes| bytes.to_string());
        return Err(corrupt(
            path,
            format,
            format!(
                "its header declares shape {shape:?} of {item_bytes}-byte values, {declared} bytes of data, \
                 but the file holds {} bytes after its {header_bytes}-byte header",
                file_bytes.saturating_sub(header_bytes)
            ),
        ));
    }
    Ok(())
}

/// A 2-D float matrix, C or Fortran order, float32 (float64 is narrowed), from a file of `len`
/// bytes. `path` names the source in errors.
pub fn read_npy_matrix(reader: impl Read, path: &Path, len: u64) -> Result<Array2<f32>, MapError> {
    const FORMAT: &str = ".npy matrix";
    let (reader, header_bytes) = checked_npy_header(reader, path, FORMAT)?;
    let npy = NpyFile::new(reader).map_err(|e| corrupt(path, FORMAT, e))?;
    check_data_length(path, FORMAT, &npy, header_bytes, len)?;
    let &[rows, columns] = npy.shape() else {
        return Err(corrupt(path, FORMAT, format!("expected 2 dimensions, found shape {:?}", npy.shape())));
    };
    let (rows, columns) = (rows as usize, columns as usize);
    let order = npy.order();
    let values: Vec<f32> = match type_str(&npy).as_str() {
        "<f4" => npy.into_vec::<f32>().map_err(|e| corrupt(path, FORMAT, e))?,
        "<f8" => npy.into_vec::<f64>().map_err(|e| corrupt(path, FORMAT, e))?.into_iter().map(|v| v as f32).collect(),
        // Many teams store embeddings in half precision; each value widens to float32 exactly.
        "<f2" => {
            npy.into_vec::<half::f16>().map_err(|e| corrupt(path, FORMAT, e))?.into_iter().map(f32::from).collect()
        }
        other => {
            return Err(corrupt(
                path,
                FORMAT,
                format!("expected float16, float32 or float64 values, found dtype {other}"),
            ));
        }
    };
    let shape = (rows, columns);
    // Rows must be contiguous (FAISS and the pipeline take them as slices). C order already is,
    // and is kept without a copy: a corpus is the largest allocation of a run.
    let matrix = match order {
        Order::C => Array2::from_shape_vec(shape, values),
        Order::Fortran => Array2::from_shape_vec((columns, rows), values)
            .map(|transposed| transposed.reversed_axes().as_standard_layout().into_owned()),
    };
    matrix.map_err(|e| corrupt(path, FORMAT, e))
}

/// A 1-D integer vector with one id per corpus row, from a file of `len` bytes.
pub fn read_npy_ids(reader: impl Read, path: &Path, len: u64, rows: usize) -> Result<Vec<i64>, MapError> {
    const FORMAT: &str = ".npy id vector";
    let (reader, header_bytes) = checked_npy_header(reader, path, FORMAT)?;
    let npy = NpyFile::new(reader).map_err(|e| corrupt(path, FORMAT, e))?;
    check_data_length(path, FORMAT, &npy, header_bytes, len)?;
    if npy.shape().len() != 1 {
        return Err(corrupt(path, FORMAT, format!("expected 1 dimension, found shape {:?}", npy.shape())));
    }
    let ids: Vec<i64> = match type_str(&npy).as_str() {
        "<i8" => npy.into_vec::<i64>().map_err(|e| corrupt(path, FORMAT, e))?,
        "<i4" => widen(npy.into_vec::<i32>(), path)?,
        "<u4" => widen(npy.into_vec::<u32>(), path)?,
        "<u8" => npy
            .into_vec::<u64>()
            .map_err(|e| corrupt(path, FORMAT, e))?
            .into_iter()
            .map(|id| i64::try_from(id).map_err(|_| corrupt(path, FORMAT, format!("id {id} exceeds the int64 range"))))
            .collect::<Result<_, _>>()?,
        other => return Err(corrupt(path, FORMAT, format!("expected integer ids, found dtype {other}"))),
    };
    if ids.len() != rows {
        return Err(MapError::IdCountMismatch { path: path.to_owned(), ids: ids.len(), rows });
    }
    Ok(ids)
}

fn widen<T: Into<i64>>(values: std::io::Result<Vec<T>>, path: &Path) -> Result<Vec<i64>, MapError> {
    Ok(values.map_err(|e| corrupt(path, ".npy id vector", e))?.into_iter().map(Into::into).collect())
}

/// A FAISS index file, opened as `file`: flat (IP or L2), HNSW over flat storage or float16
/// scalar-quantizer codes, optionally inside an ID map.
fn load_faiss_index(path: &Path, file: RegularFile) -> Result<(Array2<f32>, Option<Vec<i64>>), MapError> {
    const FORMAT: &str = "FAISS index";
    let mut reader = BufReader::new(&file.file);
    let held =
        match faiss_layout::check(&mut reader, file.signature.len).map_err(|reason| corrupt(path, FORMAT, reason))? {
            Layout::Loadable(held) => held,
            Layout::Unsupported(fourcc) => {
                return Err(MapError::UnsupportedIndex { path: path.to_owned(), found: index_type_name(&fourcc) });
            }
        };
    drop(reader);
    // FAISS opens the file by name itself: given the one checked above, not whatever the path
    // names by now.
    let index = faiss::read_index(file.proc_path()).map_err(|e| corrupt(path, FORMAT, e))?;
    unchanged_since_opened(path, &file)?;
    let contents = faiss_ext::read_index_vectors(&index, held)
        .map_err(|e| corrupt(path, FORMAT, e))?
        .ok_or_else(|| corrupt(path, FORMAT, "FAISS read it as a different index type than its type code says"))?;
    let rows = contents.vectors.len().checked_div(contents.dimensions).unwrap_or(0);
    let vectors =
        Array2::from_shape_vec((rows, contents.dimensions), contents.vectors).map_err(|e| corrupt(path, FORMAT, e))?;
    if let Some(ids) = &contents.ids
        && ids.len() != rows
    {
        return Err(corrupt(path, FORMAT, format!("ID map has {} ids for {rows} vectors", ids.len())));
    }
    Ok((vectors, contents.ids))
}

/// Human names for the FAISS type codes users are likely to hand us by mistake.
fn index_type_name(fourcc: &[u8; 4]) -> String {
    let code = String::from_utf8_lossy(fourcc).into_owned();
    let name = match &fourcc[..] {
        b"IHNp" | b"IHNs" | b"IHN2" => "HNSW over compressed storage (IndexHNSWPQ, IndexHNSWSQ, IndexHNSW2Level)",
        b"IwFl" | b"IwFL" => "IVF (IndexIVFFlat)",
        b"IwPQ" => "IVF-PQ (IndexIVFPQ)",
        b"IxPQ" => "PQ (IndexPQ)",
        b"IxSQ" => "lossy scalar-quantizer (IndexScalarQuantizer other than SQfp16)",
        b"IxPT" => "pre-transform (IndexPreTransform)",
        b"IxMp" | b"IxM2" => "ID map over an index type the service does not load",
        _ => return format!("type-code {code:?}"),
    };
    format!("{name}, type-code {code:?},")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_corpus_loads_with_row_ids() {
        let corpus = CorpusSource::Demo.load().unwrap();
        assert_eq!((corpus.len(), corpus.dimensions()), (1797, 64));
        assert_eq!(corpus.ids[..3], [0, 1, 2]);
        assert_eq!(corpus.fingerprint(), CorpusSource::Demo.load().unwrap().fingerprint());
    }

    #[test]
    fn non_finite_values_and_duplicate_ids_are_refused() {
        let mut vectors = Array2::<f32>::zeros((3, 2));
        vectors[(2, 1)] = f32::NAN;
        assert!(matches!(Corpus::new(vectors, None), Err(MapError::NonFinite { row: 2, column: 1 })));
        let duplicated = Corpus::new(Array2::zeros((3, 2)), Some(vec![7, 8, 7]));
        assert!(matches!(duplicated, Err(MapError::DuplicateId { id: 7, first: 0, second: 2 })));
        assert!(matches!(Corpus::new(Array2::zeros((0, 2)), None), Err(MapError::EmptyCorpus)));
    }

    #[test]
    fn float16_faiss_indexes_give_their_values_rounded_to_float16_bare_or_id_mapped() {
        use faiss::Index;
        let (rows, d) = (50, 8);
        let values: Vec<f32> = (0..rows * d).map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.3).collect();
        let rounded: Vec<f32> = values.iter().map(|&v| half::f16::from_f32(v).to_f32()).collect();
        let dir = tempfile::tempdir().unwrap();
        // Written by FAISS itself, as a user's SQfp16 index would be.
        let bare = dir.path().join("fp16.index");
        let mut index = faiss::index_factory(d as u32, "SQfp16", faiss::MetricType::L2).unwrap();
        index.train(&values).unwrap();
        index.add(&values).unwrap();
        faiss::write_index(&index, bare.to_str().unwrap()).unwrap();
        let corpus = CorpusSource::FaissIndex(bare).load().unwrap();
        assert_eq!(corpus.ids, (0..rows as i64).collect::<Vec<_>>());
        assert_eq!(corpus.vectors.as_slice().unwrap(), &rounded[..]);

        let mapped = dir.path().join("fp16_idmap.index");
        let mut index = faiss::index_factory(d as u32, "IDMap,SQfp16", faiss::MetricType::L2).unwrap();
        index.train(&values).unwrap();
        let ids: Vec<faiss::Idx> = (0..rows as u64).map(|i| faiss::Idx::new(1000 + 3 * i)).collect();
        index.add_with_ids(&values, &ids).unwrap();
        faiss::write_index(&index, mapped.to_str().unwrap()).unwrap();
        let corpus = CorpusSource::FaissIndex(mapped).load().unwrap();
        assert_eq!(corpus.ids, (0..rows as i64).map(|i| 1000 + 3 * i).collect::<Vec<_>>());
        assert_eq!(corpus.vectors.as_slice().unwrap(), &rounded[..]);

        // 8-bit codes lose more than float16 does: refused by name.
        let lossy = dir.path().join("sq8.index");
        let mut index = faiss::index_factory(d as u32, "SQ8", faiss::MetricType::L2).unwrap();
        index.train(&values).unwrap();
        index.add(&values).unwrap();
        faiss::write_index(&index, lossy.to_str().unwrap()).unwrap();
        let error = CorpusSource::FaissIndex(lossy).load().unwrap_err().to_string();
        assert!(error.contains("lossy scalar-quantizer"), "{error}");
    }

    /// A float32 `.npy` file of `shape` whose data section holds `values` as written.
    fn npy(fortran: bool, shape: (usize, usize), values: &[f32]) -> Vec<u8> {
        let data: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        npy_of("<f4", fortran, shape, &data)
    }

    fn npy_of(descr: &str, fortran: bool, shape: (usize, usize), data: &[u8]) -> Vec<u8> {
        let dict = format!(
            "{{'descr': '{descr}', 'fortran_order': {}, 'shape': {shape:?}, }}",
            if fortran { "True" } else { "False" }
        );
        let mut header = dict.into_bytes();
        while (10 + header.len() + 1) % 64 != 0 {
            header.push(b' ');
        }
        header.push(b'\n');
        let mut file = b"\x93NUMPY\x01\x00".to_vec();
        file.extend((header.len() as u16).to_le_bytes());
        file.extend(header);
        file.extend(data);
        file
    }

    #[test]
    fn a_float16_matrix_widens_exactly_and_its_size_is_checked_first() {
        let values = [1.0f32, -2.5, 0.333_251_95, 65504.0, 6.1e-5, 0.0];
        let data: Vec<u8> = values.iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect();
        let file = npy_of("<f2", false, (2, 3), &data);
        let matrix = read_npy_matrix(&file[..], Path::new("half.npy"), file.len() as u64).unwrap();
        let widened: Vec<f32> = values.iter().map(|&v| half::f16::from_f32(v).to_f32()).collect();
        assert_eq!(matrix.as_slice().unwrap(), widened);
        // 2M x 384 halves declared in a header alone: refused by size, nothing allocated.
        let header = npy_of("<f2", false, (2_000_000, 384), &[]);
        let message = read_npy_matrix(&header[..], Path::new("big.npy"), header.len() as u64).unwrap_err().to_string();
        assert!(message.contains("1536000000 bytes of data"), "{message}");
    }

    #[test]
    fn c_and_fortran_order_matrices_load_as_the_same_rows() {
        let rows = [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]];
        let c_order: Vec<f32> = rows.iter().flatten().copied().collect();
        let fortran_order = [1.0, 4.0, 2.0, 5.0, 3.0, 6.0];
        for (fortran, values) in [(false, &c_order[..]), (true, &fortran_order[..])] {
            let file = npy(fortran, (2, 3), values);
            let matrix = read_npy_matrix(&file[..], Path::new("m.npy"), file.len() as u64).unwrap();
            assert!(matrix.is_standard_layout(), "fortran order {fortran}");
            assert_eq!(matrix.as_slice().unwrap(), c_order, "fortran order {fortran}");
        }
    }

    #[test]
    fn a_header_that_promises_more_than_the_file_holds_is_refused_before_reading() {
        let mut file = npy(false, (2_000_000, 384), &[]);
        let header = file.len() as u64;
        let message = read_npy_matrix(&file[..], Path::new("big.npy"), header + 1_500_000_000).unwrap_err().to_string();
        assert!(message.contains("3072000000 bytes of data") && message.contains("1500000000 bytes"), "{message}");
        file.extend([0u8; 4]);
        let short = read_npy_matrix(&file[..], Path::new("m.npy"), file.len() as u64 + 4).unwrap_err().to_string();
        assert!(short.contains("declares shape [2000000, 384]"), "{short}");
    }

    #[test]
    fn a_pair_is_read_only_once_both_files_changed() {
        let dir = tempfile::tempdir().unwrap();
        let (vectors, ids) = (dir.path().join("v.npy"), dir.path().join("ids.npy"));
        // Each version written beside and renamed over, as tools replace files.
        let replace = |path: &Path, bytes: Vec<u8>| {
            std::fs::write(path.with_extension("new"), bytes).unwrap();
            std::fs::rename(path.with_extension("new"), path).unwrap();
        };
        let write_ids = |values: &[i64]| {
            use npyz::WriterBuilder;
            let mut bytes = Vec::new();
            let mut writer = npyz::WriteOptions::<i64>::new()
                .default_dtype()
                .shape(&[values.len() as u64])
                .writer(&mut bytes)
                .begin_nd()
                .unwrap();
            writer.extend(values.iter().copied()).unwrap();
            writer.finish().unwrap();
            replace(&ids, bytes);
        };
        replace(&vectors, npy(false, (2, 3), &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]));
        write_ids(&[10, 20]);
        let source = CorpusSource::Npy { vectors: vectors.clone(), ids: Some(ids.clone()) };
        let (first, version) = source.load_after(None).unwrap();
        assert_eq!(first.ids, [10, 20]);

        // The rows swapped, the ids not yet: refused, naming both files.
        replace(&vectors, npy(false, (2, 3), &[4.0, 5.0, 6.0, 1.0, 2.0, 3.0]));
        let refused = source.load_after(Some(&version)).unwrap_err();
        assert!(
            matches!(&refused, MapError::HalfChangedPair { changed, unchanged } if *changed == vectors && *unchanged == ids)
        );
        // Then the ids: read together.
        write_ids(&[20, 10]);
        let (second, _) = source.load_after(Some(&version)).unwrap();
        assert_eq!((second.ids, second.vectors.row(0).to_vec()), (vec![20, 10], vec![4.0, 5.0, 6.0]));
    }

    #[test]
    fn loader_is_chosen_by_extension() {
        assert!(matches!(CorpusSource::from_paths(None, None), CorpusSource::Demo));
        assert!(matches!(CorpusSource::from_paths(Some("a.NPY".into()), None), CorpusSource::Npy { .. }));
        assert!(matches!(CorpusSource::from_paths(Some("a.index".into()), None), CorpusSource::FaissIndex(_)));
    }
}
