//! The Linux host's containers end to end, driven through the `Host` trait (as root).

mod support;

use support::*;

#[test]
fn runs_a_process_in_its_own_namespaces() {
    let t = host("smoke");
    t.create("smoke-1");
    let (code, out, err) = t.run(
        "smoke-1",
        sh("echo hello; hostname; head -n1 /proc/1/status; echo oops >&2; exit 3"),
    );
    assert_eq!(code, 3, "stderr: {err}");
    assert_eq!(out, "hello\nsmoke-1\nName:\tgarden-init\n");
    assert_eq!(err, "oops\n");
    t.destroy("smoke-1");
}
