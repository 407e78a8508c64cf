import { debuglog } from 'node:util';

/** Tracing under NODE_DEBUG=userfaultfd. */
export const trace = debuglog('userfaultfd');
