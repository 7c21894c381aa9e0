//! Opening the files the service reads from disk (the corpus, its ids, a stored map) so that no
//! file can stall or flood it: each is opened non-blocking (a FIFO's `open()` would otherwise wait
//! for a writer for ever, and the map thread with it) and must be a regular file, so a device such
//! as `/dev/zero` or a socket is refused before a byte is read. Symbolic links are followed: a
//! mounted volume's files are often links, and what they point to is checked like any file.

use std::{
    fs::{File, Metadata, OpenOptions},
    io::Read,
    os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt},
    path::Path,
    time::SystemTime,
};

/// What identifies one version of a file without reading it: its length, modification time and
/// inode (a file renamed over another is a new inode, a file rewritten in place a new mtime).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileSignature {
    pub len: u64,
    pub modified: SystemTime,
    pub inode: u64,
}

impl FileSignature {
    pub fn of(metadata: &Metadata) -> Self {
        FileSignature {
            len: metadata.len(),
            modified: metadata.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            inode: metadata.ino(),
        }
    }

    /// The signature of the file at `path` now, None if it cannot be looked at (missing).
    pub fn at(path: &Path) -> Option<Self> {
        std::fs::metadata(path).ok().map(|metadata| FileSignature::of(&metadata))
    }
}

/// Why a file could not be opened for reading.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("it does not exist")]
    Missing,
    #[error("it is {0}, not a regular file")]
    NotRegular(&'static str),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// A regular file opened for reading, with its signature at the time it was opened.
#[derive(Debug)]
pub struct RegularFile {
    pub file: File,
    pub signature: FileSignature,
}

impl RegularFile {
    pub fn open(path: &Path) -> Result<Self, OpenError> {
        let file = OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path).map_err(|error| {
            if error.kind() == std::io::ErrorKind::NotFound { OpenError::Missing } else { OpenError::Io(error) }
        })?;
        let metadata = file.metadata()?;
        let kind = metadata.file_type();
        let not_regular = if kind.is_dir() {
            Some("a directory")
        } else if kind.is_fifo() {
            Some("a FIFO")
        } else if kind.is_socket() {
            Some("a socket")
        } else if kind.is_char_device() {
            Some("a character device")
        } else if kind.is_block_device() {
            Some("a block device")
        } else {
            None
        };
        if let Some(kind) = not_regular {
            return Err(OpenError::NotRegular(kind));
        }
        // O_NONBLOCK means nothing to a regular file's reads, so it can stay set.
        Ok(RegularFile { signature: FileSignature::of(&metadata), file })
    }

    /// Fails if the file changed (rewritten in place) since it was opened: what was read may mix
    /// two versions.
    pub fn unchanged_since_opened(&self) -> Result<(), std::io::Error> {
        let now = FileSignature::of(&self.file.metadata()?);
        if now == self.signature {
            Ok(())
        } else {
            Err(std::io::Error::other("it changed while it was being read; it is read again once it holds still"))
        }
    }

    /// The whole file, refused unread if it is longer than `limit` bytes.
    pub fn read_at_most(self, limit: u64) -> Result<Vec<u8>, std::io::Error> {
        if self.signature.len > limit {
            return Err(std::io::Error::other(format!(
                "it is {} bytes, over the limit of {limit}",
                self.signature.len
            )));
        }
        let mut bytes = Vec::with_capacity(self.signature.len as usize);
        // Bounded again while reading: the file may have grown since it was looked at.
        (&self.file).take(limit.saturating_add(1)).read_to_end(&mut bytes)?;
        if bytes.len() as u64 > limit {
            return Err(std::io::Error::other(format!("it grew past the limit of {limit} bytes while being read")));
        }
        Ok(bytes)
    }

    /// A path that names this very file (not whatever the original path names by now), for
    /// libraries that open files by name themselves.
    pub fn proc_path(&self) -> String {
        use std::os::fd::AsRawFd;
        format!("/proc/self/fd/{}", self.file.as_raw_fd())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_open_and_a_fifo_does_not_block() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0);
        assert!(matches!(RegularFile::open(&fifo), Err(OpenError::NotRegular("a FIFO"))));
        assert!(matches!(RegularFile::open(dir.path()), Err(OpenError::NotRegular("a directory"))));
        assert!(matches!(RegularFile::open(Path::new("/dev/zero")), Err(OpenError::NotRegular("a character device"))));
        assert!(matches!(RegularFile::open(&dir.path().join("none")), Err(OpenError::Missing)));
        let link = dir.path().join("zero");
        std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
        assert!(matches!(RegularFile::open(&link), Err(OpenError::NotRegular(_))), "a link is checked at its target");
        let file = dir.path().join("file");
        std::fs::write(&file, b"12345").unwrap();
        assert_eq!(RegularFile::open(&file).unwrap().read_at_most(5).unwrap(), b"12345");
        assert!(RegularFile::open(&file).unwrap().read_at_most(4).is_err());
    }

    #[test]
    fn a_file_rewritten_in_place_after_opening_is_noticed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("file");
        std::fs::write(&path, b"one").unwrap();
        let opened = RegularFile::open(&path).unwrap();
        opened.unchanged_since_opened().unwrap();
        std::fs::write(&path, b"three").unwrap();
        assert!(opened.unchanged_since_opened().is_err());
    }
}
