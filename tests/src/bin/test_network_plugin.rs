//! A network plugin for the tests, speaking gdn's contract (`--action ACTION --handle HANDLE`,
//! JSON in and out; see `trellis_os::linux::network::plugin`). It wires a container with the
//! CNI reference plugins (`bridge` with `host-local` addresses, Debian's
//! containernetworking-plugins), and appends every invocation to a log as one JSON line
//! (`{"action","handle","args","input"}`) for the tests to read.
//!
//! Its own arguments come first (the server's `--network-plugin-extra-arg`s):
//! `--log FILE --bridge NAME --subnet CIDR --data-dir DIR [--cni-dir DIR] [--fail ACTION]`.
//! With `--fail up` it wires the container and then fails, as a plugin that broke halfway.

use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::process::{Command, Stdio};

/// The interface the container gets.
const INTERFACE: &str = "eth0";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut options: HashMap<String, String> = HashMap::new();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let Some(name) = flag.strip_prefix("--") else {
            fail(&format!("unexpected argument {flag:?}"));
        };
        let value = it
            .next()
            .unwrap_or_else(|| fail(&format!("{flag} needs a value")));
        options.insert(name.to_string(), value.clone());
    }
    let option = |name: &str| -> String {
        options
            .get(name)
            .cloned()
            .unwrap_or_else(|| fail(&format!("--{name} is required")))
    };
    let action = option("action");
    let handle = option("handle");
    let mut stdin = String::new();
    std::io::stdin()
        .read_to_string(&mut stdin)
        .unwrap_or_else(|e| fail(&format!("reading stdin: {e}")));
    let input: Value = serde_json::from_str(&stdin)
        .unwrap_or_else(|e| fail(&format!("stdin {stdin:?} is not JSON: {e}")));
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(option("log"))
        .unwrap_or_else(|e| fail(&format!("opening the log: {e}")));
    let line = json!({"action": action, "handle": handle, "args": args, "input": input});
    writeln!(log, "{line}").unwrap_or_else(|e| fail(&format!("writing the log: {e}")));

    let cni = Cni {
        dir: options
            .get("cni-dir")
            .cloned()
            .unwrap_or_else(|| "/usr/lib/cni".into()),
        config: json!({
            "cniVersion": "1.0.0",
            "name": "trellis-test",
            "type": "bridge",
            "bridge": option("bridge"),
            "isGateway": true,
            "ipMasq": false,
            "ipam": {
                "type": "host-local",
                "subnet": option("subnet"),
                "dataDir": option("data-dir"),
            },
        }),
    };
    let answer = match action.as_str() {
        "up" => {
            let pid = input["Pid"]
                .as_i64()
                .unwrap_or_else(|| fail("up without a Pid"));
            let result = cni.run("ADD", &handle, &format!("/proc/{pid}/ns/net"));
            let ip = &result["ips"][0];
            let address = ip["address"]
                .as_str()
                .and_then(|a| a.split('/').next())
                .unwrap_or_else(|| fail(&format!("CNI gave no address: {result}")));
            Some(json!({
                "Properties": {
                    "garden.network.container-ip": address,
                    "garden.network.host-ip": ip["gateway"],
                    "garden.network.interface": INTERFACE,
                    "test-plugin.wired": handle,
                },
                "dns_servers": ["192.0.2.53"],
                "search_domains": ["plugin.test"],
            }))
        }
        // The init is gone by now: CNI releases the address without a namespace (the
        // container's end of the link goes with the namespace).
        "down" => {
            cni.run("DEL", &handle, "");
            None
        }
        "net-in" => Some(json!({
            "host_port": input["HostPort"],
            "container_port": input["ContainerPort"],
        })),
        "net-out" | "bulk-net-out" => None,
        other => fail(&format!("unknown action {other:?}")),
    };
    if options.get("fail") == Some(&action) {
        fail(&format!("test plugin refuses {action} for {handle}"));
    }
    if let Some(answer) = answer {
        println!("{answer}");
    }
}

struct Cni {
    dir: String,
    config: Value,
}

impl Cni {
    /// Runs the bridge plugin; its result.
    fn run(&self, command: &str, handle: &str, netns: &str) -> Value {
        let mut child = Command::new(format!("{}/bridge", self.dir))
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", handle)
            .env("CNI_NETNS", netns)
            .env("CNI_IFNAME", INTERFACE)
            .env("CNI_PATH", &self.dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| fail(&format!("running the CNI bridge plugin: {e}")));
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(self.config.to_string().as_bytes())
            .unwrap_or_else(|e| fail(&format!("writing to the CNI bridge plugin: {e}")));
        let output = child
            .wait_with_output()
            .unwrap_or_else(|e| fail(&format!("waiting for the CNI bridge plugin: {e}")));
        if !output.status.success() {
            fail(&format!(
                "CNI bridge {command} failed: {}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        if output.stdout.is_empty() {
            return Value::Null;
        }
        serde_json::from_slice(&output.stdout)
            .unwrap_or_else(|e| fail(&format!("CNI bridge {command} answered no JSON: {e}")))
    }
}

fn fail(message: &str) -> ! {
    eprintln!("{message}");
    std::process::exit(1)
}
