// The chat page: sign in with a token, list and join channels, history with scroll-back,
// sends shown as pending until acknowledged, who is in the channel, the connection's
// state always visible.
// The client (client.js) is the TypeScript client of clients/js, built; it resumes on
// another node without gap or duplicate. The fragment (#token=...&nodes=...) is read
// here and never sent to a server.

import { ChatClient } from "./client.js";

const $ = (id) => document.getElementById(id);
const fragment = new URLSearchParams(location.hash.slice(1));
const nodes = (fragment.get("nodes") || location.origin).split(",").filter(Boolean);
const shown = new Map(); // channel -> Map(seq -> li)
const pending = new Map(); // send id -> li
let client = null;
let channel = null;
let token = null;

function status(text, down = false) {
  $("status").textContent = text;
  $("status").classList.toggle("down", down);
}

function signedOut(why) {
  $("signin").hidden = false;
  $("signin-why").textContent = why;
  $("token").focus();
}

function signIn(value) {
  token = value.trim();
  $("signin").hidden = true;
  $("chat").hidden = false;
  if (client !== null) {
    client.setToken(token); // renews it on the open socket, or starts again
    return;
  }
  client = new ChatClient(nodes, token, { first: 0 }); // the fragment lists nodes in order
  client.on("connected", ({ node }) => status(`connected to ${node}`));
  client.on("disconnected", ({ node, code, reason, retryIn }) =>
    status(`lost ${node} (${code ?? "no answer"}${reason ? ": " + reason : ""}); ` +
      `reconnecting in ${(retryIn / 1000).toFixed(1)} s`, true));
  client.on("authed", ({ user }) => { $("status").dataset.user = user; });
  client.on("authfailed", () => {
    status("signed out: the token was refused or has expired", true);
    signedOut("Your token was refused or has expired: paste a new one.");
  });
  client.on("expiring", ({ expires_in }) =>
    signedOut(`Your token expires in ${Math.round(expires_in)} s: paste a new one to stay.`));
  client.on("epoch", () => { for (const list of shown.values()) list.clear(); render(); });
  client.on("message", (m) => add(m));
  client.on("presence", (p) => { if (p.channel === channel) renderOnline(); });
  client.on("error", (e) => status(`${e.code}: ${e.detail}`, true));
  client.on("left", ({ channel: left }) => status(`you may no longer read ${left}`, true));
  client.start();
  client.on("connected", () => loadChannels()); // from whichever node answers, each time
}

async function loadChannels() {
  try {
    const response = await fetch(`${client.node ?? nodes[0]}/channels?limit=1000`, {
      headers: { authorization: `Bearer ${token}` },
    });
    if (!response.ok) return;
    for (const { channel: name } of await response.json()) {
      if (!document.querySelector(`#channels [data-channel="${CSS.escape(name)}"]`)) {
        $("channels").append(channelItem(name));
      }
    }
  } catch {
    // the channel list is a convenience; joining by name still works
  }
}

function channelItem(name) {
  const li = document.createElement("li");
  const button = document.createElement("button");
  button.type = "button";
  button.textContent = `# ${name}`;
  button.dataset.channel = name;
  button.addEventListener("click", () => open(name));
  li.append(button);
  return li;
}

const CHANNEL = /^[A-Za-z0-9_-]{1,64}$/;

function open(name) {
  if (!CHANNEL.test(name)) {
    status(`"${name}" is not a channel name (1-64 of A-Z a-z 0-9 _ -)`, true);
    return;
  }
  if (!shown.has(name)) {
    shown.set(name, new Map());
    client.join(name, null, { presence: true });
    if (!document.querySelector(`#channels [data-channel="${CSS.escape(name)}"]`)) {
      $("channels").append(channelItem(name));
    }
  }
  channel = name;
  for (const b of document.querySelectorAll("#channels button")) {
    b.setAttribute("aria-current", String(b.dataset.channel === name));
  }
  $("room-title").textContent = `# ${name}`;
  for (const el of [$("text"), $("send-form").querySelector("button"), $("older")]) el.disabled = false;
  $("older").textContent = "Load older messages";
  render();
  renderOnline();
  $("text").focus();
}

function line(m) {
  const li = document.createElement("li");
  li.dataset.seq = m.seq ?? "";
  li.dataset.id = m.id;
  const who = document.createElement("span");
  who.className = "who";
  who.textContent = m.name ? `${m.name} (${m.user})` : m.user;
  const text = document.createElement("span");
  text.className = "text";
  text.textContent = m.text; // text, never HTML
  li.append(who, text);
  if (m.seq !== undefined) {
    const seq = document.createElement("span");
    seq.className = "seq";
    seq.textContent = `#${m.seq}`;
    li.append(seq);
  }
  return li;
}

function add(m) {
  const list = shown.get(m.channel) ?? new Map();
  shown.set(m.channel, list);
  if (list.has(m.seq)) return;
  list.set(m.seq, line(m));
  const waiting = pending.get(m.id);
  if (waiting) { waiting.remove(); pending.delete(m.id); }
  if (m.channel === channel) render();
}

function render() {
  const ol = $("messages");
  const list = channel === null ? new Map() : (shown.get(channel) ?? new Map());
  const atBottom = ol.scrollHeight - ol.scrollTop - ol.clientHeight < 40;
  const items = [...list.entries()].sort((a, b) => a[0] - b[0]).map(([, li]) => li);
  const waiting = [...pending.values()].filter((li) => li.dataset.channel === channel);
  ol.replaceChildren(...items, ...waiting);
  if (atBottom) ol.scrollTop = ol.scrollHeight;
}

function renderOnline() {
  const members = channel === null ? null : client.members(channel);
  const users = members === null ? [] : [...members.entries()].sort((a, b) => a[0].localeCompare(b[0]));
  $("online-title").textContent = members === null ? "Online" : `Online (${users.length})`;
  $("online").replaceChildren(...users.map(([user, count]) => {
    const li = document.createElement("li");
    li.dataset.user = user;
    li.textContent = count > 1 ? `${user} (${count} tabs or devices)` : user; // text, never HTML
    return li;
  }));
}

async function older() {
  const list = shown.get(channel);
  const oldest = list.size ? Math.min(...list.keys()) : null;
  const page = await client.history(channel, oldest, 50);
  if (page.length === 0) {
    $("older").disabled = true;
    $("older").textContent = "No older messages";
    return;
  }
  for (const m of page) if (!list.has(m.seq)) list.set(m.seq, line(m));
  render();
  $("messages").scrollTop = 0; // what was just loaded is above: show it
}

async function send(text) {
  const id = crypto.randomUUID();
  const li = line({ id, user: $("status").dataset.user ?? "you", text });
  li.classList.add("pending");
  li.dataset.channel = channel;
  li.setAttribute("aria-label", "sending");
  pending.set(id, li);
  render();
  try {
    await client.send(channel, text, id); // the message itself arrives as an event
    li.classList.remove("pending");
  } catch (error) {
    li.classList.replace("pending", "failed");
    li.setAttribute("aria-label", "not sent");
    li.append(` (not sent: ${error.code ?? error.message})`);
  }
}

$("signin-form").addEventListener("submit", (e) => {
  e.preventDefault();
  signIn($("token").value);
  if (channel === null && fragment.get("channel")) open(fragment.get("channel"));
  $(channel === null ? "join-name" : "text").focus();
});
$("join-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const name = $("join-name").value.trim();
  $("join-name").value = "";
  open(name);
});
$("send-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const text = $("text").value;
  if (!text || channel === null) return;
  $("text").value = "";
  void send(text);
});
$("older").addEventListener("click", () => void older());

if (fragment.get("token") || fragment.get("anonymous")) {
  signIn(fragment.get("token") ?? ""); // anonymous: a cluster started with --no-auth
  if (fragment.get("channel")) open(fragment.get("channel"));
} else {
  signedOut("");
}
