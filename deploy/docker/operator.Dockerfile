# syntax=docker/dockerfile:1
# The `wxpush-operator` image. Build from the repository root:
#   docker build -f deploy/docker/operator.Dockerfile -t wxpush/wxpush-operator:dev .
# Static-enough Rust binary on distroless (glibc, CA certificates), running as uid 65532 (nonroot).
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p wxpush-operator --bin wxpush-operator \
    && install -D target/release/wxpush-operator /out/wxpush-operator

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/wxpush-operator /usr/local/bin/wxpush-operator
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/wxpush-operator"]
