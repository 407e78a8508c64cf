/**
 * userfaultfd for Node.js: memfd views, MINOR registration, UFFDIO_CONTINUE,
 * event streams and fd passing, over a small native addon.
 * @packageDocumentation
 */
export { probe } from './probe';
export type { Capabilities, OpenPath } from './probe';
export { Memfd, Mapping, PAGE_SIZE } from './memfd';
export type { MemfdOptions, MapOptions, FromFdOptions } from './memfd';
export { Userfaultfd } from './userfaultfd';
export type { OpenOptions, UffdFromFdOptions, RegisterModes, Registration, ContinueOptions, WakeOptions, UffdEvent, Range } from './userfaultfd';
export type { PagefaultEvent, ForkEvent, RemapEvent, RemoveEvent, UnmapEvent } from './events';
export { UffdError } from './errors';
export { FEATURES, FEATURE_SINCE, IOCTLS } from './constants';
export type { FeatureName, IoctlName, Advice } from './constants';
export { touchPages } from './touch';
export type { TouchOptions, TouchResult } from './touch';
export { FdSocket, FdServer } from './fd-socket';
export type { FdMessage, PeerCredentials } from './fd-socket';
export { FaultHandler } from './fault-handler';
export type { Fault, FetchContext, FaultHandlerOptions, FaultHandlerStats, AttachOptions, ViewRange, ErrorAction, LoopThreadFaultAction, LatencyStats } from './fault-handler';
export { PresentPages } from './present-pages';
export { DirtyTracker } from './dirty-tracker';
export type { DirtyView, RemoteRange, DirtyTrackerOptions, CollectOptions, DirtyPages, DirtyRun, TrackedView, DirtyMethod } from './dirty-tracker';
export { DIRTY_METHOD_SINCE } from './dirty-methods';
export type { DirtyMethodSupport } from './dirty-methods';
export { snapshotLive } from './snapshot';
export type { SnapshotOptions, SnapshotStats } from './snapshot';
export { MigrationSource, servePages } from './migration/source';
export type { SourceOptions, SourceStats } from './migration/source';
export type { ImageSource } from './migration/image';
export type { LiveMode, LiveRange, LiveSourceOptions, LiveStats } from './migration/live';
export { MigrationDestination } from './migration/destination';
export type { DestinationOptions, DestinationStats, GuestView, FailurePolicy } from './migration/destination-options';
export { PROTOCOL_VERSION, crc32 } from './migration/protocol';
export type { MigrationAuth, MigrationTls } from './migration/auth';
export { sendGuestMemory, receiveGuestMemory } from './migration/handoff';
export type { GuestMemoryInfo, ReceivedGuestMemory } from './migration/handoff';
export { FirecrackerPageServer, FirecrackerSession } from './migration/firecracker';
export { parseFirecrackerRegions } from './migration/firecracker-protocol';
export type { FirecrackerServerOptions, FirecrackerStats, FirecrackerFailureAction } from './migration/firecracker';
export type { FirecrackerRegion } from './migration/firecracker-protocol';
export { WorkingSetRecorder, readWorkingSet, writeWorkingSet, encodeWorkingSet, decodeWorkingSet, pageRuns, mergeWorkingSets, similarity, WORKING_SET_VERSION } from './working-set';
export type {
  WorkingSet, WorkingSetEntry, WorkingSetRecorderOptions, WorkingSetStopRules, WorkingSetStopReason, TouchKind, MergeOptions, Similarity,
  HandlerWorkingSetOptions, SessionWorkingSetOptions, WorkingSetRecordTarget,
  PrefetchSource, ReplaySet, ReplayStart, ReplayStats, RunReader, WorkingSetReplayOptions,
} from './working-set';
