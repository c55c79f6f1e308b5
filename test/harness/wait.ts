// A bounded wait for a condition, shared by every tier of tests (in-process and namespaced).

/** Polls `f` every 100 ms until `ok` holds for its value (rejections count as not yet); throws after `timeoutMs`. */
export async function eventually<T>(
  what: string,
  f: () => Promise<T>,
  ok: (v: T) => boolean,
  timeoutMs = 20_000,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: T | undefined;
  while (Date.now() < deadline) {
    last = await f().catch(() => undefined as T);
    if (last !== undefined && ok(last)) return last;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`${what}: not within ${timeoutMs} ms (last: ${JSON.stringify(last)})`);
}
