//! Compiles `proto/inference.proto` (KServe v2 over gRPC) into Rust: protox parses it, so no
//! `protoc` is needed; tonic-prost-build writes the messages, the server trait and a client.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/inference.proto");
    let files = protox::compile(["inference.proto"], ["proto"])?;
    tonic_prost_build::configure().build_transport(false).compile_fds(files)?;
    Ok(())
}
