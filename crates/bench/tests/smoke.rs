//! The bench's seconds-long smoke mode keeps working: real servers, real load, a report.
//! It asserts what was produced, never how fast.

#[test]
fn smoke_run_writes_a_report() {
    let out = tempfile::tempdir().expect("tempdir");
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_sotto-bench"))
        .args(["--smoke", "--out"])
        .arg(out.path())
        .output()
        .expect("run sotto-bench");
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let results: serde_json::Value = serde_json::from_slice(
        &std::fs::read(out.path().join("results.json")).expect("results.json"),
    )
    .expect("json");
    let sotto: Vec<&serde_json::Value> = results["relay"]
        .as_array()
        .expect("relay runs")
        .iter()
        .filter(|r| r["system"] == "sotto")
        .collect();
    assert_eq!(sotto.len(), 2, "one run per smoke window: {results}");
    for r in &sotto {
        assert!(r["delivered"].as_u64().is_some_and(|d| d > 0), "{r}");
        assert_eq!(r["errors"], 0, "{r}");
        assert!(r["p50_us"].as_u64().is_some_and(|p| p > 0), "{r}");
    }
    let backlog = results["backlog"].as_array().expect("backlog runs");
    let sotto_backlog = backlog.iter().find(|b| b["system"] == "sotto").expect("sotto backlog");
    assert!(sotto_backlog["drain_msgs_per_sec"].as_f64().is_some_and(|r| r > 0.0), "{results}");
    let e2ee = results["e2ee"].as_array().expect("e2ee runs");
    assert!(
        e2ee.iter().any(|r| r["decrypted_per_sec"].as_f64().is_some_and(|d| d > 0.0)),
        "{results}"
    );
    assert!(results["crypto"].as_array().is_some_and(|c| c.len() >= 6), "{results}");
    // Both MLS suites are measured, side by side.
    for suite in ["x25519", "x-wing"] {
        let crypto = results["crypto"].as_array().expect("crypto");
        assert!(crypto.iter().any(|c| c["suite"] == suite && c["name"] == "mls decrypt 100 B"));
        let sizes = results["mls_sizes"].as_array().expect("sizes");
        assert!(
            sizes.iter().any(|s| s["suite"] == suite
                && s["name"] == "key package"
                && s["bytes"].as_u64().is_some_and(|b| b > 0)),
            "{results}"
        );
    }
    let kt = results["kt"].as_array().expect("kt runs");
    assert_eq!(kt.len(), 2, "sqlite and the in-memory reference: {results}");
    for r in kt {
        assert!(r["lookup_proof_bytes"].as_u64().is_some_and(|b| b > 0), "{r}");
        assert!(r["lookup_verify_us"].as_f64().is_some_and(|t| t > 0.0), "{r}");
    }
    let idle = results["idle"].as_array().expect("idle runs");
    assert_eq!(idle.len(), 1, "{results}");
    assert_eq!(idle[0]["connections"], 200);
    let report = std::fs::read_to_string(out.path().join("report.md")).expect("report.md");
    assert!(report.contains("| sotto | 4 | 1 |"), "{report}");
    // The files workload ran (its file came back whole) or says why not.
    match results["files"].as_array().and_then(|f| f.first()) {
        Some(f) => {
            assert_eq!(f["size_mib"], 4, "{f}");
            for key in ["upload_mib_per_sec", "download_mib_per_sec", "seal_mib_per_sec"] {
                assert!(f[key].as_f64().is_some_and(|v| v > 0.0), "{key}: {f}");
            }
            assert!(report.contains("Attachments:"), "{report}");
        }
        None => assert!(
            results["skipped"].as_array().is_some_and(|s| s.iter().any(|x| x[0] == "files")),
            "files neither ran nor was skipped: {results}"
        ),
    }
    // The big-group workload ran (everyone read what they should) or says why not.
    match results["big_group"].as_array().and_then(|f| f.first()) {
        Some(g) => {
            assert_eq!(g["members"], 20, "{g}");
            for key in ["create_seconds", "join_seconds", "remove_follow_seconds"] {
                assert!(g[key].as_f64().is_some_and(|v| v > 0.0), "{key}: {g}");
            }
            assert!(g["queued_bytes"].as_u64().is_some_and(|b| b > 0), "{g}");
            assert!(report.contains("A group of 20 end to end"), "{report}");
        }
        None => assert!(
            results["skipped"].as_array().is_some_and(|s| s.iter().any(|x| x[0] == "big-group")),
            "big-group neither ran nor was skipped: {results}"
        ),
    }
    // Peers either ran or say why not.
    for system in ["jetstream", "jetstream-fsync", "synapse"] {
        let ran =
            results["relay"].as_array().is_some_and(|r| r.iter().any(|x| x["system"] == system));
        let skipped =
            results["skipped"].as_array().is_some_and(|s| s.iter().any(|x| x[0] == system));
        assert!(ran || skipped, "{system} neither ran nor was skipped");
    }
}
