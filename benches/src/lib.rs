//! Criterion benchmarks for Toru; see `benches/`.
