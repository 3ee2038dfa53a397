# syntax=docker/dockerfile:1
#
# The example worker image: `echo-worker` (examples/src/bin/echo-worker.rs),
# serving the example Echo and Calc services. Build it from the repository
# root (the build context is the whole workspace):
#
#   docker build -f deploy/worker.Dockerfile -t thriftworker-echo-worker:0.1.0 .
#
# Your own worker image replaces this one; it must run as the same user as the
# data plane (65532) in the "sidecar" overlay, whose ipc socket directory is
# mode 0700. See deploy/README.md.

ARG RUST_VERSION=1.95
FROM docker.io/library/rust:${RUST_VERSION}-slim-bookworm AS builder
# The workspace's release profile keeps debug info (debug = 1, for
# profiling); the image drops it but keeps the symbols, so a panic's
# backtrace still names functions (echo-worker: ~31 MB -> ~4 MB).
ENV CARGO_PROFILE_RELEASE_STRIP=debuginfo
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p thriftworker-examples --bin echo-worker \
    && install -D -m 0755 -t /out target/release/echo-worker

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /out/echo-worker /usr/local/bin/
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/echo-worker"]
CMD ["--help"]
