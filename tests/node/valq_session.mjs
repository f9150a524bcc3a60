// One job-queue session through a Node client from the npm registry, against valqd:
// create, push, pop, ack, a blocking pop served by another client's push, a MULTI/EXEC
// transaction, and a transaction that EXECABORT leaves without effect.
//   node valq_session.mjs <redis|iovalkey> <port> [resp]
// Exits 0 and prints "ok <client> RESP<n> <steps>" when every step got valqd's reply.
import assert from "node:assert/strict";

const [clientName, portText, respText = "2"] = process.argv.slice(2);
const port = Number(portText);
const resp = Number(respText);
const queue = `node-${clientName}-${resp}-${process.pid}`;
let steps = 0;

// A POP reply as an object: a flat [k, v, ...] array under RESP2, a map under RESP3.
function asObject(reply) {
  if (reply instanceof Map) return Object.fromEntries(reply);
  if (Array.isArray(reply)) {
    const out = {};
    for (let i = 0; i < reply.length; i += 2) out[String(reply[i])] = reply[i + 1];
    return out;
  }
  return reply;
}

async function nodeRedis() {
  const { createClient } = await import("redis");
  const open = async () => {
    const c = createClient({ socket: { host: "127.0.0.1", port }, RESP: resp });
    c.on("error", (err) => { throw err; });
    await c.connect();
    return c;
  };
  const a = await open();
  const b = await open();
  return {
    call: (...args) => a.sendCommand(args.map(String)),
    other: (...args) => b.sendCommand(args.map(String)),
    multi: async (commands) => {
      let m = a.multi();
      for (const args of commands) m = m.addCommand(args.map(String));
      return m.exec();
    },
    close: async () => { await a.quit(); await b.quit(); },
  };
}

async function ioValkey() {
  const { default: Valkey } = await import("iovalkey");
  const open = () => new Valkey({ host: "127.0.0.1", port, maxRetriesPerRequest: 0 });
  const a = open();
  const b = open();
  return {
    call: (...args) => a.call(...args.map(String)),
    other: (...args) => b.call(...args.map(String)),
    multi: async (commands) => {
      const m = a.multi();
      for (const [name, ...args] of commands) m.call(name, ...args.map(String));
      const results = await m.exec();
      return results.map(([err, value]) => { if (err) throw err; return value; });
    },
    close: async () => { await a.quit(); await b.quit(); },
  };
}

const client = clientName === "redis" ? await nodeRedis() : await ioValkey();
const step = (ok) => { assert.ok(ok); steps += 1; };
try {
  step(String(await client.call("VALQ", "CREATE", queue, 30)) === `created ${queue}`);
  step(String(await client.call("VALQ", "PUSH", queue, "hello")) === "1");
  const popped = asObject(await client.call("VALQ", "POP", queue));
  step(String(popped.body) === "hello" && String(popped.id) === "1");
  step(String(await client.call("VALQ", "ACK", queue, popped.id)) === "ack 1");

  // a blocking pop, served by the other connection's push
  const waiting = client.call("VALQ", "POP", queue, "BLOCK", 10000, "WITHMETA");
  await new Promise((resolve) => setTimeout(resolve, 200));
  step(String(await client.other("VALQ", "PUSH", queue, "later")) === "2");
  const served = asObject(await waiting);
  step(String(served.body) === "later" && String(served.attempts) === "1");
  step(String(await client.call("VALQ", "ACK", queue, served.id, "LEASE", served.lease))
       === "ack 2");

  // a transaction: every reply at EXEC, in order
  const replies = await client.multi([
    ["VALQ", "PUSH", queue, "t1"], ["VALQ", "PUSH", queue, "t2"], ["VALQ", "POP", queue],
  ]);
  step(replies.length === 3 && String(replies[0]) === "3" && String(replies[1]) === "4");
  step(String(asObject(replies[2]).body) === "t1");

  // a transaction refused while queuing applies nothing (EXECABORT)
  await assert.rejects(client.multi([
    ["VALQ", "PUSH", queue, "never"], ["VALQ", "NOSUCHSUBCOMMAND", queue],
  ]), /EXECABORT|unknown subcommand/);  // node-redis reports the queuing error
  const info = asObject(await client.call("VALQ", "INFO", queue));
  step(String(info.msgs) === "2" && String(info.id_sequence) === "4");
  step(String(await client.call("VALQ", "DELETE", queue)) === `deleted ${queue}`);
} finally {
  await client.close();
}
console.log(`ok ${clientName} RESP${resp} ${steps}`);
