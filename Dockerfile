# One image for every llmd-rs role: `llmd epp`, `llmd pd-proxy`, `llmd sim`, `llmd gateway`,
# `llmd loadgen`, `llmd kv`, `llmd demo` (the charts in charts/ run it with those arguments).
#
#   docker build -t ghcr.io/llmd-rs/llmd:0.1.0 .
#   docker run --rm ghcr.io/llmd-rs/llmd:0.1.0 --help
#   docker run --rm -p 8000:8000 ghcr.io/llmd-rs/llmd:0.1.0 sim --host 0.0.0.0 --dummy-tokenizer
#
# Build stage: the release binary, with the dependency build cached apart from the sources.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY crates ./crates
COPY proto ./proto
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    CARGO_PROFILE_RELEASE_DEBUG=line-tables-only cargo build --release --locked -p llmd \
 && install -D -m 0755 target/release/llmd /out/llmd

# Runtime stage: glibc, CA roots (TLS to engines, OTLP collectors, the tokenizer fetch) and the
# binary; no shell tools beyond Debian's base, no build toolchain. Runs as an unprivileged user
# (UID 65532, as the charts' securityContext expects) and works with a read-only root
# filesystem: writable paths are the HF cache volume (HF_HOME) and /tmp.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 65532 llmd \
 && useradd --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin llmd
COPY --from=build /out/llmd /usr/local/bin/llmd
ENV HF_HOME=/data/hf
USER 65532:65532
# 8000: OpenAI API (sim, pd-proxy, gateway); 9002/9003: EPP ext_proc and health; 9090: metrics.
EXPOSE 8000 9002 9003 9090
ENTRYPOINT ["/usr/local/bin/llmd"]
CMD ["--help"]
