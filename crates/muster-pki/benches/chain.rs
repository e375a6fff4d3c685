//! Chain validations per second: what one device handshake costs muster-pki.
//!
//! `cargo bench -p muster-pki --bench chain` — 2-level (leaf → root) and 3-level
//! (leaf → intermediate → root) chains, all ECDSA P-256 or all RSA-2048. Parsing is included
//! in a separate group because the server parses each presented chain once per handshake.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a benchmark fails loudly"
)]

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use muster_pki::{Certificate, ChainOptions, Usage, validate_chain};
use muster_test_support::{KeyKind, Kind, OffsetDateTime, Spec, TestCa};

struct Case {
    name: String,
    presented: Vec<Certificate>,
    anchors: Vec<Certificate>,
    ders: Vec<Vec<u8>>,
}

fn cases() -> Vec<Case> {
    let mut out = Vec::new();
    for (kind, label) in [(KeyKind::P256, "p256"), (KeyKind::Rsa2048, "rsa2048")] {
        let root = TestCa::self_signed(&Spec::new("bench root", Kind::Ca(None)).key(kind));
        let inter = root.issue_ca(&Spec::new("bench intermediate", Kind::Ca(Some(0))).key(kind));
        let direct = root.issue(&Spec::new("bench-device-direct", Kind::Client).key(kind));
        let leaf = inter.issue(&Spec::new("bench-device", Kind::Client).key(kind));
        let anchor = Certificate::from_der(&root.cert.der).unwrap();
        out.push(Case {
            name: format!("2-level/{label}"),
            presented: vec![Certificate::from_der(&direct.der).unwrap()],
            anchors: vec![anchor.clone()],
            ders: vec![direct.der.clone()],
        });
        out.push(Case {
            name: format!("3-level/{label}"),
            presented: vec![
                Certificate::from_der(&leaf.der).unwrap(),
                Certificate::from_der(&inter.cert.der).unwrap(),
            ],
            anchors: vec![anchor],
            ders: vec![leaf.der.clone(), inter.cert.der.clone()],
        });
    }
    out
}

fn bench(c: &mut Criterion) {
    let at = OffsetDateTime::now_utc();
    let options = ChainOptions {
        at,
        usage: Usage::ClientAuth,
    };
    let cases = cases();
    let mut group = c.benchmark_group("validate_chain");
    group.throughput(Throughput::Elements(1));
    for case in &cases {
        validate_chain(&case.presented, &case.anchors, options).unwrap();
        group.bench_function(&case.name, |b| {
            b.iter(|| validate_chain(&case.presented, &case.anchors, options).unwrap());
        });
    }
    group.finish();
    let mut group = c.benchmark_group("parse_and_validate");
    group.throughput(Throughput::Elements(1));
    for case in &cases {
        group.bench_function(&case.name, |b| {
            b.iter(|| {
                let presented: Vec<_> = case
                    .ders
                    .iter()
                    .map(|d| Certificate::from_der(d).unwrap())
                    .collect();
                validate_chain(&presented, &case.anchors, options).unwrap()
            });
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
