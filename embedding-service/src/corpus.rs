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

    pub fn load(&self) -> Result<Corpus, MapError> {
        let (vectors, ids) = match self {
            CorpusSource::Demo => (read_npy_matrix(DEMO_VECTORS, Path::new("<demo>"))?, None),
            CorpusSource::FaissIndex(path) => load_faiss_index(path)?,
            CorpusSource::Npy { vectors, ids } => {
                let matrix = read_npy_matrix(open(vectors)?, vectors)?;
                let ids = ids.as_ref().map(|path| read_npy_ids(open(path)?, path, matrix.nrows())).transpose()?;
                (matrix, ids)
            }
        };
        Corpus::new(vectors, ids)
    }
}

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

fn open(path: &Path) -> Result<BufReader<File>, MapError> {
    let unreadable = |reason: String| MapError::CorpusUnreadable { path: path.to_owned(), reason };
    match File::open(path) {
        // Opening a directory succeeds on Linux; reading it is what fails.
        Ok(file) if file.metadata().is_ok_and(|m| m.is_dir()) => Err(unreadable("it is a directory".into())),
        Ok(file) => Ok(BufReader::new(file)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(MapError::CorpusMissing { path: path.to_owned() }),
        Err(e) => Err(unreadable(e.to_string())),
    }
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
fn checked_npy_header(mut reader: impl Read, path: &Path, format: &'static str) -> Result<impl Read, MapError> {
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
    Ok(std::io::Cursor::new(prefix).chain(reader))
}

/// A 2-D float matrix, C or Fortran order, float32 (float64 is narrowed). `path` names the
/// source in errors.
pub fn read_npy_matrix(reader: impl Read, path: &Path) -> Result<Array2<f32>, MapError> {
    const FORMAT: &str = ".npy matrix";
    let npy = NpyFile::new(checked_npy_header(reader, path, FORMAT)?).map_err(|e| corrupt(path, FORMAT, e))?;
    let &[rows, columns] = npy.shape() else {
        return Err(corrupt(path, FORMAT, format!("expected 2 dimensions, found shape {:?}", npy.shape())));
    };
    let (rows, columns) = (rows as usize, columns as usize);
    let order = npy.order();
    let values: Vec<f32> = match type_str(&npy).as_str() {
        "<f4" => npy.into_vec::<f32>().map_err(|e| corrupt(path, FORMAT, e))?,
        "<f8" => npy.into_vec::<f64>().map_err(|e| corrupt(path, FORMAT, e))?.into_iter().map(|v| v as f32).collect(),
        other => return Err(corrupt(path, FORMAT, format!("expected float32 or float64 values, found dtype {other}"))),
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

/// A 1-D integer vector with one id per corpus row.
pub fn read_npy_ids(reader: impl Read, path: &Path, rows: usize) -> Result<Vec<i64>, MapError> {
    const FORMAT: &str = ".npy id vector";
    let npy = NpyFile::new(checked_npy_header(reader, path, FORMAT)?).map_err(|e| corrupt(path, FORMAT, e))?;
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

/// A FAISS index file: flat (IP or L2), optionally inside an ID map.
fn load_faiss_index(path: &Path) -> Result<(Array2<f32>, Option<Vec<i64>>), MapError> {
    const FORMAT: &str = "FAISS index";
    let mut file = open(path)?;
    let unreadable = |e: std::io::Error| MapError::CorpusUnreadable { path: path.to_owned(), reason: e.to_string() };
    let len = file.get_ref().metadata().map_err(unreadable)?.len();
    match faiss_layout::check(&mut file, len).map_err(|reason| corrupt(path, FORMAT, reason))? {
        Layout::Loadable => {}
        Layout::Unsupported(fourcc) => {
            return Err(MapError::UnsupportedIndex { path: path.to_owned(), found: index_type_name(&fourcc) });
        }
    }
    drop(file);
    let index = faiss::read_index(path.to_string_lossy().as_ref()).map_err(|e| corrupt(path, FORMAT, e))?;
    let contents = faiss_ext::read_flat_contents(&index)
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
        b"IHNf" => "HNSW (IndexHNSWFlat)",
        b"IwFl" | b"IwFL" => "IVF (IndexIVFFlat)",
        b"IwPQ" => "IVF-PQ (IndexIVFPQ)",
        b"IxPQ" => "PQ (IndexPQ)",
        b"IxSQ" => "scalar-quantizer (IndexScalarQuantizer)",
        b"IxPT" => "pre-transform (IndexPreTransform)",
        b"IxMp" | b"IxM2" => "ID map over a non-flat index",
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

    /// A float32 `.npy` file of `shape` whose data section holds `values` as written.
    fn npy(fortran: bool, shape: (usize, usize), values: &[f32]) -> Vec<u8> {
        let dict = format!(
            "{{'descr': '<f4', 'fortran_order': {}, 'shape': {shape:?}, }}",
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
        file.extend(values.iter().flat_map(|v| v.to_le_bytes()));
        file
    }

    #[test]
    fn c_and_fortran_order_matrices_load_as_the_same_rows() {
        let rows = [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]];
        let c_order: Vec<f32> = rows.iter().flatten().copied().collect();
        let fortran_order = [1.0, 4.0, 2.0, 5.0, 3.0, 6.0];
        for (fortran, values) in [(false, &c_order[..]), (true, &fortran_order[..])] {
            let matrix = read_npy_matrix(&npy(fortran, (2, 3), values)[..], Path::new("m.npy")).unwrap();
            assert!(matrix.is_standard_layout(), "fortran order {fortran}");
            assert_eq!(matrix.as_slice().unwrap(), c_order, "fortran order {fortran}");
        }
    }

    #[test]
    fn loader_is_chosen_by_extension() {
        assert!(matches!(CorpusSource::from_paths(None, None), CorpusSource::Demo));
        assert!(matches!(CorpusSource::from_paths(Some("a.NPY".into()), None), CorpusSource::Npy { .. }));
        assert!(matches!(CorpusSource::from_paths(Some("a.index".into()), None), CorpusSource::FaissIndex(_)));
    }
}
