package registry

// FlushNow is the flush timer's tick: a test sends it to write the batched
// last_seen times at once, with a FlushInterval that never fires (a timer
// stopped while it fires trips the race detector inside protoactor's
// scheduler).
type FlushNow = flushTick
