//! Driving the cluster: `SAFE_DB_TEST_GALERA_CTL` is `galera.sh ctl DIR`, to which a
//! scenario appends a subcommand and a node (`kill 3`, `restart 2`).

/// The control command, or `None` (the scenario is skipped) when it is not set; under
/// `CI=true` a missing one fails.
pub(crate) fn ctl(scenario: &str) -> Option<String> {
    match std::env::var("SAFE_DB_TEST_GALERA_CTL") {
        Ok(v) if !v.trim().is_empty() => Some(v),
        _ => {
            let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
            assert!(!ci, "CI=true but SAFE_DB_TEST_GALERA_CTL is not set");
            println!("SAFE_DB_TEST_GALERA_CTL is not set: {scenario} skipped");
            None
        }
    }
}

/// Runs `ctl` with `args` (e.g. `kill 3`), blocking on a thread of its own so that the
/// writers go on meanwhile; fails unless it succeeds.
pub(crate) async fn run(ctl: &str, args: &str) {
    let cmd = format!("{ctl} {args}");
    let shown = cmd.clone();
    let status = tokio::task::spawn_blocking(move || {
        std::process::Command::new("sh")
            .arg("-c")
            .arg(&cmd)
            .status()
    })
    .await
    .unwrap()
    .unwrap();
    assert!(status.success(), "{shown}");
}
