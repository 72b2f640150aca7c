//! encode + decode + message ID of a typical ~200-byte text message.
//!
//! Run with `cargo bench --bench content`; prints messages/second
//! (target ≥ 500 000 per second per core).

use std::hint::black_box;
use std::time::Instant;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use mimi_content::{MimiContent, builder::ContentBuilder};

fn typical() -> MimiContent {
    ContentBuilder::new("mimi://example.com/u/alice-smith", "mimi://example.com/r/engineering_team")
        .markdown("Hi everyone, we just shipped release 2.0. __Good work__! Thanks all.")
        .build()
        .expect("valid")
}

fn round(c: &MimiContent) -> [u8; 32] {
    let bytes = mimi_content::encode(c).expect("encode");
    let d = mimi_content::decode(&bytes).expect("decode");
    let x = &d.extensions;
    mimi_content::message_id(
        &bytes,
        x.sender_uri.as_deref().unwrap_or_default(),
        x.room_uri.as_deref().unwrap_or_default(),
        &d.salt,
    )
    .expect("id")
}

fn bench(c: &mut Criterion) {
    let msg = typical();
    let len = mimi_content::encode(&msg).expect("encode").len();
    let mut g = c.benchmark_group("content");
    g.throughput(Throughput::Elements(1));
    g.bench_function(format!("encode+decode+id ({len} bytes)"), |b| b.iter(|| round(black_box(&msg))));
    g.finish();

    // Plain wall-clock figure, single thread.
    let n = 500_000u32;
    let start = Instant::now();
    for _ in 0..n {
        black_box(round(black_box(&msg)));
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "mimi content: {len}-byte message, encode+decode+message ID: {:.0} messages/second (1 core)",
        f64::from(n) / secs
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
