//! Runs the deterministic simulation over many seeds (`SOTTO_SIM_SEEDS`, default 200;
//! `SOTTO_SIM_SEED=N` replays one and prints its trace on failure).

#[test]
fn every_seed_keeps_the_invariants() {
    let seeds = sotto_sim::seeds(200);
    let mut stats = Vec::with_capacity(seeds.len());
    let mut violations = Vec::new();
    for seed in seeds {
        match sotto_sim::run(seed) {
            Ok(s) => stats.push(s),
            Err(v) => violations.push(v),
        }
    }
    let summary = sotto_sim::summary(&stats);
    eprintln!("simulation: {summary:?}, {} violations", violations.len());
    if let Some(first) = violations.first() {
        panic!(
            "{} seed(s) broke an invariant; first, seed {}: {}\n(replay: SOTTO_SIM_SEED={} cargo test -p sotto-sim)\n{}",
            violations.len(),
            first.seed,
            first.what,
            first.seed,
            first.trace
        );
    }
    // The faults really happened.
    assert!(summary["messages stored"] > 0);
    if stats.len() >= 50 {
        for kind in sotto_sim::FAULT_KINDS {
            assert!(summary[kind] > 0, "no {kind} in {} runs", stats.len());
        }
    }
}

#[test]
fn a_seed_replays_exactly() {
    for seed in [3, 17, 4242] {
        let first = sotto_sim::run(seed).expect("the seed keeps the invariants");
        let again = sotto_sim::run(seed).expect("the seed keeps the invariants");
        assert_eq!(first, again, "seed {seed} ran differently the second time");
        assert!(first.stored > 0 && first.trace_digest != 0);
    }
}
