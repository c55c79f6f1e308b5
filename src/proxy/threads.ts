// The sidecar's background threads run at the lowest priority (nice 19); only the main thread,
// which relays every request, keeps its own. Node gives a process V8's platform workers (the
// optimizing compiler, GC helpers) and libuv's threadpool (file system, DNS, async crypto). Where
// the proxy shares a core with its app and other sidecars, a scheduler trace showed compile jobs
// and GC helpers given slices of 2-5 ms while a request waited (bench/README.md, "Round 5"; the
// bench measures no p99 change from this). Lowering our own threads is all a process may do
// without privileges (raising a priority needs CAP_SYS_NICE); what runs on them (tier-up
// compiles, dns.lookup, key generation for a renewal) can wait.

import { readdirSync, stat } from "node:fs";
import { setPriority } from "node:os";

/** The nice value of the background threads: the lowest priority Linux has short of SCHED_IDLE. */
const BACKGROUND_NICE = 19;

/**
 * Lowers every thread of this process but the main one to `BACKGROUND_NICE`, after making libuv
 * start its threadpool (it is created on first use, and a thread created later would keep the
 * default priority). Linux only (per-thread priorities by thread id); elsewhere it does nothing.
 * Returns how many threads it lowered.
 */
export async function lowerBackgroundThreads(): Promise<number> {
  if (process.platform !== "linux") return 0;
  await new Promise<void>((resolve) => stat(process.execPath, () => resolve()));
  let lowered = 0;
  for (const name of readdirSync("/proc/self/task")) {
    const tid = Number(name);
    if (tid === process.pid) continue;
    try {
      setPriority(tid, BACKGROUND_NICE);
      lowered++;
    } catch {
      // The thread exited between the listing and here.
    }
  }
  return lowered;
}
