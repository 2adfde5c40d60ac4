//! `metamesh demo`, the README's run command: it must start its control plane, proxy and
//! providers, route, follow a live MetaRouter edit, and stop by itself.

use std::process::Command;

#[test]
fn demo_routes_batchjob_traffic_and_exits_cleanly() {
    let out = Command::new(env!("CARGO_BIN_EXE_metamesh"))
        .args(["demo", "--duration", "2s", "--rate", "300"])
        .output()
        .expect("run the demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed: {stderr}\n{stdout}");
    let last = stdout.rsplit("final:").next().expect("a final table");
    // Both groups served traffic, each only its own kind, and nothing went astray.
    let group = |name: &str| -> (u64, u64) {
        let line = last
            .lines()
            .find(|l| l.starts_with(&format!("group {name}")))
            .unwrap_or_else(|| panic!("no line for group {name} in {last}"));
        let nums: Vec<u64> = line
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect();
        (nums[0], nums[1])
    };
    let (batch_tagged, batch_plain) = group("batchjob");
    let (user_tagged, user_plain) = group("user");
    assert!(batch_tagged > 0 && user_plain > 0, "{last}");
    assert_eq!((batch_plain, user_tagged), (0, 0), "{last}");
    assert!(last.contains("misrouted 0"), "{last}");
    // Halfway through, the demo edits its MetaRouter file; the embedded control plane
    // pushes the change and batch calls arrive with the new x-tier.
    assert!(last.contains("MetaRouter edited at"), "{last}");
    let live: u64 = last
        .lines()
        .filter(|l| l.starts_with("batchjob-"))
        .filter_map(|l| l.split_whitespace().last()?.parse::<u64>().ok())
        .sum();
    assert!(live > 0, "no batch call carried the edited x-tier: {last}");
    assert!(last.contains("errors 0"), "{last}");
}
