/**
 * gpuops metrics from workflow code: values leave the sandbox through the `gpuopsMetrics` sink (src/metrics/runtime.ts
 * injects it) and are recorded on the worker's Runtime meter. No command is issued, and nothing is sent on replay,
 * so emitting a metric never changes a workflow's history.
 */
import { proxySinks, workflowInfo } from '@temporalio/workflow';
import { gpuopsMetrics, type GpuopsMetricSinks } from '../src/metrics/definitions';

const { gpuopsMetrics: sink } = proxySinks<GpuopsMetricSinks>();

/** The typed gpuops families, recorded once per real (not replayed) execution of the code. */
export function workflowMetrics(): ReturnType<typeof gpuopsMetrics> {
  return gpuopsMetrics((key, labels, value) => {
    if (!workflowInfo().unsafe.isReplaying) sink.record(key, labels, value);
  });
}
