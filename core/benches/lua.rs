//! Cost of a Lua hook per request: the `batchjob` tagging hook of the README run on the
//! metadata of a typical Dubbo call (7 attachments), on a warm per-worker state.

use std::hint::black_box;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use metamesh_core::config::Hook;
use metamesh_core::lua::HookProgram;
use metamesh_core::stats::Stats;
use metamesh_core::{Message, MessageKind};

fn request(batchjob: &str) -> Message {
    let mut m = Message::new(MessageKind::Request, 1, Bytes::new());
    for (k, v) in [
        ("interface", "org.apache.dubbo.samples.DemoService"),
        ("method", "sayHello"),
        ("version", "1.0.0"),
        ("path", "org.apache.dubbo.samples.DemoService"),
        ("timeout", "3000"),
        ("remote.application", "demo-consumer"),
        ("batchjob", batchjob),
    ] {
        m.metadata.push_decoded(k, v);
    }
    m
}

fn hook(script: &str) -> std::sync::Arc<HookProgram> {
    HookProgram::compile(
        &Hook {
            name: "bench".into(),
            script: script.into(),
            memory_limit: None,
            instruction_limit: None,
        },
        &Stats::new(),
    )
    .expect("compiles")
}

fn bench(c: &mut Criterion) {
    let tag = hook(
        r#"function on_request(req)
             if req:get("batchjob") == "true" then req:set("x-tier", "batch") end
           end"#,
    );
    let mut g = c.benchmark_group("lua");
    for (name, batchjob) in [("tag_batchjob_hit", "true"), ("tag_batchjob_miss", "false")] {
        let template = request(batchjob);
        g.bench_function(name, |b| {
            b.iter_batched_ref(
                || template.clone(),
                |m| {
                    let mut route_to = None;
                    black_box(tag.on_request(m, "dubbo", &mut route_to))
                },
                criterion::BatchSize::SmallInput,
            )
        });
    }
    let canary = hook(
        r#"function on_request(req)
             local user = req:get("user-id")
             if user ~= nil and hash(user) % 100 < 10 then req:route_to("canary") end
           end"#,
    );
    let mut template = request("false");
    template.metadata.push_decoded("user-id", "user-42");
    g.bench_function("canary_by_user_hash", |b| {
        b.iter_batched_ref(
            || template.clone(),
            |m| {
                let mut route_to = None;
                black_box(canary.on_request(m, "dubbo", &mut route_to))
            },
            criterion::BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
