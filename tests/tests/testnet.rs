//! The test network itself: the client reaches both hosts over the LAN, the hosts reach each other
//! over their own link, the client cannot reach that link, and a partition cuts it.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;
use tandem_tests::net::{Node, TestNet};
use tandem_tests::require;

fn serve_once(t: &TestNet, node: Node, addr: &'static str) -> std::thread::JoinHandle<()> {
    let (tx, rx) = std::sync::mpsc::channel();
    let h = t.run_in(node, move || {
        let l = TcpListener::bind(addr).unwrap();
        tx.send(()).unwrap();
        let (mut s, _) = l.accept().unwrap();
        let mut b = [0u8; 4];
        s.read_exact(&mut b).unwrap();
        s.write_all(&b).unwrap();
    });
    rx.recv().unwrap();
    h
}

fn echo_from(t: &TestNet, node: Node, to: &'static str) -> std::io::Result<()> {
    t.run_in(node, move || {
        let mut s = TcpStream::connect_timeout(&to.parse().unwrap(), Duration::from_secs(2))?;
        s.write_all(b"ping")?;
        let mut b = [0u8; 4];
        s.read_exact(&mut b)?;
        assert_eq!(&b, b"ping");
        Ok(())
    })
    .join()
    .unwrap()
}

#[test]
fn lan_and_host_link_are_separate_and_partitionable() {
    require!(netns);
    let t = TestNet::up("net");
    let s = serve_once(&t, Node::HostP, "10.77.0.11:7100");
    echo_from(&t, Node::Client, "10.77.0.11:7100").unwrap();
    s.join().unwrap();
    let s = serve_once(&t, Node::HostB, "10.99.0.2:7101");
    echo_from(&t, Node::HostP, "10.99.0.2:7101").unwrap();
    s.join().unwrap();
    // The client has no route to the host-to-host link.
    assert!(echo_from(&t, Node::Client, "10.99.0.2:7101").is_err());
    // A partition cuts the link.
    t.set_link(Node::HostP, false);
    assert!(echo_from(&t, Node::HostP, "10.99.0.2:7101").is_err());
    t.add_tap(Node::HostP, "tap0");
    let ns = t.ns(Node::HostP);
    drop(t);
    assert!(!std::path::Path::new(&format!("/run/netns/{ns}")).exists());
}
