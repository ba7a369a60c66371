//! Generates the ONNX protobuf types from the official schema
//! (`proto/onnx.proto`, as the onnx project ships it) with prost; protox
//! compiles the schema, so no protoc binary is needed.

fn main() {
    let proto = "proto/onnx.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["proto"]).expect("compile onnx.proto");
    prost_build::Config::new()
        .compile_fds(fds)
        .expect("generate the ONNX types");
}
