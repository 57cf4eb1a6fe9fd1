# syntax=docker/dockerfile:1
#
# One image, four binaries: `data-streams` (the default command), `worker`, and the two
# simulators `iqair-sim` and `json-sim`.
# docker-compose.yml runs every service the project builds from this image and picks the binary
# with `command:`. data-streams/tests/compose.rs checks the shape of this file.
#
#   docker build -t data-streams:local .
#   docker run --rm data-streams:local data-streams --help

ARG RUST_VERSION=1.95

# --- builder -------------------------------------------------------------------------------------
FROM rust:${RUST_VERSION}-bookworm AS builder
WORKDIR /src

# Dependencies first, from the manifests alone: this layer is rebuilt only when a Cargo.toml or
# Cargo.lock changes. Cargo needs a target per package to read a manifest, hence the empty lib.rs
# stubs; the real sources replace them below. Fetching for the build platform only skips the
# Windows/macOS-only crates in Cargo.lock.
COPY Cargo.toml Cargo.lock ./
COPY common/Cargo.toml common/
COPY catalogue/Cargo.toml catalogue/
COPY protocol/Cargo.toml protocol/
COPY objects/Cargo.toml objects/
COPY worker/Cargo.toml worker/
COPY iqair-sim/Cargo.toml iqair-sim/
COPY data-streams/Cargo.toml data-streams/
# The benchmark crate is a workspace member that is never built here: its manifest and an empty
# main.rs only let Cargo load the workspace.
COPY bench/Cargo.toml bench/
RUN for crate in common catalogue protocol objects worker iqair-sim data-streams; do \
        mkdir -p "$crate/src" && touch "$crate/src/lib.rs"; \
    done \
 && mkdir -p bench/src && touch bench/src/main.rs \
 && cargo fetch --locked --target "$(rustc -vV | sed -n 's/^host: //p')"

# The sources (migrations included: sqlx::migrate! embeds them at compile time). Only the crates
# are copied, so edits to docs, scripts or compose files do not invalidate the build.
COPY common common
COPY catalogue catalogue
COPY protocol protocol
COPY objects objects
COPY worker worker
COPY iqair-sim iqair-sim
COPY data-streams data-streams

# The target directory is a BuildKit cache, so a rebuild recompiles only what changed. It is not
# part of the image, so the binaries are copied out of it in the same step.
RUN --mount=type=cache,id=data-streams-target,target=/src/target,sharing=locked \
    cargo build --release --locked --offline -p data-streams -p worker -p iqair-sim --bins \
 && mkdir -p /out \
 && cp target/release/data-streams target/release/worker target/release/iqair-sim \
       target/release/json-sim /out/

# --- runtime -------------------------------------------------------------------------------------
FROM debian:bookworm-slim AS runtime

# ca-certificates for https to IQAir and S3; nothing else (the compose healthcheck uses bash's
# /dev/tcp, so no curl).
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*

# A fixed numeric uid/gid, so orchestrators can check runAsNonRoot and volumes can be chowned ahead.
RUN groupadd --system --gid 10001 data-streams \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/data-streams \
        --no-create-home --shell /usr/sbin/nologin data-streams \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/data-streams

COPY --from=builder /out/data-streams /out/worker /out/iqair-sim /out/json-sim /usr/local/bin/

# The embedded defaults (sqlite://data/..., file://data/objects) resolve under this directory,
# which the service user owns; production settings point elsewhere (see deploy/README.md).
WORKDIR /var/lib/data-streams
USER 10001:10001

# 8080: data-streams HTTP API, 7070: data-streams worker port, 8090: iqair-sim, 8091: json-sim.
EXPOSE 8080 7070 8090 8091

CMD ["data-streams"]
