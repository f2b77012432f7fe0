//! Channel pattern matching (`Pattern::matches`, PROTOCOL.md section 1):
//! the grant check run on every subscribe, publish and signal.
//!
//! Each pattern is matched against the same set of real-looking names (the
//! seed systems' channels plus a 200-byte worst case), so a figure is the
//! cost of the whole set.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use herald_protocol::Pattern;
use herald_protocol::names::any_match;
use std::hint::black_box;

fn names() -> Vec<String> {
    vec![
        "dashboard_website_12".into(),
        "dashboard_user_7".into(),
        "chat_updates".into(),
        "chat_8942b9df-77c8-4e5f-a7eb-097aace75053".into(),
        "chat_sishirbhusal".into(),
        format!("chat_{}", "a".repeat(195)),
    ]
}

fn matching(c: &mut Criterion) {
    let names = names();
    let mut g = c.benchmark_group("pattern");
    g.throughput(Throughput::Elements(names.len() as u64));
    for p in [
        "chat_updates",
        "chat_*",
        "dashboard_website_*",
        "*_updates",
        "chat_*-*-*-*-*",
        "*a*b*c*",
    ] {
        let pat = Pattern::new(p).expect("a valid pattern");
        g.bench_function(p, |b| {
            b.iter(|| names.iter().filter(|n| pat.matches(black_box(n))).count())
        });
    }
    // A typical token grant: a few patterns, checked with any_match.
    let grant: Vec<Pattern> = ["dashboard_user_42", "dashboard_website_*", "chat_*"]
        .iter()
        .map(|p| Pattern::new(p).expect("a valid pattern"))
        .collect();
    g.bench_function("grant_of_3", |b| {
        b.iter(|| {
            names
                .iter()
                .filter(|n| any_match(&grant, black_box(n)))
                .count()
        })
    });
    g.finish();
}

criterion_group!(benches, matching);
criterion_main!(benches);
