//! Maps that survive restarts and agree across replicas: each READY map is written to the store,
//! and a service that starts serves the latest stored map for its corpus source and parameters at
//! once, before the corpus is even loaded, then refreshes from it if the corpus has changed.
//!
//! One directory per (corpus source, map parameters), named by a hash of both, holding the
//! latest map (`map.pb`: the `EmbeddingMap` with its points, fingerprint, generation and parent)
//! and what the key was made of (`key.txt`, for people). Writes are atomic: a temporary file in
//! the same directory, synced, then renamed over the old one; a map is not stored over a later
//! generation. Since a refreshed map's points are a pure function of its parent's points, its
//! corpus and the parameters, replicas that refresh from the same stored map to the same corpus
//! compute the same points, whichever of them computes them (their timestamps differ).

use std::{
    io::Write,
    path::{Path, PathBuf},
};

use embeddingmap_proto::v1 as pb;
use prost::Message;
use sha2::{Digest, Sha256};

use crate::{corpus::CorpusSource, pipeline::MapSettings};

const MAP_FILE: &str = "map.pb";
const KEY_FILE: &str = "key.txt";

#[derive(Debug, Clone)]
pub struct MapStore {
    /// This corpus source's and parameters' directory.
    dir: PathBuf,
    key: String,
}

impl MapStore {
    /// The store under `root` for maps of `source` made with `settings`.
    pub fn new(root: &Path, source: &CorpusSource, settings: &MapSettings) -> Self {
        let files: Vec<String> = source.files().iter().map(|file| file.display().to_string()).collect();
        let key = format!("corpus: {} {files:?}\nparameters: {}\n", source.describe(), settings.identity());
        let digest = format!("{:x}", Sha256::digest(key.as_bytes()));
        MapStore { dir: root.join(&digest[..16]), key }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The latest stored map, if there is one that reads; a file that does not (cut short,
    /// corrupt, from an incompatible version) is logged and skipped: the map is computed anew.
    pub fn load(&self) -> Option<pb::EmbeddingMap> {
        let path = self.dir.join(MAP_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return None,
            Err(error) => {
                tracing::warn!(path = %path.display(), "cannot read the stored map ({error}); computing anew");
                return None;
            }
        };
        match pb::EmbeddingMap::decode(bytes.as_slice()) {
            Ok(map) if map.generation > 0 && map.points.len() as u64 == map.count => Some(map),
            Ok(_) => {
                tracing::warn!(path = %path.display(), "the stored map is incomplete; computing anew");
                None
            }
            Err(error) => {
                tracing::warn!(path = %path.display(), "the stored map does not decode ({error}); computing anew");
                None
            }
        }
    }

    /// Stores `map` as the latest, atomically, unless the store already holds a later generation
    /// (another replica's, sharing the store).
    pub fn save(&self, map: &pb::EmbeddingMap) -> std::io::Result<()> {
        if self.load().is_some_and(|stored| stored.generation > map.generation) {
            return Ok(());
        }
        std::fs::create_dir_all(&self.dir)?;
        write_atomically(&self.dir.join(KEY_FILE), self.key.as_bytes())?;
        write_atomically(&self.dir.join(MAP_FILE), &map.encode_to_vec())
    }
}

/// Writes `bytes` to a temporary file beside `path`, syncs it, renames it over `path` and syncs
/// the directory, so `path` holds either the old bytes or the new ones, also after a crash.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut file = tempfile::NamedTempFile::new_in(dir)?;
    file.write_all(bytes)?;
    file.as_file().sync_all()?;
    file.persist(path).map_err(|error| error.error)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(generation: u64) -> pb::EmbeddingMap {
        pb::EmbeddingMap {
            points: vec![pb::Point { id: 7, x: 1.0, y: 2.0 }],
            count: 1,
            generation,
            corpus_fingerprint: "abc".into(),
            ..Default::default()
        }
    }

    #[test]
    fn the_latest_map_is_read_back_and_a_damaged_file_is_skipped() {
        let root = tempfile::tempdir().unwrap();
        let settings = <MapSettingsFlags as clap::Parser>::parse_from(["test"]).map;
        let store = MapStore::new(root.path(), &CorpusSource::Demo, &settings);
        assert!(store.load().is_none());
        store.save(&map(1)).unwrap();
        store.save(&map(2)).unwrap();
        assert_eq!(store.load(), Some(map(2)));
        store.save(&map(1)).unwrap();
        assert_eq!(store.load(), Some(map(2)), "not stored over a later generation");
        let other = MapStore::new(root.path(), &CorpusSource::FaissIndex("other.index".into()), &settings);
        assert!(other.load().is_none(), "another corpus source has its own maps");
        std::fs::write(store.dir().join(MAP_FILE), b"\xff\xff cut short").unwrap();
        assert!(store.load().is_none());
    }

    #[derive(clap::Parser)]
    struct MapSettingsFlags {
        #[command(flatten)]
        map: MapSettings,
    }
}
