# syntax=docker/dockerfile:1
# The `wxpush-pusher` image. Build from the repository root:
#   docker build -f deploy/docker/pusher.Dockerfile -t wxpush/wxpush-pusher:dev .
# Static-enough Rust binary on distroless (glibc, CA certificates), running as uid 65532 (nonroot).
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p wxpush-pusher --bin wxpush-pusher \
    && install -D target/release/wxpush-pusher /out/wxpush-pusher

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/wxpush-pusher /usr/local/bin/wxpush-pusher
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/wxpush-pusher"]
