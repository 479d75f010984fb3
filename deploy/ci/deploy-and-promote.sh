#!/bin/sh
# Start a deployModel run with the `temporal` CLI, make sure the run is this job's own, wait for its canary to pass,
# and promote exactly that run. Only the `temporal` CLI and jq are needed (no gpuops checkout).
#
# Why the check: `temporal workflow start --id-conflict-policy Fail` does NOT fail while a run of the same ID
# (deploy:<node>:<alias>) is running: it joins that run, prints its run ID and exits 0. A job that then promoted by
# workflow ID alone would promote whatever deployment happens to run, e.g. another pipeline's model. So this script
# reads the input of the run it got (its history's first event), fails unless it is this job's model and requester,
# and sends the promote Update to that run ID with `expect: { model, runId }`, which the workflow's validator checks
# again when the Update arrives.
#
# Environment (inputs reach the script as variables, never spliced into shell code):
#   NODE, ALIAS, ENGINE, MODEL   the deployment (gpuops node id, router alias, engine name, model reference)
#   BY                           who asks (recorded as requestedBy and promotedBy); make it unique per pipeline run,
#                                e.g. "github:$GITHUB_ACTOR#$GITHUB_RUN_ID", so two pipelines never pass as each other
#   DIGEST                       optional sha256 pin (expectedDigest; also sent in the promote expectation)
#   POLICY                       optional deployment policy as JSON, e.g. "$(gpuops config policy <alias>)"; without
#                                autoPromote: false the deployment promotes itself and this script only checks that
#   TASK_QUEUE                   default gpuops-control
#   WAIT_SECONDS, POLL_SECONDS   how long to wait for the canary (default 3600) and how often to look (default 5)
#   TEMPORAL                     the temporal CLI (default: temporal on PATH)
#   TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE, TEMPORAL_TLS_CERT, TEMPORAL_TLS_KEY, TEMPORAL_TLS_CA,
#   TEMPORAL_TLS_SERVER_NAME, TEMPORAL_API_KEY, TEMPORAL_CODEC_ENDPOINT, TEMPORAL_CODEC_AUTH: read by the temporal
#                                CLI itself. With temporal.encryption on, the script reads the run's input (the
#                                ownership check), so it needs the codec server: TEMPORAL_CODEC_ENDPOINT its URL,
#                                TEMPORAL_CODEC_AUTH "Bearer <codec token>" (a secret: pass it in the environment)
#
# Exit status: 0 promoted; 1 the run is someone else's, the deployment ended otherwise, a refusal or a timeout;
# 2 a missing input.
set -eu

die() {
  code=$1
  shift
  echo "deploy-and-promote: $*" >&2
  exit "$code"
}

for v in NODE ALIAS ENGINE MODEL BY; do
  eval "val=\${$v:-}"
  [ -n "$val" ] || die 2 "$v is required"
done
command -v jq >/dev/null 2>&1 || die 2 "jq is required"
T=${TEMPORAL:-temporal}
QUEUE=${TASK_QUEUE:-gpuops-control}
WAIT=${WAIT_SECONDS:-3600}
POLL=${POLL_SECONDS:-5}
DIGEST=${DIGEST:-}
POLICY=${POLICY:-}
ID="deploy:$NODE:$ALIAS"

input=$(jq -cn --arg node "$NODE" --arg alias "$ALIAS" --arg engine "$ENGINE" --arg model "$MODEL" \
  --arg by "$BY" --arg digest "$DIGEST" --arg policy "$POLICY" '
  { node: $node, alias: $alias, engine: $engine, model: $model, requestedBy: $by }
  + (if $digest == "" then {} else { expectedDigest: $digest } end)
  + (if $policy == "" then {} else { policy: ($policy | fromjson) } end)') || die 2 "POLICY is not valid JSON"

# 1. Start. With a run of the ID already going this still exits 0, with THAT run's ID.
started=$("$T" workflow start --type deployModel --task-queue "$QUEUE" --workflow-id "$ID" \
  --id-conflict-policy Fail --input "$input" -o json) || die 1 "could not start $ID"
run=$(printf '%s' "$started" | jq -r '.runId')
echo "started $ID: run $run"

# 2. Is the run this job's own? Its input is in the first event of its history (describe does not show inputs).
history=$("$T" workflow show --workflow-id "$ID" --run-id "$run" -o json) ||
  die 1 "could not read the history of $ID run $run"
started_input=$(printf '%s' "$history" | jq -c '
  .events[0].workflowExecutionStartedEventAttributes.input.payloads[0]
  | if (.metadata.encoding | @base64d) == "json/plain" then (.data | @base64d | fromjson) else null end')
[ -n "$started_input" ] && [ "$started_input" != "null" ] ||
  die 1 "the input of $ID run $run is not plain JSON: set TEMPORAL_CODEC_ENDPOINT so the temporal CLI can decode it"
their_model=$(printf '%s' "$started_input" | jq -r '.model')
their_by=$(printf '%s' "$started_input" | jq -r '.requestedBy // "unknown"')
their_digest=$(printf '%s' "$started_input" | jq -r '.expectedDigest // ""')
if [ "$their_model" != "$MODEL" ] || [ "$their_by" != "$BY" ] || [ "$their_digest" != "$DIGEST" ]; then
  die 1 "$ID was already running run $run of $their_model (requested by $their_by), not this job's $MODEL: the start joined it; nothing was promoted"
fi

# 3. Wait for the canary to pass (awaiting-promotion), or for the deployment to end. By workflow ID, not run ID: a
#    long canary continues as new (bounded history), and the run this job started then answers its last record
#    forever; the latest run of the ID is this deployment as long as its model and requester are this job's.
deadline=$(($(date +%s) + WAIT))
while :; do
  answer=$("$T" workflow query --workflow-id "$ID" --name status -o json) ||
    die 1 "could not query $ID"
  status=$(printf '%s' "$answer" | jq -c '.queryResult[0]')
  now_model=$(printf '%s' "$status" | jq -r '.model')
  now_by=$(printf '%s' "$status" | jq -r '.requestedBy')
  [ "$now_model" = "$MODEL" ] && [ "$now_by" = "$BY" ] ||
    die 1 "$ID now runs $now_model (requested by $now_by): this job's deployment (run $run) ended; nothing was promoted"
  stage=$(printf '%s' "$status" | jq -r '.stage')
  outcome=$(printf '%s' "$status" | jq -r '.outcome')
  case "$stage" in
  awaiting-promotion) break ;;
  promoting | rollback-window | promoted)
    echo "$ID run $run promoted itself (policy autoPromote): stage $stage"
    exit 0
    ;;
  esac
  [ "$outcome" = "in-progress" ] ||
    die 1 "$ID run $run ended $outcome: $(printf '%s' "$status" | jq -r '.rollback.reason // .error // "no reason recorded"')"
  [ "$(date +%s)" -lt "$deadline" ] || die 1 "$ID run $run is still at stage $stage after ${WAIT}s"
  sleep "$POLL"
done

# 4. Promote it, and only if it is still the deployment this job started: the Update goes to the ID's latest run (a
#    continued run included) and its `expect.runId` is this job's run, which the validator matches against the
#    chain's first run ID; any other deployment refuses it.
update=$(jq -cn --arg by "$BY" --arg model "$MODEL" --arg run "$run" --arg digest "$DIGEST" '
  { by: $by, expect: ({ model: $model, runId: $run } + (if $digest == "" then {} else { digest: $digest } end)) }')
if ! "$T" workflow update execute --workflow-id "$ID" --name promote --input "$update" -o json >/dev/null; then
  die 1 "promote of $ID run $run was refused (the reason is above)"
fi
echo "promoted $ID run $run ($MODEL)"
