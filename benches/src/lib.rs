//! Benchmarks of nakama-edge. `cargo bench -p nakama-edge-benches` runs the criterion
//! micro-benchmarks of the hot path (`benches/hot_path.rs`); figures are in BENCHMARKS.md.
