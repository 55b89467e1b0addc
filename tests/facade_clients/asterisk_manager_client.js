// An AMI application written with asterisk-manager (unchanged), driven by
// tests/facade_clients.rs.
//
//     node asterisk_manager_client.js HOST PORT USER SECRET SCENARIO [ARG]
//
// Needs NODE_PATH to hold the node_modules that has asterisk-manager
// (scripts/ensure-facade-clients.sh installs it; the Rust test sets it).
// Prints one JSON object per line per observation and {"kind":"done"} at the
// end. Scenarios: login, events N, ping, list, originate, forbidden, logoff,
// inflight, same_id N, reconnect (see panoramisk_client.py; this library has no MD5
// login). The library logs in by itself when constructed with a port, as
// its README shows; its `Event: on` header is what it sends (Asterisk reads
// only `Events:`, so the session gets the user's read classes).
'use strict';

const AsteriskManager = require('asterisk-manager');

// The library reports reconnects with console.log: keep stdout for the
// JSON lines.
console.log = (...args) => process.stderr.write(args.join(' ') + '\n');

const [host, port, user, secret, scenario, arg] = process.argv.slice(2);

function out(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

function finish(ami) {
  out({ kind: 'done' });
  if (ami) {
    ami.disconnect();
  }
  setTimeout(() => process.exit(0), 50);
}

setTimeout(() => {
  out({ kind: 'error', message: 'scenario timed out' });
  process.exit(1);
}, 40000).unref();

// The library drops the banner: no version to report.
const version = null;
let loggedIn = 0;
const rawIds = [];

const ami = new AsteriskManager(port, host, user, secret, true);
if (scenario === 'reconnect') {
  // As the library's README does: right after construction (it installs
  // its reconnect only while not yet connected).
  ami.keepConnected();
}

ami.on('error', (e) => out({ kind: 'socket_error', message: String(e && e.code || e) }));

// Sends an action; the promise has the ActionID the library chose as `id`
// at once (list items can be emitted before the callback's continuation).
function action(req) {
  let id = null;
  const p = new Promise((resolve) => {
    id = ami.action(req, (err, res) => resolve({ id, err: !!err, res }));
  });
  p.id = id;
  return p;
}

function plain(m) {
  const o = {};
  for (const k of Object.keys(m)) {
    o[k] = m[k];
  }
  return o;
}

ami.on('response', (r) => {
  if (r.actionid !== undefined) {
    rawIds.push({ first: 'Response: ' + r.response, actionid: r.actionid });
  }
  if (!loggedIn && r.message !== undefined && /authentication/i.test(r.message)) {
    loggedIn += 1;
    const ok = String(r.response).toLowerCase() === 'success';
    out({ kind: 'login', ok, version, message: r.message });
    ami.emit('test-login', ok);
  }
});

let events = 0;
const want = Number(arg || 0);
ami.on('managerevent', (e) => {
  if (e.actionid !== undefined) {
    rawIds.push({ first: 'Event: ' + e.event, actionid: e.actionid });
  }
  if (scenario === 'events' && events < want) {
    events += 1;
    out({ kind: 'event', name: e.event, privilege: e.privilege || '' });
    if (events === want) {
      finish(ami);
    }
  }
});

async function run() {
  switch (scenario) {
    case 'login': {
      const r = await action({ action: 'Logoff' });
      out({ kind: 'response', action: 'Logoff', ...plain(r.res) });
      return finish(ami);
    }
    case 'events':
      return; // finish() when N events came
    case 'ping': {
      const r = await action({ action: 'Ping' });
      out({ kind: 'response', action: 'Ping', ...plain(r.res) });
      return finish(ami);
    }
    case 'list': {
      // The library calls back with the first message (the Response); the
      // list items and the completion come as events with the ActionID.
      const items = [];
      let id = null;
      const done = new Promise((resolve) => {
        ami.on('managerevent', (e) => {
          if (id !== null && e.actionid === id) {
            items.push(e.event);
            if (String(e.eventlist).toLowerCase() === 'complete') resolve();
          }
        });
      });
      const p = action({ action: 'CoreShowChannels' });
      id = p.id;
      const r = await p;
      out({ kind: 'response', action: 'CoreShowChannels', ...plain(r.res) });
      await done;
      out({ kind: 'list', actionid: id, items });
      return finish(ami);
    }
    case 'originate': {
      // Observed in the library's own callback order (synchronously: an
      // await would let the event's handlers run first when the Response
      // and the event come in one read).
      let id = null;
      const order = [];
      const maybeDone = () => {
        if (order.includes('response') && order.includes('event')) finish(ami);
      };
      ami.on('originateresponse', (e) => {
        order.push('event');
        out({ kind: 'event', name: e.event, actionid: e.actionid, response: e.response, matches: e.actionid === id });
        maybeDone();
      });
      id = ami.action({
        action: 'Originate', channel: 'Local/100@test', context: 'test', exten: 'sink',
        priority: 1, callerid: '"Small 100" <5000>', timeout: 15000, async: 'true',
      }, (err, res) => {
        order.push('response');
        out({ kind: 'sent', action: 'Originate', actionid: id });
        out({ kind: 'response', action: 'Originate', error: !!err, ...plain(res) });
        maybeDone();
      });
      return;
    }
    case 'forbidden': {
      const r = await action({ action: 'Command', command: 'core show version' });
      out({ kind: 'response', action: 'Command', error: r.err, ...plain(r.res) });
      return finish(ami);
    }
    case 'logoff': {
      const closed = new Promise((resolve) => ami.once('close', resolve));
      const r = await action({ action: 'Logoff' });
      out({ kind: 'response', action: 'Logoff', ...plain(r.res) });
      const t = setTimeout(() => { out({ kind: 'still_open' }); finish(ami); }, 5000);
      await closed;
      clearTimeout(t);
      out({ kind: 'closed' });
      return finish(null);
    }
    case 'same_id': {
      for (let i = 0; i < Number(arg || 1); i += 1) {
        const complete = new Promise((resolve) => {
          const h = (e) => {
            if (e.actionid === '1' && String(e.eventlist).toLowerCase() === 'complete') {
              ami.removeListener('managerevent', h);
              resolve();
            }
          };
          ami.on('managerevent', h);
        });
        const r = await action({ action: 'CoreShowChannels', actionid: '1' });
        out({ kind: 'response', action: 'CoreShowChannels', ...plain(r.res) });
        await complete;
      }
      await new Promise((resolve) => setTimeout(resolve, 500));
      out({ kind: 'raw_ids', messages: rawIds });
      return finish(ami);
    }
    case 'inflight': {
      // QueueStatus, which the backend never answers, in flight when the
      // backend goes down.
      let answered = null;
      ami.action({ action: 'QueueStatus' }, (err, res) => { answered = { error: !!err, ...plain(res) }; });
      out({ kind: 'ready' });
      await new Promise((resolve) => ami.once('close', resolve));
      out({ kind: 'closed' });
      // Anything parsed before the close has been emitted by now.
      await new Promise((resolve) => setTimeout(resolve, 50));
      if (answered) {
        out({ kind: 'response', action: 'QueueStatus', ...answered });
      } else {
        out({ kind: 'no_response', action: 'QueueStatus' });
      }
      return finish(null);
    }
    case 'reconnect': {
      const r = await action({ action: 'Ping' });
      out({ kind: 'response', action: 'Ping', ...plain(r.res) });
      out({ kind: 'ready' });
      await new Promise((resolve) => ami.once('close', resolve));
      out({ kind: 'disconnected' });
      await new Promise((resolve) => ami.once('connect', resolve));
      // Held until the library's own re-login succeeds, then sent.
      const again = await action({ action: 'Ping' });
      out({ kind: 'login', ok: true, again: true, version });
      out({ kind: 'response', action: 'Ping', ...plain(again.res) });
      return finish(ami);
    }
    default:
      out({ kind: 'error', message: 'unknown scenario ' + scenario });
      return finish(ami);
  }
}

ami.once('test-login', (ok) => {
  if (!ok) {
    finish(ami);
    return;
  }
  run().catch((e) => {
    out({ kind: 'error', message: String(e && e.stack || e) });
    process.exit(1);
  });
});
