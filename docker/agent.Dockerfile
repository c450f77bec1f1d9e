# An image for agent tasks: makima's image plus Node.js (Debian's) and an
# agent CLI from npm (here Claude Code; any CLI installs the same way).
#
#   docker build -f docker/Dockerfile -t makima .
#   docker build -f docker/agent.Dockerfile --build-arg MAKIMA_IMAGE=makima -t makima-agent .
#
# The agent's credentials reach the task, not makima's logs: give the
# container ANTHROPIC_API_KEY (e.g. from a Kubernetes Secret) and name it in
# MAKIMA_PASS_ENV. A task's environment is built, not inherited: only
# the names listed there (and the task spec's env) are passed, makima's
# own keys never are, and no variable's value is logged (docs/security.md).
ARG MAKIMA_IMAGE=makima:dev
FROM ${MAKIMA_IMAGE}
USER root
RUN apt-get update \
 && apt-get install -y -qq --no-install-recommends nodejs npm \
 && rm -rf /var/lib/apt/lists/* \
 && npm install -g --no-audit --no-fund @anthropic-ai/claude-code \
 && npm cache clean --force
USER makima
ENV MAKIMA_PASS_ENV=ANTHROPIC_API_KEY
