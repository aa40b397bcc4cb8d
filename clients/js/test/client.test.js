// The TypeScript client (built to dist/) against a real local cluster started with
// `chat-cluster up`: sends and acks, history backwards, token refresh, a refused token,
// and resuming on another node without gap or duplicate while nodes die.
//
//   CHAT_PYTHON=.../python npm test      (nox -s js sets it)

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

import { ChatClient, ClientClosed, Refused } from "../dist/index.js";

const PYTHON = process.env.CHAT_PYTHON ?? "python3";
const data = mkdtempSync(join(tmpdir(), "chat-js-"));
let up;
let nodes;

function cli(...args) {
  return execFileSync(PYTHON, ["-m", "chat_cluster", ...args, "--data-dir", data], {
    encoding: "utf8",
  }).trim();
}

function token(user, ...more) {
  return cli("token", "--user", user, "--read", "*", "--send", "*", ...more);
}

async function until(check, what, timeout = 30_000) {
  const deadline = Date.now() + timeout;
  for (;;) {
    if (await check()) return;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function ready(url) {
  try {
    return (await fetch(`${url}/readyz`)).status === 200;
  } catch {
    return false;
  }
}

/** The next `n` events of `kind`, as they come. */
function collect(client, kind, n, timeout = 30_000) {
  return new Promise((resolve, reject) => {
    const got = [];
    const timer = setTimeout(() => reject(new Error(`${got.length} of ${n} ${kind} events`)), timeout);
    const off = client.on(kind, (event) => {
      got.push(event);
      if (got.length === n) {
        clearTimeout(timer);
        off();
        resolve(got);
      }
    });
  });
}

function pid(name) {
  return JSON.parse(readFileSync(join(data, "cluster.json"), "utf8")).services[name].pid;
}

before(async () => {
  // Below 32768: ports above are handed out as the source of outgoing connections, and
  // after a suite that opened thousands of them one may still be taken. A base whose
  // ports are busy makes `up` exit: then another one.
  for (let attempt = 0; attempt < 5; attempt++) {
    const base = 10_000 + Math.floor(Math.random() * 220) * 100;
    up = spawn(PYTHON, ["-m", "chat_cluster", "up", "--nodes", "3", "--base-port", String(base), "--data-dir", data], {
      stdio: ["ignore", "ignore", "inherit"],
    });
    let exited = false;
    up.once("exit", () => { exited = true; });
    nodes = [1, 2, 3].map((i) => `http://127.0.0.1:${base + i}`);
    await until(async () => exited || (await Promise.all(nodes.map(ready))).every(Boolean), "the cluster", 90_000);
    if (!exited) return;
  }
  throw new Error("chat-cluster up did not start on five port ranges");
});

after(async () => {
  if (up) {
    up.kill("SIGINT");
    await new Promise((r) => up.once("exit", r));
  }
  rmSync(data, { recursive: true, force: true });
});

test("the chat page serves this build of the client", () => {
  const here = new URL(".", import.meta.url).pathname;
  const built = readFileSync(join(here, "..", "dist", "index.js"), "utf8");
  const served = readFileSync(join(here, "..", "..", "..", "services", "chat", "static", "client.js"), "utf8");
  assert.equal(served, built, "run `npm run build` in clients/js (it copies the build)");
});

test("a send resolves with its ack and the message arrives once", async () => {
  const client = new ChatClient(nodes, token("ada"), { first: 0 }).start();
  try {
    client.join("js-room", 0);
    await collect(client, "joined", 1);
    const arriving = collect(client, "message", 3);
    const acks = [];
    for (const text of ["one", "two", "three"]) acks.push(await client.send("js-room", text));
    const messages = await arriving;
    assert.deepEqual(messages.map((m) => m.seq), acks.map((a) => a.seq));
    assert.deepEqual(messages.map((m) => [m.user, m.text]), [["ada", "one"], ["ada", "two"], ["ada", "three"]]);
    // The same id again is the same message: acknowledged with its first seq.
    const again = await client.send("js-room", "one", "fixed-id");
    const repeat = await client.send("js-room", "one", "fixed-id");
    assert.equal(repeat.seq, again.seq);
    assert.equal(repeat.duplicate, true);
    assert.equal(client.user, "ada");
  } finally {
    client.close();
  }
});

test("presence: a snapshot, then who comes and goes on another node", async () => {
  const ada = new ChatClient(nodes, token("pres-ada"), { first: 0 }).start();
  const bob = new ChatClient(nodes, token("pres-bob"), { first: 1 });
  try {
    const snapshot = collect(ada, "presence", 1);
    ada.join("js-presence", null, { presence: true });
    const [first] = await snapshot;
    assert.equal(first.kind, "snapshot");
    assert.deepEqual(first.members, [{ user: "pres-ada", count: 1 }]);
    assert.deepEqual([...ada.members("js-presence")], [["pres-ada", 1]]);
    const came = collect(ada, "presence", 1);
    bob.start().join("js-presence");
    assert.deepEqual(await came, [{ kind: "join", channel: "js-presence", online: 2, users: ["pres-bob"] }]);
    assert.deepEqual([...ada.members("js-presence")].sort(), [["pres-ada", 1], ["pres-bob", 1]]);
    const went = collect(ada, "presence", 1);
    bob.close();
    assert.deepEqual(await went, [{ kind: "leave", channel: "js-presence", online: 1, users: ["pres-bob"] }]);
    assert.deepEqual([...ada.members("js-presence")], [["pres-ada", 1]]);
  } finally {
    ada.close();
    bob.close();
  }
});

test("history pages backwards to the first message", async () => {
  const client = new ChatClient(nodes, token("bob"), { first: 1 }).start();
  try {
    const acks = [];
    for (let i = 0; i < 120; i++) acks.push(await client.send("js-history", `${i}`));
    let shown = [];
    let before = null;
    for (;;) {
      const page = await client.history("js-history", before, 50);
      if (page.length === 0) break;
      shown = [...page.map((m) => m.seq), ...shown];
      before = page[0].seq;
    }
    assert.deepEqual(shown, acks.map((a) => a.seq));
    await assert.rejects(client.history("bad channel!"), (e) => e instanceof Refused && e.code === "invalid_channel");
  } finally {
    client.close();
  }
});

test("a refused send rejects with the node's code", async () => {
  const reader = cli("token", "--user", "reader", "--read", "*");
  const client = new ChatClient(nodes, reader, { first: 0 }).start();
  try {
    await assert.rejects(client.send("js-room", "not allowed"), (e) => e instanceof Refused && e.code === "forbidden");
  } finally {
    client.close();
  }
});

test("an empty text is refused and a closed client refuses sends", async () => {
  const client = new ChatClient(nodes, token("eve"), { first: 0 });
  await assert.rejects(client.send("js-room", ""), (e) => e instanceof Refused && e.code === "invalid_frame");
  client.close();
  await assert.rejects(client.send("js-room", "too late"), (e) => e instanceof ClientClosed);
});

test("a token function renews the token on the same socket", async () => {
  let minted = 0;
  const client = new ChatClient(nodes, () => {
    minted += 1;
    return token("cy", "--ttl", "4s");
  }, { first: 2 }).start();
  try {
    client.join("js-refresh");
    await collect(client, "joined", 1);
    // Six tokens are minted about 10 s in; without a refresh the first one would have
    // closed the socket at 4 s + 5 s of leeway.
    await until(() => minted >= 6, "six tokens", 30_000);
    await client.send("js-refresh", "still here");
    assert.equal(client.connections, 1); // never closed for an expired token
  } finally {
    client.close();
  }
});

test("a fixed token that is refused ends the client", async () => {
  const client = new ChatClient(nodes, "not.a.token", { first: 0 });
  const failed = collect(client, "authfailed", 1);
  client.start();
  const [event] = await failed;
  assert.match(event.reason, /4001/);
  client.close();
});

test("a client resumes on another node without gap or duplicate", async () => {
  const admin = cli("token", "--user", "writer", "--admin");
  const client = new ChatClient([nodes[0], nodes[1]], token("dee"), { first: 0, backoff: [50, 500] }).start();
  try {
    client.join("js-resume", 0);
    await collect(client, "joined", 1);
    const first = collect(client, "message", 5);
    for (let i = 0; i < 5; i++) await client.send("js-resume", `before ${i}`);
    await first;
    // Its other node frozen and its node dead, the client can be nowhere while 150
    // messages are written through a node it does not know: more than the 100 a join
    // without `after` shows, so only a resume brings them all.
    const reconnected = collect(client, "connected", 1, 60_000);
    const missed = collect(client, "message", 150, 60_000);
    process.kill(pid("node-2"), "SIGSTOP");
    process.kill(pid("node-1"), "SIGKILL");
    const seqs = [];
    try {
      for (let i = 0; i < 150; i++) {
        const response = await fetch(`${nodes[2]}/messages`, {
          method: "POST",
          headers: { "content-type": "application/json", authorization: `Bearer ${admin}` },
          body: JSON.stringify({ channel: "js-resume", text: `away ${i}` }),
        });
        assert.equal(response.status, 201);
        seqs.push((await response.json()).seq);
      }
    } finally {
      process.kill(pid("node-2"), "SIGCONT");
    }
    const [connected] = await reconnected;
    assert.equal(connected.node, nodes[1]);
    const got = await missed;
    assert.deepEqual(got.map((m) => m.seq), seqs); // every one, once, in order
    assert.equal(client.cursor("js-resume"), seqs.at(-1));
  } finally {
    client.close();
  }
});

// What an operator does when replacing the log: delete the stream and create it again
// (with the admin's credentials). Every seq of the old log then means nothing.
const REPLACE_LOG = `
import asyncio, json, sys
from chatlog import ChatLog, LogSettings, StreamSpec
from chatlog.roles import ADMIN
data, creds = sys.argv[1], sys.argv[2]
url = json.load(open(data + "/cluster.json"))["nats"][0]["url"]
async def main():
    log = await ChatLog.open(LogSettings(nats_urls=(url,), creds=creds), "js test", ADMIN)
    try:
        await log.delete_stream()
        await log.ensure_stream(StreamSpec())
    finally:
        await log.close()
asyncio.run(main())
`;

test("a new epoch drops the cursors and joins again", async () => {
  const admin = cli("token", "--user", "writer", "--admin");
  const client = new ChatClient([nodes[2]], token("fay"), { first: 0, backoff: [50, 500] }).start();
  try {
    client.join("js-epoch", 0);
    await collect(client, "joined", 1);
    const old = collect(client, "message", 3);
    for (let i = 0; i < 3; i++) await client.send("js-epoch", `old ${i}`);
    await old;
    const changed = collect(client, "epoch", 1, 60_000);
    const fresh = collect(client, "message", 1, 60_000);
    execFileSync(PYTHON, ["-c", REPLACE_LOG, data, cli("creds", "admin")]);
    // The node bootstraps the new log; a send through it is stored as seq 1 of it.
    await until(async () => {
      const response = await fetch(`${nodes[2]}/messages`, {
        method: "POST",
        headers: { "content-type": "application/json", authorization: `Bearer ${admin}` },
        body: JSON.stringify({ channel: "js-epoch", text: "new", id: "the-new-one" }),
      });
      return response.status === 201;
    }, "a send into the new log", 60_000);
    const [event] = await changed;
    assert.ok(event.epoch);
    const [first] = await fresh;
    assert.deepEqual([first.seq, first.text], [1, "new"]); // the old cursor was 3 or more
  } finally {
    client.close();
  }
});
