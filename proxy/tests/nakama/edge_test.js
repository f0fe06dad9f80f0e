// The runtime module the real-Nakama tests load (`--runtime.js_entrypoint edge_test.js`):
// what a test needs to see which node served a call, and to play matches on it.

// `whoami`: the node that ran the call, the caller's user id ("" with the http_key), the
// client address Nakama took from the request (the stand-in answers the same fields) and the
// caller's session vars.
function rpcWhoami(ctx, logger, nk, payload) {
  return JSON.stringify({
    node: ctx.node,
    uid: ctx.userId || null,
    client_ip: ctx.clientIp || "",
    vars: ctx.vars || {},
  });
}

// `create_match`: an authoritative match of the module below, on the node that runs the call.
function rpcCreateMatch(ctx, logger, nk, payload) {
  return JSON.stringify({ match_id: nk.matchCreate("edge_match", {}) });
}

// A server hook that sets the shard var, as an operator's would: a device id "hooked-<shard>-..."
// is put in shard <shard>, whatever the client asked for.
function beforeAuthenticateDevice(ctx, logger, nk, data) {
  var id = (data.account && data.account.id) || "";
  var m = /^hooked-([a-z0-9]+)-/.exec(id);
  if (m) {
    data.account.vars = data.account.vars || {};
    data.account.vars.shard = m[1];
  }
  return data;
}

// The smallest authoritative match: everyone may join, nothing is simulated.
function matchInit(ctx, logger, nk, params) {
  return { state: {}, tickRate: 1, label: "edge" };
}
function matchJoinAttempt(ctx, logger, nk, dispatcher, tick, state, presence, metadata) {
  return { state: state, accept: true };
}
function matchJoin(ctx, logger, nk, dispatcher, tick, state, presences) {
  return { state: state };
}
function matchLeave(ctx, logger, nk, dispatcher, tick, state, presences) {
  return { state: state };
}
function matchLoop(ctx, logger, nk, dispatcher, tick, state, messages) {
  return { state: state };
}
function matchTerminate(ctx, logger, nk, dispatcher, tick, state, graceSeconds) {
  return { state: state };
}
function matchSignal(ctx, logger, nk, dispatcher, tick, state, data) {
  return { state: state, data: data };
}

function InitModule(ctx, logger, nk, initializer) {
  initializer.registerRpc("whoami", rpcWhoami);
  initializer.registerRpc("create_match", rpcCreateMatch);
  initializer.registerBeforeAuthenticateDevice(beforeAuthenticateDevice);
  initializer.registerMatch("edge_match", {
    matchInit: matchInit,
    matchJoinAttempt: matchJoinAttempt,
    matchJoin: matchJoin,
    matchLeave: matchLeave,
    matchLoop: matchLoop,
    matchTerminate: matchTerminate,
    matchSignal: matchSignal,
  });
}
