//! Helpers for the Linux black-box tests: one server per test binary (as root), processes run
//! to completion with their output collected, tar streams built and read.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::OnceLock;
use tokio::io::AsyncReadExt;
use trellis_client::{Client, Container, Error, ProcessIo};
use trellis_core::api::{ContainerSpec, ProcessSpec};
use trellis_tests::TestServer;

/// The server this test binary shares (tests of one binary run in parallel against it).
/// Its containers are destroyed when the binary ends (`TestServer`'s drop does not run for a
/// static, so an `atexit` hook does it).
pub fn server() -> &'static TestServer {
    static SERVER: OnceLock<TestServer> = OnceLock::new();
    SERVER.get_or_init(|| {
        extern "C" fn cleanup() {
            if let Some(server) = SERVER.get() {
                server.shutdown_sync();
            }
        }
        // SAFETY: registering a plain extern "C" function.
        unsafe { libc::atexit(cleanup) };
        TestServer::linux()
    })
}

pub fn client() -> Client {
    server().client()
}

/// A container with the default (busybox) rootfs; destroyed when the guard drops.
pub struct Scoped {
    pub container: Container,
    client: Client,
}

impl std::ops::Deref for Scoped {
    type Target = Container;
    fn deref(&self) -> &Container {
        &self.container
    }
}

impl Drop for Scoped {
    fn drop(&mut self) {
        let client = self.client.clone();
        let handle = self.container.handle().to_string();
        // The test's runtime may be shutting down: destroy on a thread of our own.
        let _ = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map(|rt| rt.block_on(client.destroy(&handle)))
        })
        .join();
    }
}

pub async fn create(spec: ContainerSpec) -> Scoped {
    let client = client();
    let container = client.create(spec).await.expect("create");
    Scoped { container, client }
}

/// A spec naming an image.
pub fn with_image(uri: &str) -> ContainerSpec {
    ContainerSpec {
        image: trellis_core::api::ImageRef {
            uri: uri.into(),
            ..Default::default()
        },
        ..Default::default()
    }
}

pub async fn create_default() -> Scoped {
    create(ContainerSpec::default()).await
}

/// What a finished process left: exit status, stdout, stderr.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `spec` to completion with `stdin` (None: no stdin is sent).
pub async fn run_with(
    container: &Container,
    spec: ProcessSpec,
    stdin: Option<Vec<u8>>,
) -> Result<Output, Error> {
    let (out_w, mut out_r) = tokio::io::duplex(1 << 16);
    let (err_w, mut err_r) = tokio::io::duplex(1 << 16);
    let io = ProcessIo {
        stdin: stdin.map(|bytes| {
            Box::new(std::io::Cursor::new(bytes)) as Box<dyn tokio::io::AsyncRead + Send + Unpin>
        }),
        stdout: Some(Box::new(out_w)),
        stderr: Some(Box::new(err_w)),
    };
    let mut process = container.run(spec, io).await?;
    let read_out = tokio::spawn(async move {
        let mut s = Vec::new();
        let _ = out_r.read_to_end(&mut s).await;
        String::from_utf8_lossy(&s).into_owned()
    });
    let read_err = tokio::spawn(async move {
        let mut s = Vec::new();
        let _ = err_r.read_to_end(&mut s).await;
        String::from_utf8_lossy(&s).into_owned()
    });
    let status = process.wait().await?;
    drop(process);
    Ok(Output {
        status,
        stdout: read_out.await.expect("stdout reader"),
        stderr: read_err.await.expect("stderr reader"),
    })
}

pub async fn run(container: &Container, spec: ProcessSpec) -> Output {
    run_with(container, spec, Some(Vec::new()))
        .await
        .expect("run")
}

/// Runs a shell script as root and asserts it succeeds; its stdout.
pub async fn ok(container: &Container, script: &str) -> String {
    let out = run(container, sh(script)).await;
    assert_eq!(out.status, 0, "{script:?} failed: {out:?}");
    out.stdout
}

pub fn sh(script: &str) -> ProcessSpec {
    ProcessSpec {
        path: "sh".into(),
        args: vec!["-c".into(), script.into()],
        ..Default::default()
    }
}

pub fn sh_as(user: &str, script: &str) -> ProcessSpec {
    ProcessSpec {
        user: user.into(),
        ..sh(script)
    }
}

/// A tar archive of `(path, contents, mode)` regular files.
pub fn tar_of(files: &[(&str, &[u8], u32)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, contents, mode) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(contents.len() as u64);
        header.set_mode(*mode);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_entry_type(tar::EntryType::Regular);
        builder
            .append_data(&mut header, path, *contents)
            .expect("a tar entry");
    }
    builder.into_inner().expect("a tar archive")
}

/// Raw tar header for a name the tar crate refuses to write (`..`, absolute paths, links).
pub fn raw_tar_entry(name: &str, kind: u8, link: &str, contents: &[u8]) -> Vec<u8> {
    let mut header = [0u8; 512];
    header[..name.len()].copy_from_slice(name.as_bytes());
    header[100..108].copy_from_slice(b"0000644\0");
    header[108..116].copy_from_slice(b"0000000\0");
    header[116..124].copy_from_slice(b"0000000\0");
    header[124..136].copy_from_slice(format!("{:011o}\0", contents.len()).as_bytes());
    header[136..148].copy_from_slice(b"00000000000\0");
    header[156] = kind;
    header[157..157 + link.len()].copy_from_slice(link.as_bytes());
    header[257..263].copy_from_slice(b"ustar\0");
    header[263..265].copy_from_slice(b"00");
    header[148..156].copy_from_slice(b"        ");
    let sum: u32 = header.iter().map(|&b| u32::from(b)).sum();
    header[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    let mut out = header.to_vec();
    out.extend_from_slice(contents);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out
}

/// Ends a raw tar stream.
pub fn raw_tar_end(mut entries: Vec<u8>) -> Vec<u8> {
    entries.extend_from_slice(&[0u8; 1024]);
    entries
}

pub async fn stream_in(
    container: &Container,
    path: &str,
    user: &str,
    tar: Vec<u8>,
) -> Result<(), Error> {
    container
        .stream_in(trellis_client::StreamInSpec {
            path: path.into(),
            user: user.into(),
            tar: Box::new(std::io::Cursor::new(tar)),
        })
        .await
}

/// The entries of a streamed-out tar: path -> contents (directories: empty).
pub async fn stream_out(
    container: &Container,
    path: &str,
    user: &str,
) -> Result<BTreeMap<String, Vec<u8>>, Error> {
    let mut reader = container
        .stream_out(trellis_client::StreamOutSpec {
            path: path.into(),
            user: user.into(),
        })
        .await?;
    let mut bytes = Vec::new();
    reader.read_to_end(&mut bytes).await?;
    let mut archive = tar::Archive::new(std::io::Cursor::new(bytes));
    let mut entries = BTreeMap::new();
    for entry in archive.entries().map_err(Error::Connection)? {
        let mut entry = entry.map_err(Error::Connection)?;
        let name = entry
            .path()
            .map_err(Error::Connection)?
            .display()
            .to_string();
        let mut contents = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut contents).map_err(Error::Connection)?;
        entries.insert(name, contents);
    }
    Ok(entries)
}

/// Starts busybox httpd serving `body` on `address`'s port in the container, and waits until
/// the host can connect to it at `address`.
pub async fn serve_http(
    container: &Container,
    address: std::net::SocketAddr,
    body: &str,
) -> trellis_client::Process {
    let port = address.port();
    let dir = format!("/www{port}");
    ok(
        container,
        &format!("mkdir -p {dir} && printf '%s' '{body}' > {dir}/index.html"),
    )
    .await;
    let process = container
        .run(
            ProcessSpec {
                path: "httpd".into(),
                args: vec!["-f".into(), "-p".into(), port.to_string(), "-h".into(), dir],
                ..Default::default()
            },
            ProcessIo::default(),
        )
        .await
        .expect("httpd starts");
    let listening = trellis_tests::eventually(std::time::Duration::from_secs(10), || async move {
        std::net::TcpStream::connect_timeout(&address, std::time::Duration::from_millis(200))
            .is_ok()
    })
    .await;
    assert!(listening, "httpd on {address} never listened");
    process
}

/// GET /index.html over plain TCP from the host; the body.
pub fn http_get(address: std::net::SocketAddr) -> std::io::Result<String> {
    use std::io::{Read, Write};
    use std::time::Duration;
    let mut stream = std::net::TcpStream::connect_timeout(&address, Duration::from_secs(3))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    stream.write_all(b"GET /index.html HTTP/1.0\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default())
}
