//! Providers: where resources come from. Each produces a [`Snapshot`] of everything it sees.
//!
//! [`FileProvider`] is the embedded default: a set of directories of Kubernetes manifests, read recursively
//! and watched. A file that stops parsing does not take its objects away: the last good version of each of
//! them stays in the snapshot (with a warning) until the file is fixed or the object is really deleted.

pub mod kubernetes;
pub mod lease;

use portico_resources::{Diagnostic, Replaced, Resource, ResourceRef, Severity, Snapshot, Source, parse_manifests};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::mpsc;

/// What one load of the provider saw.
#[derive(Clone, Debug, Default)]
pub struct Loaded {
    pub snapshot: Snapshot,
    /// Parse errors and warnings, located by file and line.
    pub diagnostics: Vec<Diagnostic>,
    /// Number of manifest files read.
    pub files: usize,
    /// Documents of kinds Portico does not read (`apiVersion kind`), with how many of each.
    pub ignored: BTreeMap<String, usize>,
    /// Gateways and Services have not been listed yet (an API server slow to answer at start): what is missing
    /// may exist, so nothing is deleted for its absence.
    pub partial: bool,
}

impl Loaded {
    /// Whether any file had an error.
    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(|d| d.severity == Severity::Error)
    }
}

/// Reads manifests from directories.
pub struct FileProvider {
    directories: Vec<PathBuf>,
    default_namespace: String,
    /// Per file, the objects it held the last time it parsed without error.
    last_good: BTreeMap<PathBuf, Vec<(Resource, Source)>>,
    /// Files whose last parse was clean, by the hash of their text: the warnings and ignored kinds of that
    /// parse (the objects are in `last_good`).
    unchanged: BTreeMap<PathBuf, Unchanged>,
    /// Every file of the last load with the hash of its text, sorted: a load that reads the same is not sent.
    last_read: Vec<(PathBuf, u64)>,
}

/// One manifest file as read.
struct FileText {
    path: PathBuf,
    hash: u64,
    text: String,
}

struct Unchanged {
    hash: u64,
    diagnostics: Vec<Diagnostic>,
    ignored: Vec<String>,
}

/// Errors of the file provider.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot watch {path}: {source}")]
    Watch { path: PathBuf, source: notify::Error },
    /// The Kubernetes API server cannot be reached or configured.
    #[error("kubernetes: {0}")]
    Kubernetes(String),
}

/// Builds the snapshot from the objects of every file, in file order; an object that another file defines again
/// is replaced by the later definition, with a warning.
fn build_snapshot(loaded: &mut Loaded, objects: Vec<(Resource, Source)>) {
    let (snapshot, replaced) = Snapshot::from_objects(objects.into_iter().map(|(r, s)| (r, Some(s))).collect());
    loaded.snapshot = snapshot;
    for Replaced { reference, earlier, later } in replaced {
        // Every object here has a source; a file that defines an object twice is not warned about here.
        let (Some(earlier), Some(later)) = (earlier, later) else { continue };
        if earlier.file == later.file {
            continue;
        }
        loaded.diagnostics.push(Diagnostic {
            severity: Severity::Warning,
            file: Some(later.file.to_string()),
            line: Some(later.line),
            resource: Some(reference),
            field: None,
            message: "defined more than once; this later definition is used".into(),
        });
    }
}

impl FileProvider {
    /// A provider over `directories` (or single files); objects without a namespace get `default_namespace`.
    pub fn new(directories: Vec<PathBuf>, default_namespace: impl Into<String>) -> Self {
        FileProvider {
            directories,
            default_namespace: default_namespace.into(),
            last_good: BTreeMap::new(),
            unchanged: BTreeMap::new(),
            last_read: Vec::new(),
        }
    }

    /// Every manifest file, sorted, so that the snapshot does not depend on directory order.
    fn files(&self) -> Result<Vec<PathBuf>, ProviderError> {
        let mut files = Vec::new();
        for root in &self.directories {
            if root.is_file() {
                files.push(root.clone());
                continue;
            }
            let mut pending = vec![root.clone()];
            while let Some(dir) = pending.pop() {
                let entries =
                    std::fs::read_dir(&dir).map_err(|source| ProviderError::Read { path: dir.clone(), source })?;
                for entry in entries.flatten() {
                    let path = entry.path();
                    let name = entry.file_name().to_string_lossy().to_string();
                    if name.starts_with('.') {
                        continue; // editors' temporary files, and hidden directories
                    }
                    if path.is_dir() {
                        pending.push(path);
                    } else if name.ends_with(".yaml") || name.ends_with(".yml") {
                        files.push(path);
                    }
                }
            }
        }
        files.sort();
        files.dedup();
        Ok(files)
    }

    /// Reads every file into a snapshot.
    pub fn load(&mut self) -> Result<Loaded, ProviderError> {
        let texts = self.read()?;
        Ok(self.build(texts))
    }

    /// Like [`FileProvider::load`], but `None` when every file reads as at the last load: an editor's swap
    /// file, a `touch`, or the temporary file of an atomic save raise events, and with 10,000 routes a
    /// translation for nothing costs most of a second.
    pub fn load_if_changed(&mut self) -> Result<Option<Loaded>, ProviderError> {
        let texts = self.read()?;
        // `build` records what it read; compared here without building that list again.
        let same = texts.iter().map(|file| (&file.path, file.hash)).eq(self.last_read.iter().map(|(p, h)| (p, *h)));
        if same {
            return Ok(None);
        }
        Ok(Some(self.build(texts)))
    }

    /// The text of every manifest file, in file order.
    fn read(&self) -> Result<Vec<FileText>, ProviderError> {
        let mut texts = Vec::new();
        for path in self.files()? {
            let text = match std::fs::read_to_string(&path) {
                Ok(text) => text,
                // Deleted between listing and reading: the next event reloads.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(source) => return Err(ProviderError::Read { path, source }),
            };
            use std::hash::{Hash, Hasher};
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            text.hash(&mut hasher);
            texts.push(FileText { path, hash: hasher.finish(), text });
        }
        Ok(texts)
    }

    /// Parses the files read (or takes the objects of files unchanged since their last clean parse) into a
    /// snapshot.
    fn build(&mut self, texts: Vec<FileText>) -> Loaded {
        let mut loaded = Loaded::default();
        self.last_read = texts.iter().map(|file| (file.path.clone(), file.hash)).collect();
        let mut seen = Vec::new();
        let mut objects = Vec::new();
        for FileText { path, hash, text } in texts {
            loaded.files += 1;
            let shown = path.display().to_string();
            let Some(parsed) = self.parse(&path, &shown, &text, hash) else {
                // Unchanged since its last clean parse: its objects go from the cache into the snapshot (shared,
                // not copied).
                let resources = self.last_good.get(&path).map_or(&[][..], Vec::as_slice);
                if let Some(same) = self.unchanged.get(&path) {
                    loaded.diagnostics.extend(same.diagnostics.iter().cloned());
                    for what in &same.ignored {
                        *loaded.ignored.entry(what.clone()).or_default() += 1;
                    }
                }
                objects.extend(resources.iter().cloned());
                seen.push(path);
                continue;
            };
            for what in parsed.ignored.iter() {
                *loaded.ignored.entry(what.clone()).or_default() += 1;
            }
            let has_errors = parsed.has_errors();
            loaded.diagnostics.extend(parsed.diagnostics);
            let fresh: Vec<ResourceRef> = parsed.resources.iter().map(|(r, _)| r.resource_ref()).collect();
            if has_errors {
                // Keep the last good version of objects the broken file no longer yields.
                for (resource, source) in self.last_good.get(&path).into_iter().flatten() {
                    let reference = resource.resource_ref();
                    if !fresh.contains(&reference) {
                        loaded.diagnostics.push(Diagnostic {
                            severity: Severity::Warning,
                            file: Some(shown.clone()),
                            line: Some(source.line),
                            resource: Some(reference),
                            field: None,
                            message: "the file has errors; the last good version of this object stays in force".into(),
                        });
                        objects.push((resource.clone(), source.clone()));
                    }
                }
            }
            objects.extend(parsed.resources.iter().cloned());
            // A broken file keeps its previous good set; a file seen broken the first time keeps what it has.
            if !has_errors || !self.last_good.contains_key(&path) {
                self.last_good.insert(path.clone(), parsed.resources);
            }
            seen.push(path);
        }
        build_snapshot(&mut loaded, objects);
        self.last_good.retain(|path, _| seen.contains(path));
        self.unchanged.retain(|path, _| seen.contains(path));
        loaded
    }

    /// Parses a file, or takes the objects of its last parse when its text has not changed (one file of many
    /// changes at a time: with 10,000 routes in 100 files, parsing is most of a reload).
    /// The file parsed, or `None` when its text is the same as at its last clean parse (then `last_good` and
    /// `unchanged` hold what that parse gave).
    fn parse(&mut self, path: &PathBuf, shown: &str, text: &str, hash: u64) -> Option<portico_resources::ParsedFile> {
        if self.unchanged.get(path).is_some_and(|same| same.hash == hash) && self.last_good.contains_key(path) {
            return None;
        }
        let parsed = parse_manifests(shown, text, &self.default_namespace);
        // Only a clean parse is reused: then `last_good` holds exactly its objects.
        if parsed.has_errors() {
            self.unchanged.remove(path);
        } else {
            let same = Unchanged { hash, diagnostics: parsed.diagnostics.clone(), ignored: parsed.ignored.clone() };
            self.unchanged.insert(path.clone(), same);
        }
        Some(parsed)
    }

    /// Watches the directories and sends a fresh [`Loaded`] after each burst of changes (debounced), until
    /// the receiver is dropped. The first load is sent at once.
    pub fn watch(self, debounce: Duration) -> Result<mpsc::Receiver<Result<Loaded, ProviderError>>, ProviderError> {
        use notify::Watcher;
        let (events_tx, mut events_rx) = mpsc::unbounded_channel::<()>();
        let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            // Reading the files ourselves raises access and metadata events: only changes count, or we
            // would reload forever.
            use notify::event::{EventKind, ModifyKind};
            let changed = event.is_ok_and(|e| match e.kind {
                EventKind::Modify(ModifyKind::Metadata(_)) => false,
                EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_) => true,
                _ => false,
            });
            if changed {
                let _ = events_tx.send(());
            }
        })
        .map_err(|source| ProviderError::Watch { path: PathBuf::new(), source })?;
        for root in &self.directories {
            watcher
                .watch(root, notify::RecursiveMode::Recursive)
                .map_err(|source| ProviderError::Watch { path: root.clone(), source })?;
        }
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            let _watcher = watcher; // lives as long as the task
            // Loads run on the blocking pool: reading and parsing thousands of manifests (or cloning the 10,000
            // objects of the unchanged files) took 40-400 ms of a runtime worker, during which the requests on
            // that worker waited.
            let Some((mut provider, first)) = on_blocking_pool(self, Self::load).await else { return };
            if tx.send(first).await.is_err() {
                return;
            }
            loop {
                if events_rx.recv().await.is_none() {
                    return;
                }
                // Let a burst of writes (an editor's save, a `cp -r`) settle before reading.
                tokio::time::sleep(debounce).await;
                while events_rx.try_recv().is_ok() {}
                let Some((returned, loaded)) = on_blocking_pool(provider, Self::load_if_changed).await else { return };
                provider = returned;
                let loaded = match loaded {
                    Ok(None) => continue, // the events changed no file's text
                    Ok(Some(loaded)) => Ok(loaded),
                    Err(error) => Err(error),
                };
                if tx.send(loaded).await.is_err() {
                    return;
                }
            }
        });
        Ok(rx)
    }
}

/// Runs `work` on `state` on the blocking pool, not on a runtime worker (which serves requests meanwhile), and
/// gives the state back with the result; `None` if `work` panicked.
pub(crate) async fn on_blocking_pool<S, T>(mut state: S, work: fn(&mut S) -> T) -> Option<(S, T)>
where
    S: Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(move || {
        let result = work(&mut state);
        (state, result)
    })
    .await
    .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAMESPACE: &str = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: team\n";

    #[test]
    fn a_broken_file_keeps_its_last_good_objects() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("ns.yaml");
        std::fs::write(&file, NAMESPACE).expect("write");
        let mut provider = FileProvider::new(vec![dir.path().to_path_buf()], "default");
        let first = provider.load().expect("load");
        assert_eq!(first.snapshot.namespaces.len(), 1);

        std::fs::write(&file, "apiVersion: v1\nkind: Namespace\nmetadata: [broken\n").expect("write");
        let broken = provider.load().expect("load");
        assert!(broken.has_errors());
        assert_eq!(broken.snapshot.namespaces.len(), 1, "last good version kept");

        std::fs::write(&file, "").expect("write");
        let emptied = provider.load().expect("load");
        assert!(emptied.snapshot.namespaces.is_empty(), "a clean file really deletes");
    }

    /// A file whose text did not change is not parsed again, yet the load gives the same snapshot and the
    /// same remarks as a full parse: its objects, its warnings, the skipped kinds, and the warning when another
    /// file defines one of its objects again.
    #[test]
    fn unchanged_files_load_as_if_parsed_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let skipped = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n";
        std::fs::write(dir.path().join("a.yaml"), format!("{NAMESPACE}---\n{skipped}")).expect("write");
        let mut provider = FileProvider::new(vec![dir.path().to_path_buf()], "default");
        let first = provider.load().expect("load");
        std::fs::write(dir.path().join("b.yaml"), NAMESPACE).expect("write");
        let second = provider.load().expect("load");
        let third = provider.load().expect("load");
        for loaded in [&first, &second, &third] {
            assert_eq!(loaded.snapshot.namespaces.len(), 1);
            assert_eq!(loaded.ignored.get("apps/v1 Deployment"), Some(&1), "{:?}", loaded.ignored);
        }
        for loaded in [&second, &third] {
            let again: Vec<_> = loaded.diagnostics.iter().filter(|d| d.message.contains("more than once")).collect();
            assert_eq!(again.len(), 1, "{:?}", loaded.diagnostics);
            assert!(again[0].file.as_deref().is_some_and(|f| f.ends_with("b.yaml")));
        }
        assert_eq!(second.diagnostics.len(), third.diagnostics.len());
    }

    /// Events that change no file's text (a hidden temporary file, the same text written again, a broken file
    /// still broken the same way) give no new load; a change, a new file or a deleted one does.
    #[test]
    fn a_load_that_reads_the_same_files_is_not_sent_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).expect("write");
        write("a.yaml", NAMESPACE);
        let mut provider = FileProvider::new(vec![dir.path().to_path_buf()], "default");
        assert_eq!(provider.load().expect("load").snapshot.namespaces.len(), 1);
        write(".a.yaml.tmp", "kind: [broken\n");
        write("a.yaml", NAMESPACE);
        assert!(provider.load_if_changed().expect("load").is_none(), "same text, and a hidden file");

        write("b.yaml", "kind: [broken\n");
        let broken = provider.load_if_changed().expect("load").expect("a new file is a change");
        assert!(broken.has_errors());
        assert!(provider.load_if_changed().expect("load").is_none(), "still broken the same way");

        write("b.yaml", &NAMESPACE.replace("team", "other"));
        let fixed = provider.load_if_changed().expect("load").expect("a new text is a change");
        assert_eq!(fixed.snapshot.namespaces.len(), 2);
        std::fs::remove_file(dir.path().join("b.yaml")).expect("remove");
        let removed = provider.load_if_changed().expect("load").expect("a deleted file is a change");
        assert_eq!(removed.snapshot.namespaces.len(), 1);
    }

    /// Two files define the same object: the later file's version is used, and the warning points at it.
    #[test]
    fn a_later_file_replaces_an_earlier_definition() {
        let dir = tempfile::tempdir().expect("tempdir");
        let labelled = |label: &str| {
            format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: team\n  labels: {{from: {label}}}\n")
        };
        std::fs::write(dir.path().join("a.yaml"), labelled("a")).expect("write");
        std::fs::write(dir.path().join("b.yaml"), format!("{NAMESPACE}---\n{}", labelled("b"))).expect("write");
        let mut provider = FileProvider::new(vec![dir.path().to_path_buf()], "default");
        let loaded = provider.load().expect("load");
        let namespace = loaded.snapshot.namespaces.values().next().expect("the namespace");
        assert_eq!(loaded.snapshot.namespaces.len(), 1);
        let labels = namespace.metadata.labels.as_ref().expect("labels");
        assert_eq!(labels.get("from").map(String::as_str), Some("b"), "the last definition wins");
        let source = loaded.snapshot.sources.values().next().expect("a source");
        assert!(source.file.ends_with("b.yaml") && source.line == 6, "{source:?}");
        let again: Vec<_> = loaded.diagnostics.iter().filter(|d| d.message.contains("more than once")).collect();
        // One warning for a.yaml's definition replaced by b.yaml's first; none within b.yaml.
        assert_eq!(again.len(), 1, "{:?}", loaded.diagnostics);
        assert!(again[0].file.as_deref().is_some_and(|f| f.ends_with("b.yaml")), "{again:?}");
    }
}
