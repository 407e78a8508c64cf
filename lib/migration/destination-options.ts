// The options and counters of a post-copy migration destination
// (destination.ts): what users pass to MigrationDestination.connect and what
// its `done` resolves with.
import type * as net from 'node:net';

import type { FaultHandlerStats } from '../fault-handler';
import type { Mapping, Memfd } from '../memfd';
import type { Userfaultfd } from '../userfaultfd';
import type { SessionWorkingSetOptions } from '../working-set/options';
import type { ReplayStats } from '../working-set/replay';
import type { MigrationAuth } from './auth';

/** A guest view of the memfd: where it is mapped in the guest process, and which part of the memfd it shows. */
export interface GuestView {
  /** Start address in the process that registered it (the guest). */
  address: number;
  length: number;
  /** Offset in the memfd of the view's first byte. Default 0. */
  offset?: number;
}

/**
 * What to do with the guest when the migration fails (connection lost, bad
 * frame, error from the source). In both cases every blocked faulter is woken
 * and the views are unregistered, so nobody stays asleep.
 * - `'poison'` (default): pages not received are poisoned (UFFDIO_POISON);
 *   touching one raises SIGBUS in the guest. Received pages stay usable. Loud.
 * - `'zero'`: pages not received read as zeros afterwards. Silent data loss;
 *   only for caches that can tolerate it.
 */
export type FailurePolicy = 'poison' | 'zero';

/**
 * Options of {@link MigrationDestination.connect}. `token` and `tls` must
 * match the source's: a source that cannot prove it holds the token, or
 * whose certificate does not chain to `tls.ca`, is refused.
 */
export interface DestinationOptions extends MigrationAuth {
  /** The userfaultfd on which the guest views are registered MISSING|MINOR (possibly received from the guest). */
  uffd: Userfaultfd;
  /** The memfd that backs guest memory (pages land here). */
  memfd: Memfd;
  /** The registered guest views (Mappings of this process, or ranges in the guest's process). */
  views: readonly (GuestView | Mapping)[];
  /** An already connected socket to the source, or host/port to connect to. */
  socket?: net.Socket;
  host?: string;
  port?: number;
  /** See {@link FailurePolicy}. Default `'poison'`. */
  onFailure?: FailurePolicy;
  /**
   * How faults are served (see FaultHandler): `'event-loop'` (default) or
   * `'native'`, where a native thread maps pages already present without
   * JavaScript (the uffd must have the `threadId` feature).
   */
  mode?: 'event-loop' | 'native';
  /** Map received pages into every view at once (fewer later faults). Default true. */
  mapReceived?: boolean;
  /** After a demand fault on page N, also ask (at prefetch priority) for this many pages after it. Default 0. (Was `readahead`.) */
  prefetch?: number;
  /**
   * Pushed batches allowed in flight (sent but not yet written here). Small
   * keeps demand answers from queueing behind pushed data; large keeps a
   * long fat network busy. Default 4.
   */
  pushWindow?: number;
  /** Unregister the views once every page is in, so later touches are plain page faults. Default true. */
  unregisterWhenDone?: boolean;
  signal?: AbortSignal;
  /**
   * Working sets (docs/working-set.md). `record`: record the guest's demand
   * faults (pages it touched before they arrived), first touch first, and
   * write them to this file when the migration ends, done or failed (page
   * index = memfd offset / page size, region 0). The directory must exist.
   * A failure to write it rejects `done` even after a complete migration.
   * `replay`: right after the hello (`start: 'now'`, the default here; or
   * at the first demand fault), ask the source for the pages of this
   * recorded set, first touch first, in contiguous runs at prefetch
   * priority: the source answers demand requests before them. A set that
   * cannot be read or was recorded for another memfd size warns and is ignored.
   */
  workingSet?: SessionWorkingSetOptions;
}

/** What a destination did. */
export interface DestinationStats {
  pageCount: number;
  pageSize: number;
  /** Pages received in answer to a request. */
  pagesOnDemand: number;
  /** Pages received from the background push. */
  pagesPushed: number;
  /** Pages that arrived while already present (ignored; never written). */
  pagesIgnored: number;
  /** Live sources: pre-copy rounds received. */
  rounds: number;
  /** Live sources: pages replaced by update batches before the guest ran here. */
  pagesUpdated: number;
  /** Hybrid: pages dropped at the switch-over (written at the source after they were sent), fetched again. */
  pagesStale: number;
  /** Pagefault events read. */
  faults: number;
  /** Pages the fault handler had to fetch (each one waited for the network). */
  demandFaults: number;
  /** Per page fetched on demand: milliseconds from the fetch (just after the fault was read) to the page being in place. */
  faultLatencyMs: number[];
  /** The fault handler's own counters and latency percentiles (every resolved fault, present or fetched). */
  handler?: FaultHandlerStats;
  bytesReceived: number;
  /** Milliseconds from hello to the last page. */
  durationMs: number;
  /** With `workingSet.replay`: the replay's counters (`touched` is not measured here). */
  workingSet?: { replay: ReplayStats };
}
