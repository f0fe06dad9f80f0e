// The official Nakama JavaScript client while a node joins the cluster: players keep a
// realtime socket open across the join, then connect again.
//
// Usage: EDGE_PORT=8443 NODE_EXTRA_CA_CERTS=ca.pem node join.mjs PLAYERS
// 1. Each player authenticates and opens a socket, kept open. Prints one JSON line,
//    {"phase": "connected", "players": [{device, node}]}, then waits for a line on stdin
//    (the test makes a node join meanwhile).
// 2. Each player asks the node behind its open socket again, then opens a new socket.
//    Prints {"phase": "after", "players": [{device, before, open, reconnected}]}.

import { Client } from "@heroiclabs/nakama-js";
import WebSocketImpl from "ws";
import readline from "node:readline";

// Node 20 has no global WebSocket; nakama-js expects one.
globalThis.WebSocket = WebSocketImpl;

const port = process.env.EDGE_PORT;
const count = Number(process.argv[2] ?? "10");
const client = new Client("defaultkey", "localhost", port, true, 10000);

async function whoami(socket) {
  const rpc = await socket.rpc("whoami", "");
  return JSON.parse(rpc.payload).node;
}

const players = [];
for (let i = 0; i < count; i++) {
  const device = `join-device-${String(i).padStart(4, "0")}`;
  const session = await client.authenticateDevice(device, true);
  const socket = client.createSocket(true, false);
  await socket.connect(session, true);
  players.push({ device, session, socket, before: await whoami(socket) });
}
console.log(JSON.stringify({
  phase: "connected",
  players: players.map(({ device, before }) => ({ device, node: before })),
}));

const lines = readline.createInterface({ input: process.stdin });
await new Promise((resolve) => lines.once("line", resolve));
lines.close();

const after = [];
for (const p of players) {
  const open = await whoami(p.socket);
  const again = client.createSocket(true, false);
  await again.connect(p.session, true);
  const reconnected = await whoami(again);
  again.disconnect(false);
  p.socket.disconnect(false);
  after.push({ device: p.device, before: p.before, open, reconnected });
}
console.log(JSON.stringify({ phase: "after", players: after }));
process.exit(0);
