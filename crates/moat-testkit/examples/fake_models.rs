//! Serves the fake model APIs until killed, for trying agents by hand:
//! prints the `MOAT_CONNECT_TO` and `MOAT_UPSTREAM_CA_FILE` values to use.
#![allow(clippy::unwrap_used, clippy::expect_used)]

fn main() {
    let dir = std::env::args().nth(1).expect("usage: fake_models DIR");
    let ca = moat_testkit::TestCa::new();
    let ca_file = ca.write_pem(std::path::Path::new(&dir));
    let upstream = moat_testkit::models::start(&ca);
    println!(
        "MOAT_CONNECT_TO={}",
        upstream.connect_to(moat_testkit::models::HOSTS)
    );
    println!("MOAT_UPSTREAM_CA_FILE={}", ca_file.display());
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}
