# `rollout serve` as a container: the term-executor service's deployment shape.
#
# Built by scripts/serve-image from a staging directory holding the `rollout` binary (built on
# Debian bookworm, so it runs on the same base) and the host's extra CA certificates. It drives
# the host's Docker engine through the mounted socket:
#
#   docker run -d -p 8080:8080 -v /var/run/docker.sock:/var/run/docker.sock \
#     -v rollout-data:/data -e MAX_CONCURRENT_TASKS=4 rollout-serve
#
# Every term-executor variable (PORT, SESSION_TTL_SECS, MAX_CONCURRENT_TASKS,
# CLONE_TIMEOUT_SECS, AGENT_TIMEOUT_SECS, TEST_TIMEOUT_SECS, MAX_ARCHIVE_BYTES,
# MAX_OUTPUT_BYTES, WORKSPACE_BASE) configures the matching `rollout serve` flag.
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      ca-certificates git tini \
 && rm -rf /var/lib/apt/lists/*
COPY ca/ /usr/local/share/ca-certificates/
RUN update-ca-certificates >/dev/null 2>&1 || true
COPY rollout /usr/local/bin/rollout
ENV PORT=8080 \
    WORKSPACE_BASE=/data \
    ROLLOUT_CACHE_DIR=/data/cache \
    ROLLOUT_STORE=/data/rollout.db
VOLUME /data
EXPOSE 8080
LABEL io.rollout.component="serve"
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s \
  CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/${PORT} && printf 'GET /health HTTP/1.0\\r\\n\\r\\n' >&3 && grep -q '\"ok\"' <&3"]
ENTRYPOINT ["tini", "--", "rollout", "serve", "--host", "0.0.0.0"]
