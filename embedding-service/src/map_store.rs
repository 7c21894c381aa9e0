//! Maps that survive restarts and agree across replicas: each READY map is written to the store,
//! and a service that starts serves the latest stored map for its corpus source and parameters at
//! once, before the corpus is even loaded, then refreshes from it if the corpus has changed.
//!
//! One directory per (corpus source, map parameters), named by a hash of both, holding the
//! latest map (`map.pb`: the `EmbeddingMap` with its points, fingerprint, generation and parent),
//! its parent's positions (`previous.pb`, a `PreviousMap`, read only beside the map it names) and
//! what the key was made of (`key.txt`), which must match for the map to be served. A stored
//! map is read only from a regular file no larger than the largest map the service sends, and
//! only served until the corpus is loaded and checked against it (`job`). Writes are atomic: a temporary file in
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

use crate::{
    corpus::CorpusSource,
    files::{OpenError, RegularFile},
    pipeline::MapSettings,
};

const MAP_FILE: &str = "map.pb";
const PREVIOUS_FILE: &str = "previous.pb";
const KEY_FILE: &str = "key.txt";
/// Longest key file read back; a key is a few hundred bytes.
const KEY_BYTES_MAX: u64 = 64 * 1024;

/// The highest generation a map may carry: the admin page reads it as a JavaScript number, exact
/// up to 2^53 - 1. A stored map past it is refused, so a planted one cannot make the next
/// generation wrap.
pub const MAX_GENERATION: u64 = (1 << 53) - 1;

#[derive(Debug, Clone)]
pub struct MapStore {
    /// This corpus source's and parameters' directory.
    dir: PathBuf,
    key: String,
    /// Largest map file read back: the largest map the service would send.
    max_bytes: u64,
}

impl MapStore {
    /// The store under `root` for maps of `source` made with `settings`, reading back map files
    /// of at most `max_bytes`.
    pub fn new(root: &Path, source: &CorpusSource, settings: &MapSettings, max_bytes: u64) -> Self {
        Self::of_algorithm(root, source, settings, max_bytes, crate::pipeline::ALGORITHM_VERSION)
    }

    fn of_algorithm(
        root: &Path,
        source: &CorpusSource,
        settings: &MapSettings,
        max_bytes: u64,
        algorithm: u32,
    ) -> Self {
        let files: Vec<String> = source.files().iter().map(|file| file.display().to_string()).collect();
        let key = format!(
            "algorithm: {algorithm}\ncorpus: {} {files:?}\nparameters: {}\n",
            source.describe(),
            settings.identity()
        );
        let digest = format!("{:x}", Sha256::digest(key.as_bytes()));
        MapStore { dir: root.join(&digest[..16]), key, max_bytes }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The latest stored map, if there is one that passes every check; one that does not (cut
    /// short, corrupt, too large, not a regular file, another key's, an impossible generation) is
    /// logged and skipped: the map is computed anew.
    pub fn load(&self) -> Option<pb::EmbeddingMap> {
        match self.read() {
            Ok(map) => map,
            Err(reason) => {
                tracing::warn!(store = %self.dir.display(), "the stored map is not used: {reason}; computing anew");
                None
            }
        }
    }

    /// The stored positions of `map`'s parent, if they are there and are its parent's; else None
    /// (logged when a file was there but is not to be used): the map is served without them.
    pub fn load_previous(&self, map: &pb::EmbeddingMap) -> Option<pb::PreviousMap> {
        let read = self.read_file(PREVIOUS_FILE).and_then(|bytes| match bytes {
            None => Ok(None),
            Some(bytes) => {
                let previous = pb::PreviousMap::decode(bytes.as_slice())
                    .map_err(|error| format!("it does not decode ({error})"))?;
                if !crate::status::is_parent_of(&previous, map) {
                    return Err(format!("it is not the parent of map {}", map.generation));
                }
                distinct_ids(&previous.points)?;
                Ok(Some(previous))
            }
        });
        read.unwrap_or_else(|reason| {
            tracing::warn!(store = %self.dir.display(), "the stored previous map is not used: {reason}");
            None
        })
    }

    /// A file of this store's directory, at most `max_bytes`; None if there is none.
    fn read_file(&self, name: &str) -> Result<Option<Vec<u8>>, String> {
        let path = self.dir.join(name);
        let bytes = match RegularFile::open(&path) {
            Err(OpenError::Missing) => return Ok(None),
            Ok(file) => file.read_at_most(self.max_bytes),
            Err(error) => Err(std::io::Error::other(error)),
        };
        bytes.map(Some).map_err(|error| format!("{} cannot be read: {error}", path.display()))
    }

    /// The stored map; None if there is none, an error saying why one is not to be used.
    fn read(&self) -> Result<Option<pb::EmbeddingMap>, String> {
        let Some(bytes) = self.read_file(MAP_FILE)? else { return Ok(None) };
        let key = RegularFile::open(&self.dir.join(KEY_FILE))
            .map_err(std::io::Error::other)
            .and_then(|file| file.read_at_most(KEY_BYTES_MAX))
            .map_err(|error| format!("its key file cannot be read ({error})"))?;
        if key != self.key.as_bytes() {
            return Err("its key file names another corpus or other parameters".to_owned());
        }
        let map =
            pb::EmbeddingMap::decode(bytes.as_slice()).map_err(|error| format!("it does not decode ({error})"))?;
        check(&map)?;
        Ok(Some(map))
    }

    /// Stores `map` as the latest, with its parent's positions if given, atomically, unless the
    /// store already holds a later generation of the same corpus or of its successor (another
    /// replica's, sharing the store). A stored map that fails the checks, or whose lineage is not
    /// this map's, never blocks it.
    pub fn save(&self, map: &pb::EmbeddingMap, previous: Option<&pb::PreviousMap>) -> std::io::Result<()> {
        // Another replica's later map: of this map's corpus, of its successor, or finished after
        // this one began (a replica that got further while this one computed). A foreign map
        // (planted, or of another corpus) is none of these.
        let began = began(map);
        let newer = |stored: &pb::EmbeddingMap| {
            stored.generation > map.generation
                && (stored.corpus_fingerprint == map.corpus_fingerprint
                    || stored.parent_fingerprint == map.corpus_fingerprint
                    || stored.computed_at.zip(began).is_some_and(|(finished, began)| as_nanos(&finished) > began))
        };
        if self.read().ok().flatten().is_some_and(|stored| newer(&stored)) {
            return Ok(());
        }
        std::fs::create_dir_all(&self.dir)?;
        write_atomically(&self.dir.join(KEY_FILE), self.key.as_bytes())?;
        // The positions before the map: a crash between the two leaves positions that name a map
        // not stored, which `load_previous` does not read as the stored map's.
        match previous {
            Some(previous) => write_atomically(&self.dir.join(PREVIOUS_FILE), &previous.encode_to_vec())?,
            None => remove_if_there(&self.dir.join(PREVIOUS_FILE))?,
        }
        write_atomically(&self.dir.join(MAP_FILE), &map.encode_to_vec())
    }
}

/// When `map`'s computation began, in nanoseconds since the epoch.
fn began(map: &pb::EmbeddingMap) -> Option<i128> {
    let finished = as_nanos(map.computed_at.as_ref()?);
    let took = map.compute_duration.as_ref().map_or(0, |d| i128::from(d.seconds) * 1_000_000_000 + i128::from(d.nanos));
    Some(finished - took)
}

fn as_nanos(time: &prost_types::Timestamp) -> i128 {
    i128::from(time.seconds) * 1_000_000_000 + i128::from(time.nanos)
}

/// What a stored map must be to be served: a generation with a successor, one point per count,
/// distinct ids, a fingerprint to check the corpus against.
fn check(map: &pb::EmbeddingMap) -> Result<(), String> {
    // Below the largest, so that the map's successor has a generation too.
    if !(1..MAX_GENERATION).contains(&map.generation) {
        return Err(format!("its generation {} is outside 1..{MAX_GENERATION}", map.generation));
    }
    if map.count == 0 || map.points.len() as u64 != map.count {
        return Err(format!("it has {} points for a count of {}", map.points.len(), map.count));
    }
    if map.corpus_fingerprint.is_empty() {
        return Err("it has no corpus fingerprint".to_owned());
    }
    distinct_ids(&map.points)
}

fn distinct_ids(points: &[pb::Point]) -> Result<(), String> {
    let mut ids = std::collections::HashSet::with_capacity(points.len());
    match points.iter().find(|point| !ids.insert(point.id)) {
        Some(point) => Err(format!("id {} appears twice", point.id)),
        None => Ok(()),
    }
}

fn remove_if_there(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        done => done,
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

    fn store_in(root: &Path, source: &CorpusSource) -> MapStore {
        let settings = <MapSettingsFlags as clap::Parser>::parse_from(["test"]).map;
        MapStore::new(root, source, &settings, 1 << 20)
    }

    #[test]
    fn the_latest_map_is_read_back_and_a_damaged_file_is_skipped() {
        let root = tempfile::tempdir().unwrap();
        let store = store_in(root.path(), &CorpusSource::Demo);
        assert!(store.load().is_none());
        store.save(&map(1), None).unwrap();
        store.save(&map(2), None).unwrap();
        assert_eq!(store.load(), Some(map(2)));
        store.save(&map(1), None).unwrap();
        assert_eq!(store.load(), Some(map(2)), "not stored over a later generation");
        let other = store_in(root.path(), &CorpusSource::FaissIndex("other.index".into()));
        assert!(other.load().is_none(), "another corpus source has its own maps");
        std::fs::write(store.dir().join(MAP_FILE), b"\xff\xff cut short").unwrap();
        assert!(store.load().is_none());
    }

    #[test]
    fn a_map_older_code_stored_is_not_read_as_current() {
        let root = tempfile::tempdir().unwrap();
        let settings = <MapSettingsFlags as clap::Parser>::parse_from(["test"]).map;
        let version = crate::pipeline::ALGORITHM_VERSION;
        let older = MapStore::of_algorithm(root.path(), &CorpusSource::Demo, &settings, 1 << 20, version - 1);
        older.save(&map(1), None).unwrap();
        assert_eq!(older.load(), Some(map(1)));
        assert!(store_in(root.path(), &CorpusSource::Demo).load().is_none(), "another algorithm's map");
    }

    #[test]
    fn a_planted_map_is_refused_and_never_blocks_saving() {
        let root = tempfile::tempdir().unwrap();
        let store = store_in(root.path(), &CorpusSource::Demo);
        store.save(&map(1), None).unwrap();
        let map_file = store.dir().join(MAP_FILE);

        // Another key: refused.
        std::fs::write(store.dir().join(KEY_FILE), "corpus: elsewhere\n").unwrap();
        assert!(store.load().is_none());
        store.save(&map(1), None).unwrap();
        assert_eq!(store.load(), Some(map(1)), "saving writes the key again");

        // A generation with no successor, a count that lies, a repeated id: refused, and saving
        // goes on over them.
        let planted = |map: pb::EmbeddingMap| std::fs::write(&map_file, map.encode_to_vec()).unwrap();
        planted(map(u64::MAX));
        assert!(store.load().is_none());
        store.save(&map(2), None).unwrap();
        assert_eq!(store.load(), Some(map(2)));
        planted(pb::EmbeddingMap { count: 5, ..map(3) });
        assert!(store.load().is_none());
        let repeated =
            pb::EmbeddingMap { points: vec![pb::Point { id: 7, ..Default::default() }; 2], count: 2, ..map(3) };
        planted(repeated);
        assert!(store.load().is_none());

        // A later generation of another lineage: read, but it does not block this corpus's map.
        planted(pb::EmbeddingMap { corpus_fingerprint: "foreign".into(), ..map(1000) });
        assert_eq!(store.load().unwrap().generation, 1000);
        store.save(&map(3), None).unwrap();
        assert_eq!(store.load(), Some(map(3)));
        // Its successor's does (a replica that got further).
        let successor =
            pb::EmbeddingMap { corpus_fingerprint: "next".into(), parent_fingerprint: "abc".into(), ..map(9) };
        planted(successor.clone());
        store.save(&map(4), None).unwrap();
        assert_eq!(store.load(), Some(successor));

        // A replica that got two refreshes further while this map computed: its map finished after
        // this one began, so it stays.
        let at = |seconds| Some(prost_types::Timestamp { seconds, nanos: 0 });
        let took = |seconds| Some(prost_types::Duration { seconds, nanos: 0 });
        let further = pb::EmbeddingMap {
            corpus_fingerprint: "f8".into(),
            parent_fingerprint: "f7".into(),
            computed_at: at(150),
            ..map(8)
        };
        planted(further.clone());
        store.save(&pb::EmbeddingMap { computed_at: at(200), compute_duration: took(100), ..map(6) }, None).unwrap();
        assert_eq!(store.load(), Some(further.clone()), "a lagging replica does not store over a newer map");
        store.save(&pb::EmbeddingMap { computed_at: at(200), compute_duration: took(10), ..map(6) }, None).unwrap();
        assert_eq!(store.load().unwrap().generation, 6, "a map finished before this one began is stored over");

        // A device or an oversized file: refused unread.
        std::fs::remove_file(&map_file).unwrap();
        std::os::unix::fs::symlink("/dev/zero", &map_file).unwrap();
        assert!(store.load().is_none());
        store.save(&map(5), None).unwrap();
        assert_eq!(store.load(), Some(map(5)), "the link is replaced by the map");
        std::fs::File::create(&map_file).unwrap().set_len(2 << 20).unwrap();
        assert!(store.load().is_none());
    }

    #[test]
    fn a_maps_parent_positions_are_stored_beside_it_and_read_only_with_it() {
        let root = tempfile::tempdir().unwrap();
        let store = store_in(root.path(), &CorpusSource::Demo);
        let child = pb::EmbeddingMap { corpus_fingerprint: "def".into(), parent_fingerprint: "abc".into(), ..map(2) };
        let previous = pb::PreviousMap {
            generation: 2,
            previous_generation: 1,
            previous_fingerprint: "abc".into(),
            points: map(1).points,
        };
        store.save(&map(1), None).unwrap();
        assert_eq!(store.load_previous(&map(1)), None, "a first map has none");
        store.save(&child, Some(&previous)).unwrap();
        assert_eq!(store.load_previous(&child), Some(previous.clone()));
        // Positions left from a save cut short between the two files name another map.
        let grandchild = pb::EmbeddingMap { parent_fingerprint: "def".into(), ..map(3) };
        assert_eq!(store.load_previous(&grandchild), None);
        // Damaged or repeated: not used, and the map is still served.
        let previous_file = store.dir().join(PREVIOUS_FILE);
        std::fs::write(&previous_file, b"\xff\xff").unwrap();
        assert_eq!(store.load_previous(&child), None);
        let twice = pb::PreviousMap { points: vec![pb::Point { id: 7, ..Default::default() }; 2], ..previous };
        std::fs::write(&previous_file, twice.encode_to_vec()).unwrap();
        assert_eq!(store.load_previous(&child), None);
        assert_eq!(store.load(), Some(child));
        // A map stored without positions removes the old ones.
        store.save(&map(4), None).unwrap();
        assert!(!previous_file.exists());
    }

    #[derive(clap::Parser)]
    struct MapSettingsFlags {
        #[command(flatten)]
        map: MapSettings,
    }
}
