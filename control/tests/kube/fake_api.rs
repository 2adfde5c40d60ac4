//! A fake Kubernetes API server for tests: a real HTTP/1.1 server on 127.0.0.1:0 that
//! serves list responses (with `metadata.resourceVersion`) and watch streams
//! (newline-delimited `WatchEvent` JSON) of the collections it is given, answers 404
//! with a `Status` for any other path, and can expire watches with `410 Gone`.
//! Metadata-only requests (`Accept: ...;as=PartialObjectMetadataList`) get
//! `PartialObjectMetadata` objects, as from a real API server.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::sync::mpsc;

type Body = BoxBody<Bytes, Infallible>;

/// A collection, by its cluster-wide path (`/api/v1/services`).
struct Collection {
    api_version: String,
    kind: String,
    /// Objects by `namespace/name`.
    objects: BTreeMap<String, Value>,
    /// Every change, with the resource version it made.
    log: Vec<(u64, &'static str, Value)>,
    watchers: Vec<Watcher>,
    lists: usize,
    /// A watch from a version older than this gets `410 Gone`.
    expired_before: u64,
}

struct Watcher {
    namespace: Option<String>,
    metadata_only: bool,
    tx: mpsc::UnboundedSender<Bytes>,
}

struct Inner {
    version: u64,
    collections: BTreeMap<String, Collection>,
}

/// The fake server; stops when dropped.
pub struct FakeApi {
    /// Where it listens.
    pub addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn object_key(o: &Value) -> String {
    let ns = o["metadata"]["namespace"].as_str().unwrap_or_default();
    let name = o["metadata"]["name"].as_str().unwrap_or_default();
    if ns.is_empty() {
        name.to_owned()
    } else {
        format!("{ns}/{name}")
    }
}

fn in_namespace(o: &Value, ns: Option<&str>) -> bool {
    ns.is_none_or(|ns| o["metadata"]["namespace"].as_str() == Some(ns))
}

/// The object as a metadata-only request sees it.
fn shown(o: &Value, metadata_only: bool) -> Value {
    if metadata_only {
        json!({
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": o["metadata"].clone(),
        })
    } else {
        o.clone()
    }
}

fn event_line(kind: &str, object: Value) -> Bytes {
    let mut line = json!({ "type": kind, "object": object }).to_string();
    line.push('\n');
    Bytes::from(line)
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "details": {},
        "code": code,
    })
}

fn full(code: StatusCode, body: &Value) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())).boxed());
    *r.status_mut() = code;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

/// `/api/v1/namespaces/NS/pods` → (`/api/v1/pods`, Some(NS)).
fn split_namespace(path: &str) -> (String, Option<String>) {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    if let Some(i) = parts.iter().position(|p| *p == "namespaces") {
        if parts.len() == i + 3 {
            let mut rest: Vec<&str> = parts[..i].to_vec();
            rest.push(parts[i + 2]);
            return (
                format!("/{}", rest.join("/")),
                Some(parts[i + 1].to_owned()),
            );
        }
    }
    (path.to_owned(), None)
}

fn query(req: &Request<Incoming>) -> BTreeMap<String, String> {
    req.uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            Some((k.to_owned(), v.to_owned()))
        })
        .collect()
}

impl FakeApi {
    /// Starts serving `collections`: cluster-wide path → the list response (as the API
    /// server returns it: `kind`, `apiVersion`, `items`).
    pub async fn start(collections: Vec<(&str, Value)>) -> FakeApi {
        let mut inner = Inner {
            version: 1000,
            collections: BTreeMap::new(),
        };
        for (path, list) in collections {
            let kind = list["kind"]
                .as_str()
                .unwrap_or_default()
                .trim_end_matches("List")
                .to_owned();
            let api_version = list["apiVersion"].as_str().unwrap_or_default().to_owned();
            let mut c = Collection {
                api_version,
                kind,
                objects: BTreeMap::new(),
                log: Vec::new(),
                watchers: Vec::new(),
                lists: 0,
                expired_before: 0,
            };
            for item in list["items"].as_array().cloned().unwrap_or_default() {
                inner.version += 1;
                let mut item = item;
                item["metadata"]["resourceVersion"] = json!(inner.version.to_string());
                c.objects.insert(object_key(&item), item);
            }
            inner.collections.insert(path.to_owned(), c);
        }
        let inner = Arc::new(Mutex::new(inner));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake API server");
        let addr = listener.local_addr().expect("local address");
        let shared = inner.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let shared = shared.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let shared = shared.clone();
                        async move { Ok::<_, Infallible>(handle(&shared, req)) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        FakeApi { addr, inner, task }
    }

    /// The server's URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Creates or replaces an object of a collection; watchers see it unless `silent`.
    fn put(&self, path: &str, object: Value, silent: bool) {
        let mut inner = self.lock();
        inner.version += 1;
        let version = inner.version;
        let c = inner
            .collections
            .get_mut(path)
            .unwrap_or_else(|| panic!("no collection {path}"));
        let mut object = object;
        object["metadata"]["resourceVersion"] = json!(version.to_string());
        object["apiVersion"] = json!(c.api_version);
        object["kind"] = json!(c.kind);
        let key = object_key(&object);
        let kind = if c.objects.contains_key(&key) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        c.objects.insert(key, object.clone());
        if !silent {
            c.log.push((version, kind, object.clone()));
            notify(c, kind, &object);
        }
    }

    /// Creates or replaces an object; watchers get ADDED or MODIFIED.
    pub fn apply(&self, path: &str, object: Value) {
        self.put(path, object, false);
    }

    /// Replaces an object without telling watchers: only a new list shows it.
    pub fn apply_unwatched(&self, path: &str, object: Value) {
        self.put(path, object, true);
    }

    /// Deletes an object; watchers get DELETED.
    pub fn delete(&self, path: &str, key: &str) {
        let mut inner = self.lock();
        inner.version += 1;
        let version = inner.version;
        let Some(c) = inner.collections.get_mut(path) else {
            return;
        };
        if let Some(mut object) = c.objects.remove(key) {
            object["metadata"]["resourceVersion"] = json!(version.to_string());
            c.log.push((version, "DELETED", object.clone()));
            notify(c, "DELETED", &object);
        }
    }

    /// The object at `key` of a collection.
    pub fn get(&self, path: &str, key: &str) -> Value {
        self.lock()
            .collections
            .get(path)
            .and_then(|c| c.objects.get(key).cloned())
            .unwrap_or_else(|| panic!("no {key} in {path}"))
    }

    /// Ends every watch of a collection with `410 Gone`, and forgets its change log, so
    /// a client must list again.
    pub fn expire_watches(&self, path: &str) {
        let mut inner = self.lock();
        inner.version += 1;
        let version = inner.version;
        let Some(c) = inner.collections.get_mut(path) else {
            return;
        };
        c.log.clear();
        c.expired_before = version;
        let gone = json!({
            "type": "ERROR",
            "object": status(410, "Expired", "too old resource version"),
        });
        for w in c.watchers.drain(..) {
            let _ = w.tx.send(Bytes::from(format!("{gone}\n")));
        }
    }

    /// How many lists of a collection were served.
    pub fn lists(&self, path: &str) -> usize {
        self.lock().collections.get(path).map_or(0, |c| c.lists)
    }
}

fn notify(c: &mut Collection, kind: &str, object: &Value) {
    c.watchers.retain(|w| {
        if !in_namespace(object, w.namespace.as_deref()) {
            return !w.tx.is_closed();
        }
        w.tx.send(event_line(kind, shown(object, w.metadata_only)))
            .is_ok()
    });
}

fn handle(shared: &Arc<Mutex<Inner>>, req: Request<Incoming>) -> Response<Body> {
    let (path, namespace) = split_namespace(req.uri().path());
    let q = query(&req);
    let metadata_only = req
        .headers()
        .get(hyper::header::ACCEPT)
        .and_then(|a| a.to_str().ok())
        .is_some_and(|a| a.contains("as=PartialObjectMetadata"));
    let mut inner = shared.lock().unwrap_or_else(|e| e.into_inner());
    let version = inner.version;
    let Some(c) = inner.collections.get_mut(&path) else {
        let message = format!("the server could not find the requested resource ({path})");
        return full(StatusCode::NOT_FOUND, &status(404, "NotFound", &message));
    };
    let watch = q.get("watch").is_some_and(|w| w == "true" || w == "1");
    if !watch {
        c.lists += 1;
        let items: Vec<Value> = c
            .objects
            .values()
            .filter(|o| in_namespace(o, namespace.as_deref()))
            .map(|o| {
                let mut o = shown(o, metadata_only);
                if !metadata_only {
                    // Lists of built-in kinds leave out each item's kind and apiVersion.
                    if let Value::Object(m) = &mut o {
                        if c.api_version == "v1" || c.api_version.starts_with("discovery.k8s.io/") {
                            m.remove("kind");
                            m.remove("apiVersion");
                        }
                    }
                }
                o
            })
            .collect();
        let (kind, api_version) = if metadata_only {
            (
                "PartialObjectMetadataList".to_owned(),
                "meta.k8s.io/v1".to_owned(),
            )
        } else {
            (format!("{}List", c.kind), c.api_version.clone())
        };
        let body = json!({
            "kind": kind,
            "apiVersion": api_version,
            "metadata": { "resourceVersion": version.to_string() },
            "items": items,
        });
        return full(StatusCode::OK, &body);
    }

    // A watch: replay what happened after the client's version, then follow.
    let since: u64 = q
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let (tx, rx) = mpsc::unbounded_channel();
    if since < c.expired_before {
        // Changes the log no longer holds: the client must list again.
        let gone = json!({
            "type": "ERROR",
            "object": status(410, "Expired", "too old resource version"),
        });
        let _ = tx.send(Bytes::from(format!("{gone}\n")));
    } else {
        for (v, kind, object) in &c.log {
            if *v > since && in_namespace(object, namespace.as_deref()) {
                let _ = tx.send(event_line(kind, shown(object, metadata_only)));
            }
        }
        c.watchers.push(Watcher {
            namespace,
            metadata_only,
            tx,
        });
    }
    let stream = tokio_stream::wrappers::UnboundedReceiverStream::new(rx)
        .map(|b| Ok::<_, Infallible>(Frame::data(b)));
    let mut r = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

/// Reads a fixture file (JSON) from `dir`.
pub fn fixture(dir: &Path, name: &str) -> Value {
    let path = dir.join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}
