//! The files of a log directory.
//!
//! `list_segments` is the one listing of a directory's segment files: the engine's open, every
//! reader and the tests all see the log through it.

use crate::error::{Error, Result};
use crate::log::format::parse_segment_file_name;
use std::path::{Path, PathBuf};

/// Lists the segment files of `dir` (`<20 digits>.seg`) in log order: (segment id, path).
pub fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let rd = std::fs::read_dir(dir).map_err(|e| Error::io("read directory", dir, e))?;
    let mut segs = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| Error::io("read directory", dir, e))?;
        let name = entry.file_name();
        if let Some(id) = name.to_str().and_then(parse_segment_file_name) {
            segs.push((id, entry.path()));
        }
    }
    segs.sort();
    Ok(segs)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::disallowed_methods)] // test files made behind the seam's back

    use super::*;

    #[test]
    fn lists_segment_files_only_in_id_order() {
        let dir = tempfile::tempdir().unwrap();
        let seg = |id| crate::log::format::segment_file_name(id);
        for name in [seg(30), seg(2), seg(11)] {
            std::fs::File::options()
                .write(true)
                .create_new(true)
                .open(dir.path().join(name))
                .unwrap();
        }
        for other in [
            "LOCK",
            "CLEAN",
            "recycle-1.tmp",
            "x.seg",
            "00000000000000000001.seg.tmp",
        ] {
            std::fs::File::options()
                .write(true)
                .create_new(true)
                .open(dir.path().join(other))
                .unwrap();
        }
        let ids: Vec<u64> = list_segments(dir.path())
            .unwrap()
            .into_iter()
            .map(|(id, path)| {
                assert_eq!(path, dir.path().join(seg(id)));
                id
            })
            .collect();
        assert_eq!(ids, vec![2, 11, 30]);
    }

    #[test]
    fn a_missing_directory_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let gone = dir.path().join("nope");
        let e = list_segments(&gone).unwrap_err().to_string();
        assert!(e.contains("nope"), "{e}");
    }
}
