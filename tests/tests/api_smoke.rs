//! End-to-end smoke over both transports: the harness, the plain routes and one process.

use std::collections::BTreeMap;
use trellis_client::{Error, ProcessIo};
use trellis_core::api::{ContainerSpec, ProcessSpec};
use trellis_tests::TestServer;

fn echo(args: &[&str]) -> ProcessSpec {
    ProcessSpec {
        path: "echo".into(),
        args: args.iter().map(|a| a.to_string()).collect(),
        ..Default::default()
    }
}

#[tokio::test]
async fn lifecycle_and_a_process_over_tcp_and_unix() {
    let server = TestServer::fake();
    for (i, target) in server.targets().into_iter().enumerate() {
        let client = trellis_client::Client::new(target);
        client.ping().await.unwrap();
        let handle = format!("smoke-{i}");
        let container = client
            .create(ContainerSpec {
                handle: handle.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(container.handle(), handle);
        let listed = client.containers(&BTreeMap::new()).await.unwrap();
        assert!(listed.iter().any(|c| c.handle() == handle));
        assert_eq!(container.info().await.unwrap().state, "active");

        let (out, mut out_reader) = tokio::io::duplex(1 << 20);
        let mut process = container
            .run(
                echo(&["hello", "world"]),
                ProcessIo {
                    stdout: Some(Box::new(out)),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(process.wait().await.unwrap(), 0);
        drop(process);
        let mut text = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut out_reader, &mut text)
            .await
            .unwrap();
        assert_eq!(text, "hello world\n");

        client.destroy(&handle).await.unwrap();
        match client.container(&handle).info().await {
            Err(Error::ContainerNotFound { handle: h }) => assert_eq!(h, handle),
            other => panic!("expected ContainerNotFound, got {other:?}"),
        }
    }
}
