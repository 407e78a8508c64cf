// The `workingSet` option of the servers of faults, and the recorder a
// server makes when it is given a file to record to.
import { statSync } from 'node:fs';
import { dirname } from 'node:path';

import { argValueError, fileError } from '../errors';
import * as v from '../validate';
import { WorkingSetRecorder, WorkingSetStopRules } from './recorder';
import type { WorkingSetReplayOptions } from './replay';

/** Where a server records its session's working set, and when recording stops (it never stops by default: the whole session). */
export interface WorkingSetRecordTarget extends WorkingSetStopRules {
  /** The file written when the session ends. */
  file: string;
}

/** `FaultHandler`'s `workingSet` option. */
export interface HandlerWorkingSetOptions extends WorkingSetReplayOptions {
  /** Feed this recorder every first touch of an absent page. The caller saves and closes it. */
  record?: WorkingSetRecorder;
}

/** The `workingSet` option of `FirecrackerPageServer.listen` and `MigrationDestination.connect`. */
export interface SessionWorkingSetOptions extends WorkingSetReplayOptions {
  /** Record the session's first touches and write them to this file (or `{ file, ...stop rules }`) when the session ends. */
  record?: string | WorkingSetRecordTarget;
}

/** @internal Checks a record target now (the directory must exist), so a typo fails before the session, not after it. */
export function recordTarget(name: string, value: unknown): WorkingSetRecordTarget | undefined {
  if (value === undefined) return undefined;
  const target = typeof value === 'string' ? { file: value } : v.options<WorkingSetRecordTarget>(name, value);
  const file = v.nonEmptyString(`${name}.file`, target.file);
  const dir = dirname(file);
  let isDir = false;
  try {
    isDir = statSync(dir).isDirectory();
  } catch (err) {
    throw fileError('ERR_WORKING_SET_NO_DIR', `cannot record the working set to ${file}: directory ${dir} does not exist`, file, err);
  }
  if (!isDir) throw fileError('ERR_WORKING_SET_NO_DIR', `cannot record the working set to ${file}: ${dir} is not a directory`, file);
  // The stop rules too: a bad one found when a session starts would cost that session.
  const { file: _file, ...rules } = target;
  new WorkingSetRecorder({ ...rules, pageSize: 1, memorySize: 1 }).close();
  return { ...target, file };
}

/** @internal The recorder of a session that records to a file. */
export function recorderFor(target: WorkingSetRecordTarget, pageSize: number, memorySize: number, regions = 1): WorkingSetRecorder {
  const { file: _file, ...rules } = target;
  return new WorkingSetRecorder({ ...rules, pageSize, memorySize, regions });
}

/** @internal Checks a `FaultHandler`'s workingSet option against its memfd. */
export function handlerRecorder(value: unknown, pageSize: number, memorySize: number): WorkingSetRecorder | undefined {
  const opts = v.options<HandlerWorkingSetOptions>('options.workingSet', value);
  if (opts.record === undefined) return undefined;
  const recorder = v.instance('options.workingSet.record', opts.record, WorkingSetRecorder, 'a WorkingSetRecorder');
  if (recorder.pageSize !== pageSize) throw argValueError('options.workingSet.record', `must record pages of the memfd's page size (${pageSize})`, recorder.pageSize);
  if (recorder.memorySize < memorySize) throw argValueError('options.workingSet.record', `must cover the ${memorySize} bytes the handler serves (the memfd, or the present map)`, recorder.memorySize);
  return recorder;
}
