// Working sets: record which pages a restored guest touches first, merge
// recordings, read and write their files (docs/working-set.md).
export { readWorkingSet, writeWorkingSet, encodeWorkingSet, decodeWorkingSet, pageRuns, WORKING_SET_VERSION } from './format';
export type { WorkingSet, WorkingSetEntry } from './format';
export { WorkingSetRecorder } from './recorder';
export type { WorkingSetRecorderOptions, WorkingSetStopRules, WorkingSetStopReason, TouchKind } from './recorder';
export { mergeWorkingSets, similarity } from './merge';
export type { MergeOptions, Similarity } from './merge';
export type { HandlerWorkingSetOptions, SessionWorkingSetOptions, WorkingSetRecordTarget } from './options';
export { WORKING_SET_IGNORED } from './replay';
export type { PrefetchSource, ReplaySet, ReplayStart, ReplayStats, RunReader, WorkingSetReplayOptions } from './replay';
