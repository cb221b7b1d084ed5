//! Running a host program (`nft`, `tc`) on a script fed to its stdin.

use crate::host::{HostError, HostResult};
use std::io::Write;
use std::process::{Command, Stdio};

/// Runs `program args` with `script` on its stdin; its stderr is the error when it fails.
pub fn run_script(context: &str, program: &str, args: &[&str], script: &str) -> HostResult<()> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| HostError::io(format!("{context}: run {program}"), e))?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    let written = stdin.write_all(script.as_bytes());
    drop(stdin);
    let output = child
        .wait_with_output()
        .map_err(|e| HostError::io(format!("{context}: wait for {program}"), e))?;
    if !output.status.success() {
        return Err(HostError::Command {
            context: context.into(),
            program: program.into(),
            output: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    written.map_err(|e| HostError::io(format!("{context}: write to {program}"), e))
}
