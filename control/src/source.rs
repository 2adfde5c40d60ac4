//! Configuration sources. A watched directory of YAML files: every `*.yaml` / `*.yml`
//! below it (subdirectories included, hidden entries skipped) is parsed; the whole set is
//! validated together. A change (a file added, changed or removed) is noticed within the
//! poll interval and published once the directory has been quiet for the settle time, so
//! an editor's burst of writes gives one update. A set that does not parse or validate is
//! reported and the last good one stays published.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use crate::error::ResourceError;
use crate::resources::{parse_file, MeshResources};

/// How often the directory is looked at.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(200);

/// How long the directory must stay unchanged before a change is read.
pub const DEFAULT_SETTLE_TIME: Duration = Duration::from_millis(100);

/// One loaded, validated set of resources.
#[derive(Debug)]
pub struct Loaded {
    /// Increases with every published set.
    pub generation: u64,
    /// The resources.
    pub mesh: MeshResources,
    /// Files read, relative to the directory (from Kubernetes: the objects read).
    pub files: Vec<String>,
}

/// What a file looked like when the directory was last listed.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
}

/// The YAML files below `dir`, by path relative to it, with their stamps.
fn list(dir: &Path) -> std::io::Result<BTreeMap<PathBuf, Stamp>> {
    let mut out = BTreeMap::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let name = entry.file_name();
            if name.to_string_lossy().starts_with('.') {
                continue;
            }
            let path = entry.path();
            let meta = match entry.metadata() {
                Ok(m) => m,
                // Removed between listing and looking: the next poll sees it gone.
                Err(_) => continue,
            };
            if meta.is_dir() {
                pending.push(path);
                continue;
            }
            let yaml = path.extension().is_some_and(|e| e == "yaml" || e == "yml");
            if meta.is_file() && yaml {
                let rel = path.strip_prefix(dir).unwrap_or(&path).to_owned();
                out.insert(
                    rel,
                    Stamp {
                        modified: meta.modified().ok(),
                        len: meta.len(),
                    },
                );
            }
        }
    }
    Ok(out)
}

/// Why a directory could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The directory could not be read.
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    /// Resources did not parse or validate; every problem, with file, resource and path.
    #[error("{}", crate::error::join_errors(.0))]
    Invalid(Vec<ResourceError>),
}

/// Reads and validates every YAML file below `dir`.
pub fn load_dir(dir: &Path) -> Result<(MeshResources, Vec<String>), LoadError> {
    let files = list(dir).map_err(|e| LoadError::Io(dir.display().to_string(), e))?;
    let mut mesh = MeshResources::new();
    let mut errors = Vec::new();
    let mut names = Vec::with_capacity(files.len());
    for rel in files.keys() {
        let shown = rel.display().to_string();
        let path = dir.join(rel);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            // Gone since the listing: it is simply not part of this set.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(LoadError::Io(path.display().to_string(), e)),
        };
        match parse_file(&shown, &text) {
            Ok(resources) => {
                for r in resources {
                    mesh.add(r);
                }
            }
            Err(mut e) => errors.append(&mut e),
        }
        names.push(shown);
    }
    let mesh = checked(mesh, errors).map_err(LoadError::Invalid)?;
    Ok((mesh, names))
}

/// The set, when every resource parsed (`errors` is empty) and the whole validates;
/// otherwise every problem.
pub(crate) fn checked(
    mesh: MeshResources,
    mut errors: Vec<ResourceError>,
) -> Result<MeshResources, Vec<ResourceError>> {
    if errors.is_empty() {
        if let Err(mut e) = mesh.validate() {
            errors.append(&mut e);
        }
    }
    if errors.is_empty() {
        Ok(mesh)
    } else {
        Err(errors)
    }
}

/// A running source: the sets it publishes and the problems of the ones it refused.
/// The source stops when this is dropped.
pub struct Watched {
    rx: watch::Receiver<Option<Arc<Loaded>>>,
    errors: watch::Receiver<Option<Arc<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Watched {
    /// Spawns a source's loop, which publishes through the [`Publisher`] it is given.
    pub(crate) fn spawn<F, Fut>(run: F) -> Watched
    where
        F: FnOnce(Publisher) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let (tx, rx) = watch::channel(None);
        let (etx, erx) = watch::channel(None);
        let task = tokio::spawn(run(Publisher {
            tx,
            errors: etx,
            generation: 0,
        }));
        Watched {
            rx,
            errors: erx,
            task,
        }
    }

    /// The newest good set (`None` until one loads); `changed()` on it wakes on each
    /// new set.
    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<Loaded>>> {
        self.rx.clone()
    }

    /// The problems of the newest attempt that failed (`None` after a good one).
    pub fn errors(&self) -> watch::Receiver<Option<Arc<String>>> {
        self.errors.clone()
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The sending side of a [`Watched`]: numbers and publishes good sets, reports refused
/// ones.
pub(crate) struct Publisher {
    tx: watch::Sender<Option<Arc<Loaded>>>,
    errors: watch::Sender<Option<Arc<String>>>,
    generation: u64,
}

impl Publisher {
    /// Publishes a good set under the next generation, which it returns; clears the
    /// reported problems.
    pub fn publish(&mut self, mesh: MeshResources, files: Vec<String>) -> u64 {
        self.generation += 1;
        let generation = self.generation;
        self.errors.send_if_modified(|e| e.take().is_some());
        let _ = self.tx.send(Some(Arc::new(Loaded {
            generation,
            mesh,
            files,
        })));
        generation
    }

    /// Reports a refused set; the last good one stays published.
    pub fn refuse(&self, problems: String) {
        let _ = self.errors.send(Some(Arc::new(problems)));
    }
}

/// A watched directory.
pub struct DirWatch;

impl DirWatch {
    /// Loads `dir` once and starts watching it. The first load may fail; the watch goes
    /// on and publishes the first set that loads.
    pub fn start(dir: PathBuf, poll: Duration, settle: Duration) -> Watched {
        Watched::spawn(move |publisher| run(dir, poll, settle, publisher))
    }
}

async fn run(dir: PathBuf, poll: Duration, settle: Duration, mut publisher: Publisher) {
    let mut seen: Option<BTreeMap<PathBuf, Stamp>> = None;
    loop {
        // Listing is a few stat calls on a small directory.
        let now = list(&dir).ok();
        if now.is_some() && now != seen {
            // Let a burst of writes finish: read once the listing holds still.
            tokio::time::sleep(settle).await;
            let again = list(&dir).ok();
            if again != now {
                continue;
            }
            seen = now;
            let target = dir.clone();
            let loaded = tokio::task::spawn_blocking(move || load_dir(&target)).await;
            let loaded = match loaded {
                Ok(r) => r,
                Err(e) => Err(LoadError::Io(
                    dir.display().to_string(),
                    std::io::Error::other(e),
                )),
            };
            match loaded {
                Ok((mesh, files)) => {
                    let count = files.len();
                    let generation = publisher.publish(mesh, files);
                    tracing::info!(dir = %dir.display(), generation, files = count, "mesh resources loaded");
                }
                Err(e) => {
                    let text = e.to_string();
                    tracing::error!(dir = %dir.display(), errors = %text, "mesh resources refused; keeping the last good set");
                    publisher.refuse(text);
                }
            }
        } else if now.is_none() && seen.is_some() {
            tracing::warn!(dir = %dir.display(), "cannot list the directory; keeping the last good set");
            seen = None;
        }
        tokio::time::sleep(poll).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ENTRY: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: demo, namespace: default }
spec:
  hosts: [demo.svc]
  ports: [{ number: 20880, name: tcp-metaprotocol-dubbo, protocol: TCP }]
  endpoints: [{ address: 127.0.0.1, ports: { tcp-metaprotocol-dubbo: 20881 } }]
"#;

    fn router(cluster_subset: &str) -> String {
        format!(
            r#"
apiVersion: metaprotocol.aeraki.io/v1alpha1
kind: MetaRouter
metadata: {{ name: demo, namespace: default }}
spec:
  hosts: [demo.svc]
  routes:
    - name: all
      route: [{{ destination: {{ host: demo.svc{cluster_subset} }} }}]
"#
        )
    }

    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            let nanos = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            let p = std::env::temp_dir().join(format!(
                "metamesh-source-{tag}-{}-{nanos}",
                std::process::id()
            ));
            std::fs::create_dir_all(p.join("sub")).expect("mkdir");
            TempDir(p)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    async fn next(rx: &mut watch::Receiver<Option<Arc<Loaded>>>) -> Arc<Loaded> {
        tokio::time::timeout(Duration::from_secs(10), rx.changed())
            .await
            .expect("a new set within 10 s")
            .expect("watch alive");
        rx.borrow().clone().expect("a set")
    }

    #[test]
    fn load_dir_reads_nested_yaml_and_reports_every_file_problem() {
        let d = TempDir::new("load");
        std::fs::write(d.0.join("entry.yaml"), ENTRY).expect("write");
        std::fs::write(d.0.join("sub/router.yml"), router("")).expect("write");
        std::fs::write(d.0.join("notes.txt"), "not yaml at all: [").expect("write");
        std::fs::write(d.0.join(".hidden.yaml"), "broken: [").expect("write");
        let (mesh, files) = load_dir(&d.0).expect("loads");
        assert_eq!(files, ["entry.yaml", "sub/router.yml"]);
        assert_eq!(mesh.service_entries().len(), 1);
        assert_eq!(mesh.meta_routers().len(), 1);

        std::fs::write(
            d.0.join("sub/router.yml"),
            router("").replace("name: all", "name: [oops]"),
        )
        .expect("write");
        let err = load_dir(&d.0).expect_err("invalid").to_string();
        assert!(err.contains("sub/router.yml"), "{err}");
        assert!(err.contains("MetaRouter/default/demo"), "{err}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn changes_are_published_and_bad_sets_keep_the_last_good_one() {
        let d = TempDir::new("watch");
        std::fs::write(d.0.join("entry.yaml"), ENTRY).expect("write");
        let w = DirWatch::start(
            d.0.clone(),
            Duration::from_millis(20),
            Duration::from_millis(20),
        );
        let mut rx = w.subscribe();
        let current = rx.borrow().clone();
        let first = match current {
            Some(l) => l,
            None => next(&mut rx).await,
        };
        assert_eq!(first.generation, 1);
        assert_eq!(first.mesh.meta_routers().len(), 0);

        // Added file.
        std::fs::write(d.0.join("router.yaml"), router("")).expect("write");
        let second = next(&mut rx).await;
        assert_eq!(second.generation, 2);
        assert_eq!(second.mesh.meta_routers().len(), 1);

        // A broken change is refused; the good set stays and the error is told.
        let mut errors = w.errors();
        std::fs::write(d.0.join("router.yaml"), "kind: MetaRouter\nspec: [").expect("write");
        tokio::time::timeout(Duration::from_secs(10), errors.changed())
            .await
            .expect("an error within 10 s")
            .expect("alive");
        let text = errors.borrow().clone().expect("error text");
        assert!(text.contains("router.yaml"), "{text}");
        assert_eq!(rx.borrow().as_ref().map(|l| l.generation), Some(2));

        // Removed file: the next good set has no router.
        std::fs::remove_file(d.0.join("router.yaml")).expect("rm");
        let third = next(&mut rx).await;
        assert_eq!(third.generation, 3);
        assert_eq!(third.mesh.meta_routers().len(), 0);
        assert!(
            errors.borrow().is_none(),
            "the error clears with a good set"
        );
    }
}
