# The wedge edge node: `wedge serve` with the bundled all-MiniLM-L6-v2 package, as a non-root
# user, on Vulkan (Mesa's drivers inside; on an NVIDIA node the NVIDIA container toolkit mounts
# the driver's Vulkan ICD when NVIDIA_DRIVER_CAPABILITIES includes graphics) or the CPU.
#
#   docker build -t wedge .
#   docker run --rm -p 8080:8080 -p 8081:8081 wedge
#
# The Kubernetes manifests in deploy/ run this image.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# (the release binary only; the tests are CI's)
RUN cargo build --release --locked -p wedge-cli \
    && install -D -m 0755 target/release/wedge /out/bin/wedge \
    && install -D -m 0644 models/all-MiniLM-L6-v2.wedge /out/share/wedge/all-MiniLM-L6-v2.wedge

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates libvulkan1 mesa-vulkan-drivers \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --home-dir /var/lib/wedge --create-home wedge
# wedge finds its bundled model in ../share/wedge beside the binary
COPY --from=build /out/ /usr/local/
ENV NVIDIA_DRIVER_CAPABILITIES=compute,utility,graphics
USER 10001:10001
WORKDIR /var/lib/wedge
EXPOSE 8080 8081
ENTRYPOINT ["/usr/local/bin/wedge"]
CMD ["serve", "--addr", "0.0.0.0:8080", "--grpc-addr", "0.0.0.0:8081"]
