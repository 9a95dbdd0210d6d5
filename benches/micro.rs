//! Micro-benchmarks of the hot path: encoding an event, appending it to a
//! run's log, reading from a cursor, and fanning one run out to many
//! subscribers through the in-memory hub. `cargo bench --bench micro`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::SystemTime;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use futures::StreamExt;
use serde::Serialize;
use sluice::agent::AgentEvent;
use sluice::config::RunsConfig;
use sluice::hub::log::{Read, RunLog};
use sluice::hub::memory::MemoryHub;
use sluice::hub::record::Recorder;
use sluice::hub::{Hub, Resume, RunId, RunMeta};
use sluice::metrics::Metrics;

#[derive(Serialize)]
struct Token<'a> {
    text: &'a str,
}

fn meta(id: &RunId) -> RunMeta {
    RunMeta {
        id: id.clone(),
        agent: "sim".into(),
        model: "sim".into(),
        prompt: String::new(),
        created_at: SystemTime::now(),
        chat: None,
        cancel_on_disconnect: false,
        owner: None,
    }
}

fn run_id() -> RunId {
    RunId::generate().unwrap_or_else(|_| panic!("randomness"))
}

fn encode(c: &mut Criterion) {
    let id = run_id();
    let mut group = c.benchmark_group("encode");
    group.throughput(Throughput::Elements(1));
    group.bench_function("token frame", |b| {
        let mut seq = 0u64;
        b.iter(|| {
            seq += 1;
            black_box(sluice::wire::sse::encode(
                id.as_str(),
                seq,
                "token",
                &Token { text: " river," },
            ))
        })
    });
    group.bench_function("recorder token", |b| {
        let (mut recorder, _) = Recorder::start(&meta(&id));
        b.iter(|| black_box(recorder.record(AgentEvent::Token(" river,".to_owned()))))
    });
    group.finish();
}

/// A log holding `n` token events after its `run` event.
fn filled_log(n: usize) -> RunLog {
    let id = run_id();
    let log = RunLog::new();
    let (mut recorder, first) = Recorder::start(&meta(&id));
    log.append(first);
    for _ in 0..n {
        log.append(recorder.record(AgentEvent::Token(" river,".to_owned())));
    }
    log
}

fn run_log(c: &mut Criterion) {
    let id = run_id();
    let mut group = c.benchmark_group("run log");
    group.throughput(Throughput::Elements(100));
    group.bench_function("encode and append 100 tokens", |b| {
        b.iter_batched_ref(
            || {
                let log = RunLog::new();
                let (recorder, first) = Recorder::start(&meta(&id));
                log.append(first);
                (log, recorder)
            },
            |(log, recorder)| {
                for _ in 0..100 {
                    log.append(recorder.record(AgentEvent::Token(" river,".to_owned())));
                }
            },
            BatchSize::SmallInput,
        )
    });
    let log = filled_log(10_000);
    group.throughput(Throughput::Elements(1));
    group.bench_function("read the newest event (a live subscriber)", |b| {
        b.iter(|| black_box(log.read(10_000)))
    });
    group.throughput(Throughput::Elements(10_001));
    group.bench_function("read 10,000 events from the start (a resume)", |b| {
        b.iter(|| {
            let mut cursor = 0;
            while let Read::Chunk { events, bytes, .. } = log.read(cursor) {
                cursor += events;
                black_box(bytes);
            }
            cursor
        })
    });
    group.finish();
}

fn fan_out(c: &mut Criterion) {
    const TOKENS: usize = 200;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"));
    let metrics = Metrics::new().unwrap_or_else(|e| panic!("metrics: {e}"));
    let hub = runtime.block_on(async { Hub::new(MemoryHub::new(&RunsConfig::default(), metrics)) });
    let hub = Arc::new(hub);
    let mut group = c.benchmark_group("fan-out");
    group.sample_size(10);
    for subscribers in [1usize, 100, 1000] {
        group.throughput(Throughput::Elements((subscribers * (TOKENS + 2)) as u64));
        group.bench_function(
            format!("{TOKENS} tokens to {subscribers} subscribers"),
            |b| {
                b.iter(|| {
                    let hub = hub.clone();
                    runtime.block_on(async move {
                        let id = run_id();
                        // The agent waits until every subscriber is attached, so
                        // each one receives the run live.
                        let (go, wait) = tokio::sync::oneshot::channel::<()>();
                        let events = futures::stream::once(async move {
                            let _ = wait.await;
                            futures::stream::iter(
                                (0..TOKENS).map(|_| AgentEvent::Token(" river,".to_owned())),
                            )
                        })
                        .flatten()
                        .chain(futures::stream::iter([AgentEvent::Done {
                            finish_reason: "stop".into(),
                            usage: Default::default(),
                        }]))
                        .boxed();
                        let _ = hub.start(meta(&id), events).await;
                        let mut readers = Vec::with_capacity(subscribers);
                        for _ in 0..subscribers {
                            let Ok(Resume::Events(subscription)) = hub
                                .subscribe(id.clone(), 0, sluice::wire::Format::Sluice, None)
                                .await
                            else {
                                panic!("subscribe");
                            };
                            readers.push(tokio::spawn(
                                subscription.fold(0u64, |n, chunk| async move { n + chunk.events }),
                            ));
                        }
                        let _ = go.send(());
                        let mut delivered = 0;
                        for reader in readers {
                            delivered += reader.await.unwrap_or(0);
                        }
                        assert_eq!(delivered, (subscribers * (TOKENS + 2)) as u64);
                    })
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, encode, run_log, fan_out);
criterion_main!(benches);
