/**
 * A chat-cluster client for browsers and Node (>= 20 with its WebSocket), with the
 * protocol's promises built in:
 *
 * - failover: one node of a list at a time; when it goes away (1001), drops the
 *   client (1013) or dies, the next one, after a backoff with jitter;
 * - no gap, no duplicate: a cursor per channel (the last seq handed over), a resume
 *   with `after` = cursor on whichever node it reaches, and anything at or below the
 *   cursor dropped;
 * - a new epoch (the log was replaced) drops the cursors and joins every channel
 *   again from its last 100 messages (`epoch` event);
 * - idempotent sends: each has an id, kept until its ack and sent again with the same
 *   id after a reconnect or a retryable error; `send` resolves with the ack;
 * - presence: a channel joined with `{ presence: true }` keeps who is in it
 *   (`members(channel)`): the node's snapshot after each (re)join, then its join and
 *   leave frames (also handed over as `presence` events);
 * - tokens: sent in the first frame (`auth`; browsers cannot set headers on a
 *   WebSocket), renewed on `token_expiring` with `refresh` when the token is a
 *   function, which is also asked again after a refusal (4001/4002).
 *
 * No dependencies: the platform's WebSocket and fetch.
 */
/** A node refused a request; `code` and `detail` are its answer's. */
export class Refused extends Error {
    code;
    detail;
    constructor(code, detail) {
        super(`${code}: ${detail}`);
        this.code = code;
        this.detail = detail;
    }
}
/** The client was closed before the send was acknowledged (sending it again with the
 * same id is safe). */
export class ClientClosed extends Error {
}
/** Send errors after which the same send may succeed: it is sent again, same id. */
const RETRYABLE = new Set([
    "rate_limited",
    "log_unavailable",
    "log_stalled",
    "stream_missing",
    "not_ready",
    "busy",
]);
export function wsUrl(node) {
    return node.replace(/^http/, "ws") + "/ws";
}
export class ChatClient {
    nodes;
    /** The node connected to now, if any. */
    node = null;
    /** Who the node says we are, once known. */
    user = null;
    /** Connections made so far (1 + reconnects). */
    connections = 0;
    token;
    backoff;
    Socket;
    retryDelay;
    next;
    attempt = 0;
    ws = null;
    closed = false;
    started = false;
    /** Stopped because the node refused a fixed token: setToken starts again. */
    refused = false;
    epoch = null;
    channels = new Map();
    pending = new Map();
    listeners = new Map();
    timer = null;
    constructor(nodes, token = null, options = {}) {
        if (nodes.length === 0)
            throw new Error("at least one node URL is needed");
        this.nodes = nodes.map((n) => n.replace(/\/+$/, ""));
        this.token = token;
        this.backoff = options.backoff ?? [200, 10_000];
        this.retryDelay = options.retryDelay ?? 1000;
        this.next = options.first ?? Math.floor(Math.random() * this.nodes.length);
        const Socket = options.WebSocket ?? globalThis.WebSocket;
        if (Socket === undefined)
            throw new Error("no WebSocket: pass options.WebSocket");
        this.Socket = Socket;
    }
    on(kind, listener) {
        let set = this.listeners.get(kind);
        if (set === undefined) {
            set = new Set();
            this.listeners.set(kind, set);
        }
        set.add(listener);
        return () => set.delete(listener);
    }
    start() {
        if (!this.started && !this.closed) {
            this.started = true; // before any await: join() and send() call start() too
            void this.connect();
        }
        return this;
    }
    close() {
        this.closed = true;
        if (this.timer !== null)
            clearTimeout(this.timer);
        this.ws?.close(1000, "client closed");
        for (const pending of this.pending.values())
            pending.reject(new ClientClosed("closed before the ack"));
        this.pending.clear();
    }
    /** A new token (a page whose user signed in again): renews it on the open socket, or
     * starts again after the old one was refused. */
    setToken(token) {
        this.token = token;
        if (this.refused) {
            this.refused = false;
            this.closed = false;
            void this.connect();
            return;
        }
        void this.currentToken().then((value) => {
            if (value)
                this.write(JSON.stringify({ op: "refresh", token: value }));
        });
    }
    cursor(channel) {
        return this.channels.get(channel)?.cursor ?? null;
    }
    /** Who is in `channel` now (user to sockets), for a channel joined with
     * `{ presence: true }` once its first snapshot arrived; a user learned from a join
     * frame counts 1 until the next snapshot. */
    members(channel) {
        const members = this.channels.get(channel)?.members;
        return members ? new Map(members) : null;
    }
    /** Follow `channel`: messages with seq > `after` (default: its last 100), then live
     * ones, as `message` events, across reconnects. `presence`: also who is in it
     * (`members`, and `presence` events). */
    join(channel, after = null, options = {}) {
        if (this.closed && !this.refused)
            throw new ClientClosed("the client is closed");
        this.start();
        const presence = options.presence === true;
        const state = { cursor: after, joinsSent: 0, joinsSeen: 0, presence, members: null };
        this.channels.set(channel, state);
        this.sendJoin(channel, state);
    }
    leave(channel) {
        if (this.channels.delete(channel))
            this.write(JSON.stringify({ op: "leave", channel }));
    }
    /** Store `text` on `channel`; resolves with the ack once the log has it. Rejects with
     * Refused for what retrying cannot fix (forbidden, too long, ...). */
    send(channel, text, id = randomId()) {
        // After a refused token (authfailed) sends wait for setToken; after close() none do.
        if (this.closed && !this.refused)
            return Promise.reject(new ClientClosed("the client is closed"));
        this.start();
        const frame = JSON.stringify({ op: "send", channel, text, id });
        return new Promise((resolve, reject) => {
            this.pending.set(id, { frame, resolve, reject });
            this.write(frame);
        });
    }
    /** The `limit` messages of `channel` before seq `before` (default: the newest),
     * ascending: the page above the oldest one shown. Empty: there is no more. */
    async history(channel, before = null, limit = 100) {
        const query = new URLSearchParams({
            channel,
            limit: String(limit),
            before: String(before ?? Number.MAX_SAFE_INTEGER),
        });
        const token = await this.currentToken();
        const headers = token ? { authorization: `Bearer ${token}` } : {};
        const order = this.node ? [this.node, ...this.nodes.filter((n) => n !== this.node)] : this.nodes;
        const failures = [];
        for (const node of order) {
            let response;
            try {
                response = await fetch(`${node}/messages?${query}`, { headers });
            }
            catch (error) {
                failures.push(`${node}: ${String(error)}`);
                continue;
            }
            const body = (await response.json());
            if (!response.ok)
                throw new Refused(body.error ?? "http_error", body.detail ?? String(response.status));
            return body.messages ?? [];
        }
        throw new Error(`no node answered: ${failures.join("; ")}`);
    }
    emit(kind, event) {
        for (const listener of this.listeners.get(kind) ?? [])
            listener(event);
    }
    async currentToken() {
        const source = this.token;
        return typeof source === "function" ? await source() : source;
    }
    async connect() {
        const node = this.nodes[this.next % this.nodes.length];
        let token;
        try {
            token = await this.currentToken();
        }
        catch (error) {
            this.retry(node, null, `token: ${String(error)}`, true);
            return;
        }
        if (this.closed)
            return;
        const ws = new this.Socket(wsUrl(node));
        this.ws = ws;
        let opened = false;
        ws.onopen = () => {
            opened = true;
            this.node = node;
            this.connections += 1;
            this.emit("connected", { node });
            // The token first (nothing else is read before it), then the resumed joins, then
            // the sends still waiting for their acks.
            if (token)
                ws.send(JSON.stringify({ op: "auth", token }));
            for (const [channel, state] of this.channels) {
                state.joinsSent = state.joinsSeen = 0;
                this.sendJoin(channel, state);
            }
            for (const pending of this.pending.values())
                ws.send(pending.frame);
        };
        ws.onmessage = (event) => {
            this.attempt = 0; // this node serves us
            this.onFrame(ws, JSON.parse(String(event.data)));
        };
        ws.onclose = (event) => {
            if (this.ws === ws) {
                this.ws = null;
                this.node = null;
            }
            if (this.closed)
                return;
            const code = opened ? event.code : null;
            this.retry(node, code, event.reason || (opened ? "closed" : "could not connect"), code !== 1012);
        };
    }
    retry(node, code, reason, moveOn) {
        if ((code === 4001 || code === 4002) && typeof this.token !== "function") {
            this.closed = this.refused = true; // until setToken
            this.emit("authfailed", { reason: `${node} closed with ${code}: ${reason}` });
            return;
        }
        if (moveOn)
            this.next += 1; // a new epoch (1012) is the cluster's, not this node's
        const retryIn = this.delay(this.attempt);
        this.attempt += 1;
        this.emit("disconnected", { node, code, reason, retryIn });
        this.timer = setTimeout(() => {
            this.timer = null;
            if (!this.closed)
                void this.connect();
        }, retryIn);
    }
    /** Exponential, with jitter over the upper half: the clients of a node that went away
     * spread their returns instead of arriving together. */
    delay(attempt) {
        const [first, largest] = this.backoff;
        if (attempt === 0)
            return first * Math.random();
        const base = Math.min(largest, first * 2 ** attempt);
        return base / 2 + (Math.random() * base) / 2;
    }
    sendJoin(channel, state) {
        const frame = { op: "join", channel };
        if (state.cursor !== null)
            frame.after = state.cursor;
        if (state.presence)
            frame.presence = true;
        state.joinsSent += 1;
        this.write(JSON.stringify(frame));
    }
    /** Now if connected; otherwise the next connection sends it (joins and pending sends
     * are state, replayed on open). */
    write(frame) {
        if (this.ws !== null && this.ws.readyState === this.Socket.OPEN)
            this.ws.send(frame);
    }
    onFrame(ws, frame) {
        switch (frame.op) {
            case "message": {
                const message = frame;
                const state = this.channels.get(message.channel);
                if (state === undefined || state.joinsSeen < state.joinsSent)
                    return;
                if (state.cursor !== null && message.seq <= state.cursor)
                    return; // seen already
                state.cursor = message.seq;
                delete message.op;
                this.emit("message", message);
                return;
            }
            case "joined":
                this.onJoined(frame);
                return;
            case "ack": {
                const ack = frame;
                const pending = this.pending.get(ack.id);
                if (pending !== undefined) {
                    this.pending.delete(ack.id);
                    pending.resolve({ id: ack.id, seq: ack.seq, duplicate: ack.duplicate });
                }
                return;
            }
            case "error":
                this.onError(frame);
                return;
            case "left": {
                const left = frame;
                if (left.reason !== undefined) {
                    this.channels.delete(left.channel); // the node left for us (access revoked)
                    this.emit("left", left);
                }
                return;
            }
            case "token_expiring":
                this.emit("expiring", { expires_in: Number(frame.expires_in) });
                if (typeof this.token === "function") {
                    void this.currentToken().then((token) => {
                        if (token && ws.readyState === this.Socket.OPEN)
                            ws.send(JSON.stringify({ op: "refresh", token }));
                    });
                }
                return;
            case "authed": {
                const authed = frame;
                this.user = authed.user;
                this.emit("authed", authed);
                return;
            }
            case "presence":
            case "presence_join":
            case "presence_leave":
                this.onPresence(frame);
                return;
        }
    }
    onPresence(frame) {
        const channel = String(frame.channel);
        const state = this.channels.get(channel);
        // From a join since replaced, or a channel left: not ours.
        if (state === undefined || !state.presence || state.joinsSeen < state.joinsSent)
            return;
        const online = Number(frame.online);
        if (frame.op === "presence") {
            const members = frame.members;
            state.members = new Map(members.map((m) => [m.user, m.count]));
            this.emit("presence", { kind: "snapshot", channel, online, members, more: frame.more === true });
            return;
        }
        const users = frame.users;
        const kind = frame.op === "presence_join" ? "join" : "leave";
        if (state.members !== null) {
            // As set operations: a user may be listed as joining who is shown already.
            for (const user of users) {
                if (kind === "leave")
                    state.members.delete(user);
                else if (!state.members.has(user))
                    state.members.set(user, 1);
            }
        }
        this.emit("presence", { kind, channel, online, users });
    }
    onJoined(joined) {
        const state = this.channels.get(joined.channel);
        if (state !== undefined)
            state.joinsSeen += 1;
        if (this.epoch === null) {
            this.epoch = joined.epoch;
        }
        else if (joined.epoch !== this.epoch) {
            // Seqs of the old log mean nothing in the new one: every channel starts over.
            this.epoch = joined.epoch;
            this.emit("epoch", { epoch: joined.epoch });
            for (const [channel, other] of this.channels) {
                other.cursor = null;
                this.sendJoin(channel, other);
            }
            return;
        }
        if (state !== undefined && state.joinsSeen === state.joinsSent) {
            this.emit("joined", { channel: joined.channel, epoch: joined.epoch, last_seq: joined.last_seq });
        }
    }
    onError(error) {
        const pending = error.id === undefined || error.id === null ? undefined : this.pending.get(error.id);
        if (pending === undefined) {
            this.emit("error", error); // a refused join or frame: nothing else waits on it
            return;
        }
        if (RETRYABLE.has(error.code)) {
            setTimeout(() => {
                if (this.pending.get(error.id) === pending)
                    this.write(pending.frame);
            }, this.retryDelay * (0.5 + Math.random()));
            return;
        }
        this.pending.delete(error.id);
        pending.reject(new Refused(error.code, error.detail));
    }
}
function randomId() {
    const bytes = new Uint8Array(16);
    globalThis.crypto.getRandomValues(bytes);
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}
