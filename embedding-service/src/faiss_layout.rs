//! Checks a FAISS index file's layout against its length before FAISS parses it.
//!
//! FAISS trusts the size fields it reads: a forged vector length makes it allocate up to 4 TB
//! before it notices the file is short, and a truncated flat index leaks what it had read.
//! Both were found by fuzzing. So only the layouts the service loads (flat, HNSW over flat
//! storage, or float16 codes, either inside an ID map or not) reach FAISS, and only once every
//! size in them fits the file; any other type code is named and refused without FAISS reading it.

use std::io::{self, Read, Seek, SeekFrom};

/// What the walk found.
#[derive(Debug, PartialEq, Eq)]
pub enum Layout {
    /// Every size fits: FAISS may read the file, whose vectors are held as this says.
    Loadable(Vectors),
    /// A type the service does not load, with the type code that says which.
    Unsupported([u8; 4]),
}

/// How a loadable index holds its vectors, which says how they are read back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vectors {
    /// A flat index: the vectors as they were added.
    Flat,
    /// The flat storage of an HNSW graph (which FAISS reads too, and the service does not use).
    HnswFlat,
    /// A scalar quantizer's float16 codes: each value rounded to float16, decoded by FAISS.
    Float16,
}

const FLAT: [&[u8; 4]; 3] = [b"IxF2", b"IxFI", b"IxFl"];
/// `IndexHNSWFlat`: a graph over a flat index that holds every vector exactly, in row order.
const HNSW_FLAT: &[u8; 4] = b"IHNf";
/// `IndexScalarQuantizer`, loaded when its type is float16 (`SQfp16`).
const SCALAR_QUANTIZER: &[u8; 4] = b"IxSQ";
/// FAISS's `ScalarQuantizer::QT_fp16`.
const QT_FP16: i32 = 4;
const ID_MAP: [&[u8; 4]; 2] = [b"IxMp", b"IxM2"];

/// What holds the vectors for a type code the service loads.
fn vectors_of(fourcc: &[u8; 4]) -> Option<Vectors> {
    match fourcc {
        code if FLAT.contains(&code) => Some(Vectors::Flat),
        code if code == HNSW_FLAT => Some(Vectors::HnswFlat),
        code if code == SCALAR_QUANTIZER => Some(Vectors::Float16),
        _ => None,
    }
}

/// Walks the file from its start; `Err` carries why it is not a valid index.
pub fn check(file: &mut (impl Read + Seek), len: u64) -> Result<Layout, String> {
    let mut walk = Walk { file, len, at: 0 };
    let fourcc = walk.fourcc()?;
    let vectors = if let Some(vectors) = vectors_of(&fourcc) {
        if walk.vectors(vectors)?.is_none() {
            return Ok(Layout::Unsupported(fourcc));
        }
        vectors
    } else if ID_MAP.contains(&&fourcc) {
        let (map_d, map_rows) = walk.header()?;
        let inner = walk.fourcc()?;
        let Some(vectors) = vectors_of(&inner) else { return Ok(Layout::Unsupported(fourcc)) };
        let Some((d, rows)) = walk.vectors(vectors)? else { return Ok(Layout::Unsupported(inner)) };
        // FAISS indexes the ID map by the outer count (IndexIDMap2 rebuilds its reverse map that
        // way), so a count that disagrees with the vectors reads out of bounds.
        if (map_d, map_rows) != (d, rows) {
            return Err(format!("ID map header says {map_rows} x {map_d}, its index holds {rows} x {d}"));
        }
        let ids = walk.u64("ID map length")?;
        if ids != rows {
            return Err(format!("ID map has {ids} ids for {rows} vectors"));
        }
        walk.skip(ids, 8, "ID map")?;
        vectors
    } else {
        return Ok(Layout::Unsupported(fourcc));
    };
    Ok(Layout::Loadable(vectors))
}

struct Walk<'a, F> {
    file: &'a mut F,
    len: u64,
    at: u64,
}

impl<F: Read + Seek> Walk<'_, F> {
    fn bytes<const N: usize>(&mut self, what: &str) -> Result<[u8; N], String> {
        let mut buf = [0u8; N];
        self.file.read_exact(&mut buf).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => format!("the file ends inside the {what}"),
            _ => format!("reading the {what}: {e}"),
        })?;
        self.at += N as u64;
        Ok(buf)
    }

    fn fourcc(&mut self) -> Result<[u8; 4], String> {
        self.bytes("type code")
    }

    fn u64(&mut self, what: &str) -> Result<u64, String> {
        self.bytes(what).map(u64::from_le_bytes)
    }

    /// FAISS's `read_index_header`; returns (dimensions, stored vector count).
    fn header(&mut self) -> Result<(u64, u64), String> {
        let d = i32::from_le_bytes(self.bytes("index header")?);
        let ntotal = i64::from_le_bytes(self.bytes("index header")?);
        let _unused: [u8; 17] = self.bytes("index header")?; // two legacy int64s, is_trained
        let metric = i32::from_le_bytes(self.bytes("index header")?);
        if metric > 1 {
            let _metric_arg: [u8; 4] = self.bytes("index header")?;
        }
        let d = u64::try_from(d).ok().filter(|&d| d > 0).ok_or(format!("dimension {d} is not positive"))?;
        let ntotal = u64::try_from(ntotal).map_err(|_| format!("vector count {ntotal} is negative"))?;
        Ok((d, ntotal))
    }

    /// An index holding `vectors`, after its type code; returns its (dimensions, vector count),
    /// or None for a scalar quantizer of a type other than float16.
    fn vectors(&mut self, vectors: Vectors) -> Result<Option<(u64, u64)>, String> {
        match vectors {
            Vectors::Flat => self.flat().map(Some),
            Vectors::HnswFlat => self.hnsw_flat().map(Some),
            Vectors::Float16 => self.float16(),
        }
    }

    /// FAISS's `IndexScalarQuantizer`: its quantizer's settings, then one code per vector.
    fn float16(&mut self) -> Result<Option<(u64, u64)>, String> {
        let (d, rows) = self.header()?;
        let qtype = i32::from_le_bytes(self.bytes("scalar quantizer")?);
        if qtype != QT_FP16 {
            return Ok(None);
        }
        let _range: [u8; 8] = self.bytes("scalar quantizer")?; // range statistic and its argument
        let (sq_d, code_size) = (self.u64("scalar quantizer")?, self.u64("scalar quantizer")?);
        if sq_d != d || Some(code_size) != d.checked_mul(2) {
            return Err(format!("float16 quantizer of {sq_d} dimensions, {code_size}-byte codes, in a {d}-d index"));
        }
        let trained = self.u64("scalar quantizer training")?;
        self.skip(trained, 4, "scalar quantizer training")?;
        let codes = self.u64("codes length")?;
        if Some(codes) != rows.checked_mul(code_size) {
            return Err(format!("codes hold {codes} bytes, not {rows} codes of {code_size}"));
        }
        self.skip(codes, 1, "codes")?;
        Ok(Some((d, rows)))
    }

    /// FAISS's `read_HNSW` and the storage after it. Only the storage's vectors are read from
    /// it, but FAISS allocates every array of the graph as the file sizes it, so each must fit.
    fn hnsw_flat(&mut self) -> Result<(u64, u64), String> {
        let (d, rows) = self.header()?;
        for (what, width) in [("HNSW level probabilities", 8), ("HNSW neighbours per level", 4)] {
            let count = self.u64(what)?;
            self.skip(count, width, what)?;
        }
        let levels = self.u64("HNSW levels")?;
        if levels != rows {
            return Err(format!("HNSW has levels for {levels} points, its header says {rows}"));
        }
        self.skip(levels, 4, "HNSW levels")?;
        let offsets = self.u64("HNSW offsets")?;
        if Some(offsets) != rows.checked_add(1) {
            return Err(format!("HNSW has {offsets} offsets for {rows} points"));
        }
        self.skip(offsets, 8, "HNSW offsets")?;
        let links = self.u64("HNSW neighbour lists")?;
        self.skip(links, 4, "HNSW neighbour lists")?;
        // Entry point, top level, the two search widths and a retired field: five int32s.
        let _settings: [u8; 20] = self.bytes("HNSW settings")?;
        let storage = self.fourcc()?;
        if &storage == b"null" {
            return Err("the HNSW graph was written without its storage, so it holds no vectors: write the \
                        index with its storage"
                .to_owned());
        }
        if !FLAT.contains(&&storage) {
            let code = String::from_utf8_lossy(&storage).into_owned();
            return Err(format!("HNSW storage has type code {code:?}, not a flat index"));
        }
        let (storage_d, storage_rows) = self.flat()?;
        if (storage_d, storage_rows) != (d, rows) {
            return Err(format!("HNSW header says {rows} x {d}, its storage holds {storage_rows} x {storage_d}"));
        }
        Ok((d, rows))
    }

    /// A flat index after its type code; returns its (dimensions, vector count).
    fn flat(&mut self) -> Result<(u64, u64), String> {
        let (d, ntotal) = self.header()?;
        let values = self.u64("vector data length")?;
        if Some(values) != ntotal.checked_mul(d) {
            return Err(format!("vector data holds {values} values, not {ntotal} x {d}"));
        }
        self.skip(values, 4, "vector data")?;
        Ok((d, ntotal))
    }

    /// Moves past `count` items of `width` bytes, refusing counts the file cannot hold.
    fn skip(&mut self, count: u64, width: u64, what: &str) -> Result<(), String> {
        let left = self.len.saturating_sub(self.at);
        let bytes = count
            .checked_mul(width)
            .filter(|&b| b <= left)
            .ok_or_else(|| format!("the {what} claims {count} entries of {width} bytes but {left} bytes remain"))?;
        self.at += bytes;
        self.file.seek(SeekFrom::Start(self.at)).map_err(|e| format!("seeking past the {what}: {e}"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;

    fn header(fourcc: &[u8; 4], d: i32, ntotal: i64) -> Vec<u8> {
        let mut out = fourcc.to_vec();
        out.extend(d.to_le_bytes());
        out.extend(ntotal.to_le_bytes());
        out.extend([0u8; 17]);
        out.extend(1i32.to_le_bytes());
        out
    }

    fn flat(d: i32, ntotal: i64, values: u64) -> Vec<u8> {
        let mut out = header(b"IxF2", d, ntotal);
        out.extend(values.to_le_bytes());
        out.extend(vec![0u8; (values.min(1 << 20) * 4) as usize]);
        out
    }

    fn run(bytes: &[u8]) -> Result<Layout, String> {
        check(&mut Cursor::new(bytes), bytes.len() as u64)
    }

    #[test]
    fn consistent_flat_and_id_map_files_are_loadable() {
        assert_eq!(run(&flat(3, 2, 6)), Ok(Layout::Loadable(Vectors::Flat)));
        let mut map = header(b"IxMp", 3, 2);
        map.extend(flat(3, 2, 6));
        map.extend(2u64.to_le_bytes());
        map.extend([0u8; 16]);
        assert_eq!(run(&map), Ok(Layout::Loadable(Vectors::Flat)));
    }

    /// What FAISS writes for an `IndexHNSWFlat` of `rows` points: the graph's five arrays (sized
    /// as given), its settings, then the flat storage.
    fn hnsw(d: i32, rows: i64, levels: u64, offsets: u64, storage: Vec<u8>) -> Vec<u8> {
        let mut out = header(b"IHNf", d, rows);
        for (count, width) in [(2u64, 8), (2, 4), (levels, 4), (offsets, 8), (rows as u64 * 4, 4)] {
            out.extend(count.to_le_bytes());
            out.extend(vec![0u8; (count * width) as usize]);
        }
        out.extend([0u8; 20]);
        out.extend(storage);
        out
    }

    #[test]
    fn hnsw_over_flat_storage_is_loadable_bare_or_in_an_id_map() {
        assert_eq!(run(&hnsw(3, 2, 2, 3, flat(3, 2, 6))), Ok(Layout::Loadable(Vectors::HnswFlat)));
        let mut map = header(b"IxM2", 3, 2);
        map.extend(hnsw(3, 2, 2, 3, flat(3, 2, 6)));
        map.extend(2u64.to_le_bytes());
        map.extend([0u8; 16]);
        assert_eq!(run(&map), Ok(Layout::Loadable(Vectors::HnswFlat)));
        // The one FAISS wrote (tests/fixtures): walked to its last byte, and not one further.
        let written = include_bytes!("../../tests/fixtures/clusters_hnsw.index");
        assert_eq!(run(written), Ok(Layout::Loadable(Vectors::HnswFlat)));
        assert!(run(&written[..written.len() - 1]).unwrap_err().contains("bytes remain"));
    }

    #[test]
    fn hnsw_graphs_that_disagree_with_their_storage_or_the_file_are_refused() {
        assert!(run(&hnsw(3, 2, 1, 3, flat(3, 2, 6))).unwrap_err().contains("levels for 1 points"));
        assert!(run(&hnsw(3, 2, 2, 2, flat(3, 2, 6))).unwrap_err().contains("2 offsets for 2 points"));
        assert!(run(&hnsw(3, 2, 2, 3, flat(3, 1, 3))).unwrap_err().contains("storage holds 1 x 3"));
        let mut pq = header(b"IxPQ", 3, 2);
        pq.extend([0u8; 64]);
        assert!(run(&hnsw(3, 2, 2, 3, pq)).unwrap_err().contains("not a flat index"));
        let without_storage = hnsw(3, 2, 2, 3, b"null".to_vec());
        assert!(run(&without_storage).unwrap_err().contains("written without its storage"));
        let mut forged = header(b"IHNf", 3, 2);
        forged.extend((1u64 << 40).to_le_bytes());
        assert!(run(&forged).unwrap_err().contains("bytes remain"));
    }

    #[test]
    fn forged_and_truncated_sizes_are_refused_before_faiss_allocates() {
        let mut forged = header(b"IxF2", 1 << 20, 1 << 20);
        forged.extend((1u64 << 40).to_le_bytes());
        assert!(run(&forged).unwrap_err().contains("bytes remain"));
        let whole = flat(3, 2, 6);
        assert!(run(&whole[..whole.len() - 1]).unwrap_err().contains("bytes remain"));
        assert!(run(&whole[..10]).unwrap_err().contains("ends inside the index header"));
        assert!(run(&flat(3, 2, 5)).unwrap_err().contains("not 2 x 3"));
        assert!(run(&flat(0, 0, 0)).unwrap_err().contains("not positive"));
        assert!(run(&flat(3, -1, 0)).unwrap_err().contains("negative"));
        // Found by fuzzing: an IndexIDMap2 whose own count exceeds its vectors crashed FAISS.
        let mut map = header(b"IxM2", 3, 1 << 40);
        map.extend(flat(3, 0, 0));
        map.extend(0u64.to_le_bytes());
        assert!(run(&map).unwrap_err().contains("ID map header says"));
    }

    /// What FAISS writes for an `IndexScalarQuantizer` of `qtype` with `code_size`-byte codes.
    fn scalar_quantizer(d: i32, rows: i64, qtype: i32, code_size: u64, codes: u64) -> Vec<u8> {
        let mut out = header(b"IxSQ", d, rows);
        out.extend(qtype.to_le_bytes());
        out.extend([0u8; 8]);
        out.extend((d as u64).to_le_bytes());
        out.extend(code_size.to_le_bytes());
        out.extend(0u64.to_le_bytes());
        out.extend(codes.to_le_bytes());
        out.extend(vec![0u8; codes.min(1 << 20) as usize]);
        out
    }

    #[test]
    fn float16_codes_are_loadable_and_other_quantizers_are_named() {
        assert_eq!(run(&scalar_quantizer(3, 2, QT_FP16, 6, 12)), Ok(Layout::Loadable(Vectors::Float16)));
        let mut map = header(b"IxMp", 3, 2);
        map.extend(scalar_quantizer(3, 2, QT_FP16, 6, 12));
        map.extend(2u64.to_le_bytes());
        map.extend([0u8; 16]);
        assert_eq!(run(&map), Ok(Layout::Loadable(Vectors::Float16)));
        // 8-bit codes are lossy: refused by name, as in an ID map.
        assert_eq!(run(&scalar_quantizer(3, 2, 0, 3, 6)), Ok(Layout::Unsupported(*b"IxSQ")));
        let mut map = header(b"IxMp", 3, 2);
        map.extend(scalar_quantizer(3, 2, 0, 3, 6));
        assert_eq!(run(&map), Ok(Layout::Unsupported(*b"IxSQ")));
        assert!(run(&scalar_quantizer(3, 2, QT_FP16, 4, 8)).unwrap_err().contains("4-byte codes"));
        assert!(run(&scalar_quantizer(3, 2, QT_FP16, 6, 10)).unwrap_err().contains("not 2 codes of 6"));
        assert!(run(&scalar_quantizer(3, 1 << 38, QT_FP16, 6, 6 << 38)).unwrap_err().contains("bytes remain"));
    }

    #[test]
    fn other_types_are_named_without_being_parsed() {
        assert_eq!(run(b"IwFl and whatever follows"), Ok(Layout::Unsupported(*b"IwFl")));
        let mut map = header(b"IxM2", 3, 2);
        map.extend(b"IwFl");
        assert_eq!(run(&map), Ok(Layout::Unsupported(*b"IxM2")));
    }
}
