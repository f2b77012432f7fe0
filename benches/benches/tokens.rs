//! Token verification (herald-auth `Verifier::verify`), run once per
//! connection: HS256 with the `--jwt-secret`, ES256 with a `kid`-selected
//! public key (the test key pair of crates/herald-auth/tests/keys/).

use criterion::{Criterion, criterion_group, criterion_main};
use herald_auth::{Alg, AuthConfig, KeyConfig, Minter, TokenSpec, Verifier};
use herald_benches::{EC_PRIVATE_PEM, EC_PUBLIC_PEM};
use std::hint::black_box;
use std::time::Duration;

fn spec() -> TokenSpec {
    TokenSpec {
        sub: "op:42".into(),
        ttl: Some(Duration::from_secs(3600)),
        channels: vec!["dashboard_website_12".into(), "dashboard_user_42".into()],
        subscribe: vec!["chat_*".into()],
        publish: vec!["chat_8942b9df-77c8-4e5f-a7eb-097aace75053".into()],
        signal: vec!["chat_*".into()],
        presence: vec!["chat_*".into()],
        info: Some(serde_json::json!({"name": "Purna Acharya", "role": "operator"})),
    }
}

fn now() -> i64 {
    let s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs();
    i64::try_from(s).expect("seconds since 1970 fit in i64")
}

fn verify(c: &mut Criterion) {
    let claims = spec().to_claims(now());
    let mut g = c.benchmark_group("verify");

    let secret = "bench-secret-0123456789abcdef0123";
    let hs = Minter::hs256(secret.as_bytes())
        .mint(&claims)
        .expect("HS256 minting works");
    let hs_v = Verifier::new(&AuthConfig {
        secret: Some(secret.into()),
        ..AuthConfig::default()
    })
    .expect("an HS256 verifier");
    hs_v.verify(&hs).expect("the bench token verifies");
    g.bench_function("hs256", |b| b.iter(|| hs_v.verify(black_box(&hs))));

    let es = Minter::from_pem(Alg::ES256, Some("k1".into()), EC_PRIVATE_PEM.as_bytes())
        .expect("the ES256 test key")
        .mint(&claims)
        .expect("ES256 minting works");
    let es_v = Verifier::new(&AuthConfig {
        keys: vec![KeyConfig {
            kid: "k1".into(),
            alg: Alg::ES256,
            public_key_pem: EC_PUBLIC_PEM.into(),
        }],
        ..AuthConfig::default()
    })
    .expect("an ES256 verifier");
    es_v.verify(&es).expect("the bench token verifies");
    g.bench_function("es256", |b| b.iter(|| es_v.verify(black_box(&es))));
    g.finish();
}

criterion_group!(benches, verify);
criterion_main!(benches);
