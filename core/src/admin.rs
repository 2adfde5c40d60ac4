//! The admin endpoint: `/ready`, `/stats/prometheus`, `/config_dump`, `/clusters` and
//! `/logging`.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::snapshot::ConfigStore;

/// Reads and replaces the process's log filter, for `/logging`.
pub trait LogControl: Send + Sync {
    /// The filter in force, as a directive (`info`, `metamesh_core=debug,info`, ...).
    fn current(&self) -> String;
    /// Replaces the filter with `directive`; the error says why it was refused.
    fn set(&self, directive: &str) -> Result<(), String>;
}

/// Levels `/logging?level=` takes.
const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];

/// State the admin endpoint reports on.
pub(crate) struct AdminState {
    pub(crate) store: Arc<ConfigStore>,
    pub(crate) log: Option<Arc<dyn LogControl>>,
    pub(crate) ready: AtomicBool,
}

pub(crate) async fn serve(
    listener: TcpListener,
    state: Arc<AdminState>,
    shutdown: CancellationToken,
) {
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((s, _)) => s,
                Err(_) => continue,
            },
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(&state, req)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

fn handle(state: &AdminState, req: Request<Incoming>) -> Response<Full<Bytes>> {
    const TEXT: &str = "text/plain; charset=utf-8";
    const JSON: &str = "application/json";
    match req.uri().path() {
        "/logging" => logging(state, &req),
        "/ready" => {
            if state.ready.load(Ordering::Acquire) {
                reply(StatusCode::OK, TEXT, "LIVE\n")
            } else {
                reply(StatusCode::SERVICE_UNAVAILABLE, TEXT, "PRE_INITIALIZING\n")
            }
        }
        "/stats/prometheus" => reply(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            state.store.stats().encode(),
        ),
        "/config_dump" => {
            let snap = state.store.load();
            let body = serde_json::json!({
                "version": snap.version,
                "bootstrap": &*snap.bootstrap,
            });
            reply(StatusCode::OK, JSON, body.to_string())
        }
        "/clusters" => {
            let snap = state.store.load();
            let as_json = req.uri().query().is_some_and(|q| q.contains("format=json"));
            if as_json {
                let clusters: Vec<_> = snap
                    .clusters()
                    .iter()
                    .map(|c| {
                        let lb = c.lb_state();
                        let levels = lb.lb.host_levels();
                        let endpoints: Vec<_> = c
                            .endpoints
                            .iter()
                            .enumerate()
                            .map(|(i, e)| {
                                serde_json::json!({
                                    "address": e.config.address,
                                    "locality": e.config.locality,
                                    "weight": e.config.weight.unwrap_or(1),
                                    "priority": e.config.priority,
                                    "level": levels.get(i).copied().unwrap_or(0),
                                    "labels": e.config.labels,
                                    "health": e.pool.health().state().as_str(),
                                    "active_requests": e.pool.active_requests(),
                                    "connections": e.pool.connections(),
                                })
                            })
                            .collect();
                        serde_json::json!({
                            "name": c.name,
                            "priority_loads": lb.lb.priority_loads(),
                            "panic": lb.lb.panic_levels(),
                            "endpoints": endpoints,
                        })
                    })
                    .collect();
                reply(
                    StatusCode::OK,
                    JSON,
                    serde_json::json!({ "clusters": clusters }).to_string(),
                )
            } else {
                let mut out = String::new();
                for c in snap.clusters() {
                    let lb = c.lb_state();
                    let levels = lb.lb.host_levels();
                    for (i, e) in c.endpoints.iter().enumerate() {
                        let l = &e.config.locality;
                        let prefix = format!("{}::{}", c.name, e.config.address);
                        out.push_str(&format!(
                            "{prefix}::health_flags::{}\n{prefix}::locality::{}/{}/{}\n{prefix}::weight::{}\n{prefix}::priority::{}\n{prefix}::level::{}\n{prefix}::rq_active::{}\n{prefix}::cx_active::{}\n",
                            e.pool.health().state().as_str(),
                            l.region,
                            l.zone,
                            l.subzone,
                            e.config.weight.unwrap_or(1),
                            e.config.priority,
                            levels.get(i).copied().unwrap_or(0),
                            e.pool.active_requests(),
                            e.pool.connections(),
                        ));
                    }
                }
                reply(StatusCode::OK, TEXT, out)
            }
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            TEXT,
            "not found; try /ready, /stats/prometheus, /config_dump, /clusters, /logging\n",
        ),
    }
}

/// `GET /logging` shows the filter; `POST /logging?level=debug` sets every target to a
/// level, `POST /logging?filter=metamesh_core=debug,info` sets a whole directive.
fn logging(state: &AdminState, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    const TEXT: &str = "text/plain; charset=utf-8";
    let Some(log) = &state.log else {
        return reply(
            StatusCode::NOT_IMPLEMENTED,
            TEXT,
            "this process does not let its log filter be changed\n",
        );
    };
    let query = req.uri().query().unwrap_or("");
    let mut wanted = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = percent_decode(v);
        match k {
            "level" if LEVELS.contains(&v.as_str()) => wanted = Some(v),
            "level" => {
                return reply(
                    StatusCode::BAD_REQUEST,
                    TEXT,
                    format!("unknown level {v:?}; use one of {}\n", LEVELS.join(", ")),
                )
            }
            "filter" => wanted = Some(v),
            other => {
                return reply(
                    StatusCode::BAD_REQUEST,
                    TEXT,
                    format!("unknown parameter {other:?}; use level= or filter=\n"),
                )
            }
        }
    }
    let Some(directive) = wanted else {
        return reply(StatusCode::OK, TEXT, format!("{}\n", log.current()));
    };
    if req.method() != hyper::Method::POST {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            TEXT,
            "changing the log filter takes a POST\n",
        );
    }
    match log.set(&directive) {
        Ok(()) => {
            tracing::info!(filter = %directive, "log filter changed through the admin endpoint");
            reply(StatusCode::OK, TEXT, format!("{}\n", log.current()))
        }
        Err(e) => reply(StatusCode::BAD_REQUEST, TEXT, format!("{e}\n")),
    }
}

/// Decodes `%XX` escapes and `+` in a query value.
fn percent_decode(v: &str) -> String {
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() && v.is_char_boundary(i + 3) => {
                match u8::from_str_radix(&v[i + 1..i + 3], 16) {
                    Ok(x) => {
                        out.push(x);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::percent_decode;

    #[test]
    fn query_values_are_decoded() {
        assert_eq!(
            percent_decode("metamesh_core%3Ddebug%2Cinfo"),
            "metamesh_core=debug,info"
        );
        assert_eq!(percent_decode("a+b"), "a b");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
        assert_eq!(percent_decode("%4"), "%4");
    }
}
