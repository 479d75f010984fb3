# gpuops control-plane image: the control worker and the inference router (docker-compose.yaml runs both from it).
# Node and hypervisor workers are not containers: they run as systemd services on their hosts (deploy/systemd/).
FROM node:20-slim

WORKDIR /opt/gpuops

# Dependencies first, so editing source does not re-run the install. gpuops runs TypeScript directly with tsx,
# which is a devDependency, so this is a full `npm ci` (exactly package-lock.json) rather than `--omit=dev`; NODE_ENV stays
# unset here because NODE_ENV=production would make npm skip devDependencies.
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund && npm cache clean --force

COPY . .

# Config and secrets are mounted read-only at run time. The router's state directory is created here, owned by
# the unprivileged user, so a fresh named volume mounted on it inherits that ownership.
RUN mkdir -p /etc/gpuops/secrets /var/lib/gpuops/router && chown -R node:node /var/lib/gpuops

USER node
ENV GPUOPS_CONFIG=/etc/gpuops/gpuops.yaml

# node itself with tsx as a loader, not the tsx CLI (whose signal relay SIGKILLs a busy child): SIGTERM reaches the
# worker, which drains.
CMD ["node", "--import", "tsx", "workers/control.ts"]
