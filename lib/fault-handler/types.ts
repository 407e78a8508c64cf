// The public shapes of the fault handler: the fault a policy sees, the
// options, the counters.
import type { Memfd } from '../memfd';
import type { PresentPages } from '../present-pages';
import type { OpenOptions, Userfaultfd, UffdEvent } from '../userfaultfd';
import type { HandlerWorkingSetOptions } from '../working-set/options';
import type { PrefetchSource, ReplayStats } from '../working-set/replay';

/** One page that needs content, as the fetch policy sees it. */
export interface Fault {
  /** Faulting address (page-aligned) in the faulting process. */
  readonly address: number;
  /** Byte offset of the page in the memfd: where `fetch` must put its content. */
  readonly offset: number;
  /** Page index in the memfd (`offset / pageSize`). */
  readonly page: number;
  /** The first fault on this page was a write. */
  readonly write: boolean;
  /** MINOR fault (the page-cache page exists, possibly stale); false for a MISSING fault on a hole. */
  readonly minor: boolean;
  /** Faulting thread id (0 unless the uffd negotiated `threadId`). */
  readonly threadId: number;
  /** 0 for the first call, then 1, 2, ... when the error policy said `retry`. */
  readonly attempt: number;
}

/** The second argument of `fetch`. */
export interface FetchContext {
  /**
   * Aborts when the handler stops (after `stopGraceMs`), stops on an error,
   * or its uffd closes: a fetch waiting on the network should give up then.
   * A fetch that ignores it is abandoned: nothing waits for it any more.
   */
  readonly signal: AbortSignal;
}

/** What to do with a page whose fetch threw or rejected. */
export type ErrorAction = 'retry' | 'zero' | 'poison' | 'stop';

/** What the native resolver does when the JavaScript thread itself faults on an absent page. */
export type LoopThreadFaultAction = 'abort' | 'map-as-is';

/** Options of {@link FaultHandler}. */
export interface FaultHandlerOptions {
  /** The memfd whose views are attached; fetched content goes into its page cache. */
  memfd: Memfd;
  /**
   * Makes the content of `fault.offset` present in the memfd's page cache,
   * typically `memfd.write(fault.offset, bytes)`. Called once per page however
   * many threads fault it; may be async. After it settles the page is marked
   * present and every faulter on it is woken by one CONTINUE per view.
   */
  fetch: (fault: Fault, context: FetchContext) => void | Promise<void>;
  /** Fetches in flight at once; further pages wait in FIFO order. Default 64. */
  concurrency?: number;
  /** Also map up to this many following pages that are already present, in the same CONTINUE. Default 0. (Was `readAhead`.) */
  mapAhead?: number;
  /** `'event-loop'` (default) or `'native'` (a native resolver thread; needs the `threadId` feature). */
  mode?: 'event-loop' | 'native';
  /**
   * Native mode only: after serving a batch, the resolver keeps reading the
   * uffd without sleeping for up to this many microseconds, and the window
   * restarts with every message: while faults keep arriving, none pays the
   * wake-up of a sleeping thread on another CPU (the largest part of a
   * cross-CPU fault's latency on a VM), at the price of that CPU time.
   * Default 0 (never spin).
   */
  spinUs?: number;
  /** Native mode only: resolver threads reading the one uffd, for many faulting threads. Default 1. */
  threads?: number;
  /**
   * Decides the fate of a page whose fetch failed (only that page is
   * affected): `'retry'` calls fetch again, `'zero'` writes zeros then
   * CONTINUEs, `'poison'` makes the faulter's access raise SIGBUS (needs
   * UFFDIO_POISON, Linux 6.6+), `'stop'` stops the handler with the error
   * (see {@link FaultHandler.finished}). May be async. A throwing onError
   * counts as `'stop'`. Default: retry twice, then stop.
   */
  onError?: (error: unknown, fault: Fault) => ErrorAction | Promise<ErrorAction>;
  /**
   * Native mode only (an error in event-loop mode, where the deadlock
   * watchdog of {@link OpenOptions.deadlockWatchdogMs} does this job): the
   * JavaScript thread of this environment touched an absent page. JavaScript
   * cannot run until the fault is resolved, so fetch can never be called.
   * `'abort'` (default) prints the address and the rule to stderr and aborts
   * the process; `'map-as-is'` maps whatever the page cache holds (zeros for a
   * hole), counts it in `loopThreadFaults` of {@link FaultHandler.stats} and
   * calls `onLoopThreadFaultMapped`. (Was `onLoopThreadFault`.)
   */
  loopThreadFault?: LoopThreadFaultAction;
  /** Called after a non-cooperative event (remove, unmap, remap) has been applied to the handler's state. */
  onEvent?: (event: Exclude<UffdEvent, { type: 'pagefault' | 'fork' }>) => void;
  /**
   * The faulting process forked (needs `eventFork`). `child` is the child's
   * userfaultfd; attach a FaultHandler to it (it shares this memfd). Without
   * this callback the child's uffd is closed, so the child's pages fault as
   * ordinary pages.
   */
  onFork?: (child: Userfaultfd) => void;
  /** Native mode only: the JavaScript thread faulted and `loopThreadFault` was `'map-as-is'`. */
  onLoopThreadFaultMapped?: (info: { address: number; offset: number }) => void;
  /** Stops the handler (as {@link FaultHandler.stop}) when aborted. */
  signal?: AbortSignal;
  /**
   * How long {@link FaultHandler.stop} lets fetches already started finish
   * before it aborts their signal and stops without them, in milliseconds.
   * Default 5000. Closing the uffd aborts them at once.
   */
  stopGraceMs?: number;
  /** Share the present bitmap (and in-flight fetches) with other handlers of views of the same memfd. */
  present?: PresentPages;
  /**
   * Working sets (docs/working-set.md). `record`: a recorder fed the first
   * touch of every page that was absent when touched, with its write kind
   * (region 0: the memfd). A touch of a page already present is no fault
   * and is not recorded; in native mode present pages are mapped without
   * JavaScript and absent ones still come to the handler.
   * `replay`: make the pages of a recorded set present ahead of their
   * faults, first touch first, in contiguous runs (content from `fetch`, one
   * call per page, each run mapped by one CONTINUE); demand faults go first.
   */
  workingSet?: HandlerWorkingSetOptions;
  /**
   * Prefetch pages of your own choosing, as a working-set replay does (not
   * with `workingSet.replay`): `read`, if given, supplies a whole run's
   * content at once (one write into the memfd per run).
   */
  prefetch?: PrefetchSource;
}

/** Options of {@link FaultHandler.attach}. */
export interface AttachOptions {
  /**
   * Also register MISSING, so that holes (pages never written to the memfd)
   * fault too: the post-copy set-up. Default false (MINOR only: holes read as
   * zeros without any fault).
   */
  missing?: boolean;
  /** Register the range with the uffd. Default true; false when the range was registered already (by a child process, say). */
  register?: boolean;
}

/** A view of the memfd in the faulting process, for {@link FaultHandler.attach} when there is no Mapping object (another process's view). */
export interface ViewRange {
  /** Start address in the faulting process. */
  address: number;
  length: number;
  /** Offset of the first byte in the memfd. */
  offset: number;
}

/** Latency percentiles, in microseconds, from fault read to CONTINUE done. */
export interface LatencyStats {
  count: number;
  min: number;
  mean: number;
  p50: number;
  p90: number;
  p99: number;
  p999: number;
  max: number;
}

/** Counters of a {@link FaultHandler}. */
export interface FaultHandlerStats {
  /** Pagefault messages read. */
  faults: number;
  /** Messages whose faulting thread was woken with its page mapped. */
  resolved: number;
  /** Successful fetch calls (at most one per page in flight). */
  fetched: number;
  /** Messages that joined a fetch already in flight for their page. */
  duplicatesMerged: number;
  /** Messages resolved without fetch because the page was marked present. */
  alreadyPresent: number;
  /** Extra pages mapped by `mapAhead` in the same CONTINUE. */
  mapAheadPages: number;
  /** Fetch failures (each retry counts). */
  errors: number;
  /** Pages zero-filled / poisoned by the error policy. */
  zeroFilled: number;
  poisoned: number;
  /** Native mode: faults resolved by the native thread without JavaScript (present pages). */
  nativeResolved: number;
  /** Native mode: JavaScript-thread faults mapped as-is. */
  loopThreadFaults: number;
  /** Native mode: CPU time the resolver threads used, spinning included (µs). */
  resolverCpuUs: number;
  /** Non-cooperative events seen. */
  events: { remove: number; unmap: number; remap: number; fork: number };
  /** Faults on ranges the handler no longer tracks (woken, left to fault again). */
  untracked: number;
  /** CONTINUEs answered EAGAIN because a non-cooperative event was unread, retried after reading events. */
  retriedAfterEvents: number;
  latencyUs: LatencyStats;
  /** With `workingSet.replay` or `prefetch`: the replay's counters. */
  workingSet?: { replay: ReplayStats };
}

