'use strict';
// Interop: the MQTT.js client (npm `mqtt`, v5, pinned in package-lock.json) against a real
// all-in-one `herald`.
//
// Starts herald on free loopback ports with a temporary data dir (and a second one with a
// password file and an ACL file for the auth cases), then checks, for MQTT 3.1.1 and 5.0 where
// the feature exists: QoS 0/1/2 round trips (in order, each once), retained messages (retain
// flag, deletion, Retain Handling 2, Retain As Published), wills (abnormal close, normal
// DISCONNECT, Will Delay Interval), persistent sessions (offline backlog after reconnect),
// shared subscriptions, MQTT over WebSocket, the 5.0 properties (topic alias, user properties,
// content type, subscription identifier, No Local, message expiry) and authentication /
// authorization answers.
//
// usage: node [--test-reporter=spec] mqttjs_interop_test.js BIN_DIR NPM_DIR
//   BIN_DIR  directory with herald and heraldctl ("" for $HERALD_BIN_DIR)
//   NPM_DIR  where `npm ci` installs this directory's package-lock.json (reused when the lock
//            file is unchanged)
// env: MQTTJS_TEST_HERALD_LOG=1 forwards herald's stderr.

const assert = require('node:assert/strict');
const { spawn, spawnSync } = require('node:child_process');
const crypto = require('node:crypto');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const readline = require('node:readline');
const { describe, it, before, after, afterEach } = require('node:test');

const binDir = process.argv[2] || process.env.HERALD_BIN_DIR;
const npmDir = process.argv[3];
if (!binDir || !npmDir) {
  console.error('usage: node mqttjs_interop_test.js BIN_DIR NPM_DIR');
  process.exit(2);
}

// ---------------------------------------------------------------------------------------------
// Installing MQTT.js from the committed lock file, once per lock file content.

function loadMqtt() {
  const src = __dirname;
  const lock = fs.readFileSync(path.join(src, 'package-lock.json'));
  const pkg = fs.readFileSync(path.join(src, 'package.json'));
  const digest = crypto.createHash('sha256').update(pkg).update(lock).digest('hex');
  const stamp = path.join(npmDir, '.installed-sha256');
  const installed = path.join(npmDir, 'node_modules', 'mqtt', 'package.json');
  const upToDate = fs.existsSync(installed) && fs.existsSync(stamp) &&
      fs.readFileSync(stamp, 'utf8').trim() === digest;
  if (!upToDate) {
    fs.mkdirSync(npmDir, { recursive: true });
    fs.writeFileSync(path.join(npmDir, 'package.json'), pkg);
    fs.writeFileSync(path.join(npmDir, 'package-lock.json'), lock);
    const npm = spawnSync('npm', ['ci', '--no-audit', '--no-fund', '--ignore-scripts',
                                  '--loglevel=error'],
                          { cwd: npmDir, stdio: ['ignore', 'inherit', 'inherit'] });
    if (npm.status !== 0) {
      console.error(`npm ci in ${npmDir} failed (status ${npm.status}, ${npm.error || ''})`);
      process.exit(1);
    }
    fs.writeFileSync(stamp, digest + '\n');
  }
  return require(path.join(npmDir, 'node_modules', 'mqtt'));
}

const mqtt = loadMqtt();

// ---------------------------------------------------------------------------------------------
// Herald processes.

const running = new Set();
process.on('exit', () => {
  for (const h of running) h.proc.kill('SIGKILL');
});

class Herald {
  static async start(name, extraArgs = []) {
    const h = new Herald();
    h.name = name;
    h.dir = fs.mkdtempSync(path.join(os.tmpdir(), 'herald-mqttjs-'));
    // Ports 0: herald picks free ones and logs them (a port picked here and released could be
    // taken by herald's own core listener before the MQTT or HTTP listener binds it).
    h.mqttPort = 0;
    h.httpPort = 0;
    h.logTail = [];
    const args = [`--data_dir=${h.dir}`, '--admin.listen=127.0.0.1:0', '--core.listen=127.0.0.1:0',
                  '--http.listen=127.0.0.1:0', '--mqtt.listen=127.0.0.1:0',
                  '--storage.sync=false', ...extraArgs];
    const herald = path.join(binDir, 'herald');
    // With setpriv, herald gets SIGKILL when this process dies (a ctest timeout included).
    const setpriv = '/usr/bin/setpriv';
    h.proc = fs.existsSync(setpriv)
        ? spawn(setpriv, ['--pdeathsig', 'KILL', herald, ...args],
                { stdio: ['ignore', 'ignore', 'pipe'] })
        : spawn(herald, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    running.add(h);
    h.exited = new Promise((resolve) => h.proc.on('exit', (code, signal) => {
      running.delete(h);
      resolve({ code, signal });
    }));
    const lines = readline.createInterface({ input: h.proc.stderr });
    await h.ready(lines).catch(async (err) => {
      h.proc.kill('SIGKILL');
      await h.exited;
      fs.rmSync(h.dir, { recursive: true, force: true });
      throw err;
    });
    return h;
  }

  ready(lines) {
    const h = this;
    const name = this.name;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(
          () => reject(new Error(`${name}: no "herald ready" within 30 s:\n${h.logTail.join('\n')}`)),
          30000);
      h.exited.then(({ code, signal }) => {
        clearTimeout(timer);
        reject(new Error(`${name} exited (${code ?? signal}) before "herald ready":\n` +
                         h.logTail.join('\n')));
      });
      lines.on('line', (line) => {
        h.logTail.push(line);
        if (h.logTail.length > 200) h.logTail.shift();
        if (process.env.MQTTJS_TEST_HERALD_LOG) process.stderr.write(`[${name}] ${line}\n`);
        const mqttLine = line.match(/mqtt listening on 127\.0\.0\.1:(\d+)/);
        if (mqttLine) h.mqttPort = Number(mqttLine[1]);
        const httpLine = line.match(/http listening on 127\.0\.0\.1:(\d+)/);
        if (httpLine) h.httpPort = Number(httpLine[1]);
        if (line.trimEnd().endsWith('herald ready')) {
          clearTimeout(timer);
          if (h.mqttPort === 0 || h.httpPort === 0) {
            reject(new Error(`${name}: no "mqtt/http listening on" line:\n${h.logTail.join('\n')}`));
          } else {
            resolve();
          }
        }
      });
    });
  }

  get url() { return `mqtt://127.0.0.1:${this.mqttPort}`; }
  get wsUrl() { return `ws://127.0.0.1:${this.httpPort}/mqtt`; }

  async stop() {
    if (running.has(this)) {
      this.proc.kill('SIGTERM');
      const timer = setTimeout(() => this.proc.kill('SIGKILL'), 10000);
      await this.exited;
      clearTimeout(timer);
    }
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}

// ---------------------------------------------------------------------------------------------
// Client helpers.

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const range = (n, f) => Array.from({ length: n }, (_, i) => f(i));
let sequence = 0;
const unique = (prefix) => `${prefix}-${process.pid}-${++sequence}`;
const vname = (v) => (v === 5 ? 'MQTT 5.0' : 'MQTT 3.1.1');

// Every client of the current case, closed after it.
const openClients = new Set();

// Received messages of one client, in arrival order.
class Inbox {
  constructor(client, label) {
    this.label = label;
    this.messages = [];
    this.waiters = [];
    client.on('message', (topic, payload, packet) => {
      this.messages.push({ topic, payload: payload.toString(), packet, at: Date.now() });
      for (const w of [...this.waiters]) w();
    });
  }

  payloads() { return this.messages.map((m) => m.payload); }

  describe() {
    return JSON.stringify(this.messages.map((m) => ({
      topic: m.topic, payload: m.payload, qos: m.packet.qos, retain: m.packet.retain,
      dup: m.packet.dup, id: m.packet.messageId })));
  }

  // The first n messages (of those `keep` accepts); fails when fewer than n arrive within
  // timeoutMs.
  async waitFor(n, timeoutMs = 5000, keep = () => true) {
    const kept = () => this.messages.filter(keep);
    if (kept().length < n) {
      await new Promise((resolve, reject) => {
        const check = () => {
          if (kept().length >= n) {
            clearTimeout(timer);
            this.waiters.splice(this.waiters.indexOf(check), 1);
            resolve();
          }
        };
        const timer = setTimeout(() => {
          this.waiters.splice(this.waiters.indexOf(check), 1);
          reject(new Error(`${this.label}: expected ${n} message(s) within ${timeoutMs} ms, ` +
                           `got ${kept().length}: ${this.describe()}`));
        }, timeoutMs);
        this.waiters.push(check);
      });
    }
    return kept().slice(0, n);
  }

  // The first n messages delivered through an existing subscription (retain flag 0), not as
  // retained messages of a new one.
  waitForLive(n, timeoutMs = 5000) { return this.waitFor(n, timeoutMs, (m) => !m.packet.retain); }
}

// Connects and waits for a successful CONNACK. The client gets `inbox`, `connack` and `errors`.
async function connect(url, version, opts = {}) {
  const label = opts.label || opts.clientId || 'client';
  const client = mqtt.connect(url, {
    protocolVersion: version,
    clientId: unique('mqttjs'),
    reconnectPeriod: 0,
    connectTimeout: 5000,
    keepalive: 30,
    ...opts,
  });
  openClients.add(client);
  client.inbox = new Inbox(client, label);
  client.errors = [];
  client.on('error', (err) => client.errors.push(err));
  client.connack = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${label}: no CONNACK within 6 s`)), 6000);
    client.once('connect', (connack) => { clearTimeout(timer); resolve(connack); });
    client.once('error', (err) => {
      clearTimeout(timer);
      reject(new Error(`${label}: connect failed: ${err.message} (code ${err.code})`));
    });
    client.once('close', () => {
      clearTimeout(timer);
      reject(new Error(`${label}: connection closed before CONNACK`));
    });
  });
  return client;
}

// Connects expecting a refusal; returns the CONNACK packet as received.
async function connectRefused(url, version, opts) {
  const client = mqtt.connect(url, {
    protocolVersion: version, clientId: unique('mqttjs'), reconnectPeriod: 0,
    connectTimeout: 5000, ...opts,
  });
  openClients.add(client);
  return new Promise((resolve, reject) => {
    let connack = null;
    const timer = setTimeout(() => reject(new Error('no CONNACK within 6 s')), 6000);
    client.on('packetreceive', (packet) => { if (packet.cmd === 'connack') connack = packet; });
    client.on('error', () => {});
    client.once('connect', () => {
      clearTimeout(timer);
      reject(new Error('expected the CONNECT to be refused, but CONNACK accepted it'));
    });
    client.once('close', () => {
      clearTimeout(timer);
      if (connack) resolve(connack);
      else reject(new Error('connection closed without a CONNACK'));
    });
  });
}

// Sends SUBSCRIBE and returns the SUBACK's return/reason codes (also refusals).
function subscribe(client, subs, opts = {}) {
  return new Promise((resolve, reject) => {
    client.subscribe(subs, opts, (err, granted, packet) => {
      if (packet && packet.granted) resolve(packet.granted);
      else reject(err || new Error('no SUBACK'));
    });
  });
}

async function subscribeOk(client, subs, opts = {}) {
  const topics = typeof subs === 'string' ? [subs] : Object.keys(subs);
  const codes = await subscribe(client, subs, opts);
  for (let i = 0; i < codes.length; i++) {
    assert.ok(codes[i] < 0x80, `SUBSCRIBE ${topics[i]} refused with ${codes[i]}`);
  }
  return codes;
}

// Publishes and resolves when acknowledged (QoS 1/2) or written (QoS 0). Rejects with the
// MQTT.js error (err.code is the 5.0 reason code) on a negative acknowledgement.
function publish(client, topic, payload, opts = {}) {
  return new Promise((resolve, reject) => {
    client.publish(topic, payload, opts, (err, packet) => (err ? reject(err) : resolve(packet)));
  });
}

// All of them in order on one connection, then waits for every acknowledgement.
function publishAll(client, topic, payloads, opts) {
  return Promise.all(payloads.map((p) => publish(client, topic, p, opts)));
}

// A client subscribed to `topic` before anything is published there. Herald acknowledges a
// PUBLISH when the core has stored it and fans it out to the edge's subscribers a little later,
// so a SUBSCRIBE sent right after the PUBACK can still get that message as a live one. Cases that
// subscribe after publishing first wait until the witness has received the message live
// (waitForLive).
async function witnessOf(url, version, topic) {
  const witness = await connect(url, version, { label: 'witness' });
  await subscribeOk(witness, topic, { qos: 1 });
  return witness;
}

function destroySocket(client) {
  client.stream.destroy();
}

afterEach(async () => {
  for (const c of openClients) c.end(true);
  openClients.clear();
});

function assertExactlyOnceInOrder(got, expected, what) {
  assert.deepEqual(got, expected,
                   `${what}: expected ${expected.length} messages once each in order`);
}

// ---------------------------------------------------------------------------------------------
// The cases against a herald without authentication.

describe('herald (no auth)', () => {
  let herald;
  before(async () => { herald = await Herald.start('herald'); });
  after(async () => { if (herald) await herald.stop(); });

  for (const v of [4, 5]) {
    describe(vname(v), () => {
      for (const qos of [0, 1, 2]) {
        it(`QoS ${qos} publish -> subscribe: 20 messages in order, each once`, async () => {
          const topic = unique(`rt/q${qos}`);
          const sub = await connect(herald.url, v, { label: 'subscriber' });
          let rawPublishes = 0;
          sub.on('packetreceive', (p) => { if (p.cmd === 'publish') rawPublishes++; });
          assert.deepEqual(await subscribeOk(sub, topic, { qos }), [qos]);
          const pub = await connect(herald.url, v, { label: 'publisher' });
          const expected = range(20, (i) => `m-${i}`);
          await publishAll(pub, topic, expected, { qos });
          await sub.inbox.waitFor(20);
          await sleep(300);  // a duplicate would arrive now
          assertExactlyOnceInOrder(sub.inbox.payloads(), expected, `QoS ${qos}`);
          for (const m of sub.inbox.messages) {
            assert.equal(m.packet.qos, qos, `message ${m.payload} delivered at QoS ${m.packet.qos}`);
            assert.equal(m.topic, topic);
          }
          assert.equal(rawPublishes, 20, `PUBLISH packets received (redeliveries?)`);
        });
      }

      it('retained: a new subscriber gets it with the retain flag; empty payload deletes it',
         async () => {
           const topic = unique('retained/a');
           const witness = await witnessOf(herald.url, v, topic);
           const pub = await connect(herald.url, v, { label: 'publisher' });
           await publish(pub, topic, 'kept', { qos: 1, retain: true });
           await witness.inbox.waitForLive(1);
           const sub1 = await connect(herald.url, v, { label: 'subscriber 1' });
           await subscribeOk(sub1, topic, { qos: 1 });
           const [m] = await sub1.inbox.waitFor(1);
           assert.equal(m.payload, 'kept');
           assert.equal(m.packet.retain, true, 'retained message delivered without retain flag');
           await publish(pub, topic, '', { qos: 1, retain: true });
           await witness.inbox.waitForLive(2);
           const sub2 = await connect(herald.url, v, { label: 'subscriber 2' });
           await subscribeOk(sub2, topic, { qos: 1 });
           await sleep(700);
           assert.deepEqual(sub1.inbox.payloads(), ['kept', ''],
                            `subscriber 1 got: ${sub1.inbox.describe()}`);
           assert.deepEqual(sub2.inbox.payloads(), [],
                            'after the empty retained PUBLISH, a new subscriber still got: ' +
                            sub2.inbox.describe());
         });

      if (v === 5) {
        it('retained: Retain Handling 2 sends no retained message, 0 does', async () => {
          const topic = unique('retained/rh');
          const pub = await connect(herald.url, v, { label: 'publisher' });
          const witness = await witnessOf(herald.url, v, topic);
          await publish(pub, topic, 'kept', { qos: 1, retain: true });
          await witness.inbox.waitForLive(1);
          const rh2 = await connect(herald.url, v, { label: 'rh=2 subscriber' });
          await subscribeOk(rh2, { [topic]: { qos: 1, rh: 2 } });
          const rh0 = await connect(herald.url, v, { label: 'rh=0 subscriber' });
          await subscribeOk(rh0, { [topic]: { qos: 1, rh: 0 } });
          const [m] = await rh0.inbox.waitFor(1);
          assert.equal(m.payload, 'kept');
          await sleep(500);
          assert.deepEqual(rh2.inbox.payloads(), [],
                           `Retain Handling 2 subscriber got: ${rh2.inbox.describe()}; ` +
                           `rh=0 subscriber got: ${rh0.inbox.describe()}; witness got: ` +
                           `${witness.inbox.describe()}; herald's log:\n` +
                           herald.logTail.slice(-40).join('\n'));
          await publish(pub, topic, 'live', { qos: 1 });
          const [live] = await rh2.inbox.waitFor(1);
          assert.equal(live.payload, 'live');
        });

        it('retained: Retain As Published keeps the retain flag on a live message', async () => {
          const topic = unique('retained/rap');
          // Retain Handling 0: each SUBSCRIBE also looks up retained messages (after its SUBACK).
          // The PUBLISH below follows the SUBACKs, so it is a live message for both, delivered
          // once, however late the lookups are answered.
          const rap = await connect(herald.url, v, { label: 'rap=1 subscriber' });
          await subscribeOk(rap, { [topic]: { qos: 1, rap: true } });
          const norap = await connect(herald.url, v, { label: 'rap=0 subscriber' });
          await subscribeOk(norap, { [topic]: { qos: 1, rap: false } });
          const pub = await connect(herald.url, v, { label: 'publisher' });
          await publish(pub, topic, 'live-retained', { qos: 1, retain: true });
          const [a] = await rap.inbox.waitFor(1);
          const [b] = await norap.inbox.waitFor(1);
          assert.equal(a.packet.retain, true, 'Retain As Published: retain flag cleared');
          assert.equal(b.packet.retain, false,
                       'without Retain As Published a live message kept the retain flag');
          await sleep(300);
          assert.equal(rap.inbox.messages.length, 1, rap.inbox.describe());
          assert.equal(norap.inbox.messages.length, 1, norap.inbox.describe());
        });
      }

      it('will: published when the socket is destroyed without DISCONNECT', async () => {
        const topic = unique('will/abnormal');
        const sub = await connect(herald.url, v, { label: 'will subscriber' });
        await subscribeOk(sub, topic, { qos: 1 });
        const dying = await connect(herald.url, v, {
          label: 'will client', will: { topic, payload: 'gone', qos: 1, retain: false },
        });
        assert.ok(dying.connected);
        destroySocket(dying);
        const [m] = await sub.inbox.waitFor(1, 5000);
        assert.equal(m.payload, 'gone');
        assert.equal(m.topic, topic);
      });

      it('will: not published after a normal DISCONNECT', async () => {
        const topic = unique('will/normal');
        const sub = await connect(herald.url, v, { label: 'will subscriber' });
        await subscribeOk(sub, topic, { qos: 1 });
        const leaving = await connect(herald.url, v, {
          label: 'will client', will: { topic, payload: 'should-not-arrive', qos: 1, retain: false },
        });
        await leaving.endAsync();
        await sleep(1500);
        assert.deepEqual(sub.inbox.payloads(), [], 'will published after a normal DISCONNECT');
      });

      if (v === 5) {
        it('will: Will Delay Interval 2 s delays the will by about 2 s', async () => {
          const topic = unique('will/delay');
          const sub = await connect(herald.url, v, { label: 'will subscriber' });
          await subscribeOk(sub, topic, { qos: 1 });
          // The will waits for the delay or the end of the session, whichever is first, so the
          // session must outlive the delay.
          const dying = await connect(herald.url, v, {
            label: 'will client',
            properties: { sessionExpiryInterval: 30 },
            will: { topic, payload: 'late', qos: 1, retain: false,
                    properties: { willDelayInterval: 2 } },
          });
          const t0 = Date.now();
          destroySocket(dying);
          const [m] = await sub.inbox.waitFor(1, 8000);
          const elapsed = m.at - t0;
          assert.equal(m.payload, 'late');
          assert.ok(elapsed >= 1900, `will arrived after ${elapsed} ms, expected >= 2000 ms`);
          assert.ok(elapsed <= 5000, `will arrived after ${elapsed} ms, expected about 2000 ms`);
        });
      }

      it('persistent session: 20 QoS 1 messages queued while offline, resumed once, in order',
         async () => {
           const clientId = unique('persistent');
           const topic = unique('session/t');
           const sessionOpts = v === 5
               ? { clean: false, properties: { sessionExpiryInterval: 60 } }
               : { clean: false };
           const first = await connect(herald.url, v, { label: 'session client', clientId,
                                                        ...sessionOpts });
           assert.equal(first.connack.sessionPresent, false, 'fresh client id: session present');
           await subscribeOk(first, topic, { qos: 1 });
           await first.endAsync();
           const pub = await connect(herald.url, v, { label: 'publisher' });
           const expected = range(20, (i) => `offline-${i}`);
           await publishAll(pub, topic, expected, { qos: 1 });
           const again = await connect(herald.url, v, { label: 'resumed session client', clientId,
                                                        ...sessionOpts });
           assert.equal(again.connack.sessionPresent, true, 'CONNACK session present');
           await again.inbox.waitFor(20);
           await sleep(300);
           assertExactlyOnceInOrder(again.inbox.payloads(), expected, 'offline backlog');
         });

      it('shared subscription $share/g/topic: each message to exactly one of two members',
         async () => {
           const topic = unique('shared/t');
           const members = [];
           for (const name of ['member A', 'member B']) {
             const m = await connect(herald.url, v, { label: name });
             await subscribeOk(m, `$share/g/${topic}`, { qos: 1 });
             members.push(m);
           }
           const pub = await connect(herald.url, v, { label: 'publisher' });
           const expected = range(20, (i) => `s-${i}`);
           await publishAll(pub, topic, expected, { qos: 1 });
           const deadline = Date.now() + 5000;
           const total = () => members[0].inbox.messages.length + members[1].inbox.messages.length;
           while (total() < 20 && Date.now() < deadline) await sleep(50);
           await sleep(300);
           const [a, b] = members.map((m) => m.inbox.payloads());
           const all = [...a, ...b].sort((x, y) => Number(x.slice(2)) - Number(y.slice(2)));
           assert.deepEqual(all, expected,
                            `each message to exactly one member; A got ${JSON.stringify(a)}, ` +
                            `B got ${JSON.stringify(b)}`);
           assert.ok(a.length > 0 && b.length > 0,
                     `both members should get some: A ${a.length}, B ${b.length}`);
         });

      it('MQTT over WebSocket (ws://.../mqtt): subscribe and QoS 1 round trip', async () => {
        const topic = unique('ws/t');
        const sub = await connect(herald.wsUrl, v, { label: 'ws subscriber' });
        await subscribeOk(sub, topic, { qos: 1 });
        const pub = await connect(herald.wsUrl, v, { label: 'ws publisher' });
        const expected = range(10, (i) => `w-${i}`);
        await publishAll(pub, topic, expected, { qos: 1 });
        await sub.inbox.waitFor(10);
        await sleep(300);
        assertExactlyOnceInOrder(sub.inbox.payloads(), expected, 'over WebSocket');
        for (const m of sub.inbox.messages) assert.equal(m.packet.qos, 1);
      });
    });
  }

  describe('MQTT 5.0 properties', () => {
    const v = 5;

    it('topic alias: client registers and uses an alias; subscriber sees the topic', async () => {
      const topic = unique('alias/t');
      const sub = await connect(herald.url, v, { label: 'subscriber',
                                                 properties: { topicAliasMaximum: 10 } });
      await subscribeOk(sub, topic, { qos: 1 });
      const pub = await connect(herald.url, v, { label: 'publisher' });
      const max = pub.connack.properties && pub.connack.properties.topicAliasMaximum;
      assert.ok(max >= 1, `CONNACK Topic Alias Maximum ${max}, expected >= 1`);
      await publish(pub, topic, 'a-0', { qos: 1, properties: { topicAlias: 1 } });
      await publish(pub, '', 'a-1', { qos: 1, properties: { topicAlias: 1 } });
      await publish(pub, '', 'a-2', { qos: 1, properties: { topicAlias: 1 } });
      await sub.inbox.waitFor(3);
      await sleep(200);
      assert.deepEqual(sub.inbox.payloads(), ['a-0', 'a-1', 'a-2']);
      for (const m of sub.inbox.messages) assert.equal(m.topic, topic, 'topic of an aliased message');
      assert.deepEqual(pub.errors.map((e) => e.message), [], 'publisher errors');
      assert.deepEqual(sub.errors.map((e) => e.message), [], 'subscriber errors');
    });

    it('user properties, content type and the other publish properties pass through',
       async () => {
         const topic = unique('props/t');
         const sub = await connect(herald.url, v, { label: 'subscriber' });
         await subscribeOk(sub, topic, { qos: 1 });
         const pub = await connect(herald.url, v, { label: 'publisher' });
         const properties = {
           contentType: 'application/json',
           payloadFormatIndicator: true,
           responseTopic: `${topic}/reply`,
           correlationData: Buffer.from([1, 2, 0, 255]),
           userProperties: { k: ['1', '2'], other: 'x' },
         };
         await publish(pub, topic, '{"v":1}', { qos: 1, properties });
         const [m] = await sub.inbox.waitFor(1);
         // mqtt-packet decodes user properties into a null-prototype object.
         const got = { ...m.packet.properties };
         if (got.userProperties) got.userProperties = { ...got.userProperties };
         assert.equal(got.contentType, 'application/json', 'content type');
         assert.equal(got.payloadFormatIndicator, true, 'payload format indicator');
         assert.equal(got.responseTopic, `${topic}/reply`, 'response topic');
         assert.deepEqual(got.correlationData, Buffer.from([1, 2, 0, 255]), 'correlation data');
         assert.deepEqual(got.userProperties, { k: ['1', '2'], other: 'x' }, 'user properties');
       });

    it('subscription identifier is returned with the message', async () => {
      const topic = unique('subid/t');
      const sub = await connect(herald.url, v, { label: 'subscriber' });
      await subscribeOk(sub, topic, { qos: 1, properties: { subscriptionIdentifier: 42 } });
      const pub = await connect(herald.url, v, { label: 'publisher' });
      await publish(pub, topic, 'x', { qos: 1 });
      const [m] = await sub.inbox.waitFor(1);
      const id = m.packet.properties && m.packet.properties.subscriptionIdentifier;
      assert.deepEqual([id].flat(), [42], `subscription identifier ${JSON.stringify(id)}`);
    });

    it('No Local: own messages are not delivered back, others\' are', async () => {
      const topic = unique('nolocal/t');
      const self = await connect(herald.url, v, { label: 'no-local client' });
      await subscribeOk(self, { [topic]: { qos: 1, nl: true } });
      const observer = await connect(herald.url, v, { label: 'observer' });
      await subscribeOk(observer, topic, { qos: 1 });
      await publish(self, topic, 'own', { qos: 1 });
      const other = await connect(herald.url, v, { label: 'other publisher' });
      await publish(other, topic, 'foreign', { qos: 1 });
      await observer.inbox.waitFor(2);
      await self.inbox.waitFor(1);
      await sleep(300);
      assert.deepEqual(observer.inbox.payloads(), ['own', 'foreign']);
      assert.deepEqual(self.inbox.payloads(), ['foreign'], 'No Local subscriber');
    });

    it('message expiry: the interval is reduced by the time held; expired messages are dropped',
       async () => {
         const topicLong = unique('expiry/long');
         const topicShort = unique('expiry/short');
         const pub = await connect(herald.url, v, { label: 'publisher' });
         await publish(pub, topicLong, 'long', { qos: 1, retain: true,
                                                 properties: { messageExpiryInterval: 30 } });
         await publish(pub, topicShort, 'short', { qos: 1, retain: true,
                                                   properties: { messageExpiryInterval: 1 } });
         await sleep(2200);
         const sub = await connect(herald.url, v, { label: 'subscriber' });
         await subscribeOk(sub, { [topicLong]: { qos: 1 }, [topicShort]: { qos: 1 } });
         const [m] = await sub.inbox.waitFor(1);
         await sleep(500);
         assert.deepEqual(sub.inbox.payloads(), ['long'],
                          'retained messages after 2.2 s (the 1 s one has expired)');
         const left = m.packet.properties && m.packet.properties.messageExpiryInterval;
         assert.ok(typeof left === 'number' && left >= 1 && left <= 28,
                   `Message Expiry Interval after 2.2 s: ${left}, expected 30 - 2 or less`);
       });
  });
});

// ---------------------------------------------------------------------------------------------
// Authentication and authorization: a herald with a password file and an ACL file.

describe('herald with password file and ACL', () => {
  let herald;
  let confDir;
  const user = 'alice';
  const password = 'wonderland';
  before(async () => {
    confDir = fs.mkdtempSync(path.join(os.tmpdir(), 'herald-mqttjs-auth-'));
    const passwordFile = path.join(confDir, 'passwd');
    const aclFile = path.join(confDir, 'acl');
    const r = spawnSync(path.join(binDir, 'heraldctl'),
                        ['passwd', passwordFile, user, `--password=${password}`],
                        { encoding: 'utf8' });
    assert.equal(r.status, 0, `heraldctl passwd failed: ${r.stderr}`);
    fs.writeFileSync(aclFile, [
      `user ${user}`,
      'topic readwrite allowed/#',
      'topic read readonly/#',
      '',
    ].join('\n'));
    herald = await Herald.start('herald-auth', [`--mqtt.password_file=${passwordFile}`,
                                                `--mqtt.acl_file=${aclFile}`]);
  });
  after(async () => {
    if (herald) await herald.stop();
    if (confDir) fs.rmSync(confDir, { recursive: true, force: true });
  });

  const creds = { username: user, password };

  for (const v of [4, 5]) {
    describe(vname(v), () => {
      it(`wrong password: CONNACK refused with ${v === 5 ? 'reason 134 (0x86)' : 'return code 4'}`,
         async () => {
           const connack = await connectRefused(herald.url, v,
                                                { username: user, password: 'not-it' });
           if (v === 5) assert.equal(connack.reasonCode, 134, 'CONNACK reason code');
           else assert.equal(connack.returnCode, 4, 'CONNACK return code');
         });

      it('right password: CONNACK accepted', async () => {
        const c = await connect(herald.url, v, { label: 'alice', ...creds });
        assert.ok(c.connected);
      });

      it(`SUBSCRIBE denied by the ACL: ${v === 5 ? 'reason 135 (0x87)' : 'return code 128 (0x80)'}`,
         async () => {
           const c = await connect(herald.url, v, { label: 'alice', ...creds });
           const codes = await subscribe(c, { 'allowed/x': { qos: 1 }, 'forbidden/x': { qos: 1 } });
           assert.deepEqual(codes, [1, v === 5 ? 135 : 128],
                            'SUBACK codes for [allowed/x, forbidden/x]');
         });

      it(v === 5 ? 'QoS 1 PUBLISH denied by the ACL: PUBACK reason 135 (0x87), not delivered'
                 : 'QoS 1 PUBLISH denied by the ACL: not delivered',
         async () => {
           const sub = await connect(herald.url, v, { label: 'alice subscriber', ...creds });
           await subscribeOk(sub, 'readonly/#', { qos: 1 });
           const pub = await connect(herald.url, v, { label: 'alice publisher', ...creds });
           const topic = unique('readonly/t');
           let outcome;
           try {
             await publish(pub, topic, 'denied', { qos: 1 });
             outcome = 'accepted';
           } catch (err) {
             outcome = err.code === undefined ? `error: ${err.message}` : err.code;
           }
           if (v === 5) {
             assert.equal(outcome, 135, 'PUBACK reason code');
           } else {
             // 3.1.1 has no negative PUBACK: acknowledged (or disconnected), never delivered.
             assert.ok(outcome === 'accepted' || !pub.connected, `publish outcome ${outcome}`);
           }
           await sleep(500);
           assert.deepEqual(sub.inbox.payloads(), [], 'denied PUBLISH was delivered');
         });
    });
  }
});
