# quiver's image: one binary, three roles (serve, gateway, and the CLI).
#
#   docker build -t quiver:latest .        # compiles inside the Rust image (needs a registry)
#
# On a machine that cannot pull images, deploy/docker/build-image.sh builds the binary on the
# host and passes BUILDER_IMAGE=debian:bookworm-slim PREBUILT=quiver, after making that base image
# locally (deploy/docker/base-image.sh); this file is the same either way.
ARG BUILDER_IMAGE=rust:1.95-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${BUILDER_IMAGE} AS build
# Lets scripts prune this stage's leftover image after a build.
LABEL quiver.stage=build
WORKDIR /src
COPY . .
# PREBUILT: path (in the build context) of a binary built elsewhere for glibc 2.36 (bookworm).
ARG PREBUILT=
RUN if [ -n "$PREBUILT" ]; then install -m 0755 "$PREBUILT" /quiver; \
    else cargo build --release --locked && install -m 0755 target/release/quiver /quiver; fi

FROM ${RUNTIME_IMAGE}
RUN useradd --system --uid 10001 --user-group --home-dir /data --create-home quiver
COPY --from=build /quiver /usr/local/bin/quiver
USER quiver
WORKDIR /data
ENV QUIVER_DATA_DIR=/data \
    QUIVER_LISTEN=0.0.0.0:7070 \
    QUIVER_GATEWAY_LISTEN=0.0.0.0:8080
# /data holds the node state: mount a volume there for voters (replicas can start empty).
EXPOSE 7070 8080
# SIGTERM: a replica leaves the membership, then the node flushes and exits.
STOPSIGNAL SIGTERM
ENTRYPOINT ["quiver"]
CMD ["serve"]
