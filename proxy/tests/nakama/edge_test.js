// The runtime module the real-Nakama tests load (`--runtime.js_entrypoint edge_test.js`):
// what a test needs to see which node served a call.

// `whoami`: the node that ran the call, the caller's user id ("" with the http_key) and the
// client address Nakama took from the request (the stand-in answers the same fields).
function rpcWhoami(ctx, logger, nk, payload) {
  return JSON.stringify({
    node: ctx.node,
    uid: ctx.userId || null,
    client_ip: ctx.clientIp || "",
  });
}

function InitModule(ctx, logger, nk, initializer) {
  initializer.registerRpc("whoami", rpcWhoami);
}
