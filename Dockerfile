# syntax=docker/dockerfile:1
# ferry's container image: the single executable and nothing else, on distroless "cc" (glibc,
# libgcc and libstdc++, which the Node runtime inside the binary links; CA certificates and
# tzdata), running as the non-root user 65532. Multi-arch: linux/amd64 takes dist/ferry,
# linux/arm64 dist/ferry-linux-arm64.
#
# Build the binaries first, then the image for both architectures with buildx:
#   npm ci && npm run package
#   docker buildx build --platform linux/amd64,linux/arm64 -t REGISTRY/ferry:VERSION --push .
# (One architecture, loaded into the local engine: --platform linux/amd64 --load.)
# Nothing runs under emulation while building: the binaries are already built, and the stage
# that picks one runs on the build machine's own platform.
#
# Run it: docker run --rm REGISTRY/ferry:VERSION copy SRC DST
#         the agent: deploy/kubernetes/ferry-agent.yaml (args start with `agent`)

FROM --platform=$BUILDPLATFORM debian:bookworm-slim AS pick
ARG TARGETARCH
COPY dist/ferry dist/ferry-linux-arm64 /in/
RUN set -eu; \
    case "$TARGETARCH" in \
      amd64) cp /in/ferry /ferry ;; \
      arm64) cp /in/ferry-linux-arm64 /ferry ;; \
      *) echo "ferry is built for amd64 and arm64, not $TARGETARCH" >&2; exit 1 ;; \
    esac; \
    chmod 0555 /ferry; \
    mkdir -p /state

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=pick /ferry /usr/local/bin/ferry
# The agent's default --state-dir, writable by the user it runs as (mount a volume there to keep it).
COPY --from=pick --chown=65532:65532 /state /var/lib/ferry
USER 65532:65532
WORKDIR /home/nonroot
ENTRYPOINT ["/usr/local/bin/ferry"]
CMD ["--help"]
