// errno values as the native layer knows them (native/engine_napi.cc exports
// them once), in the sign the native wrappers return: negative.
import { native } from './native';

type ErrnoName = keyof typeof native.engineLayout.errno;

/** `-errno` by name, as native results carry it. */
export const NEGATIVE_ERRNO: Readonly<Record<ErrnoName, number>> = Object.freeze(
  Object.fromEntries(Object.entries(native.engineLayout.errno).map(([name, value]) => [name, -value])) as Record<ErrnoName, number>,
);
