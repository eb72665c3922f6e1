# syntax=docker/dockerfile:1
# The `wxpush-sandbox` image. Build from the repository root:
#   docker build -f deploy/docker/sandbox.Dockerfile -t wxpush/wxpush-sandbox:dev .
# Static-enough Rust binary on distroless (glibc, CA certificates), running as uid 65532 (nonroot).
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p wxpush-sandbox --bin wxpush-sandbox \
    && install -D target/release/wxpush-sandbox /out/wxpush-sandbox

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/wxpush-sandbox /usr/local/bin/wxpush-sandbox
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/wxpush-sandbox"]
