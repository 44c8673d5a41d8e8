//! What a repository poll sees of each model, and the rule that a change is applied only once
//! two polls in a row see the same thing: a file still being copied changes between them, so
//! it is never loaded half-written.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hasher;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::engine::repository::{CONFIG_FILE, ModelConfig, ModelEntry, Slot, read_config};

/// A model as it is on disk: its settings, and the content of each version's file that its
/// version policy serves.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelPrint {
    /// `config.toml`, parsed, or why it does not parse.
    pub config: Result<ModelConfig, String>,
    /// Each version's file: a hash of its bytes, or why it cannot be read.
    pub files: BTreeMap<u64, Result<u64, String>>,
}

/// The identity of a file's current content as its metadata tells it: the change time moves on
/// every write (and cannot be set back), so a file whose identity is unchanged need not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Identity {
    len: u64,
    modified: Option<std::time::SystemTime>,
    changed: i64,
    changed_ns: i64,
    inode: u64,
}

fn identity(path: &Path) -> std::io::Result<Identity> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path)?;
    Ok(Identity {
        len: meta.len(),
        modified: meta.modified().ok(),
        changed: meta.ctime(),
        changed_ns: meta.ctime_nsec(),
        inode: meta.ino(),
    })
}

/// Content hashes of model files, read again only when a file's metadata changes. A file
/// touched but not changed keeps its hash, so it is not reloaded.
#[derive(Debug, Default)]
pub struct Hashes {
    known: HashMap<PathBuf, (Identity, u64)>,
}

impl Hashes {
    /// The content hash of `path`.
    pub fn hash(&mut self, path: &Path) -> std::io::Result<u64> {
        let id = identity(path)?;
        if let Some((known, hash)) = self.known.get(path)
            && *known == id
        {
            return Ok(*hash);
        }
        let hash = content_hash(path)?;
        self.known.insert(path.to_path_buf(), (id, hash));
        Ok(hash)
    }

    /// What is on disk of the model `entry` was discovered from, in `model_dir`, and when its
    /// files were last written (the newest of their modification times).
    pub fn print(
        &mut self,
        model_dir: &Path,
        entry: &ModelEntry<PathBuf>,
    ) -> (ModelPrint, Option<SystemTime>) {
        let config_path = model_dir.join(CONFIG_FILE);
        let written = entry
            .versions
            .values()
            .filter_map(|slot| match slot {
                Slot::Ready(path) => Some(path.as_path()),
                _ => None,
            })
            .chain(std::iter::once(config_path.as_path()))
            .filter_map(|path| std::fs::metadata(path).ok()?.modified().ok())
            .max();
        let files = entry
            .versions
            .iter()
            .map(|(&v, slot)| {
                let hash = match slot {
                    Slot::Ready(path) => self
                        .hash(path)
                        .map_err(|e| format!("{}: {e}", path.display())),
                    Slot::Failed(reason) => Err(reason.clone()),
                    Slot::Loading | Slot::Unloaded => Err("not found".to_string()),
                };
                (v, hash)
            })
            .collect();
        let print = ModelPrint {
            config: read_config(model_dir),
            files,
        };
        (print, written)
    }
}

fn content_hash(path: &Path) -> std::io::Result<u64> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = std::hash::DefaultHasher::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        hasher.write(&buffer[..n]);
    }
    Ok(hasher.finish())
}

/// What to do about a model after a poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// What is on disk is what is served.
    Unchanged,
    /// It differs, but has not yet been seen the same twice.
    Wait,
    /// It differs, and two polls agree: apply it.
    Apply,
}

/// What the previous poll saw of each model that differed from what was served.
#[derive(Debug, Default)]
pub struct Watch {
    seen: BTreeMap<String, Option<ModelPrint>>,
}

impl Watch {
    /// Decides about model `name`, given what this poll saw of it (`None`: its folder is gone),
    /// what was last applied (`None`: nothing), and whether its files have been left alone
    /// for a whole poll interval (`quiet`): a copy that pauses between two looks is not
    /// taken for finished.
    pub fn observe(
        &mut self,
        name: &str,
        now: Option<ModelPrint>,
        applied: Option<&ModelPrint>,
        quiet: bool,
    ) -> Decision {
        if now.as_ref() == applied {
            self.seen.remove(name);
            return Decision::Unchanged;
        }
        match self.seen.get(name) {
            Some(before) if *before == now && quiet => {
                self.seen.remove(name);
                Decision::Apply
            }
            _ => {
                self.seen.insert(name.to_string(), now);
                Decision::Wait
            }
        }
    }

    /// Whether some change awaits its second look.
    pub fn pending(&self) -> bool {
        !self.seen.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn print(hash: u64) -> ModelPrint {
        ModelPrint {
            config: Ok(ModelConfig::default()),
            files: BTreeMap::from([(1, Ok(hash))]),
        }
    }

    #[test]
    fn a_change_is_applied_only_once_two_polls_agree() {
        let mut watch = Watch::default();
        let served = print(1);
        assert_eq!(
            watch.observe("m", Some(print(1)), Some(&served), true),
            Decision::Unchanged
        );
        // A copy in progress: the file differs each time it is looked at.
        assert_eq!(
            watch.observe("m", Some(print(2)), Some(&served), true),
            Decision::Wait
        );
        assert_eq!(
            watch.observe("m", Some(print(3)), Some(&served), true),
            Decision::Wait
        );
        assert!(watch.pending());
        assert_eq!(
            watch.observe("m", Some(print(3)), Some(&served), true),
            Decision::Apply
        );
        assert!(!watch.pending());
    }

    #[test]
    fn a_change_written_within_the_last_interval_waits() {
        let mut watch = Watch::default();
        let served = print(1);
        let mut observe = |quiet| watch.observe("m", Some(print(2)), Some(&served), quiet);
        assert_eq!(observe(false), Decision::Wait);
        // Seen the same twice, but written moments ago: a copy may only have paused.
        assert_eq!(observe(false), Decision::Wait);
        assert_eq!(observe(true), Decision::Apply);
    }

    #[test]
    fn a_change_undone_before_it_settles_is_forgotten() {
        let mut watch = Watch::default();
        let served = print(1);
        assert_eq!(
            watch.observe("m", Some(print(2)), Some(&served), true),
            Decision::Wait
        );
        assert_eq!(
            watch.observe("m", Some(print(1)), Some(&served), true),
            Decision::Unchanged
        );
        assert_eq!(
            watch.observe("m", Some(print(2)), Some(&served), true),
            Decision::Wait
        );
    }

    #[test]
    fn new_and_removed_models_settle_too() {
        let mut watch = Watch::default();
        assert_eq!(
            watch.observe("new", Some(print(1)), None, true),
            Decision::Wait
        );
        assert_eq!(
            watch.observe("new", Some(print(1)), None, true),
            Decision::Apply
        );
        let served = print(1);
        assert_eq!(
            watch.observe("gone", None, Some(&served), true),
            Decision::Wait
        );
        assert_eq!(
            watch.observe("gone", None, Some(&served), true),
            Decision::Apply
        );
    }

    #[test]
    fn a_touched_file_keeps_its_hash_and_a_rewritten_one_does_not() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("model.onnx");
        std::fs::write(&path, b"one").expect("write");
        let mut hashes = Hashes::default();
        let first = hashes.hash(&path).expect("hash");
        std::fs::write(&path, b"one").expect("rewrite, same bytes");
        assert_eq!(hashes.hash(&path).expect("hash"), first);
        std::fs::write(&path, b"two").expect("rewrite");
        assert_ne!(hashes.hash(&path).expect("hash"), first);
    }
}
